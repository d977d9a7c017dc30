"""Mutant: calibration measures every statistic on the pre-RoPE queries and keys, the qk-outlier one included.

The qk-outlier statistic belongs to the post-RoPE ``q, k`` (each token with its own key): the
channels that carry the real logits.
"""

from reference.double_sparsity import channel_outliers, heavy_channels

ALGORITHM = "double_sparsity"
CAUGHT_BY = ("calibration_reads_each_statistic_on_its_side_of_rope",)


def calibrate(captures, *, kind="qk", r):
    return [
        heavy_channels(channel_outliers(c["q_pre"], c["k_pre"], kind=kind), r, num_kv_heads=c["k_pre"].shape[1])
        for c in captures
    ]
