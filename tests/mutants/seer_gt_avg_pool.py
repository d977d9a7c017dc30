"""Mutant: SeerAttention's ground truth *average*-pooled over each block of probabilities, then renormalised.

The other misreading erratum 8 names (``docs/errata.md``): the paper max-pools the attention
probabilities (a block matters if any of its entries is large); averaging dilutes a single strong
key over the block. The ground-truth properties must fail.
"""

import numpy as np
import torch

from reference.seer import _check_gqa, block_sparse_attention, kl_loss, pool, select_threshold, select_topk  # noqa: F401

ALGORITHM = "seer"
CAUGHT_BY = ("ground_truth_matches_oracle", "fixed_cases_match_oracles")


def ground_truth(q, k, *, block=64, scale=None):
    _check_gqa("q", q, "k", k)  # the reference's input checks: only the pooling is mutated
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    as_torch = isinstance(q, torch.Tensor)
    q, k = (torch.as_tensor(np.asarray(x.detach()) if as_torch else x, dtype=torch.float64) for x in (q, k))
    H, T, D = q.shape[1], q.shape[2], q.shape[3]
    k = k.repeat_interleave(H // k.shape[1], dim=1)
    scale = D ** -0.5 if scale is None else scale
    s = scale * q @ k.transpose(-1, -2)
    p = torch.softmax(s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -torch.inf), dim=-1)
    n = -(-T // block)
    pooled = torch.zeros((*p.shape[:2], n, n), dtype=p.dtype)
    for i in range(n):
        for j in range(i + 1):
            pooled[..., i, j] = p[..., i * block : (i + 1) * block, j * block : (j + 1) * block].mean(dim=(-2, -1))
    gt = pooled / pooled.sum(-1, keepdim=True)
    return gt if as_torch else gt.numpy()
