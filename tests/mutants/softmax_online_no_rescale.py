"""Mutant: the tiled form's online softmax forgets to rescale the running sums when the maximum grows.

When a key block raises a row's maximum from m to m', the sums so far (l and acc) were taken
relative to m and must be multiplied by exp(m − m'). Without it, early blocks weigh too much.
"""

import numpy as np

ALGORITHM = "softmax"
CAUGHT_BY = ("tiled_equals_the_oracle",)


def tiled(q, k, v, *, causal=True, scale=None, block_q=64, block_k=64):
    B, H, Tq, K = q.shape
    Tk = k.shape[2]
    scale = K**-0.5 if scale is None else scale
    s_all = scale * q @ k.swapaxes(-1, -2)
    if causal:
        s_all = np.where(np.arange(Tq)[:, None] + Tk - Tq >= np.arange(Tk)[None, :], s_all, -np.inf)
    m = np.full((B, H, Tq, 1), -np.inf)
    l = np.zeros((B, H, Tq, 1))
    acc = np.zeros((B, H, Tq, v.shape[-1]))
    for k0 in range(0, Tk, block_k):
        s = s_all[..., k0 : k0 + block_k]
        m_new = np.maximum(m, s.max(-1, keepdims=True))
        shift = np.where(np.isneginf(m_new), 0.0, m_new)
        p = np.exp(s - shift)
        l = l + p.sum(-1, keepdims=True)  # should be l * exp(m - m_new) + ...
        acc = acc + p @ v[..., k0 : k0 + block_k, :]
        m = m_new
    return acc / l
