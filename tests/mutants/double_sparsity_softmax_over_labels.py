"""Mutant: the softmax over the kept tokens uses their (scaled) **label** scores, not the exact scores.

The right tokens are kept, but their weights come from ``r`` channels instead of ``D``; with every
channel the two coincide, so only a property with ``r < D`` sees it.
"""

import numpy as np

from reference.double_sparsity import top_k_indices

ALGORITHM = "double_sparsity"
CAUGHT_BY = ("decode_equals_the_oracle",)


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
        idx = top_k_indices(approx, top_k)
        for b in range(B):
            s = scale * np.take(approx[b], idx[b])  # the bug: label scores where exact ones belong
            w = np.exp(s - s.max())
            o[b, h] = (w / w.sum()) @ v_cache[b, kh, idx[b]]
    return o
