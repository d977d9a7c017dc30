"""Mutant: LASP-2 on gloo ranks with the inclusive prefix, each rank's own chunk state in its prefix.

``simdist.lasp2.forward_with_prefix(prefix="inclusive")`` keeps the misreading to show it
(``docs/errata.md``, erratum 2): rank r's own tokens enter its output twice, once in the intra-chunk
term and once through the prefix, so even rank 0 is wrong.
"""

from simdist import lasp2

ALGORITHM = "lasp"
CAUGHT_BY = ("attention_on_ranks_equals_one_device",)
BACKEND = "torch"


def attention(q, k, v, *, decay=None, causal=True, scale=1.0, group=None):
    return lasp2.forward_with_prefix(q, k, v, decay=decay, scale=scale, group=group, prefix="inclusive")
