"""Mutant: Lightning's decay mask upper-triangular, D_ts = λ^(s-t) for s ≥ t (anti-causal).

The picture a summary of the paper prints (``docs/errata.md``, erratum 1): with it, token t reads
every *later* token and none before it. The mask and the parallel form built on it must fail.
"""

import numpy as np

from reference import lightning

ALGORITHM = "lightning"
CAUGHT_BY = ("decay_mask_is_lower_triangular_powers", "parallel_equals_the_oracle")


def decay_mask(decay, T):
    return lightning.decay_mask(decay, T).swapaxes(-1, -2)


def parallel(q, k, v, decay, *, scale=1.0):
    scores = (q * scale) @ k.swapaxes(-1, -2)
    return (scores * decay_mask(np.asarray(decay, dtype=np.float64), q.shape[-2])) @ v
