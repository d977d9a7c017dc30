"""Exercise: LASP-2's exclusive decayed prefix scan (arXiv 2502.07563; ``docs/sequence_parallel.md``).

In LASP-2 each of ``W`` ranks holds one contiguous chunk (``lengths[r]`` tokens) and computes its
chunk's own state ``M_r = (λ^C Λ⁻¹ K_r)ᵀ V_r``; one AllGather gives every rank all of them. Rank ``r``
then needs the state of every token *before* its chunk — the exclusive prefix::

    P_0 = 0,    P_r = λ^{C_{r-1}} P_{r-1} + M_{r-1}      (C_{r-1} = lengths[r-1]; λ per head)

Not ``Σ_{s ≤ r} M_s`` (inclusive: chunk r's tokens are already in its intra-chunk term) and, with a
decay, not a plain sum either (``docs/errata.md``, erratum 2).

Write ``prefix_scan`` below with NumPy: ``states: [W, B, H, K, V]``, ``lengths``: ``W`` positive
ints, ``decay: [H]`` rates in ``(0, 1]`` or ``None`` (no decay). Return ``[W, B, H, K, V]``, row
``r`` being ``P_r``. Lengths that do not match the states, and bad decays, raise ``ValueError``
naming the argument.

Grade it::

    python -m reference.testing lasp lessons/exercises/lasp2_prefix_scan.py
"""

import numpy as np  # noqa: F401  (you will need it)


def prefix_scan(states, lengths, decay=None):
    raise NotImplementedError("LASP-2's exclusive prefix scan: write me (see the module docstring)")
