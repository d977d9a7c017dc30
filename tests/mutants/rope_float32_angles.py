"""Mutant: RoPE's angles m·θ_i formed in float32.

At position 4093 a float32 angle keeps about 3 decimals: the rotation is off by ~1e-4 radians, an
error that grows with the position (the reference forms the angles in float64 from the integers).
"""

import numpy as np

from reference import rope

ALGORITHM = "rope"
CAUGHT_BY = ("apply_equals_the_rotation_oracle",)


def apply(x, positions, *, base=10000.0, layout="half"):
    x = np.asarray(x, dtype=np.float64)
    D = x.shape[-1]
    theta = (np.asarray(positions).astype(np.float32)[:, None] * rope.frequencies(D, base=base).astype(np.float32)[None, :])
    cos, sin = np.cos(theta.astype(np.float64)), np.sin(theta.astype(np.float64))
    if layout == "half":
        a, b = x[..., : D // 2], x[..., D // 2 :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    return np.stack([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(x.shape)
