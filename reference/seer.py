r"""SeerAttention: a learned gate picks the key blocks each query block attends to (arXiv 2410.13276; ``docs/seer.md``).

Shapes (head-first): ``q: [B, H, T, D]``; ``k, v: [B, Hkv, T, D]`` where ``Hkv`` divides ``H``
(grouped-query attention: query head ``h`` reads kv head ``h // (H // Hkv)``). The sequence is cut
into ``n = ceil(T / block)`` blocks of ``block`` tokens, the last one shorter when ``block`` does
not divide ``T``. Block maps are ``[B, H, n, n]``: row ``i`` is a query block, column ``j`` a key
block, and only ``j ≤ i`` (the block-causal triangle) is ever non-zero or kept.

The pieces, in the order the paper uses them:

* ``pool`` — average, max or min over each block of tokens (kernel = stride = ``block``).
* ``AttnGate`` — the learned gate: ``Q̃ = avgpool(Q)``, ``K̃ = [maxpool(K), minpool(K), avgpool(K)]``
  from the *pre-RoPE* q, k; per-head bias-free projections to the gate width ``d_g``; RoPE of width
  ``d_g`` at each block's first-token position, applied after the projection.
* ``gate_scores`` — ``softmax_j(q̃_i · k̃_j / √d_g)`` over the causal blocks ``j ≤ i``.
* ``ground_truth`` / ``ground_truth_tiled`` — what the gate learns: the model's own causal attention
  probabilities ``P = softmax(q kᵀ · scale)`` (post-RoPE q, k), max-pooled over each block
  (a 2-D max-pool of *probabilities*, not of logits, not an average), each block-row renormalised
  to sum 1. The tiled form never materialises ``P``: per query row it keeps the raw maximum
  score ``r_ij`` of each key block and the final softmax statistics ``m_i, l_i``; then
  ``max_rows exp(r_ij − m_i) / l_i`` is the block's pooled probability.
* ``kl_loss`` — ``KL(ground truth ‖ gate)`` per block-row, averaged over the rows (``"batchmean"``)
  or summed. ``torch.nn.KLDivLoss()`` with its default ``reduction="mean"`` divides by the number
  of *entries*, not of distributions: that is the KL divided by ``n``.
* ``select_topk`` / ``select_threshold`` — a block mask from scores; both always keep the diagonal
  block, so no query row is ever left without a key.
* ``block_sparse_attention`` — causal softmax attention that visits only the kept key blocks of
  each query block, with ``reference.softmax_attention.online_softmax_update`` as its step.
  ``masked_attention`` is the same function computed densely with the mask expanded to tokens
  (a second form, for checking and for fast evaluation of the tiny model).

Every function computes in at least float32 and returns the input dtype (a bf16 softmax would
lose the small probabilities the ground truth is made of).

Training the gate on the tiny model (``train_gates``) and the held-out comparison of selections
(``evaluate``) are at the end; ``python -m reference.seer train-gate`` and
``python -m reference.seer evaluate`` run them from the command line.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import nn

from reference import rope
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
    upcast,
)
from reference.softmax_attention import default_scale, online_softmax_update

__all__ = [
    "POOL_KINDS",
    "num_blocks",
    "blocks_per_row",
    "achieved_density",
    "pool",
    "AttnGate",
    "gate_scores",
    "ground_truth",
    "ground_truth_tiled",
    "kl_loss",
    "select_topk",
    "select_threshold",
    "block_sparse_attention",
    "masked_attention",
    "layer_targets",
    "make_gates",
    "gate_kl",
    "train_gates",
    "save_gates",
    "load_gates",
    "sparse_override",
    "evaluate",
]

POOL_KINDS = ("avg", "max", "min")


# --------------------------------------------------------------------------------------------
# Checks and small helpers
# --------------------------------------------------------------------------------------------


def num_blocks(T: int, block: int) -> int:
    """``ceil(T / block)``: the number of blocks, the last one holding the ``T mod block`` rest."""
    return -(-T // block)


def _check_gqa(name_q: str, q, name_k: str, k):
    """``q: [B, H, T, D]`` and ``k: [B, Hkv, T, D]`` with ``Hkv`` dividing ``H``; returns ``(xp, B, H, Hkv, T, D)``."""
    xp = namespace(q, k)
    for name, x in ((name_q, q), (name_k, k)):
        check_rank(name, x, 4, "[B, heads, T, D]")
        check_floating(xp, name, x)
    if q.dtype != k.dtype:
        raise TypeError(f"{name_q} and {name_k} must share one dtype, got {q.dtype} and {k.dtype}")
    B, H, T, D = q.shape
    if k.shape[0] != B:
        raise ValueError(f"{name_k} must have batch {B} like {name_q}, got {k.shape[0]}")
    Hkv = k.shape[1]
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"{name_k} must have a number of heads dividing {name_q}'s {H}, got {Hkv}")
    if k.shape[2] != T:
        raise ValueError(f"{name_q} and {name_k} must share the sequence length T, got {T} and {k.shape[2]}")
    if k.shape[3] != D:
        raise ValueError(f"{name_q} and {name_k} must share the head width D, got {D} and {k.shape[3]}")
    if T < 1 or D < 1:
        raise ValueError(f"{name_q} must have T >= 1 and D >= 1, got shape {tuple(q.shape)}")
    if is_torch(q) and q.device != k.device:
        raise ValueError(f"{name_q} and {name_k} must be on one device, got {q.device} and {k.device}")
    return xp, B, H, Hkv, T, D


def _check_qkv(q, k, v):
    xp, B, H, Hkv, T, D = _check_gqa("q", q, "k", k)
    check_rank("v", v, 4, "[B, Hkv, T, V]")
    if not same_library(v, q):
        raise TypeError(f"v must come from the same library as q and k, got {type(v).__name__}")
    if v.dtype != q.dtype:
        raise TypeError(f"v must have the dtype of q and k ({q.dtype}), got {v.dtype}")
    if tuple(v.shape[:3]) != (B, Hkv, T):
        raise ValueError(f"v must have shape [B, Hkv, T, V] with (B, Hkv, T) = {(B, Hkv, T)}, got {tuple(v.shape)}")
    if v.shape[3] < 1:
        raise ValueError(f"v must have a value width V >= 1, got {v.shape[3]}")
    if is_torch(q) and v.device != q.device:
        raise ValueError(f"v must be on q's device {q.device}, got {v.device}")
    return xp, B, H, Hkv, T, D


def _repeat_kv(xp, x, H: int):
    """``[B, Hkv, ...]`` → ``[B, H, ...]``: query head ``h`` gets kv head ``h // (H // Hkv)``."""
    Hkv = x.shape[1]
    if Hkv == H:
        return x
    index = np.arange(H) // (H // Hkv)
    return xp.take(x, xp.asarray(index, device=device_of(x)), axis=1)


def _block_causal(xp, n: int, device, *, strict: bool = False):
    """Boolean ``[n, n]``: key block ``j ≤ i`` (``j < i`` with ``strict``)."""
    rows = xp.arange(n, device=device)[:, None]
    cols = xp.arange(n, device=device)[None, :]
    return cols < rows if strict else cols <= rows


def _check_block_map(name: str, x):
    """A square ``[B, H, n, n]`` map of block scores; returns ``(xp, n)``."""
    xp = namespace(x)
    check_rank(name, x, 4, "[B, H, n, n]")
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"{name} must be square in its last two axes [B, H, n, n], got {tuple(x.shape)}")
    if x.shape[2] < 1:
        raise ValueError(f"{name} must have at least one block, got shape {tuple(x.shape)}")
    return xp, x.shape[2]


def _to_host_bool(mask) -> np.ndarray:
    if is_torch(mask):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask, dtype=bool)


# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------


def pool(x, *, block: int = 64, kind: str = "avg"):
    r"""Pool ``x`` along the sequence over blocks of ``block`` tokens (kernel = stride = ``block``).

    Args:
        x: ``[B, H, T, D]``.
        block: tokens per block; the last block holds the ``T mod block`` rest when that is not 0,
            and is pooled over exactly those real tokens (no padding enters a mean, a max or a min).
        kind: ``"avg"``, ``"max"`` or ``"min"``.

    Returns:
        ``[B, H, ceil(T / block), D]``; row ``i`` pools tokens ``i·block … min((i+1)·block, T) − 1``.
    """
    xp = namespace(x)
    check_rank("x", x, 4, "[B, H, T, D]")
    check_floating(xp, "x", x)
    block = check_positive_int("block", block)
    if kind not in POOL_KINDS:
        raise ValueError(f"kind must be one of {POOL_KINDS}, got {kind!r}")
    if x.shape[2] < 1:
        raise ValueError(f"x must have at least one token (T >= 1), got shape {tuple(x.shape)}")
    reduce = {"avg": xp.mean, "max": xp.max, "min": xp.min}[kind]
    (work,) = upcast(xp, x)
    pooled = xp.stack([reduce(work[..., s:e, :], axis=-2) for s, e in chunk_bounds(x.shape[2], block)], axis=-2)
    return xp.astype(pooled, x.dtype)


# --------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------


def gate_scores(q_gate, k_gate, *, scale: float | None = None, log: bool = False):
    r"""Block-causal softmax of the gate's pooled, projected, rotated queries and keys.

    ``G[i, j] = softmax_{j ≤ i}(scale · q̃_i · k̃_j)`` and ``0`` for ``j > i``.

    Args:
        q_gate: ``[B, H, n, d_g]`` one gate query per query block.
        k_gate: ``[B, Hkv, n, d_g]`` one gate key per key block (per kv head under GQA).
        scale: ``None`` means ``d_g ** -0.5``.
        log: return log-probabilities instead (``-inf`` above the diagonal), for ``kl_loss``.

    Returns:
        ``[B, H, n, n]``; each row sums to 1 over ``j ≤ i``.
    """
    xp, B, H, Hkv, n, dg = _check_gqa("q_gate", q_gate, "k_gate", k_gate)
    scale = default_scale(dg) if scale is None else check_scale("scale", scale)
    if not isinstance(log, bool):
        raise TypeError(f"log must be True or False, got {log!r}")
    out_dtype = q_gate.dtype
    q_gate, k_gate = upcast(xp, q_gate, k_gate)
    logits = (q_gate * scale) @ transpose(xp, _repeat_kv(xp, k_gate, H))  # [B, H, n, n]
    logits = xp.where(_block_causal(xp, n, device_of(q_gate)), logits, -xp.inf)
    # the diagonal is always causal, so every row has a finite maximum
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    log_z = xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    return xp.astype(shifted - log_z if log else xp.exp(shifted - log_z), out_dtype)


class AttnGate(nn.Module):
    r"""SeerAttention's AttnGate for one attention layer (arXiv 2410.13276, Sec. 3.1 and Fig. 2).

    ``q̃ = RoPE(avgpool(Q_h) W_q^h)``, ``k̃ = RoPE([maxpool(K_g), minpool(K_g), avgpool(K_g)] W_k^g)``
    with bias-free per-head maps ``W_q^h: D → d_g`` and ``W_k^g: 3D → d_g`` (``g`` a kv head; under
    GQA the key branch is computed once per kv head and shared by its query heads). The pooled
    inputs are the layer's q and k *before* RoPE; RoPE of width ``d_g`` is applied after the
    projection, at each block's first-token position ``i · block``, so the gate sees relative block
    positions the way the model sees token positions.

    Args:
        num_heads: ``H``, query heads of the layer.
        num_kv_heads: ``Hkv``, dividing ``H``.
        head_dim: ``D`` of the layer's q and k.
        gate_dim: ``d_g`` (even; 128 in the paper).
        block: tokens per block.
        rope_base: the gate's RoPE base.
        seed: the initial weights come from ``torch.Generator().manual_seed(seed)`` (never from the
            global generator), drawn as ``nn.Linear`` draws them: ``U(−1/√fan_in, 1/√fan_in)``.
    """

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        gate_dim: int = 128,
        block: int = 64,
        rope_base: float = 10000.0,
        seed: int = 0,
    ):
        super().__init__()
        H = check_positive_int("num_heads", num_heads)
        Hkv = check_positive_int("num_kv_heads", num_kv_heads)
        if H % Hkv:
            raise ValueError(f"num_kv_heads must divide num_heads ({H}), got {Hkv}")
        D = check_positive_int("head_dim", head_dim)
        dg = check_positive_int("gate_dim", gate_dim)
        if dg % 2:
            raise ValueError(f"gate_dim must be even (RoPE rotates channel pairs), got {dg}")
        self.num_heads, self.num_kv_heads, self.head_dim, self.gate_dim = H, Hkv, D, dg
        self.block = check_positive_int("block", block)
        self.rope_base = float(rope_base)
        gen = torch.Generator().manual_seed(int(seed))

        def uniform(*shape, fan_in):
            bound = fan_in ** -0.5
            return nn.Parameter((torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1).float() * bound)

        self.q_proj = uniform(H, D, dg, fan_in=D)  # [H, D, d_g]
        self.k_proj = uniform(Hkv, 3 * D, dg, fan_in=3 * D)  # [Hkv, 3D, d_g]

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"gate_dim={self.gate_dim}, block={self.block}"
        )

    def pooled(self, q_pre, k_pre):
        r"""The gate's inputs: ``avgpool(q_pre)`` and ``[maxpool, minpool, avgpool](k_pre)``.

        Args:
            q_pre: ``[B, H, T, D]`` the layer's queries before RoPE (torch).
            k_pre: ``[B, Hkv, T, D]`` the layer's keys before RoPE.

        Returns:
            ``(q_pool [B, H, n, D], k_pool [B, Hkv, n, 3D])``. They depend only on the frozen model, so
            a training loop may compute them once per window (``train_gates`` does).
        """
        if not (isinstance(q_pre, torch.Tensor) and isinstance(k_pre, torch.Tensor)):
            raise TypeError(
                f"q_pre and k_pre must be torch tensors, got {type(q_pre).__name__} and {type(k_pre).__name__}"
            )
        _, B, H, Hkv, T, D = _check_gqa("q_pre", q_pre, "k_pre", k_pre)
        if (H, Hkv, D) != (self.num_heads, self.num_kv_heads, self.head_dim):
            raise ValueError(
                f"q_pre, k_pre must have (H, Hkv, D) = {(self.num_heads, self.num_kv_heads, self.head_dim)}, "
                f"got {(H, Hkv, D)}"
            )
        q_pool = pool(q_pre, block=self.block, kind="avg")
        k_pool = torch.cat([pool(k_pre, block=self.block, kind=kind) for kind in ("max", "min", "avg")], dim=-1)
        return q_pool, k_pool

    def project(self, q_pool, k_pool):
        r"""Per-head projections to ``d_g``, then RoPE of width ``d_g`` at each block's first position.

        Args:
            q_pool: ``[B, H, n, D]``.
            k_pool: ``[B, Hkv, n, 3D]``.

        Returns:
            ``(q_gate [B, H, n, d_g], k_gate [B, Hkv, n, d_g])``, rotated at positions ``i · block``.
        """
        q_gate = torch.einsum("bhnd,hde->bhne", q_pool, self.q_proj.to(q_pool.dtype))
        k_gate = torch.einsum("bgnd,gde->bgne", k_pool, self.k_proj.to(k_pool.dtype))
        starts = np.arange(q_gate.shape[2]) * self.block  # each block's first-token position
        return rope.apply(q_gate, starts, base=self.rope_base), rope.apply(k_gate, starts, base=self.rope_base)

    def features(self, q_pre, k_pre):
        """``project(*pooled(q_pre, k_pre))``: the gate's rotated queries ``[B, H, n, d_g]`` and keys ``[B, Hkv, n, d_g]``."""
        return self.project(*self.pooled(q_pre, k_pre))

    def forward(self, q_pre, k_pre, *, log: bool = True):
        """Gate log-probabilities ``[B, H, n, n]`` (``-inf`` above the diagonal); probabilities with ``log=False``."""
        return gate_scores(*self.features(q_pre, k_pre), log=log)

    def from_pooled(self, q_pool, k_pool, *, log: bool = True):
        """``forward`` from the outputs of ``pooled``."""
        return gate_scores(*self.project(q_pool, k_pool), log=log)


# --------------------------------------------------------------------------------------------
# The ground truth the gate learns
# --------------------------------------------------------------------------------------------


def _normalise_rows(xp, pooled):
    # every row holds its diagonal block, whose pooled probability is > 0: the sum is never 0
    return pooled / xp.sum(pooled, axis=-1, keepdims=True)


def _stack_block_map(xp, rows):
    """``rows[i][j]: [B, H]`` (``None`` above the diagonal) → ``[B, H, n, n]`` with zeros above it."""
    first = rows[0][0]
    zero = xp.zeros_like(first)
    return xp.stack([xp.stack([zero if c is None else c for c in row], axis=-1) for row in rows], axis=-2)


def ground_truth(q, k, *, block: int = 64, scale: float | None = None):
    r"""The block attention map the gate is trained to predict, from the materialised probabilities.

    ``P = softmax(scale · q kᵀ)`` with the causal mask; ``GT[i, j] = max`` of ``P`` over the rows of
    query block ``i`` and the columns of key block ``j`` (``j ≤ i``), then each row ``i`` divided by
    its sum. Blocks above the diagonal are 0.

    Args:
        q: ``[B, H, T, D]`` the model's queries *after* RoPE (the scores the model really uses).
        k: ``[B, Hkv, T, D]`` its keys after RoPE.
        block: tokens per block (the last block may be shorter).
        scale: ``None`` means ``D ** -0.5``.

    Returns:
        ``[B, H, n, n]``, ``n = ceil(T / block)``; each row sums to 1.
    """
    xp, B, H, Hkv, T, D = _check_gqa("q", q, "k", k)
    block = check_positive_int("block", block)
    scale = default_scale(D) if scale is None else check_scale("scale", scale)
    out_dtype = q.dtype
    q, k = upcast(xp, q, k)
    s = (q * scale) @ transpose(xp, _repeat_kv(xp, k, H))  # [B, H, T, T]
    s = xp.where(causal_mask(xp, T, T, device_of(q)), s, -xp.inf)  # where, not a product: NaN stays out
    p = xp.exp(s - xp.max(s, axis=-1, keepdims=True))
    p = p / xp.sum(p, axis=-1, keepdims=True)  # 0 above the diagonal
    # The 2-D max-pool: pad P with zeros to n·block on both axes (a probability is >= 0, so a zero
    # never wins a max: the short last block is pooled over its real entries), then take the
    # maximum inside every block × block tile.
    n = num_blocks(T, block)
    pad = n * block - T
    if pad:
        p = xp.concat([p, xp.zeros((B, H, T, pad), dtype=p.dtype, device=device_of(p))], axis=-1)
        p = xp.concat([p, xp.zeros((B, H, pad, n * block), dtype=p.dtype, device=device_of(p))], axis=-2)
    pooled = xp.max(xp.reshape(p, (B, H, n, block, n, block)), axis=(3, 5))  # [B, H, n, n]
    return xp.astype(_normalise_rows(xp, pooled), out_dtype)


def ground_truth_tiled(q, k, *, block: int = 64, scale: float | None = None):
    r"""``ground_truth`` without the ``T × T`` probabilities: the form a fused kernel computes.

    For query block ``i`` walk the key blocks ``j ≤ i`` once, keeping for every query row ``t``
    the raw maximum ``r_tj = max_{s ∈ block j} scale · q_t · k_s`` and the online softmax statistics
    ``m_t`` (running maximum) and ``l_t`` (running ``Σ exp(s − m_t)``). After the walk ``m_t, l_t``
    are final, and the largest probability of row ``t`` inside block ``j`` is
    ``exp(r_tj − m_t) / l_t`` (softmax is monotone in the score). The block's pooled value is its
    maximum over the rows ``t`` of block ``i``; rows are renormalised as in ``ground_truth``.

    Same arguments and result as ``ground_truth``.
    """
    xp, B, H, Hkv, T, D = _check_gqa("q", q, "k", k)
    block = check_positive_int("block", block)
    scale = default_scale(D) if scale is None else check_scale("scale", scale)
    out_dtype = q.dtype
    q, k = upcast(xp, q, k)
    q = q * scale
    k = _repeat_kv(xp, k, H)
    dev = device_of(q)
    bounds = chunk_bounds(T, block)
    rows = []
    for i, (q0, q1) in enumerate(bounds):
        q_blk = q[..., q0:q1, :]
        m = xp.full((B, H, q1 - q0, 1), -xp.inf, dtype=q.dtype, device=dev)
        l = xp.zeros((B, H, q1 - q0, 1), dtype=q.dtype, device=dev)
        raw_max = []
        for j in range(i + 1):
            k0, k1 = bounds[j]
            s = q_blk @ transpose(xp, k[..., k0:k1, :])
            if j == i:  # the diagonal block: mask the keys after each query
                s = xp.where(causal_mask(xp, q1 - q0, k1 - k0, dev, offset=q0 - k0), s, -xp.inf)
            r = xp.max(s, axis=-1, keepdims=True)  # finite: every row sees at least one key here
            m_new = xp.maximum(m, r)
            l = l * xp.exp(m - m_new) + xp.sum(xp.exp(s - m_new), axis=-1, keepdims=True)
            m = m_new
            raw_max.append(r)
        row = [xp.max(xp.exp(r - m) / l, axis=(-2, -1)) for r in raw_max]
        rows.append(row + [None] * (len(bounds) - i - 1))
    return xp.astype(_normalise_rows(xp, _stack_block_map(xp, rows)), out_dtype)


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------

KL_REDUCTIONS = ("batchmean", "sum")


def kl_loss(target, log_probs, *, reduction: str = "batchmean"):
    r"""``KL(target ‖ gate) = Σ_j t_j (log t_j − log g_j)`` for every block-row, averaged or summed.

    Args:
        target: ``[B, H, n, n]`` the ground truth (rows sum to 1; ``0 · log 0`` counts as 0).
        log_probs: ``[B, H, n, n]`` the gate's log-probabilities (``-inf`` where the gate gives 0,
            e.g. above the diagonal).
        reduction: ``"batchmean"`` — the mean KL of one block-row (the sum divided by ``B·H·n``,
            the number of distributions), as ``nn.KLDivLoss(reduction="batchmean")`` gives on the
            ``[B·H·n, n]`` view; ``"sum"`` — the total. (``nn.KLDivLoss()``'s default ``"mean"``
            divides by the number of entries ``B·H·n·n``, which is this KL divided by ``n``: not the
            KL, and its gradients shrink as the sequence grows.)

    Returns:
        A scalar (0-d array) in ``log_probs``' library.
    """
    xp = namespace(target, log_probs)
    check_rank("target", target, 4, "[B, H, n, n]")
    if tuple(log_probs.shape) != tuple(target.shape):
        raise ValueError(f"log_probs must have target's shape {tuple(target.shape)}, got {tuple(log_probs.shape)}")
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    present = target > 0
    # where the target is 0 the term is 0 whatever the gate says (and -inf must not meet 0 · -inf)
    safe_t = xp.where(present, target, xp.ones_like(target))
    safe_lp = xp.where(present, log_probs, xp.zeros_like(log_probs))
    terms = xp.where(present, target * (xp.log(safe_t) - safe_lp), xp.zeros_like(target))
    total = xp.sum(terms)
    if reduction == "sum":
        return total
    return total / math.prod(target.shape[:3])


# --------------------------------------------------------------------------------------------
# Block selection
# --------------------------------------------------------------------------------------------


def _check_density(density) -> float:
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise TypeError(f"density must be a real number in (0, 1], got {density!r}")
    if not (0.0 < density <= 1.0):
        raise ValueError(f"density must be in (0, 1], got {density}")
    return float(density)


def blocks_per_row(n: int, density: float) -> list[int]:
    r"""How many key blocks ``select_topk`` keeps in each block-row at ``density`` ρ.

    Row ``i`` has ``i + 1`` causal blocks and keeps ``k_i = min(i + 1, max(1, round(ρ (i + 1))))``
    of them, ``round`` to the nearest integer with ties to even (Python's ``round``: at ρ = 0.5 the
    rows of 3 and 5 blocks keep 2 and 2, so the ties do not all round up and bias the total).
    At least one block is kept (the diagonal), at most all. The achieved density of the causal
    triangle, ``Σ k_i / Σ (i + 1)``, differs from ρ by at most ``Σ_i e_i / Σ (i + 1)`` with
    ``e_i = ½`` where ``ρ(i+1) ≥ ½`` and ``e_i = 1 − ρ(i+1)`` where the diagonal is kept although
    ρ's share is less than half a block; at ``n = 32`` blocks it is within 0.01 of ρ for
    ρ ∈ {0.5, 0.3, 0.1}. ``achieved_density`` measures it.
    """
    n = check_positive_int("n", n)
    density = _check_density(density)
    return [min(i + 1, max(1, round(density * (i + 1)))) for i in range(n)]


def achieved_density(block_mask) -> float:
    """The kept share of the block-causal triangle: ``(# kept j ≤ i) / (B · H · n(n+1)/2)``."""
    mask = _to_host_bool(block_mask)
    n = mask.shape[-1]
    causal = np.tril(np.ones((n, n), dtype=bool))
    return float((mask & causal).sum() / (causal.sum() * math.prod(mask.shape[:-2])))


def select_topk(scores, *, density: float):
    r"""Keep the top-scoring key blocks of every block-row so that the kept share of the causal triangle is ``density``.

    Row ``i`` keeps its diagonal block and the ``k_i − 1`` highest-scoring of its other causal
    blocks ``j < i``, ``k_i = min(i+1, max(1, round(ρ(i+1))))`` as ``blocks_per_row`` states.
    Ties go to the lower block index. ``density=1`` keeps every causal block.

    Args:
        scores: ``[B, H, n, n]`` any real scores (gate probabilities, the ground truth, random
            numbers); entries above the diagonal are ignored. NaN in the causal triangle is an error.
        density: ρ ∈ (0, 1].

    Returns:
        Boolean block mask ``[B, H, n, n]``, block-causal, the diagonal always kept.
    """
    xp, n = _check_block_map("scores", scores)
    check_floating(xp, "scores", scores)
    counts = blocks_per_row(n, density)
    dev = device_of(scores)
    below = _block_causal(xp, n, dev, strict=True)
    if bool(xp.any(xp.isnan(xp.where(_block_causal(xp, n, dev), scores, xp.zeros_like(scores))))):
        raise ValueError("scores must not be NaN in the block-causal triangle")
    candidates = xp.where(below, scores, -xp.inf)
    # rank of every block within its row (0 = best); blocks on or above the diagonal rank last
    order = xp.argsort(candidates, axis=-1, descending=True, stable=True)
    rank = xp.argsort(order, axis=-1, stable=True)
    extra = xp.asarray([c - 1 for c in counts], device=dev)[:, None]  # off-diagonal blocks to keep
    diagonal = xp.eye(n, dtype=xp.bool, device=dev)
    return (below & (rank < extra)) | diagonal


def select_threshold(probs, *, threshold: float):
    r"""Keep every causal block whose score exceeds ``threshold`` (``probs > threshold``), and the diagonal.

    Args:
        probs: ``[B, H, n, n]`` gate probabilities (the paper uses thresholds around ``2e-3``).
        threshold: a finite real number.

    Returns:
        Boolean block mask ``[B, H, n, n]``, block-causal, the diagonal always kept (a row whose
        every score is below the threshold would otherwise have no key, and softmax would be 0/0).
    """
    xp, n = _check_block_map("probs", probs)
    check_floating(xp, "probs", probs)
    threshold = check_scale("threshold", threshold)
    dev = device_of(probs)
    return ((probs > threshold) & _block_causal(xp, n, dev)) | xp.eye(n, dtype=xp.bool, device=dev)


# --------------------------------------------------------------------------------------------
# Block-sparse attention
# --------------------------------------------------------------------------------------------


def _check_block_mask(block_mask, q, B: int, H: int, n: int) -> np.ndarray:
    """A block-causal bool ``[B, H, n, n]`` mask like ``q``, at least one kept block per row; returned on the host."""
    if not same_library(block_mask, q):
        raise TypeError(f"block_mask must come from the same library as q, k and v, got {type(block_mask).__name__}")
    xp = namespace(block_mask)
    if not xp.isdtype(block_mask.dtype, "bool"):
        raise TypeError(f"block_mask must be boolean, got dtype {block_mask.dtype}")
    if tuple(block_mask.shape) != (B, H, n, n):
        raise ValueError(f"block_mask must have shape [B, H, n, n] = {(B, H, n, n)}, got {tuple(block_mask.shape)}")
    mask = _to_host_bool(block_mask)
    if np.any(np.triu(mask, k=1)):
        raise ValueError("block_mask must be block-causal: it keeps a key block after its query block")
    if not np.all(mask.any(axis=-1)):
        b, h, i = np.argwhere(~mask.any(axis=-1))[0]
        raise ValueError(
            f"block_mask keeps no key block in row (b={b}, h={h}, i={i}): its softmax would be 0/0 (keep the diagonal)"
        )
    return mask


def _prepare_sparse(q, k, v, block_mask, block, scale):
    xp, B, H, Hkv, T, D = _check_qkv(q, k, v)
    block = check_positive_int("block", block)
    scale = default_scale(D) if scale is None else check_scale("scale", scale)
    n = num_blocks(T, block)
    mask = _check_block_mask(block_mask, q, B, H, n)
    return xp, B, H, Hkv, T, block, scale, mask


def block_sparse_attention(q, k, v, block_mask, *, block: int = 64, scale: float | None = None):
    r"""Causal softmax attention over the kept key blocks only (the block-sparse flash walk).

    For each batch, head and query block ``i``, walk the key blocks ``j`` that ``block_mask`` keeps
    in row ``i``, left to right, folding each into the running ``(m, l, acc)`` with
    ``online_softmax_update``; inside the diagonal block the keys after each query are masked.
    Blocks not kept are never read. With every causal block kept this is dense causal attention.

    Args:
        q: ``[B, H, T, D]``.
        k: ``[B, Hkv, T, D]``, ``Hkv`` dividing ``H``.
        v: ``[B, Hkv, T, V]``.
        block_mask: boolean ``[B, H, n, n]``, ``n = ceil(T / block)``, block-causal, at least one
            kept block per row (``select_topk`` and ``select_threshold`` keep the diagonal).
        block: tokens per block (the last block may be shorter).
        scale: ``None`` means ``D ** -0.5``.

    Returns:
        ``o: [B, H, T, V]``.
    """
    xp, B, H, Hkv, T, block, scale, mask = _prepare_sparse(q, k, v, block_mask, block, scale)
    group = H // Hkv
    dev = device_of(q)
    out_dtype = q.dtype
    q, k, v = upcast(xp, q, k, v)
    q = q * scale
    bounds = chunk_bounds(T, block)
    per_batch = []
    for b in range(B):
        per_head = []
        for h in range(H):
            k_h, v_h = k[b, h // group, ...], v[b, h // group, ...]  # [T, D], [T, V]
            out_blocks = []
            for i, (q0, q1) in enumerate(bounds):
                q_blk = q[b, h, q0:q1, :]
                m = xp.full((q1 - q0, 1), -xp.inf, dtype=q.dtype, device=dev)
                l = xp.zeros((q1 - q0, 1), dtype=q.dtype, device=dev)
                acc = xp.zeros((q1 - q0, v.shape[-1]), dtype=q.dtype, device=dev)
                for j in np.flatnonzero(mask[b, h, i]):
                    k0, k1 = bounds[j]
                    s = q_blk @ transpose(xp, k_h[k0:k1, :])
                    if j == i:
                        s = xp.where(causal_mask(xp, q1 - q0, k1 - k0, dev, offset=q0 - k0), s, -xp.inf)
                    m, l, acc = online_softmax_update(xp, m, l, acc, s, v_h[k0:k1, :])
                # l > 0: the row kept a block, and each kept block shows every query at least one key
                out_blocks.append(acc / l)
            per_head.append(xp.concat(out_blocks, axis=0))
        per_batch.append(xp.stack(per_head, axis=0))
    return xp.astype(xp.stack(per_batch, axis=0), out_dtype)


def masked_attention(q, k, v, block_mask, *, block: int = 64, scale: float | None = None):
    r"""``block_sparse_attention`` computed densely: the block mask expanded to tokens, AND the causal mask.

    Same arguments and result. It reads every block (so it is no faster than dense attention); it
    exists as a second form to check the walk against, and to evaluate a selection on a whole
    model quickly in vectorised torch.
    """
    xp, B, H, Hkv, T, block, scale, _ = _prepare_sparse(q, k, v, block_mask, block, scale)
    dev = device_of(q)
    out_dtype = q.dtype
    q, k, v = upcast(xp, q, k, v)
    token_block = xp.asarray(np.arange(T) // block, device=dev)
    # [B, H, T, T]: token t may read token s iff their blocks' entry is kept and s <= t
    expanded = xp.take(xp.take(block_mask, token_block, axis=2), token_block, axis=3)
    visible = expanded & causal_mask(xp, T, T, dev)
    s = (q * scale) @ transpose(xp, _repeat_kv(xp, k, H))
    s = xp.where(visible, s, -xp.inf)
    p = xp.exp(s - xp.max(s, axis=-1, keepdims=True))
    return xp.astype((p / xp.sum(p, axis=-1, keepdims=True)) @ _repeat_kv(xp, v, H), out_dtype)


# --------------------------------------------------------------------------------------------
# Training the gates on the tiny model, and the held-out comparison
# --------------------------------------------------------------------------------------------

GATE_CHECKPOINT = "seer_gate_softmax.pt"
SELECTIONS = ("gate", "oracle", "random")
#: The claim ``evaluate`` checks: with the trained gate at density 0.3, held-out bits per byte
#: within this much of dense attention (``docs/seer.md`` says how it was set).
MARGIN_AT_0_3 = 0.1


def _layer_scale(model, layer: int) -> float:
    return float(model.blocks[layer].attn.scale)


def _softmax_layers(model) -> list[int]:
    layers = [l for l, kind in enumerate(model.config.attention) if kind == "softmax"]
    if not layers:
        raise ValueError("model has no softmax attention layer to gate")
    return layers


@torch.no_grad()
def layer_targets(model, tokens, *, block: int):
    """One frozen forward pass: per softmax layer ``(q_pre, k_pre, ground truth)`` for ``tokens: [B, T]``.

    The ground truth comes from the layer's own post-RoPE ``q, k`` and its own ``scale``; the gate
    will see only the pre-RoPE ``q_pre, k_pre``.
    """
    capture: list = []
    model(tokens, capture=capture)
    return {
        l: (capture[l]["q_pre"], capture[l]["k_pre"],
            ground_truth(capture[l]["q"], capture[l]["k"], block=block, scale=_layer_scale(model, l)))
        for l in _softmax_layers(model)
    }  # fmt: skip


def make_gates(model, *, block: int = 16, gate_dim: int = 32, seed: int = 0) -> nn.ModuleDict:
    """One ``AttnGate`` per softmax layer of ``model``, keyed by the layer index as a string."""
    c = model.config
    return nn.ModuleDict(
        {
            str(l): AttnGate(c.n_heads, c.n_kv_heads, c.head_dim, gate_dim=gate_dim, block=block, seed=seed + l)
            for l in _softmax_layers(model)
        }
    )


def gate_kl(model, gates, tokens) -> dict:
    """Per layer, ``kl_loss(ground truth, gate)`` (batchmean: the mean KL of one block-row, in nats) on ``tokens``."""
    block = next(iter(gates.values())).block
    with torch.no_grad():
        return {
            l: float(kl_loss(gt, gates[str(l)](q_pre, k_pre)))
            for l, (q_pre, k_pre, gt) in layer_targets(model, tokens, block=block).items()
        }


def train_gates(
    model=None,
    *,
    windows: int = 96,
    steps: int = 400,
    batch_size: int = 16,
    seq_len: int = 512,
    block: int = 16,
    gate_dim: int = 32,
    lr: float = 1e-2,
    seed: int = 0,
    progress: bool = True,
):
    r"""Train one ``AttnGate`` per softmax layer of the frozen tiny model (arXiv 2410.13276, Sec. 3.2).

    The model is frozen, so everything a gate sees of it is fixed: ``windows`` windows of
    ``seq_len`` bytes of the training corpus (``reference.data``) go through the model once, and
    for each layer the gate's pooled inputs (``AttnGate.pooled`` of ``q_pre, k_pre``) and the
    ground truth (``ground_truth`` of the post-RoPE ``q, k``) are kept. Then ``steps`` Adam steps
    on random minibatches of those windows minimise ``KL(ground truth ‖ gate)`` (batchmean),
    summed over the layers. Only the gates' parameters train: the model's are never handed to the
    optimiser and carry no gradient.

    Args:
        model: a ``reference.model.TinyLM``; ``None`` loads ``reference.model.pretrained("softmax")``.
        windows: training windows captured from the frozen model.
        steps, batch_size, lr: the optimisation (Adam, cosine decay of the step size to 0).
        seq_len: bytes per window; ``seq_len / block`` blocks per row (512 / 16 = 32).
        block: tokens per block.
        gate_dim: ``d_g`` (128 in the paper; 32 for a model with ``D = 32``).
        seed: the gates' initial weights, the windows and the minibatches.
        progress: ``tqdm.auto`` progress bars.

    Returns:
        ``(gates, log)``: an ``nn.ModuleDict`` of gates keyed by layer, and
        ``{"loss": [...], "capture_seconds", "train_seconds"}``.
    """
    import time

    from tqdm.auto import tqdm

    from reference import data
    from reference import model as tiny

    windows = check_positive_int("windows", windows)
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    if model is None:
        model = tiny.pretrained("softmax")
    model.requires_grad_(False)
    model.eval()
    gates = make_gates(model, block=block, gate_dim=gate_dim, seed=seed)

    start = time.perf_counter()
    tokens = data.sample_batch(data.corpus("train"), batch_size=windows, seq_len=seq_len, rng=seed)[:, :-1]
    cached: dict = {}  # layer -> ([q_pool], [k_pool], [gt]) chunks
    chunk = 8
    for s in tqdm(range(0, windows, chunk), desc="capturing the frozen model", disable=not progress):
        targets = layer_targets(model, torch.from_numpy(tokens[s : s + chunk]), block=block)
        for l, (q_pre, k_pre, gt) in targets.items():
            q_pool, k_pool = gates[str(l)].pooled(q_pre, k_pre)
            for store, x in zip(cached.setdefault(l, ([], [], [])), (q_pool, k_pool, gt)):
                store.append(x)
    cached = {l: tuple(torch.cat(xs) for xs in parts) for l, parts in cached.items()}
    capture_seconds = time.perf_counter() - start

    opt = torch.optim.Adam(gates.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    gen = torch.Generator().manual_seed(int(seed))
    losses = []
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="training AttnGates", disable=not progress)
    for _ in bar:
        pick = torch.randperm(windows, generator=gen)[:batch_size]
        loss = sum(
            kl_loss(gt[pick], gates[str(l)].from_pooled(q_pool[pick], k_pool[pick]))
            for l, (q_pool, k_pool, gt) in cached.items()
        ) / len(cached)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(kl=f"{losses[-1]:.4f}")
    log = {"loss": losses, "capture_seconds": capture_seconds, "train_seconds": time.perf_counter() - start}
    return gates, log


def save_gates(gates, path, *, meta: dict | None = None) -> None:
    """Write the gates (float32) with their shapes and ``meta`` (``torch.save``; read back with ``load_gates``)."""
    first = next(iter(gates.values()))
    config = {
        "layers": [int(l) for l in gates.keys()],
        "num_heads": first.num_heads,
        "num_kv_heads": first.num_kv_heads,
        "head_dim": first.head_dim,
        "gate_dim": first.gate_dim,
        "block": first.block,
        "rope_base": first.rope_base,
    }
    state = {k: v.detach().float().cpu().clone() for k, v in gates.state_dict().items()}
    torch.save({"config": config, "state_dict": state, "meta": dict(meta or {})}, path)


def load_gates(path=None) -> nn.ModuleDict:
    """Gates written by ``save_gates``; ``None`` loads the committed ones (``reference/checkpoints``). ``gates.meta`` holds the record."""
    from pathlib import Path

    path = Path(__file__).resolve().parent / "checkpoints" / GATE_CHECKPOINT if path is None else Path(path)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    c = blob["config"]
    gates = nn.ModuleDict(
        {
            str(l): AttnGate(c["num_heads"], c["num_kv_heads"], c["head_dim"], gate_dim=c["gate_dim"],
                             block=c["block"], rope_base=c["rope_base"])
            for l in c["layers"]
        }
    )  # fmt: skip
    gates.load_state_dict(blob["state_dict"])
    gates.requires_grad_(False)
    gates.meta = blob.get("meta", {})
    return gates


def sparse_override(model, gates, *, selection: str, density: float, block: int, seed: int = 0, record=None):
    """``attention_override`` for every gated layer: top-k blocks at ``density`` chosen by ``selection``.

    ``"gate"`` ranks blocks by the trained gate (from ``q_pre, k_pre``); ``"oracle"`` by the ground
    truth of the layer's real attention (the best any gate could do); ``"random"`` by uniform
    noise from ``torch.Generator().manual_seed(seed)``. The chosen blocks are attended with
    ``masked_attention`` (equal to ``block_sparse_attention``, vectorised). ``record``, a list,
    receives the achieved density of every call.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    gen = torch.Generator().manual_seed(int(seed))

    def attend(q, k, v, *, q_pre, k_pre, layer):
        scale = _layer_scale(model, layer)
        if selection == "gate":
            scores = gates[str(layer)](q_pre, k_pre, log=False)
        elif selection == "oracle":
            scores = ground_truth(q, k, block=block, scale=scale)
        else:
            n = num_blocks(q.shape[2], block)
            scores = torch.rand((*q.shape[:2], n, n), generator=gen, dtype=q.dtype)
        mask = select_topk(scores, density=density)
        if record is not None:
            record.append(achieved_density(mask))
        return masked_attention(q, k, v, mask, block=block, scale=scale)

    return {l: attend for l in _softmax_layers(model)}


def _uniform_log_probs(like):
    """The gate that knows nothing: ``log 1/(i+1)`` on the causal blocks of row ``i``, ``-inf`` above."""
    n = like.shape[-1]
    row = -torch.log(torch.arange(1, n + 1, dtype=like.dtype))[:, None]
    return torch.where(torch.ones(n, n, dtype=torch.bool).tril(), row, -torch.inf).expand_as(like)


class _Overridden(nn.Module):
    """The model with a fixed ``attention_override``, in the shape ``reference.model.bits_per_byte`` reads."""

    def __init__(self, model, override):
        super().__init__()
        self.inner, self.override = model, override

    @property
    def device(self):
        return self.inner.device

    def forward(self, tokens):
        return self.inner(tokens, attention_override=self.override)


@torch.no_grad()
def evaluate(
    model=None,
    gates=None,
    *,
    densities=(1.0, 0.5, 0.3, 0.1),
    selections=SELECTIONS,
    seq_len: int = 512,
    max_windows: int = 32,
    batch_size: int = 8,
    kl_batches: int = 4,
    progress: bool = True,
) -> dict:
    r"""Held-out bits per byte of the tiny model with block-sparse attention, beside dense.

    Every softmax layer attends only to the top-k blocks (``select_topk`` at each density) chosen
    by each selection; ``reference.model.bits_per_byte`` measures the held-out split over
    ``max_windows`` windows of ``seq_len``. Also the gates' held-out KL per layer (batchmean, nats)
    beside the KL of a uniform gate, and a check that ``block_sparse_attention`` (the walk) equals
    the vectorised ``masked_attention`` used here on one layer's real input.

    Returns:
        A dict: ``dense_bits_per_byte``, ``rows`` (selection, density, bits per byte, achieved
        density, minus dense), ``claims`` (the gate at density 0.3 within ``MARGIN_AT_0_3`` bits
        per byte of dense, and whether that holds), ``kl`` and the settings.
    """
    from tqdm.auto import tqdm

    from reference import data
    from reference import model as tiny

    model = tiny.pretrained("softmax") if model is None else model
    gates = load_gates() if gates is None else gates
    block = next(iter(gates.values())).block
    held_out = data.corpus("held_out")
    dense = tiny.bits_per_byte(model, held_out, seq_len=seq_len, max_windows=max_windows, batch_size=batch_size)

    # held-out KL of the gates, and of the uniform gate (every causal block 1/(i+1)) for scale
    stream = data.batches(held_out, batch_size=batch_size, seq_len=seq_len, seed=1234)
    kl_gate, kl_uniform = {}, {}
    for _ in range(kl_batches):
        tokens = torch.from_numpy(next(stream)[:, :-1])
        for l, (q_pre, k_pre, gt) in layer_targets(model, tokens, block=block).items():
            n = gt.shape[-1]
            kl_gate[l] = kl_gate.get(l, 0.0) + float(kl_loss(gt, gates[str(l)](q_pre, k_pre))) / kl_batches
            kl_uniform[l] = kl_uniform.get(l, 0.0) + float(kl_loss(gt, _uniform_log_probs(gt))) / kl_batches

    # the walk and the vectorised form agree on real activations (one window, first gated layer, ρ = 0.3)
    capture: list = []
    model(torch.from_numpy(held_out[None, :seq_len].astype(np.int64)), capture=capture)
    first = _softmax_layers(model)[0]
    c, scale = capture[first], _layer_scale(model, first)
    mask = select_topk(gates[str(first)](c["q_pre"], c["k_pre"], log=False), density=0.3)
    walk = block_sparse_attention(c["q"], c["k"], c["v"], mask, block=block, scale=scale)
    vec = masked_attention(c["q"], c["k"], c["v"], mask, block=block, scale=scale)
    walk_gap = float((walk - vec).abs().max())

    rows = []
    jobs = [(s, d) for s in selections for d in densities]
    for selection, density in tqdm(jobs, desc="held-out bits/byte", disable=not progress):
        record: list = []
        override = sparse_override(model, gates, selection=selection, density=density, block=block, record=record)
        bpb = tiny.bits_per_byte(_Overridden(model, override), held_out, seq_len=seq_len, max_windows=max_windows,
                                 batch_size=batch_size)  # fmt: skip
        rows.append({
            "selection": selection, "density": density, "bits_per_byte": bpb,
            "achieved_density": float(np.mean(record)), "minus_dense": bpb - dense,
        })  # fmt: skip
    at_03 = next((r for r in rows if r["selection"] == "gate" and r["density"] == 0.3), None)
    claims = {"margin_at_0.3_bits_per_byte": MARGIN_AT_0_3,
              "holds": None if at_03 is None else bool(at_03["minus_dense"] <= MARGIN_AT_0_3)}  # fmt: skip
    return {
        "dense_bits_per_byte": dense,
        "rows": rows,
        "claims": claims,
        "kl": {"gate": {str(l): v for l, v in kl_gate.items()}, "uniform": {str(l): v for l, v in kl_uniform.items()}},
        "walk_vs_vectorised_max_abs": walk_gap,
        "settings": {"seq_len": seq_len, "max_windows": max_windows, "block": block, "blocks_per_row": seq_len // block,
                     "gate_dim": next(iter(gates.values())).gate_dim, "kl_batches": kl_batches,
                     "kl_batch_size": batch_size},
    }  # fmt: skip


def main(argv=None) -> int:
    """``python -m reference.seer train-gate | evaluate`` (``--help`` for the options)."""
    import argparse
    import json
    import platform
    import sys
    from datetime import datetime, timezone
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m reference.seer", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for this process (default 1: the gate's tensors are small)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train-gate", help="train one AttnGate per layer of the frozen tiny model (CPU, < 2 min)")
    train.add_argument("--windows", type=int, default=96)
    train.add_argument("--steps", type=int, default=400)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--seq-len", type=int, default=512)
    train.add_argument("--block", type=int, default=16)
    train.add_argument("--gate-dim", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-2)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default=str(Path(__file__).resolve().parent / "checkpoints" / GATE_CHECKPOINT))
    ev = sub.add_parser("evaluate", help="held-out bits/byte at densities 1.0/0.5/0.3/0.1: gate, oracle, random vs dense")
    ev.add_argument("--gates", default=None, help="a file from train-gate (default: the committed gates)")
    ev.add_argument("--max-windows", type=int, default=32)
    ev.add_argument("--json", dest="out_path", default=None, help="write the result here")
    args = parser.parse_args(argv)
    command = "python -m reference.seer " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)  # the command line owns its process

    if args.command == "train-gate":
        gates, log = train_gates(windows=args.windows, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, block=args.block,
                                 gate_dim=args.gate_dim, lr=args.lr, seed=args.seed)  # fmt: skip
        from reference import model as tiny

        held = gate_kl(tiny.pretrained("softmax"), gates, torch.from_numpy(_held_out_batch(args.seq_len)))
        meta = {
            "command": command, "capture_seconds": round(log["capture_seconds"], 1),
            "train_seconds": round(log["train_seconds"], 1), "windows": args.windows, "steps": args.steps,
            "final_train_kl": sum(log["loss"][-10:]) / 10, "held_out_kl": held,
            "torch": str(torch.__version__), "python": platform.python_version(), "threads": torch.get_num_threads(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }  # fmt: skip
        save_gates(gates, args.out, meta=meta)
        print(json.dumps(meta, indent=2))
        return 0

    gates = load_gates(args.gates)
    result = evaluate(gates=gates, max_windows=args.max_windows)
    result["gates"] = dict(getattr(gates, "meta", {}))
    result.update(command=command, torch=str(torch.__version__), python=platform.python_version(), device="cpu",
                  date=datetime.now(timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
    text = json.dumps(result, indent=2)
    if args.out_path:
        Path(args.out_path).write_text(text + "\n")
    print(text)
    return 0


def _held_out_batch(seq_len: int, *, batch_size: int = 8, seed: int = 99) -> np.ndarray:
    from reference import data

    return data.sample_batch(data.corpus("held_out"), batch_size=batch_size, seq_len=seq_len, rng=seed)[:, :-1]


if __name__ == "__main__":
    raise SystemExit(main())
