"""Mutant: label quantisation truncates toward zero instead of rounding to the nearest code.

Its error reaches a whole quantisation step instead of half of one, so the bound the selection
property relies on (``|x - code · s| <= s / 2``) fails.
"""

import numpy as np

from reference.double_sparsity import dequantise  # noqa: F401  (right; the property needs it)


ALGORITHM = "double_sparsity"
CAUGHT_BY = ("quantised_labels_are_within_half_a_step",)


def quantise(labels, *, bits):
    levels = 2 ** (bits - 1) - 1
    scales = np.max(np.abs(labels), axis=-1, keepdims=True) / levels
    codes = np.trunc(labels / np.where(scales > 0, scales, 1.0))  # the bug: trunc, not round
    return codes.astype(np.int8), scales
