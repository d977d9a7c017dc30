"""Mutant: "1/16 sparsity" read as 1/16 of the channels, ``r / D``, whatever the label width (erratum 9).

Right for 16-bit labels only; with 8- or 4-bit labels it undercounts the budget's channels.
"""

from fractions import Fraction

from reference.double_sparsity import token_budget  # noqa: F401  (right; the property needs it)


ALGORITHM = "double_sparsity"
CAUGHT_BY = ("sparsity_counts_label_bits",)


def label_sparsity(r, head_dim, *, bits=16):
    return Fraction(r, head_dim)  # the bug: channels, not bits


def channels_for(sparsity, head_dim, *, bits=16):
    return int(Fraction(sparsity) * head_dim)
