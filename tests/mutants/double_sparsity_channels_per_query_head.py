"""Mutant: heavy channels chosen per **query** head under GQA, the group's first head speaking for all.

The statistics of the other query heads of a group are ignored, so the kv head's heavy set is not
the top r of the group's summed statistic.
"""

from reference.double_sparsity import heavy_channels as _right

ALGORITHM = "double_sparsity"
CAUGHT_BY = ("heavy_channels_equal_the_oracle",)


def heavy_channels(stats, r, *, num_kv_heads=None):
    if num_kv_heads is None:
        return _right(stats, r)
    g = stats.shape[0] // num_kv_heads
    return _right(stats[::g], r)  # one row per kv head: its first query head's own choice
