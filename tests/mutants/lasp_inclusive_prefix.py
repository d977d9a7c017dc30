"""Mutant: LASP-2's prefix inclusive, P_r = state of chunks 0..r (chunk r's own state included).

The paper's masked example reads O_t = Q_t M_{1:t} + O_t,intra; chunk t must use the exclusive
prefix M_{1:t-1}, decayed (``docs/errata.md``, erratum 2). Inclusive, chunk 0 already gets a prefix.
"""

import numpy as np

ALGORITHM = "lasp"
CAUGHT_BY = ("prefix_scan_is_the_state_of_the_earlier_chunks", "prefix_scan_assembles_the_one_device_output")


def prefix_scan(states, lengths, decay=None):
    if len(lengths) != len(states) or any(C < 1 for C in lengths):
        raise ValueError(f"lengths must be {len(states)} positive chunk lengths, got {lengths}")
    if decay is not None and (len(decay) != states.shape[2] or np.any((decay <= 0) | (decay > 1))):
        raise ValueError(f"decay must be [H] rates in (0, 1], got {decay}")
    lam = np.ones(states.shape[2]) if decay is None else np.asarray(decay)
    out, P = [], np.zeros_like(states[0])
    for r, C in enumerate(lengths):
        P = (lam**C)[:, None, None] * P + states[r]  # should be appended before this update
        out.append(P)
    return np.stack(out)
