"""Mutant: Algorithm 1's inter-chunk term decays query j of a chunk by λ^(j-1) instead of λ^j.

Row j (1-based) of a chunk sits j steps after the previous chunk's end, so the carried state reaches
it decayed by λ^j: Λ = diag(λ¹..λⁿ). Starting the powers at λ⁰ is the classic off-by-one.
"""

import numpy as np

from reference import lightning

ALGORITHM = "lightning"
CAUGHT_BY = ("chunked_equals_the_oracle", "chunked_handles_a_short_last_chunk")


def chunked(q, k, v, decay, *, scale=1.0, chunk_size=64, initial_state=None):
    lightning.chunked(q, k, v, decay, scale=scale, chunk_size=chunk_size, initial_state=initial_state)  # the checks
    lam = np.asarray(decay, dtype=np.float64)[:, None, None]  # [H, 1, 1]
    B, H, T, K = q.shape
    kv = np.zeros((B, H, K, v.shape[-1])) if initial_state is None else initial_state
    out = []
    for start in range(0, T, chunk_size):
        q_i, k_i, v_i = (x[..., start : start + chunk_size, :] for x in (q * scale, k, v))
        n = q_i.shape[-2]
        j = np.arange(1, n + 1)[None, :, None]
        mask = np.where(j >= j.swapaxes(1, 2), lam ** np.maximum(j - j.swapaxes(1, 2), 0), 0.0)
        o_intra = ((q_i @ k_i.swapaxes(-1, -2)) * mask) @ v_i
        o_inter = (lam ** (j - 1) * q_i) @ kv  # should be λ^j
        out.append(o_intra + o_inter)
        kv = lam**n * kv + (lam ** (n - j) * k_i).swapaxes(-1, -2) @ v_i
    return np.concatenate(out, axis=-2), kv
