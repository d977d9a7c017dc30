"""Independent float64 oracles for SeerAttention, each written as its definition, one entry at a time.

They share no code with ``reference.seer`` (nor with ``reference.softmax_attention``): no masks, no
array namespaces, no online softmax, no vectorised pooling. Blocks are listed by their token
ranges, kv heads found by ``h // (H // Hkv)``. Slow on purpose; for the small shapes of the
property tests only. Inputs are NumPy arrays; outputs are float64 NumPy arrays.
"""

from __future__ import annotations

import math

import numpy as np


def blocks(T: int, block: int) -> list[range]:
    """The token ranges of the blocks: ``block`` tokens each, the last one the rest."""
    out, start = [], 0
    while start < T:
        out.append(range(start, min(start + block, T)))
        start += block
    return out


def kv_head(h: int, H: int, Hkv: int) -> int:
    return h // (H // Hkv)


def pool(x, *, block, kind):
    """``out[b, h, i, d]`` = mean / max / min of ``x[b, h, t, d]`` over the tokens ``t`` of block ``i``."""
    x = np.asarray(x, dtype=np.float64)
    B, H, T, D = x.shape
    bl = blocks(T, block)
    out = np.empty((B, H, len(bl), D))
    for b in range(B):
        for h in range(H):
            for i, rows in enumerate(bl):
                for d in range(D):
                    values = [x[b, h, t, d] for t in rows]
                    if kind == "avg":
                        out[b, h, i, d] = math.fsum(values) / len(values)
                    elif kind == "max":
                        out[b, h, i, d] = max(values)
                    else:
                        out[b, h, i, d] = min(values)
    return out


def _softmax_weights(q_row, key_rows, scale) -> list[float]:
    """``softmax_s(scale · q·k_s)`` over the given keys, one float at a time (max subtracted, fsum)."""
    logits = [scale * float(np.dot(q_row, k_row)) for k_row in key_rows]
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = math.fsum(weights)
    return [w / total for w in weights]


def causal_probabilities(q, k, *, scale=None):
    """``P[b, h, t, s] = exp(scale q_t·k_s) / Σ_{s' ≤ t} exp(scale q_t·k_s')`` for ``s ≤ t``, else 0."""
    q, k = np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64)
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    scale = D ** -0.5 if scale is None else scale
    P = np.zeros((B, H, T, T))
    for b in range(B):
        for h in range(H):
            g = kv_head(h, H, Hkv)
            for t in range(T):
                for s, w in enumerate(_softmax_weights(q[b, h, t], [k[b, g, s] for s in range(t + 1)], scale)):
                    P[b, h, t, s] = w
    return P


def ground_truth(q, k, *, block, scale=None):
    """The block max of the causal probabilities, each block-row divided by its sum, 0 above the diagonal."""
    P = causal_probabilities(q, k, scale=scale)
    B, H, T, _ = P.shape
    bl = blocks(T, block)
    n = len(bl)
    gt = np.zeros((B, H, n, n))
    for b in range(B):
        for h in range(H):
            for i, rows in enumerate(bl):
                for j in range(i + 1):
                    gt[b, h, i, j] = max(P[b, h, t, s] for t in rows for s in bl[j])
                total = math.fsum(gt[b, h, i, : i + 1])
                for j in range(i + 1):
                    gt[b, h, i, j] /= total
    return gt


def causal_attention(q, k, v, *, scale=None):
    """Dense causal softmax attention with grouped kv heads: ``o_t = Σ_{s ≤ t} softmax_s(scale q_t·k_s) v_s``."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    scale = D ** -0.5 if scale is None else scale
    o = np.zeros((B, H, T, v.shape[-1]))
    for b in range(B):
        for h in range(H):
            g = kv_head(h, H, Hkv)
            for t in range(T):
                for s, w in enumerate(_softmax_weights(q[b, h, t], [k[b, g, s] for s in range(t + 1)], scale)):
                    o[b, h, t] += w * v[b, g, s]
    return o


def block_sparse_attention(q, k, v, block_mask, *, block, scale=None):
    """``o_t = Σ_s w_ts v_s`` over the keys ``s ≤ t`` whose block is kept in ``t``'s block-row, ``w`` their softmax."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    mask = np.asarray(block_mask, dtype=bool)
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    scale = D ** -0.5 if scale is None else scale
    o = np.zeros((B, H, T, v.shape[-1]))
    for b in range(B):
        for h in range(H):
            g = kv_head(h, H, Hkv)
            for t in range(T):
                keys = [s for s in range(t + 1) if mask[b, h, t // block, s // block]]
                for w, s in zip(_softmax_weights(q[b, h, t], [k[b, g, s] for s in keys], scale), keys):
                    o[b, h, t] += w * v[b, g, s]
    return o


def kl_per_row(target, probs):
    """``Σ_j t_j log(t_j / g_j)`` for every block-row (terms with ``t_j = 0`` are 0): ``[B, H, n]``."""
    target, probs = np.asarray(target, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    B, H, n, _ = target.shape
    out = np.zeros((B, H, n))
    for b in range(B):
        for h in range(H):
            for i in range(n):
                out[b, h, i] = math.fsum(
                    target[b, h, i, j] * math.log(target[b, h, i, j] / probs[b, h, i, j])
                    for j in range(n)
                    if target[b, h, i, j] > 0
                )
    return out


def topk_counts(n: int, density: float) -> list[int]:
    """The per-row rule: row ``i`` keeps ``min(i+1, max(1, round(density · (i+1))))`` blocks (ties to even)."""
    counts = []
    for i in range(n):
        share = round(density * (i + 1))
        counts.append(i + 1 if share > i + 1 else (1 if share < 1 else share))
    return counts
