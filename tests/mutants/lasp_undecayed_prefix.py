"""Mutant: LASP-2's prefix as a plain sum of the earlier chunks' states, P_r = Σ_{s<r} M_s.

Without decay that is right; with it, chunk s's state must be decayed across every chunk between s
and r: P_r = λ^{C_{r-1}} P_{r-1} + M_{r-1} (``docs/errata.md``, erratum 2: a decayed scan, not a sum).
"""

import numpy as np

ALGORITHM = "lasp"
CAUGHT_BY = ("prefix_scan_is_the_state_of_the_earlier_chunks",)


def prefix_scan(states, lengths, decay=None):
    if len(lengths) != len(states) or any(C < 1 for C in lengths):
        raise ValueError(f"lengths must be {len(states)} positive chunk lengths, got {lengths}")
    if decay is not None and (len(decay) != states.shape[2] or np.any((decay <= 0) | (decay > 1))):
        raise ValueError(f"decay must be [H] rates in (0, 1], got {decay}")
    return np.stack([sum((states[s] for s in range(r)), np.zeros_like(states[0])) for r in range(len(lengths))])
