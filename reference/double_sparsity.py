r"""Double Sparsity: a few heavy channels pick the tokens, exact softmax over those (arXiv 2408.07092; ``docs/double_sparsity.md``).

Decoding one token with softmax attention reads the whole KV cache: ``S`` keys and values of ``D``
channels per head. Double Sparsity reads much less, in two sparse steps:

1. **Channel sparsity (offline).** A few channels of each head carry most of ``q · k``. Calibration
   on a little text ranks the channels by an outlier statistic (``channel_outliers``) and keeps the
   top ``r`` per kv head: the heavy set ``C`` (``heavy_channels``).
2. **Token sparsity (every step).** The *label cache* keeps the heavy channels of every cached key,
   contiguously (``LabelCache``). The label scores ``ŝ_j = q[C] · K_j[C]`` cost ``r`` channels per
   token instead of ``D``; the ``top_k`` tokens by label score are fetched in full and attended
   exactly: ``o = softmax(scale · q K[i]ᵀ) V[i]`` with ``i = topk(ŝ, top_k)`` (``decode``).

Conventions of this module:

* Shapes are head-first. One decoding step: ``q: [B, H, D]``; caches ``k_cache: [B, Hkv, S, D]``,
  ``v_cache: [B, Hkv, S, Dv]``; output ``[B, H, Dv]``. GQA: ``Hkv`` divides ``H`` and query head
  ``h`` reads kv head ``h // (H // Hkv)``.
* ``channels: [Hkv, r]`` integers, one heavy set per **kv** head (the label cache stores one label
  per cached key, so the heads of a group must share it). ``heavy_channels`` returns each set in
  ascending order; any order works as long as the labels were gathered in the same order.
* Top-k is deterministic: tokens by label score, highest first, and among equal scores the
  **lowest index first**. When the context holds ``S ≤ top_k`` tokens every token is kept and the
  step is dense softmax attention. No sink or recent tokens are forced in (the paper forces none;
  adding them would be an extension).
* Which side of RoPE (arXiv 2104.09864; ``reference/rope.py``): the q- and k-outlier statistics are
  taken on **pre-RoPE** queries and keys, the qk-outlier statistic on **post-RoPE** ones, each query
  with the key of its own token. The label cache holds **post-RoPE** keys — the keys attention
  really uses — so ``q[C] · K[C]`` is a partial sum of the real logit (erratum 9 of
  ``docs/errata.md``). ``calibrate`` reads the model's captures accordingly.
* A heavy-channel index belongs to a RoPE layout: channel ``c`` of the rotate-half layout is channel
  ``(2c mod D) + ⌊2c/D⌋`` of the interleaved one (``permute_channels``).
* Sparsity is counted as the paper counts it (erratum 9): label **bits** against the dense keys'
  16-bit channels, ``r · bits / (16 · D)``, with a token budget ``k = S / 16`` at "1/16"
  (``label_sparsity``, ``channels_for``, ``token_budget``). With 16-bit labels that is ``r = D/16``;
  4-bit labels buy four times the channels at the same ratio.

NumPy in, NumPy out; torch in, differentiable torch out (the selection itself has no gradient).

``python -m reference.double_sparsity`` calibrates the tiny model of ``reference.model`` and measures
recall and held-out loss at 1/4, 1/8 and 1/16 (``tiny_lm_study``), writing
``docs/benchmarks/double_sparsity_tiny_lm.json``.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import array_api_compat
import numpy as np

from reference._arrays import (
    causal_mask,
    check_floating,
    check_positive_int,
    check_rank,
    check_scale,
    chunk_bounds,
    device_of,
    is_torch,
    namespace,
    same_library,
    transpose,
)
from reference.softmax_attention import default_scale, online_softmax_update

__all__ = [
    "KINDS",
    "ROPE_SIDE",
    "LABEL_BITS",
    "channel_outliers",
    "group_statistics",
    "heavy_channels",
    "permute_channels",
    "gather_labels",
    "label_scores",
    "top_k_indices",
    "select",
    "decode",
    "decode_with_labels",
    "causal_decode",
    "quantise",
    "dequantise",
    "label_error_bound",
    "LabelCache",
    "label_sparsity",
    "channels_for",
    "token_budget",
    "calibrate",
    "attention_overrides",
    "decode_overrides",
    "topk_recall",
    "channel_concentration",
    "tiny_lm_study",
]

#: The three outlier statistics of the paper's offline calibration.
KINDS = ("q", "k", "qk")
#: Which side of RoPE each statistic is measured on (the label cache itself is always post-RoPE).
ROPE_SIDE = {"q": "pre", "k": "pre", "qk": "post"}
#: Label widths the cache stores: ``None`` keeps the keys' own dtype; 8 and 4 are quantised codes.
LABEL_BITS = (None, 8, 4)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_heads(H: int, Hkv: int, what: str) -> int:
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"{what} must have a number of kv heads dividing the {H} query heads, got {Hkv}")
    return H // Hkv


def _check_step(q, k_cache, v_cache):
    """``q: [B, H, D]``, ``k_cache: [B, Hkv, S, D]``, ``v_cache: [B, Hkv, S, Dv]`` → ``(xp, B, H, Hkv, S, D, Dv)``."""
    xp = namespace(q, k_cache, v_cache)
    check_rank("q", q, 3, "[B, H, D] (one decoding step)")
    check_rank("k_cache", k_cache, 4, "[B, Hkv, S, D]")
    check_rank("v_cache", v_cache, 4, "[B, Hkv, S, Dv]")
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_floating(xp, name, x)
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise TypeError(
            f"q, k_cache and v_cache must share one dtype, got {q.dtype}, {k_cache.dtype} and {v_cache.dtype}"
        )
    B, H, D = q.shape
    Bk, Hkv, S, Dk = k_cache.shape
    if Bk != B:
        raise ValueError(f"k_cache must have the batch size of q ({B}), got {Bk}")
    _check_heads(H, Hkv, "k_cache")
    if Dk != D:
        raise ValueError(f"k_cache must have the head width of q ({D}), got {Dk}")
    if tuple(v_cache.shape[:3]) != (B, Hkv, S):
        raise ValueError(f"v_cache must have [B, Hkv, S] = {(B, Hkv, S)} like k_cache, got {tuple(v_cache.shape[:3])}")
    if S < 1:
        raise ValueError(f"k_cache must hold at least one token, got S = {S}")
    if D < 1 or v_cache.shape[3] < 1:
        raise ValueError(f"head widths must be at least 1, got D={D} and Dv={v_cache.shape[3]}")
    if is_torch(q) and not (q.device == k_cache.device == v_cache.device):
        raise ValueError(f"q, k_cache and v_cache must be on one device, got {q.device}, {k_cache.device}, {v_cache.device}")
    return xp, B, H, Hkv, S, D, v_cache.shape[3]


def _check_channels(channels, Hkv: int, D: int, like):
    """``channels: [Hkv, r]``, distinct integers in ``[0, D)`` per row, as an index array of ``like``'s library."""
    if is_torch(channels):
        host = channels.detach().cpu().numpy()
    elif isinstance(channels, (np.ndarray, list, tuple)) or array_api_compat.is_array_api_obj(channels):
        host = np.asarray(channels)  # a few small integers: validated on the host
    else:
        raise TypeError(f"channels must be an integer array [Hkv, r], got {type(channels).__name__}")
    if host.dtype == bool or not np.issubdtype(host.dtype, np.integer):
        raise TypeError(f"channels must hold integer channel indices, got dtype {host.dtype}")
    if host.ndim != 2 or host.shape[0] != Hkv:
        raise ValueError(f"channels must have shape [Hkv, r] with Hkv = {Hkv}, got {host.shape}")
    r = host.shape[1]
    if not 1 <= r <= D:
        raise ValueError(f"channels must name between 1 and D = {D} channels per kv head, got r = {r}")
    if host.min() < 0 or host.max() >= D:
        raise ValueError(f"channels must lie in [0, {D}), got values from {host.min()} to {host.max()}")
    if r > 1 and np.any(np.diff(np.sort(host, axis=1), axis=1) == 0):
        raise ValueError("channels must not repeat a channel within a kv head (it would count twice)")
    xp = namespace(like)
    return xp.asarray(host.astype(np.int64), device=device_of(like))


def _take_channels(xp, x, channels):
    """``x[..., C]`` with one heavy set per kv head: ``x: [B, Hkv, ..., D]``, ``channels: [Hkv, r]``."""
    index = xp.reshape(channels, (1, channels.shape[0], *([1] * (x.ndim - 3)), channels.shape[1]))
    return xp.take_along_axis(x, index, axis=-1)


# --------------------------------------------------------------------------------------------
# Offline calibration: outlier statistics, heavy channels, RoPE layouts
# --------------------------------------------------------------------------------------------


def channel_outliers(q, k, *, kind: str = "qk"):
    r"""The paper's per-channel outlier statistic of each query head, averaged over batch and tokens.

    * ``"q"``: ``mean_{b,t} |q_{bhtc}|`` — pass **pre-RoPE** queries.
    * ``"k"``: ``mean_{b,t} |k_{b,h//g,t,c}|`` — pass **pre-RoPE** keys; each query head gets the
      statistic of the kv head it reads (``g = H // Hkv``).
    * ``"qk"``: ``mean_{b,t} |q_{bhtc} · k_{b,h//g,t,c}|`` — pass **post-RoPE** queries and keys;
      each token's query meets the key of the same token.

    Args:
        q: ``[B, H, T, D]`` queries.
        k: ``[B, Hkv, T, D]`` keys, ``Hkv`` dividing ``H``.
        kind: ``"q"``, ``"k"`` or ``"qk"``.

    Returns:
        ``[H, D]`` non-negative statistics (``group_statistics`` reduces them to kv heads).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    xp = namespace(q, k)
    check_rank("q", q, 4, "[B, H, T, D]")
    check_rank("k", k, 4, "[B, Hkv, T, D]")
    check_floating(xp, "q", q)
    check_floating(xp, "k", k)
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must share one dtype, got {q.dtype} and {k.dtype}")
    B, H, T, D = q.shape
    if k.shape[0] != B or k.shape[2] != T or k.shape[3] != D:
        raise ValueError(f"k must have [B, Hkv, T, D] with B, T, D = {(B, T, D)} like q, got {tuple(k.shape)}")
    if B * T < 1:
        raise ValueError(f"q must hold at least one token to average over, got shape {tuple(q.shape)}")
    Hkv = k.shape[1]
    g = _check_heads(H, Hkv, "k")
    qg = xp.reshape(q, (B, Hkv, g, T, D))
    kg = k[:, :, None, :, :]
    if kind == "q":
        per_token = xp.abs(qg)
    elif kind == "k":
        per_token = xp.abs(kg + xp.zeros_like(qg))  # broadcast over the group: every query head sees it
    else:
        per_token = xp.abs(qg * kg)
    return xp.reshape(xp.mean(per_token, axis=(0, 3)), (H, D))


def group_statistics(stats, num_kv_heads: int):
    r"""Reduce per-query-head statistics ``[H, D]`` to one row per kv head ``[Hkv, D]``: the group's sum.

    The heads of a group share one label cache, so they must share one heavy set. Summing the
    group's statistics ranks channels by their total contribution to the group's scores (the mean
    would rank them the same way). With ``num_kv_heads == H`` this returns ``stats`` unchanged.
    """
    xp = namespace(stats)
    check_rank("stats", stats, 2, "[H, D]")
    H, D = stats.shape
    Hkv = check_positive_int("num_kv_heads", num_kv_heads)
    g = _check_heads(H, Hkv, "num_kv_heads")
    return xp.sum(xp.reshape(stats, (Hkv, g, D)), axis=1)


def heavy_channels(stats, r: int, *, num_kv_heads: int | None = None):
    r"""The ``r`` heaviest channels of each kv head: ``[Hkv, r]`` int64, each row in ascending order.

    Args:
        stats: ``[H, D]`` (or already ``[Hkv, D]``) outlier statistics, larger = heavier.
        r: channels to keep per kv head, ``1 ≤ r ≤ D``.
        num_kv_heads: reduce ``H`` query heads to this many kv heads first (``group_statistics``:
            the group's sum); ``None`` takes the rows of ``stats`` as kv heads already.

    Ranking is by statistic, highest first, equal statistics going to the lower channel index; the
    chosen set is then returned sorted (the label cache stores it in that order).
    """
    xp = namespace(stats)
    check_rank("stats", stats, 2, "[H, D]")
    check_floating(xp, "stats", stats)
    D = stats.shape[1]
    r = check_positive_int("r", r)
    if r > D:
        raise ValueError(f"r must be at most the {D} channels of a head, got {r}")
    if num_kv_heads is not None:
        stats = group_statistics(stats, num_kv_heads)
    order = xp.argsort(-stats, axis=-1, stable=True)  # stable: equal statistics keep index order
    return xp.sort(order[:, :r], axis=-1)


def permute_channels(channels, D: int, *, to: str = "interleaved"):
    r"""Move heavy-channel indices between RoPE layouts (``reference.rope.layout_permutation``).

    Channel ``c`` of the rotate-half layout (pairs ``(i, i + D/2)``) is channel
    ``(2c mod D) + ⌊2c/D⌋`` of the interleaved layout (pairs ``(2i, 2i + 1)``); ``to="half"``
    applies the inverse. Element by element: the result has the shape and order of ``channels``.
    """
    from reference.rope import LAYOUTS, layout_permutation

    if to not in LAYOUTS:
        raise ValueError(f"to must be one of {LAYOUTS}, got {to!r}")
    perm = layout_permutation(D)
    table = perm if to == "interleaved" else np.argsort(perm)
    xp = namespace(channels)
    if not xp.isdtype(channels.dtype, "integral"):
        raise TypeError(f"channels must hold integer channel indices, got dtype {channels.dtype}")
    host = np.asarray(channels.detach().cpu().numpy() if is_torch(channels) else channels)
    if host.size and (host.min() < 0 or host.max() >= D):
        raise ValueError(f"channels must lie in [0, {D}), got values from {host.min()} to {host.max()}")
    return xp.asarray(table[host], device=device_of(channels))


def calibrate(captures, *, kind: str = "qk", r: int):
    r"""Heavy channels ``[Hkv, r]`` for every layer, from one forward pass's captured queries and keys.

    Args:
        captures: one dict per layer with ``q_pre``, ``k_pre`` (before RoPE) and ``q``, ``k`` (after),
            ``[B, H, T, D]`` and ``[B, Hkv, T, D]`` — what ``reference.model``'s ``capture`` list holds.
        kind: the statistic (``channel_outliers``); ``"q"`` and ``"k"`` read the pre-RoPE tensors,
            ``"qk"`` the post-RoPE ones (``ROPE_SIDE``).
        r: heavy channels per kv head.

    Returns:
        A list of ``[Hkv, r]`` int64 channel sets, one per layer.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    suffix = "_pre" if ROPE_SIDE[kind] == "pre" else ""
    out = []
    for layer, cap in enumerate(captures):
        missing = {"q" + suffix, "k" + suffix} - set(cap)
        if missing:
            raise ValueError(f"captures[{layer}] must hold {sorted(missing)}, got keys {sorted(cap)}")
        q, k = cap["q" + suffix], cap["k" + suffix]
        stats = channel_outliers(q, k, kind=kind)
        out.append(heavy_channels(stats, r, num_kv_heads=k.shape[1]))
    return out


# --------------------------------------------------------------------------------------------
# Labels, label scores, top-k
# --------------------------------------------------------------------------------------------


def gather_labels(k, channels):
    r"""The labels of keys ``k: [B, Hkv, S, D]``: their heavy channels ``[B, Hkv, S, r]`` (pass post-RoPE keys)."""
    xp = namespace(k)
    check_rank("k", k, 4, "[B, Hkv, S, D]")
    channels = _check_channels(channels, k.shape[1], k.shape[3], k)
    return _take_channels(xp, k, channels)


def label_scores(q, labels, channels):
    r"""``ŝ[b, h, j] = Σ_{i<r} q[b, h, C_i] · labels[b, h//g, j, i]`` with ``C = channels[h // g]``.

    Args:
        q: ``[B, H, D]`` one step's queries (post-RoPE).
        labels: ``[B, Hkv, S, r]`` the label cache (exact or dequantised).
        channels: ``[Hkv, r]`` the heavy channels the labels were gathered with, in the same order.

    Returns:
        ``[B, H, S]`` label scores, unscaled (a positive scale does not change the top-k).
    """
    xp = namespace(q, labels)
    check_rank("q", q, 3, "[B, H, D] (one decoding step)")
    check_rank("labels", labels, 4, "[B, Hkv, S, r]")
    B, H, D = q.shape
    Hkv, r = labels.shape[1], labels.shape[3]
    if labels.shape[0] != B:
        raise ValueError(f"labels must have the batch size of q ({B}), got {labels.shape[0]}")
    g = _check_heads(H, Hkv, "labels")
    channels = _check_channels(channels, Hkv, D, q)
    if channels.shape[1] != r:
        raise ValueError(f"labels must have one column per heavy channel (r = {channels.shape[1]}), got {r}")
    q_heavy = _take_channels(xp, xp.reshape(q, (B, Hkv, g, D)), channels)  # [B, Hkv, g, r]
    scores = q_heavy @ transpose(xp, labels)  # [B, Hkv, g, S]
    return xp.reshape(scores, (B, H, labels.shape[2]))


def top_k_indices(scores, top_k: int):
    r"""The ``min(top_k, S)`` highest-scoring positions of ``scores: [..., S]``, highest first.

    Equal scores go to the **lower** index first (a stable sort of ``-scores``), so the choice is
    deterministic; with ``S ≤ top_k`` every position is returned.
    """
    xp = namespace(scores)
    top_k = check_positive_int("top_k", top_k)
    order = xp.argsort(-scores, axis=-1, stable=True)
    return order[..., :top_k]


def select(scores, top_k: int):
    r"""Boolean ``[..., S]``: which positions ``top_k_indices`` keeps (all of them when ``S ≤ top_k``)."""
    xp = namespace(scores)
    top_k = check_positive_int("top_k", top_k)
    order = xp.argsort(-scores, axis=-1, stable=True)
    rank = xp.argsort(order, axis=-1)  # the inverse permutation: each position's place in the order
    return rank < top_k


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _attend_selected(xp, q, k_cache, v_cache, scores, top_k, scale, block):
    """Exact softmax attention of ``q`` over the ``top_k`` tokens of each head by ``scores: [B, H, S]``."""
    B, H, D = q.shape
    Hkv, Dv = k_cache.shape[1], v_cache.shape[3]
    g = H // Hkv
    scale = default_scale(D) if scale is None else check_scale("scale", scale)
    top_k = check_positive_int("top_k", top_k)
    block = None if block is None else check_positive_int("block", block)
    idx = top_k_indices(scores, top_k)  # [B, H, k'], k' = min(top_k, S)
    kept = idx.shape[-1]
    idx = xp.reshape(idx, (B, Hkv, g, kept, 1))
    # Fetch the kept rows of the kv head each query head reads: [B, Hkv, g, k', D].
    k_sel = xp.take_along_axis(k_cache[:, :, None, :, :], idx, axis=-2)
    v_sel = xp.take_along_axis(v_cache[:, :, None, :, :], idx, axis=-2)
    qg = xp.reshape(q * scale, (B, Hkv, g, 1, D))
    dev = device_of(q)
    m = xp.full((B, Hkv, g, 1, 1), -xp.inf, dtype=q.dtype, device=dev)
    l = xp.zeros((B, Hkv, g, 1, 1), dtype=q.dtype, device=dev)
    acc = xp.zeros((B, Hkv, g, 1, Dv), dtype=q.dtype, device=dev)
    # The online softmax of the tiled forward, over blocks of the kept rows: a kernel that splits the
    # kept tokens across programs merges its partial (m, l, acc) by the same rule.
    for s0, s1 in chunk_bounds(kept, block or kept):
        s = qg @ transpose(xp, k_sel[..., s0:s1, :])
        m, l, acc = online_softmax_update(xp, m, l, acc, s, v_sel[..., s0:s1, :])
    return xp.reshape(acc / l, (B, H, Dv))


def decode(q, k_cache, v_cache, channels, *, top_k: int, scale: float | None = None, block: int | None = None):
    r"""One Double Sparsity decoding step (arXiv 2408.07092, Algorithm 1): label scores, top-k, exact softmax.

    ``ŝ = q[C] · K[:, C]ᵀ``, ``i = topk(ŝ, top_k)`` (every token when ``S ≤ top_k``; ties to the lower
    index), ``o = softmax(scale · q K[i]ᵀ) V[i]``. The labels are gathered from ``k_cache`` here;
    ``decode_with_labels`` takes a label cache (possibly quantised) instead.

    Args:
        q: ``[B, H, D]`` this step's queries (post-RoPE).
        k_cache: ``[B, Hkv, S, D]`` cached keys (post-RoPE), ``Hkv`` dividing ``H``.
        v_cache: ``[B, Hkv, S, Dv]`` cached values.
        channels: ``[Hkv, r]`` heavy channels per kv head (``heavy_channels``).
        top_k: token budget ``k ≥ 1``.
        scale: score temperature; ``None`` means ``D ** -0.5``.
        block: kept tokens per online-softmax step (``None``: all at once); the result is the same.

    Returns:
        ``o: [B, H, Dv]``.
    """
    xp, *_ = _check_step(q, k_cache, v_cache)
    labels = gather_labels(k_cache, channels)
    scores = label_scores(q, labels, channels)
    return _attend_selected(xp, q, k_cache, v_cache, scores, top_k, scale, block)


def decode_with_labels(
    q, k_cache, v_cache, labels, channels, *, top_k: int, scale: float | None = None, block: int | None = None
):
    r"""``decode`` with the label scores read from a label cache ``labels: [B, Hkv, S, r]``.

    With ``labels = gather_labels(k_cache, channels)`` this is ``decode``; with a quantised cache
    (``LabelCache(..., bits=8 or 4).labels()``) the selection may differ, but only among tokens
    whose exact label scores lie within ``label_error_bound`` of each other.
    """
    xp, B, H, Hkv, S, D, Dv = _check_step(q, k_cache, v_cache)
    if not same_library(labels, q):
        raise TypeError(f"labels must come from the library of q, got {type(labels).__name__}")
    check_rank("labels", labels, 4, "[B, Hkv, S, r]")
    if tuple(labels.shape[:3]) != (B, Hkv, S):
        raise ValueError(f"labels must have [B, Hkv, S] = {(B, Hkv, S)} like k_cache, got {tuple(labels.shape[:3])}")
    scores = label_scores(q, xp.astype(labels, q.dtype), channels)
    return _attend_selected(xp, q, k_cache, v_cache, scores, top_k, scale, block)


def _row_budgets(top_k, T: int, like):
    """``top_k`` as an int, or a ``[T, 1]`` integer array of per-row budgets."""
    if isinstance(top_k, numbers.Integral) and not isinstance(top_k, bool):
        return check_positive_int("top_k", top_k)
    host = np.asarray(top_k.detach().cpu().numpy() if is_torch(top_k) else top_k)
    if host.dtype == bool or not np.issubdtype(host.dtype, np.integer) or host.shape != (T,) or host.min() < 1:
        raise ValueError(f"top_k must be a positive integer or T = {T} positive integers (one per row), got {top_k!r}")
    xp = namespace(like)
    return xp.asarray(host.astype(np.int64)[:, None], device=device_of(like))


def causal_decode(q, k, v, channels, *, top_k, scale: float | None = None, bits: int | None = None):
    r"""Every row of a sequence decoded over its own prefix: row ``t`` is ``decode(q_t, k[:t+1], v[:t+1])``.

    The same function as ``T`` successive decoding steps (each step's cache holds the keys up to and
    including its own token), computed at once with a ``T × T`` masked score matrix: how the
    held-out loss of a model decoding with Double Sparsity is measured without a Python loop over
    positions. Rows that see no more than ``top_k`` tokens are dense.

    Args:
        q: ``[B, H, T, D]`` queries (post-RoPE).
        k: ``[B, Hkv, T, D]`` keys (post-RoPE), ``Hkv`` dividing ``H``.
        v: ``[B, Hkv, T, Dv]`` values.
        channels, scale: as in ``decode``.
        top_k: the token budget: one integer for every row, or ``T`` integers (row ``t``'s budget,
            e.g. ``token_budget(t + 1, sparsity)`` for a budget proportional to the context).
        bits: ``None`` for exact labels; 8 or 4 to rank by the labels a quantised ``LabelCache``
            would hold (per-token scales: the same whether appended at once or step by step).

    Returns:
        ``o: [B, H, T, Dv]``.
    """
    xp = namespace(q, k, v)
    check_rank("q", q, 4, "[B, H, T, D]")
    check_rank("k", k, 4, "[B, Hkv, T, D]")
    check_rank("v", v, 4, "[B, Hkv, T, Dv]")
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_floating(xp, name, x)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    B, H, T, D = q.shape
    if k.shape[0] != B or k.shape[2] != T or k.shape[3] != D:
        raise ValueError(f"k must have [B, Hkv, T, D] with B, T, D = {(B, T, D)} like q, got {tuple(k.shape)}")
    Hkv = k.shape[1]
    g = _check_heads(H, Hkv, "k")
    if tuple(v.shape[:3]) != (B, Hkv, T):
        raise ValueError(f"v must have [B, Hkv, T] = {(B, Hkv, T)} like k, got {tuple(v.shape[:3])}")
    if T < 1:
        raise ValueError(f"q must hold at least one token, got T = {T}")
    channels = _check_channels(channels, Hkv, D, q)
    budget = _row_budgets(top_k, T, q)
    scale = default_scale(D) if scale is None else check_scale("scale", scale)
    bits = _check_bits(bits)
    dev = device_of(q)
    qg = xp.reshape(q, (B, Hkv, g, T, D))
    kg, vg = k[:, :, None, :, :], v[:, :, None, :, :]
    visible = causal_mask(xp, T, T, dev)
    labels = _take_channels(xp, kg, channels)  # [B, Hkv, 1, T, r]
    if bits is not None:
        labels = dequantise(*quantise(labels, bits=bits))
    approx = _take_channels(xp, qg, channels) @ transpose(xp, labels)  # [B, Hkv, g, T, T]
    approx = xp.where(visible, approx, -xp.inf)  # future tokens sort last and are never kept
    order = xp.argsort(-approx, axis=-1, stable=True)
    keep = (xp.argsort(order, axis=-1) < budget) & visible  # rank < row budget: select(), row by row
    exact = xp.where(keep, (qg * scale) @ transpose(xp, kg), -xp.inf)
    exact = exact - xp.max(exact, axis=-1, keepdims=True)  # the top label score is always kept: finite max
    weights = xp.exp(exact)
    o = (weights / xp.sum(weights, axis=-1, keepdims=True)) @ vg
    return xp.reshape(o, (B, H, T, v.shape[3]))


# --------------------------------------------------------------------------------------------
# The label cache: contiguous, appended every step, optionally quantised
# --------------------------------------------------------------------------------------------


def _check_bits(bits):
    if bits not in LABEL_BITS or isinstance(bits, bool):
        raise ValueError(f"bits must be one of {LABEL_BITS} (None keeps the keys' dtype), got {bits!r}")
    return bits


def quantise(labels, *, bits: int):
    r"""Per-token absmax symmetric quantisation of labels ``[..., r]`` to ``bits`` ∈ {8, 4}.

    Each token's ``r`` labels share one scale ``s = max_i |x_i| / (2^(bits-1) - 1)`` (127 or 7
    levels each side of 0); codes are ``round(x / s)``, so ``|x_i - code_i · s| ≤ s / 2``. A token
    whose labels are all 0 gets ``s = 0`` and codes 0 (exact). Per-token scales are fixed when the
    token is appended and never revisited: quantising a cache in any number of appends gives the
    same codes as quantising it at once.

    Returns:
        ``(codes, scales)``: ``codes`` int8 ``[..., r]`` (4-bit codes in ``[-7, 7]`` are held in
        int8 here; packing two per byte is a storage detail), ``scales`` ``[..., 1]`` in the
        labels' dtype.
    """
    xp = namespace(labels)
    check_floating(xp, "labels", labels)
    bits = _check_bits(bits)
    if bits is None:
        raise ValueError("bits must be 8 or 4 to quantise, got None")
    levels = 2 ** (bits - 1) - 1
    absmax = xp.max(xp.abs(labels), axis=-1, keepdims=True)
    scales = absmax / levels
    safe = xp.where(scales > 0, scales, xp.ones_like(scales))
    codes = xp.clip(xp.round(labels / safe), -levels, levels)
    return xp.astype(codes, xp.int8), scales


def dequantise(codes, scales):
    """``codes · scales``: labels back in the scales' dtype."""
    xp = namespace(codes, scales)
    return xp.astype(codes, scales.dtype) * scales


def label_error_bound(q, scales, channels):
    r"""``ε[b, h, j] = ‖q[b, h, C]‖₁ · scales[b, h//g, j] / 2``: the most a quantised label score can err.

    Each dequantised label is within ``s_j / 2`` of the exact one, so
    ``|ŝ_quantised − ŝ_exact| ≤ Σ_i |q_{C_i}| · s_j / 2``. Consequently a token ``i`` selected with
    quantised labels in place of a token ``j`` of the exact top-k has ``ŝ_j − ŝ_i ≤ ε_i + ε_j``:
    the selection changes only among tokens whose exact label scores are that close.

    Args:
        q: ``[B, H, D]``; ``scales: [B, Hkv, S, 1]`` from ``quantise``; ``channels: [Hkv, r]``.

    Returns:
        ``[B, H, S]``.
    """
    xp = namespace(q, scales)
    B, H, D = q.shape
    Hkv, S = scales.shape[1], scales.shape[2]
    g = _check_heads(H, Hkv, "scales")
    channels = _check_channels(channels, Hkv, D, q)
    q_l1 = xp.sum(xp.abs(_take_channels(xp, xp.reshape(q, (B, Hkv, g, D)), channels)), axis=-1)  # [B, Hkv, g]
    bound = q_l1[..., None] * xp.reshape(scales, (B, Hkv, 1, S)) / 2
    return xp.reshape(bound, (B, H, S))


class LabelCache:
    r"""The label cache: heavy channels of post-RoPE keys, ``[B, Hkv, S, r]``, grown by ``append``.

    Layout ``[B, Hkv, S, r]`` (head-first, like the KV cache): a decoding step computes each kv
    head's label scores over all ``S`` tokens, so each head's labels are one contiguous ``S × r``
    block that the label GEMV streams in order. Appending writes ``Hkv`` short rows of ``r`` per
    token, a small strided write against a large contiguous read every step. (The paper's
    token-major ``[B, S, H, r]`` makes the append contiguous and the read strided.)

    With ``bits`` 8 or 4 the cache holds int8 codes and one scale per token (``quantise``);
    ``labels()`` returns them dequantised. ``bits=None`` keeps the keys' dtype.
    """

    def __init__(self, channels, *, bits: int | None = None):
        self.bits = _check_bits(bits)
        host = channels.detach().cpu().numpy() if is_torch(channels) else np.asarray(channels)
        if host.ndim != 2:
            raise ValueError(f"channels must have shape [Hkv, r], got {host.shape}")
        self.channels = channels
        self._values = None  # [B, Hkv, S, r] labels (bits=None) or int8 codes
        self._scales = None  # [B, Hkv, S, 1] per-token scales (quantised caches only)

    @property
    def length(self) -> int:
        """Tokens held, ``S``."""
        return 0 if self._values is None else self._values.shape[2]

    def append(self, k):
        r"""Append the labels of new keys ``k: [B, Hkv, T, D]`` (**post-RoPE**: the keys attention uses)."""
        labels = gather_labels(k, self.channels)
        xp = namespace(labels)
        if self.bits is None:
            values, scales = labels, None
        else:
            values, scales = quantise(labels, bits=self.bits)
        if self._values is None:
            self._values, self._scales = values, scales
            return self
        if tuple(values.shape[:2]) != tuple(self._values.shape[:2]) or not same_library(values, self._values):
            raise ValueError(
                f"k must continue the cache's [B, Hkv] = {tuple(self._values.shape[:2])}, got {tuple(k.shape[:2])}"
            )
        self._values = xp.concat([self._values, values], axis=2)
        if scales is not None:
            self._scales = xp.concat([self._scales, scales], axis=2)
        return self

    @property
    def codes(self):
        """The stored int8 codes ``[B, Hkv, S, r]`` (quantised caches only)."""
        if self.bits is None:
            raise ValueError("codes exist only for a quantised cache (bits 8 or 4), this one has bits=None")
        return self._values

    @property
    def scales(self):
        """Per-token scales ``[B, Hkv, S, 1]`` (quantised caches only)."""
        if self.bits is None:
            raise ValueError("scales exist only for a quantised cache (bits 8 or 4), this one has bits=None")
        return self._scales

    def labels(self):
        """The labels ``[B, Hkv, S, r]``, dequantised if the cache is quantised."""
        if self._values is None:
            raise ValueError("the label cache is empty: append keys first")
        return self._values if self.bits is None else dequantise(self._values, self._scales)


# --------------------------------------------------------------------------------------------
# Sparsity as the paper counts it (erratum 9)
# --------------------------------------------------------------------------------------------


def _check_label_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer from 1 to 16 (16: fp16 labels), got {bits!r}")
    return int(bits)


def label_sparsity(r: int, head_dim: int, *, bits: int = 16) -> Fraction:
    r"""The fraction of the key bytes a step reads for its labels: ``r · bits / (16 · D)``.

    Dense keys are ``D`` channels of 16 bits; the labels are ``r`` channels of ``bits``. This is the
    "sparsity" of the paper's "1/16": label **bits**, not channels (erratum 9). The token budget
    goes with it: ``token_budget(S, sparsity)``.
    """
    r = check_positive_int("r", r)
    head_dim = check_positive_int("head_dim", head_dim)
    if r > head_dim:
        raise ValueError(f"r must be at most head_dim = {head_dim}, got {r}")
    return Fraction(r * _check_label_bits(bits), 16 * head_dim)


def channels_for(sparsity, head_dim: int, *, bits: int = 16) -> int:
    r"""The ``r`` with ``label_sparsity(r, head_dim, bits=bits) == sparsity``: ``r = 16 · D · sparsity / bits``.

    For ``D = 32`` at 1/16: ``r = 2`` with 16-bit labels, 4 with 8-bit, 8 with 4-bit. Raises
    ``ValueError`` when that is not a whole number of channels between 1 and ``D``.
    """
    head_dim = check_positive_int("head_dim", head_dim)
    bits = _check_label_bits(bits)
    sparsity = Fraction(sparsity).limit_denominator(1 << 20)
    if not 0 < sparsity <= 1:
        raise ValueError(f"sparsity must lie in (0, 1], got {sparsity}")
    r = sparsity * 16 * head_dim / bits
    if r.denominator != 1 or not 1 <= r <= head_dim:
        raise ValueError(
            f"sparsity {sparsity} with {bits}-bit labels and head_dim {head_dim} needs r = {r} channels: "
            f"not a whole number between 1 and {head_dim}"
        )
    return int(r)


def token_budget(S: int, sparsity) -> int:
    r"""The paper's token budget ``k = S · sparsity`` (``S / 16`` at 1/16), rounded up, at least 1."""
    S = check_positive_int("S", S)
    sparsity = Fraction(sparsity).limit_denominator(1 << 20)
    if not 0 < sparsity <= 1:
        raise ValueError(f"sparsity must lie in (0, 1], got {sparsity}")
    return max(1, math.ceil(S * sparsity))


# --------------------------------------------------------------------------------------------
# Plugging into reference.model (attention_override / decode_override)
# --------------------------------------------------------------------------------------------


def attention_overrides(channels, *, top_k: int, scale: float | None = None):
    r"""``{layer: fn}`` for ``model.forward(..., attention_override=...)``: ``causal_decode`` in every layer.

    ``channels`` is one ``[Hkv, r]`` set per layer (``calibrate``). Each ``fn(q, k, v, *, q_pre,
    k_pre, layer)`` uses the post-RoPE ``q, k`` for the labels as for the scores; ``q_pre, k_pre``
    are ignored (labels of pre-RoPE keys are erratum 9's mistake).
    """
    top_k = check_positive_int("top_k", top_k)

    def make(layer_channels):
        def fn(q, k, v, *, q_pre=None, k_pre=None, layer=None):
            return causal_decode(q, k, v, layer_channels, top_k=top_k, scale=scale)

        return fn

    return {layer: make(c) for layer, c in enumerate(channels)}


def decode_overrides(channels, *, top_k: int, scale: float | None = None):
    r"""``{layer: fn}`` for ``model.decode_step(..., decode_override=...)``: ``decode`` in every layer."""
    top_k = check_positive_int("top_k", top_k)

    def make(layer_channels):
        def fn(q, k_cache, v_cache, *, layer=None):
            return decode(q, k_cache, v_cache, layer_channels, top_k=top_k, scale=scale)

        return fn

    return {layer: make(c) for layer, c in enumerate(channels)}


# --------------------------------------------------------------------------------------------
# Measuring a model: recall, channel concentration, held-out loss (python -m reference.double_sparsity)
# --------------------------------------------------------------------------------------------


def topk_recall(q, k, channels, top_k: int, *, bits: int | None = None, scale: float | None = None) -> dict:
    r"""How well the label top-k stands in for the exact top-k, over the rows of a causal sequence.

    ``q: [B, H, T, D]``, ``k: [B, Hkv, T, D]`` (post-RoPE). Row ``t`` ranks keys ``0..t`` by the real
    logits ``q_t · k_j`` (the exact top-k) and by ``q_t[C] · k_j[C]`` (the label top-k; labels
    quantised with ``bits``). Only rows that see more than ``top_k`` keys count (the others keep
    everything either way). Returns the means over those rows of

    * ``recall``: ``|label top-k ∩ exact top-k| / top_k``;
    * ``mass``: the softmax weight (``scale``, default ``D^-1/2``) of the dense row on the label top-k;
    * ``exact_mass``: the same on the exact top-k, the most any ``top_k`` tokens can hold.
    """
    xp = namespace(q, k)
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    g = _check_heads(H, Hkv, "k")
    top_k = check_positive_int("top_k", top_k)
    if T <= top_k:
        raise ValueError(f"top_k must be below the sequence length T = {T} for any row to be sparse, got {top_k}")
    channels = _check_channels(channels, Hkv, D, q)
    scale = default_scale(D) if scale is None else check_scale("scale", scale)
    qg, kg = xp.reshape(q, (B, Hkv, g, T, D)), k[:, :, None, :, :]
    visible = causal_mask(xp, T, T, device_of(q))
    labels = _take_channels(xp, kg, channels)
    if bits is not None:
        labels = dequantise(*quantise(labels, bits=bits))
    exact = xp.where(visible, qg @ transpose(xp, kg), -xp.inf)
    approx = xp.where(visible, _take_channels(xp, qg, channels) @ transpose(xp, labels), -xp.inf)
    in_exact, in_label = select(exact, top_k) & visible, select(approx, top_k) & visible
    weights = xp.exp(scale * (exact - xp.max(exact, axis=-1, keepdims=True)))
    weights = weights / xp.sum(weights, axis=-1, keepdims=True)
    zero = xp.zeros_like(weights)

    def rows_mean(x):
        return float(xp.mean(x[..., top_k:]))

    return {
        "recall": rows_mean(xp.sum(xp.astype(in_exact & in_label, weights.dtype), axis=-1) / top_k),
        "mass": rows_mean(xp.sum(xp.where(in_label, weights, zero), axis=-1)),
        "exact_mass": rows_mean(xp.sum(xp.where(in_exact, weights, zero), axis=-1)),
    }


def channel_concentration(stats, r: int):
    r"""The share of each row's statistic mass carried by its ``r`` heaviest channels: ``[rows]`` in ``(0, 1]``.

    Uniform channels give ``r / D``; a head with strong outlier channels gives much more.
    """
    xp = namespace(stats)
    r = check_positive_int("r", r)
    ordered = xp.sort(stats, axis=-1, descending=True)
    return xp.sum(ordered[:, :r], axis=-1) / xp.sum(stats, axis=-1)


def _windows(data, n: int, seq_len: int) -> np.ndarray:
    """``n`` windows of ``seq_len + 1`` bytes at evenly spread, non-overlapping offsets of ``data``."""
    starts = np.linspace(0, len(data) - seq_len - 1, n).round().astype(np.int64)
    return np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int64)


def _bits_per_byte(model, windows: np.ndarray, override=None, batch_size: int = 4) -> float:
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(windows), batch_size):
            w = torch.from_numpy(windows[s : s + batch_size])
            logits = model(w[:, :-1], attention_override=override)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), w[:, 1:].reshape(-1), reduction="sum"))
            count += w[:, 1:].numel()
    return total / count / math.log(2)


def _proportional(channels, sparsity, seq_len: int):
    """Overrides with row ``t``'s budget ``token_budget(t + 1, sparsity)``."""
    budgets = np.array([token_budget(t + 1, sparsity) for t in range(seq_len)])

    def make(layer_channels):
        def fn(q, k, v, *, q_pre=None, k_pre=None, layer=None):
            return causal_decode(q, k, v, layer_channels, top_k=budgets[: q.shape[2]])

        return fn

    return {layer: make(c) for layer, c in enumerate(channels)}


def tiny_lm_study(model=None, *, calibration_windows: int = 8, eval_windows: int = 16, seq_len: int = 512,
                  seed: int = 0, progress=None) -> dict:  # fmt: skip
    r"""Calibrate the tiny model's heads, then measure recall and held-out loss at 1/4, 1/8 and 1/16.

    Calibration: ``calibration_windows`` windows of ``seq_len`` training bytes (``reference.data``,
    seeded), one forward pass, ``calibrate`` with each statistic. Held-out: ``eval_windows`` evenly
    spread windows of the held-out split, every position predicted with its window as context.
    Each sparsity ``s`` uses 16-bit labels, ``r = channels_for(s, D)`` and either a fixed budget
    ``k = token_budget(seq_len, s)`` (rows with fewer tokens dense) or a proportional one (row
    ``t`` keeps ``token_budget(t + 1, s)``). Returns a JSON-ready dict.
    """
    import time

    import torch

    from reference import data as corpus_data
    from reference import model as tiny

    say = progress or (lambda msg: None)
    model = tiny.pretrained("softmax") if model is None else model
    cfg = model.config
    D, Hkv, layers = cfg.head_dim, cfg.n_kv_heads, [l for l, a in enumerate(cfg.attention) if a == "softmax"]
    if layers != list(range(cfg.n_layers)):
        raise ValueError(f"model must have softmax attention in every layer, got {cfg.attention}")
    started = time.time()
    calib = corpus_data.sample_batch(corpus_data.corpus("train"), batch_size=calibration_windows, seq_len=seq_len, rng=seed)
    captures: list = []
    with torch.no_grad():
        model(torch.from_numpy(calib[:, :-1]), capture=captures)
    caps = [{name: t.double() for name, t in c.items()} for c in captures]
    result: dict = {"model": {"config": cfg.to_dict(), "meta": getattr(model, "meta", {})}}

    # How concentrated are the channels? (A 7B model's qk-outlier channels carry most of q·k.)
    conc = {}
    for kind in KINDS:
        side = "_pre" if ROPE_SIDE[kind] == "pre" else ""
        per_layer = []
        for c in caps:
            stats = group_statistics(channel_outliers(c["q" + side], c["k" + side], kind=kind), Hkv)
            per_layer.append({f"top{r}_share": [round(float(x), 4) for x in channel_concentration(stats, r)]
                              for r in (2, 4, 8)})  # fmt: skip
            per_layer[-1]["max_over_mean"] = [round(float(x), 3) for x in (stats.max(dim=-1).values / stats.mean(dim=-1))]
        conc[kind] = per_layer
    result["channel_concentration"] = {"uniform_share": {f"top{r}": r / D for r in (2, 4, 8)}, "per_layer_kv_head": conc}
    say("channel statistics done")

    # Label top-k recall against the exact top-k, on the calibration text's own q, k (post-RoPE).
    held = corpus_data.corpus("held_out")
    windows = _windows(held, eval_windows, seq_len)
    eval_caps: list = []
    with torch.no_grad():
        model(torch.from_numpy(windows[:4, :-1]), capture=eval_caps)
    eval_caps = [{n: t.double() for n, t in c.items()} for c in eval_caps]
    chosen = {kind: {r: calibrate(caps, kind=kind, r=r) for r in (2, 4, 8, 16)} for kind in KINDS}
    recall = []
    for r in (2, 4, 8, 16):
        for kk in (16, 32, 64, 128):
            per_layer = [topk_recall(c["q"], c["k"], chosen["qk"][r][l], kk) for l, c in enumerate(eval_caps)]
            recall.append({"r": r, "top_k": kk,
                           **{f"{key}_per_layer": [round(x[key], 4) for x in per_layer] for key in ("recall", "mass", "exact_mass")},
                           **{f"{key}_mean": round(float(np.mean([x[key] for x in per_layer])), 4)
                              for key in ("recall", "mass", "exact_mass")}})  # fmt: skip
    result["recall"] = {"text": "4 held-out windows", "seq_len": seq_len, "statistic": "qk", "label_bits": 16,
                        "rows_counted": "rows that see more than top_k keys", "rows": recall}  # fmt: skip
    say("recall done")

    # Held-out loss: dense, and Double Sparsity at 1/4, 1/8, 1/16 (16-bit labels).
    dense = _bits_per_byte(model, windows)
    rows = []
    for s in (Fraction(1, 4), Fraction(1, 8), Fraction(1, 16)):
        r, kk = channels_for(s, D), token_budget(seq_len, s)
        entry = {"sparsity": str(s), "label_bits": 16, "r": r, "top_k_fixed": kk}
        entry["bpb_fixed"] = _bits_per_byte(model, windows, attention_overrides(chosen["qk"][r], top_k=kk))
        entry["bpb_proportional"] = _bits_per_byte(model, windows, _proportional(chosen["qk"][r], s, seq_len))
        every = [np.tile(np.arange(D), (Hkv, 1))] * cfg.n_layers
        entry["bpb_exact_topk_fixed"] = _bits_per_byte(model, windows, attention_overrides(every, top_k=kk))
        # mean fraction of its context a row attends to with the fixed budget (dense rows count fully)
        entry["fixed_mean_context_fraction"] = round(float(np.mean([min(kk, t + 1) / (t + 1) for t in range(seq_len)])), 4)
        rows.append(entry)
        say(f"loss at {s} done")
    s = Fraction(1, 16)
    extras = []
    for kind in ("q", "k"):
        r = channels_for(s, D)
        extras.append({"what": f"{kind}-outlier channels, 1/16", "r": r, "top_k_fixed": token_budget(seq_len, s),
                       "bpb_fixed": _bits_per_byte(model, windows, attention_overrides(chosen[kind][r], top_k=token_budget(seq_len, s)))})  # fmt: skip
    rng = np.random.default_rng(seed)
    random_sets = [np.sort(np.stack([rng.permutation(D)[:2] for _ in range(Hkv)]), axis=1) for _ in range(cfg.n_layers)]
    extras.append({"what": "random channels, 1/16", "r": 2, "top_k_fixed": token_budget(seq_len, s),
                   "bpb_fixed": _bits_per_byte(model, windows, attention_overrides(random_sets, top_k=token_budget(seq_len, s)))})  # fmt: skip
    fixed = token_budget(seq_len, s)
    for bits in (8, 4):  # the same 1/16 of the key bits buys more channels at fewer bits each
        rb = channels_for(s, D, bits=bits)
        quantised = {l: (lambda c, b: (lambda q, k, v, **_: causal_decode(q, k, v, c, top_k=fixed, bits=b)))(chosen["qk"][rb][l], bits)
                     for l in range(cfg.n_layers)}  # fmt: skip
        extras.append({"what": f"qk-outlier channels, {bits}-bit labels, 1/16", "r": rb, "top_k_fixed": fixed,
                       "bpb_fixed": _bits_per_byte(model, windows, quantised)})  # fmt: skip
    result["held_out"] = {"windows": eval_windows, "seq_len": seq_len, "bytes_predicted": int(eval_windows * seq_len),
                          "dense_bpb": dense, "double_sparsity": rows, "variants": extras}  # fmt: skip
    # One forward pass with the causal override is token-by-token decoding (float64: no near-tie can round two ways).
    import copy

    m64 = copy.deepcopy(model).double()
    ids = torch.from_numpy(windows[:1, :64])
    with torch.no_grad():
        at_once = m64(ids, attention_override=attention_overrides(chosen["qk"][2], top_k=8))
        cache = m64.new_cache(1)
        steps = torch.stack([m64.decode_step(ids[:, t], cache, decode_override=decode_overrides(chosen["qk"][2], top_k=8))
                             for t in range(ids.shape[1])], dim=1)  # fmt: skip
    result["one_pass_vs_decode_step"] = {"tokens": 64, "r": 2, "top_k": 8, "dtype": "float64",
                                         "max_abs_logit_difference": float((at_once - steps).abs().max())}  # fmt: skip
    result["calibration"] = {"windows": calibration_windows, "seq_len": seq_len, "seed": seed, "split": "train",
                             "channels_qk_1_16": [c.tolist() for c in chosen["qk"][2]]}  # fmt: skip
    result["seconds"] = round(time.time() - started, 1)
    return result


def main(argv=None) -> int:
    """``python -m reference.double_sparsity [--out PATH] [--eval-windows N]``: the tiny-model study as JSON."""
    import argparse
    import datetime
    import json
    import platform
    import sys

    import torch

    parser = argparse.ArgumentParser(prog="python -m reference.double_sparsity", description=main.__doc__)
    parser.add_argument("--out", default="docs/benchmarks/double_sparsity_tiny_lm.json")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--calibration-windows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # a command line owns its process
    result = tiny_lm_study(eval_windows=args.eval_windows, calibration_windows=args.calibration_windows,
                           progress=lambda m: print(m, flush=True))  # fmt: skip
    result = {
        "command": " ".join(["python -m reference.double_sparsity", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"CPU ({platform.processor() or platform.machine()}), {args.threads} torch threads",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        **result,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
