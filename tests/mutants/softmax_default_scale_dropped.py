"""Mutant: softmax attention without its default temperature: scale=None computes with 1, not K^-0.5.

The convention (and FlashAttention's) is softmax(q kᵀ / √K); dropping it sharpens every row.
"""

from reference import softmax_attention

ALGORITHM = "softmax"
CAUGHT_BY = ("naive_equals_the_oracle",)


def naive(q, k, v, *, causal=True, scale=None):
    return softmax_attention.naive(q, k, v, causal=causal, scale=1.0 if scale is None else scale)
