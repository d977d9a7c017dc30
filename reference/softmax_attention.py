r"""Softmax attention: the naive quadratic form and FlashAttention-2 style tiling (``docs/softmax_attention.md``).

Shapes (head-first): ``q: [B, H, Tq, K]``, ``k: [B, H, Tk, K]``, ``v: [B, H, Tk, V]`` →
``o: [B, H, Tq, V]``.

Causal masking is aligned to the *end* of the key sequence: query row ``i`` sits at position
``i + (Tk - Tq)`` and sees every key at or before it. With ``Tq == Tk`` that is the ordinary
lower-triangular mask (diagonal included); with ``Tq == 1`` it is one decoding step over a cache;
with ``Tq < Tk`` it is a chunk of queries that sees all earlier keys (LASP-2H). ``Tq > Tk`` would
leave query rows with no key at all, whose softmax is 0/0, so it is rejected.

The tiled form never builds the ``Tq × Tk`` score matrix. For each block of queries it walks the key
blocks left to right and keeps three running quantities per row: the largest score seen ``m``, the
sum of ``exp(s - m)`` seen ``l``, and the un-normalised output ``acc``. When a new block raises
the maximum from ``m`` to ``m'`` the old sums are rescaled by ``exp(m - m')``; at the end
``o = acc / l`` and ``lse = m + log l``. Key blocks entirely above the diagonal are skipped.
``online_softmax_update`` is the one step, shared with block-sparse attention.
"""

from __future__ import annotations

from reference._arrays import (
    causal_mask,
    check_positive_int,
    check_qkv,
    check_scale,
    chunk_bounds,
    device_of,
    transpose,
)

__all__ = ["naive", "tiled", "online_softmax_update", "default_scale"]


def default_scale(head_dim: int) -> float:
    """The usual ``1/sqrt(K)`` temperature."""
    return head_dim ** -0.5


def _prepare(q, k, v, causal, scale):
    xp, B, H, Tq, Tk, K, V = check_qkv(q, k, v, same_length=False)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    if causal and Tq > Tk:
        raise ValueError(
            f"causal attention needs at least as many keys as queries (rows would be empty), got q: {Tq} and k: {Tk}"
        )
    scale = default_scale(K) if scale is None else check_scale("scale", scale)
    return xp, Tq, Tk, scale


def naive(q, k, v, *, causal: bool = True, scale: float | None = None):
    r"""Softmax attention by materialising the scores: ``o = softmax(scale · q kᵀ + mask) v``.

    Args:
        q: ``[B, H, Tq, K]`` queries.
        k: ``[B, H, Tk, K]`` keys.
        v: ``[B, H, Tk, V]`` values.
        causal: mask keys after each query (aligned to the end of the keys, see module docstring).
        scale: score temperature; ``None`` means ``K ** -0.5``.

    Returns:
        ``o: [B, H, Tq, V]`` in the dtype of the inputs (NumPy in, NumPy out; torch in, torch out).
    """
    xp, Tq, Tk, scale = _prepare(q, k, v, causal, scale)
    scores = (q * scale) @ transpose(xp, k)  # [B, H, Tq, Tk]
    if causal:
        visible = causal_mask(xp, Tq, Tk, device_of(q), offset=Tk - Tq)
        scores = xp.where(visible, scores, -xp.inf)
    # Subtracting the row maximum changes nothing mathematically and keeps exp() from overflowing.
    scores = scores - xp.max(scores, axis=-1, keepdims=True)
    weights = xp.exp(scores)
    weights = weights / xp.sum(weights, axis=-1, keepdims=True)
    return weights @ v


def online_softmax_update(xp, m, l, acc, scores, v_block):
    r"""One step of the online softmax over a block of keys.

    Args:
        xp: the array namespace.
        m: ``[..., Tq, 1]`` running row maximum (``-inf`` before any key was seen).
        l: ``[..., Tq, 1]`` running ``Σ exp(s - m)``.
        acc: ``[..., Tq, V]`` running ``Σ exp(s - m) v``.
        scores: ``[..., Tq, Tb]`` scaled scores of this block, ``-inf`` where masked.
        v_block: ``[..., Tb, V]`` the block's values.

    Returns:
        The updated ``(m, l, acc)``. A row whose every score so far is ``-inf`` keeps ``m = -inf``,
        ``l = 0``, ``acc = 0`` instead of turning into NaN.
    """
    m_new = xp.maximum(m, xp.max(scores, axis=-1, keepdims=True))
    # Where nothing has been seen yet, m_new is -inf and (-inf) - (-inf) would be NaN: shift by 0.
    shift = xp.where(m_new == -xp.inf, xp.zeros_like(m_new), m_new)
    p = xp.exp(scores - shift)  # exp(-inf) = 0 for masked keys
    rescale = xp.exp(m - shift)  # how much the old running sums shrink
    l = l * rescale + xp.sum(p, axis=-1, keepdims=True)
    acc = acc * rescale + p @ v_block
    return m_new, l, acc


def tiled(
    q,
    k,
    v,
    *,
    causal: bool = True,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    return_lse: bool = False,
):
    r"""Softmax attention with FlashAttention-2 tiling and the online softmax (arXiv 2307.08691; ``docs/softmax_attention.md``).

    Args:
        q: ``[B, H, Tq, K]`` queries.
        k: ``[B, H, Tk, K]`` keys.
        v: ``[B, H, Tk, V]`` values.
        causal: mask keys after each query; key blocks entirely after a query block are skipped.
        scale: score temperature; ``None`` means ``K ** -0.5``.
        block_q: rows per query block (any positive integer; the last block may be shorter).
        block_k: keys per key block (likewise).
        return_lse: also return the per-row log-sum-exp of the scaled, masked scores.

    Returns:
        ``o: [B, H, Tq, V]``, and with ``return_lse`` also ``lse: [B, H, Tq]``.
    """
    xp, Tq, Tk, scale = _prepare(q, k, v, causal, scale)
    block_q = check_positive_int("block_q", block_q)
    block_k = check_positive_int("block_k", block_k)
    if not isinstance(return_lse, bool):  # "no" is truthy: a tuple would come back unasked
        raise TypeError(f"return_lse must be True or False, got {return_lse!r}")
    offset = Tk - Tq  # absolute position of query row 0
    dev = device_of(q)
    q = q * scale

    out_blocks, lse_blocks = [], []
    for q0, q1 in chunk_bounds(Tq, block_q):
        q_blk = q[..., q0:q1, :]
        rows = q1 - q0
        m = xp.full((*q.shape[:2], rows, 1), -xp.inf, dtype=q.dtype, device=dev)
        l = xp.zeros((*q.shape[:2], rows, 1), dtype=q.dtype, device=dev)
        acc = xp.zeros((*q.shape[:2], rows, v.shape[-1]), dtype=q.dtype, device=dev)
        last_visible_key = q1 - 1 + offset
        for k0, k1 in chunk_bounds(Tk, block_k):
            if causal and k0 > last_visible_key:
                break  # this block and all later ones lie above the diagonal
            scores = q_blk @ transpose(xp, k[..., k0:k1, :])
            if causal and k1 - 1 > q0 + offset:  # the block straddles the diagonal: mask inside it
                visible = causal_mask(xp, rows, k1 - k0, dev, offset=q0 + offset - k0)
                scores = xp.where(visible, scores, -xp.inf)
            m, l, acc = online_softmax_update(xp, m, l, acc, scores, v[..., k0:k1, :])
        out_blocks.append(acc / l)
        lse_blocks.append((m + xp.log(l))[..., 0])
    o = xp.concat(out_blocks, axis=-2)
    if return_lse:
        return o, xp.concat(lse_blocks, axis=-1)
    return o
