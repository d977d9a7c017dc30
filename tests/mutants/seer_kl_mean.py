"""Mutant: the gate's loss with ``torch.nn.KLDivLoss()``'s default ``reduction="mean"``.

``"mean"`` divides the summed KL by the number of *entries* ``B·H·n·n``, not by the number of
distributions ``B·H·n``: the result is the KL divided by ``n`` (and its gradients shrink as the
sequence grows). The KL property must fail.
"""

import torch

from reference.seer import (  # noqa: F401
    block_sparse_attention,
    ground_truth,
    pool,
    select_threshold,
    select_topk,
)

ALGORITHM = "seer"
CAUGHT_BY = ("kl_loss_is_the_kl",)
BACKEND = "torch"  # nn.KLDivLoss takes torch tensors


def kl_loss(target, log_probs, *, reduction="batchmean"):
    # zero the -inf entries where the target is 0 (their terms are 0), then the library loss as is
    log_probs = torch.where(target > 0, log_probs, torch.zeros_like(log_probs))
    if reduction == "sum":
        return torch.nn.KLDivLoss(reduction="sum")(log_probs, target)
    return torch.nn.KLDivLoss()(log_probs, target)
