"""Mutant: RoPE's frequencies θ_i = base^(-i/D), dropping the 2 of base^(-2i/D).

The pairs then span only half the range of wavelengths the paper's (and every checkpoint's) formula gives.
"""

import math

from reference import rope

ALGORITHM = "rope"
CAUGHT_BY = ("apply_equals_the_rotation_oracle",)


def apply(x, positions, *, base=10000.0, layout="half"):
    return rope.apply(x, positions, base=math.sqrt(base), layout=layout)  # sqrt(base)^(-2i/D) = base^(-i/D)
