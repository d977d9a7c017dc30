"""Mutant: decode indexes the heavy sets by query head modulo the kv heads, ``channels[h % Hkv]``.

Query head ``h`` reads kv head ``h // g``; its labels were gathered with that kv head's set, so the
label scores pair the wrong channels of ``q`` with the labels whenever ``g > 1`` and ``Hkv > 1``.
"""

import numpy as np

from reference.double_sparsity import top_k_indices

ALGORITHM = "double_sparsity"
CAUGHT_BY = ("decode_equals_the_oracle", "gqa_equals_repeated_kv_heads")


def decode(q, k_cache, v_cache, channels, *, top_k, scale=None):
    B, H, D = q.shape
    Hkv = k_cache.shape[1]
    g = H // Hkv
    channels = np.asarray(channels)
    scale = D ** -0.5 if scale is None else scale
    o = np.zeros((B, H, v_cache.shape[3]))
    for h in range(H):
        kh = h // g
        ch = channels[h % Hkv]  # the bug: should be channels[kh]
        labels = k_cache[:, kh][..., channels[kh]]  # the label cache holds the kv head's own set
        approx = np.einsum("br,bsr->bs", q[:, h][:, ch], labels)
        idx = top_k_indices(approx, top_k)
        for b in range(B):
            s = scale * k_cache[b, kh, idx[b]] @ q[b, h]
            w = np.exp(s - s.max())
            o[b, h] = (w / w.sum()) @ v_cache[b, kh, idx[b]]
    return o
