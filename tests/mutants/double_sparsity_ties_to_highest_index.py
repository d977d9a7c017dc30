"""Mutant: top-k by an ascending sort read backwards, so equal label scores go to the **highest** index.

Right whenever scores are distinct; wrong, and different from a kernel that breaks ties the
documented way, as soon as two tokens tie at the budget's edge.
"""

import numpy as np


ALGORITHM = "double_sparsity"
CAUGHT_BY = ("ties_go_to_the_lowest_index",)


def decode(q, k_cache, v_cache, channels, *, top_k, scale=None):
    B, H, D = q.shape
    Hkv = k_cache.shape[1]
    g = H // Hkv
    channels = np.asarray(channels)
    scale = D ** -0.5 if scale is None else scale
    o = np.zeros((B, H, v_cache.shape[3]))
    for h in range(H):
        kh = h // g
        ch = channels[kh]
        approx = np.einsum("br,bsr->bs", q[:, h][:, ch], k_cache[:, kh][..., ch])
        idx = np.argsort(approx, axis=-1, kind="stable")[:, ::-1][:, :top_k]  # the bug: ties reversed
        for b in range(B):
            s = scale * k_cache[b, kh, idx[b]] @ q[b, h]
            w = np.exp(s - s.max())
            o[b, h] = (w / w.sum()) @ v_cache[b, kh, idx[b]]
    return o
