"""Mutant: the layout permutation given the other way round (interleaved slot → rotate-half channel).

``perm[c] = (2c mod D) + ⌊2c/D⌋`` says where rotate-half channel ``c`` lands; its inverse
``j ↦ ⌊j/2⌋ + (j mod 2)·D/2`` applied in its place scrambles the pairs for D > 4.
"""

import numpy as np

from reference import rope

ALGORITHM = "rope"
CAUGHT_BY = ("layouts_agree_after_the_permutation",)

apply = rope.apply


def layout_permutation(D):
    return np.argsort(rope.layout_permutation(D))
