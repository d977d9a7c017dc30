"""Mutant: top-k that never goes dense — it keeps ``min(top_k, S - 1)`` tokens ("top-k needs k < S").

With ``S <= top_k`` the context is short enough to attend to every token, yet one (the lowest
label score) is dropped.
"""

import numpy as np

from reference.double_sparsity import top_k_indices

ALGORITHM = "double_sparsity"
CAUGHT_BY = ("short_context_is_dense", "decode_equals_the_oracle", "selected_set_equals_the_oracle_top_k")


def decode(q, k_cache, v_cache, channels, *, top_k, scale=None):
    B, H, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    g = H // Hkv
    channels = np.asarray(channels)
    scale = D ** -0.5 if scale is None else scale
    budget = max(1, min(top_k, S - 1))  # the bug
    o = np.zeros((B, H, v_cache.shape[3]))
    for h in range(H):
        kh = h // g
        ch = channels[kh]
        approx = np.einsum("br,bsr->bs", q[:, h][:, ch], k_cache[:, kh][..., ch])
        idx = top_k_indices(approx, budget)
        for b in range(B):
            s = scale * k_cache[b, kh, idx[b]] @ q[b, h]
            w = np.exp(s - s.max())
            o[b, h] = (w / w.sum()) @ v_cache[b, kh, idx[b]]
    return o
