"""Mutant: RoPE's rotate-half layout computed with interleaved pairs (2i, 2i + 1) instead of (i, i + D/2).

Both layouts exist (GPT-NeoX/Hugging Face Llama vs the paper/GPT-J); mixing them silently corrupts a
checkpoint's positions unless the q and k projections are permuted (``docs/tiny_lm.md``).
"""

from reference import rope

ALGORITHM = "rope"
CAUGHT_BY = ("apply_equals_the_rotation_oracle",)


def apply(x, positions, *, base=10000.0, layout="half"):
    return rope.apply(x, positions, base=base, layout="interleaved")
