"""Mutant: the chunked form adds a chunk's own state before its inter-chunk term (an inclusive state).

Chunk i must read S_[i], the state of chunks 0..i-1 only: its own tokens are already in the
intra-chunk term. Updating first counts them twice and lets a token see later tokens of its chunk.
"""

import numpy as np

from reference import linear_attention

ALGORITHM = "linear"
CAUGHT_BY = ("chunked_equals_the_oracle", "chunked_equals_recurrent")


def chunked(q, k, v, *, scale=1.0, chunk_size=64, initial_state=None):
    linear_attention.chunked(q, k, v, scale=scale, chunk_size=chunk_size, initial_state=initial_state)  # the checks
    B, H, T, K = q.shape
    state = np.zeros((B, H, K, v.shape[-1])) if initial_state is None else initial_state
    out = []
    for start in range(0, T, chunk_size):
        q_i, k_i, v_i = (x[..., start : start + chunk_size, :] for x in (q * scale, k, v))
        n = q_i.shape[-2]
        state = state + k_i.swapaxes(-1, -2) @ v_i  # too early
        out.append(((q_i @ k_i.swapaxes(-1, -2)) * np.tril(np.ones((n, n)))) @ v_i + q_i @ state)
    return np.concatenate(out, axis=-2), state
