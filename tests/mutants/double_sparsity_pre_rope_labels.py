"""Mutant: the model override ranks tokens by labels of the **pre-RoPE** queries and keys (erratum 9).

The exact softmax still uses the post-RoPE ``q, k``; only the label scores come from ``q_pre``,
``k_pre``. Those ignore the positions, so the kept tokens are not the top-k of the real logits.
"""

import numpy as np

from reference.double_sparsity import select

ALGORITHM = "double_sparsity"
CAUGHT_BY = ("labels_come_from_post_rope_keys",)


def attention_overrides(channels, *, top_k, scale=None):
    def make(ch):
        def fn(q, k, v, *, q_pre, k_pre, layer=None):
            B, H, T, D = q.shape
            Hkv = k.shape[1]
            g = H // Hkv
            s = D ** -0.5 if scale is None else scale
            heads = [h // g for h in range(H)]
            ch_q = np.stack([ch[kh] for kh in heads])  # [H, r]
            qp = np.take_along_axis(q_pre, ch_q[None, :, None, :], axis=-1)
            kp = np.take_along_axis(k_pre[:, heads], ch_q[None, :, None, :], axis=-1)
            visible = np.tril(np.ones((T, T), dtype=bool))
            approx = np.where(visible, qp @ np.swapaxes(kp, -1, -2), -np.inf)
            keep = select(approx, top_k) & visible
            exact = np.where(keep, s * q @ np.swapaxes(k[:, heads], -1, -2), -np.inf)
            w = np.exp(exact - exact.max(-1, keepdims=True))
            return (w / w.sum(-1, keepdims=True)) @ v[:, heads]

        return fn

    return {layer: make(np.asarray(ch)) for layer, ch in enumerate(channels)}
