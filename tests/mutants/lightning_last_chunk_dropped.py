"""Mutant: the chunked form drops the last chunk when it is shorter than chunk_size.

``range(0, T - C + 1, C)`` visits only full chunks: with T = 7 and C = 3 the seventh token has no
output and never enters the final state. Sequence lengths need not divide the chunk size.
"""

from reference import lightning

ALGORITHM = "lightning"
CAUGHT_BY = ("chunked_handles_a_short_last_chunk", "chunked_equals_the_oracle")


def chunked(q, k, v, decay, *, scale=1.0, chunk_size=64, initial_state=None):
    T = q.shape[-2]
    full = max(chunk_size, T - T % chunk_size)  # one chunk when T < C, else only the full chunks
    cut = min(T, full)
    return lightning.chunked(
        q[..., :cut, :], k[..., :cut, :], v[..., :cut, :], decay,
        scale=scale, chunk_size=chunk_size, initial_state=initial_state,
    )  # fmt: skip

