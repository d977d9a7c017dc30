"""Mutant: the chunked form ignores ``scale`` (computes with scale = 1 whatever it is given).

``scale`` multiplies q in every term; an implementation tested only with the default 1.0 never
notices it is dropped.
"""

from reference import lightning

ALGORITHM = "lightning"
CAUGHT_BY = ("chunked_equals_the_oracle",)


def chunked(q, k, v, decay, *, scale=1.0, chunk_size=64, initial_state=None):
    return lightning.chunked(q, k, v, decay, chunk_size=chunk_size, initial_state=initial_state)
