"""Mutant: block selection that does not force the diagonal block.

Top-k over all causal blocks (the diagonal competes like any other) and a plain threshold: a
block-row can lose its own block, and under a threshold a row can keep nothing at all, whose
softmax is 0/0. The selection properties must fail.
"""

import numpy as np
import torch

from reference.seer import blocks_per_row, block_sparse_attention, ground_truth, kl_loss, pool  # noqa: F401

ALGORITHM = "seer"
CAUGHT_BY = ("select_topk_density_rule", "select_threshold_keeps_diagonal")


def _lib(x, like):
    return torch.from_numpy(x) if isinstance(like, torch.Tensor) else x


def select_topk(scores, *, density):
    s = scores.detach().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    n = s.shape[-1]
    mask = np.zeros(s.shape, dtype=bool)
    for i, count in enumerate(blocks_per_row(n, density)):
        best = np.argsort(-s[..., i, : i + 1], axis=-1, kind="stable")[..., :count]
        np.put_along_axis(mask[..., i, : i + 1], best, True, axis=-1)
    return _lib(mask, scores)


def select_threshold(probs, *, threshold):
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    p = probs.detach().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    n = p.shape[-1]
    return _lib((p > threshold) & np.tril(np.ones((n, n), dtype=bool)), probs)
