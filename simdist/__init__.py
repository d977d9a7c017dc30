"""Sequence parallelism on torch.distributed: LASP-1, LASP-2 and LASP-2H on gloo CPU ranks or NCCL GPUs.

Each rank holds one contiguous chunk of the sequence; the functions take that chunk and return its
rows of the one-device output, differentiably:

* ``simdist.lasp1.attention`` — causal linear attention (optional Lightning decay) by a ring of
  point-to-point messages: ``2(W-1)`` sequential steps per forward and backward.
* ``simdist.lasp2.attention`` — the same function (and the bidirectional one) by one AllGather of
  chunk states each way: 2 collectives whatever ``W``.
* ``simdist.lasp2h.attention`` — softmax attention (the hybrid model's softmax layers) by AllGather
  of K, V and reduce-scatter of dK, dV.
* ``simdist.ring.attention`` — Ring Attention, the softmax baseline.

``simdist.launch`` / ``simdist.Pool`` start the ranks on one host, ``simdist.torchrun`` joins the
ranks ``torchrun`` started (one or many hosts); ``simdist.accounting`` counts every message
and draws the timeline; ``simdist.verify`` checks any of them against one device;
``simdist.costmodel`` projects them to many GPUs; ``python -m simdist.bench`` measures them on GPUs.
A rank's local work is ``simdist.local`` (the paper's split path) or ``simdist.kernel_path`` (one
``kernels.lightning`` call per chunk, on CUDA).

From a script, start the ranks under ``if __name__ == "__main__":`` — every rank imports the script
again, and an unguarded ``launch`` would run again inside each rank (see ``simdist.runtime``)::

    import simdist

    def fn(rank, world_size):
        return rank

    if __name__ == "__main__":
        print(simdist.launch(fn, 4))  # [0, 1, 2, 3]
"""

from simdist import accounting, comm, kernel_path, lasp1, lasp2, lasp2h, local, ring, torchrun
from simdist.runtime import LaunchError, Pool, RankError, launch, shared_pool

__all__ = [
    "launch",
    "Pool",
    "shared_pool",
    "RankError",
    "LaunchError",
    "accounting",
    "comm",
    "local",
    "kernel_path",
    "torchrun",
    "lasp1",
    "lasp2",
    "lasp2h",
    "ring",
]
