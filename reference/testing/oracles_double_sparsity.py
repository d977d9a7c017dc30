"""Independent float64 oracles for Double Sparsity, one number at a time (``docs/double_sparsity.md``).

Written from the definitions with plain loops and no code shared with ``reference.double_sparsity``
(nor with ``reference.rope``): no gathers, no argsort, no masks. Slow, and meant for the small shapes
of the property suite.

Conventions they define: query head ``h`` reads kv head ``h // (H // Hkv)``; top-k picks tokens by
label score, highest first, the lower index first among equal scores, every token when
``S ≤ top_k``; the heavy set of a kv head is ranked by the sum of its query heads' statistics, the
lower channel first among equal sums, and listed in ascending order.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def kv_head(h: int, H: int, Hkv: int) -> int:
    return h // (H // Hkv)


def channel_outliers(q, k, kind):
    """``[H, D]``: mean over batch and tokens of ``|q|``, ``|k|`` (of the kv head read) or ``|q·k|`` per channel."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    out = np.zeros((H, D))
    for h in range(H):
        kh = kv_head(h, H, Hkv)
        for c in range(D):
            total = 0.0
            for b in range(B):
                for t in range(T):
                    if kind == "q":
                        total += abs(q[b, h, t, c])
                    elif kind == "k":
                        total += abs(k[b, kh, t, c])
                    else:
                        total += abs(q[b, h, t, c] * k[b, kh, t, c])
            out[h, c] = total / (B * T)
    return out


def _best_first(values, count):
    """Positions of the ``count`` largest values, one pick at a time: largest first, lower index on ties."""
    chosen = []
    for _ in range(min(count, len(values))):
        best = None
        for i, x in enumerate(values):
            if i in chosen:
                continue
            if best is None or x > values[best]:  # strict: an equal later value never displaces
                best = i
        chosen.append(best)
    return chosen


def heavy_channels(stats, r, num_kv_heads=None):
    """``[Hkv, r]`` ascending: per kv head the ``r`` channels with the largest group-summed statistic."""
    H, D = stats.shape
    Hkv = H if num_kv_heads is None else num_kv_heads
    rows = []
    for kh in range(Hkv):
        summed = [sum(stats[h, c] for h in range(H) if kv_head(h, H, Hkv) == kh) for c in range(D)]
        rows.append(sorted(_best_first(summed, r)))
    return np.array(rows, dtype=np.int64)


def label_scores(q, k, channels):
    """``[B, H, S]``: ``Σ_{c ∈ channels[kv head]} q[b, h, c] · k[b, kv, j, c]``."""
    B, H, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    out = np.zeros((B, H, S))
    for b in range(B):
        for h in range(H):
            kh = kv_head(h, H, Hkv)
            for j in range(S):
                out[b, h, j] = sum(q[b, h, c] * k[b, kh, j, c] for c in channels[kh])
    return out


def selection(scores, top_k):
    """The kept token set of one head's label scores ``[S]`` (a Python ``set``)."""
    return set(_best_first(list(scores), top_k))


def decode(q, k, v, channels, top_k, scale=None, labels_scores=None):
    """One step: ``o [B, H, Dv]``, the kept sets ``{(b, h): set}`` and the label scores ``[B, H, S]``.

    ``labels_scores`` replaces the label scores (e.g. from quantised labels); by default they are
    computed from ``k``'s heavy channels.
    """
    B, H, D = q.shape
    Hkv, S, Dv = k.shape[1], k.shape[2], v.shape[3]
    scale = D ** -0.5 if scale is None else scale
    approx = label_scores(q, k, channels) if labels_scores is None else labels_scores
    o = np.zeros((B, H, Dv))
    kept = {}
    for b in range(B):
        for h in range(H):
            kh = kv_head(h, H, Hkv)
            keep = sorted(selection(approx[b, h], top_k))
            kept[(b, h)] = set(keep)
            logits = [scale * sum(q[b, h, c] * k[b, kh, j, c] for c in range(D)) for j in keep]
            top = max(logits)
            weights = [math.exp(x - top) for x in logits]
            total = sum(weights)
            for w, j in zip(weights, keep):
                o[b, h] += (w / total) * v[b, kh, j]
    return o, kept, approx


def dense_decode(q, k, v, scale=None):
    """Plain softmax attention of one step over the whole cache (GQA by kv head lookup)."""
    B, H, D = q.shape
    S = k.shape[2]
    everything = [list(range(D))] * k.shape[1]
    return decode(q, k, v, everything, S, scale)[0]


def causal_decode(q, k, v, channels, top_k, scale=None):
    """``[B, H, T, Dv]``: row ``t`` is ``decode`` of ``q[:, :, t]`` over the first ``t + 1`` keys."""
    T = q.shape[2]
    rows = [decode(q[:, :, t], k[:, :, : t + 1], v[:, :, : t + 1], channels, top_k, scale)[0] for t in range(T)]
    return np.stack(rows, axis=2)


def quantise(labels, bits):
    """Per-token absmax symmetric codes and scales of ``labels [B, Hkv, S, r]`` (loops)."""
    levels = 2 ** (bits - 1) - 1
    B, Hkv, S, r = labels.shape
    codes = np.zeros(labels.shape, dtype=np.int64)
    scales = np.zeros((B, Hkv, S, 1))
    for b in range(B):
        for kh in range(Hkv):
            for j in range(S):
                absmax = max(abs(x) for x in labels[b, kh, j])
                s = absmax / levels
                scales[b, kh, j, 0] = s
                for i in range(r):
                    codes[b, kh, j, i] = 0 if s == 0 else int(np.round(labels[b, kh, j, i] / s))
    return codes, scales


def error_bound(q, scales, channels):
    """``[B, H, S]``: ``Σ_{c ∈ C} |q_c| · s_j / 2``, the most a quantised label score can err."""
    B, H, D = q.shape
    Hkv, S = scales.shape[1], scales.shape[2]
    out = np.zeros((B, H, S))
    for b in range(B):
        for h in range(H):
            kh = kv_head(h, H, Hkv)
            l1 = sum(abs(q[b, h, c]) for c in channels[kh])
            for j in range(S):
                out[b, h, j] = l1 * scales[b, kh, j, 0] / 2
    return out


def rope_half(x, base=10000.0):
    """Rotate-half RoPE of ``x [..., T, D]`` at positions ``0..T-1``: pair ``i`` is ``(i, i + D/2)``."""
    T, D = x.shape[-2], x.shape[-1]
    out = np.array(x, dtype=np.float64, copy=True)
    for t in range(T):
        for i in range(D // 2):
            angle = t * base ** (-2.0 * i / D)
            a, b = x[..., t, i], x[..., t, i + D // 2]
            out[..., t, i] = a * math.cos(angle) - b * math.sin(angle)
            out[..., t, i + D // 2] = b * math.cos(angle) + a * math.sin(angle)
    return out


def half_to_interleaved(x):
    """The same vectors in the interleaved layout: channel ``i`` → ``2i``, channel ``i + D/2`` → ``2i + 1``."""
    D = x.shape[-1]
    out = np.empty_like(x)
    for i in range(D // 2):
        out[..., 2 * i] = x[..., i]
        out[..., 2 * i + 1] = x[..., i + D // 2]
    return out


def label_sparsity(r, head_dim, bits=16):
    """Label bits over dense key bits: ``r·bits / (16·D)``."""
    return Fraction(r * bits, 16 * head_dim)
