r"""Past one machine: the schemes under ``torchrun``, one process per rank, joined by ``env://``.

``simdist.launch`` and ``simdist.Pool`` start ranks on one host. Across hosts, ``torchrun`` starts
them: it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in every
process, and ``init`` joins them into the default process group by ``env://`` rendezvous. Nothing
else changes: every scheme (``simdist.lasp1/lasp2/lasp2h/ring.attention``) runs on the default group
(``group=None``) or on any group passed to it, whoever created it.

In a training script::

    import simdist
    from simdist import lasp2, torchrun

    rank, world_size = torchrun.init()           # NCCL on GPUs (cuda:LOCAL_RANK), gloo otherwise
    q, k, v = ...                                # this rank's contiguous chunk, [B, H, C_r, D]
    o = lasp2.attention(q, k, v, decay=decay)    # rows of the one-device output; differentiable

One machine, 8 GPUs; two machines of 8 (run the same command on each, ``--node-rank`` 0 and 1)::

    torchrun --standalone --nproc-per-node 8 train.py
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 \
        --rdzv-backend c10d --rdzv-endpoint HOST0:29500 --rdzv-id lasp train.py

``python -m simdist.torchrun`` (under ``torchrun``) is a check of the cluster: every scheme, on its
ranks, against one device in float64 (on the CPU with gloo, or float32 on GPUs), a table on rank 0,
exit status 1 if any scheme disagrees. ``python -m simdist.bench`` under ``torchrun`` benchmarks
the schemes on the ranks torchrun started (``docs/sequence_parallel.md``).
"""

from __future__ import annotations

import datetime
import os
import sys
import traceback

import torch
import torch.distributed as dist

__all__ = ["under_torchrun", "init", "Ranks"]

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def under_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting the ``env://`` variables)."""
    return all(name in os.environ for name in _ENV)


def init(backend: str | None = None, *, timeout: float = 600.0) -> tuple[int, int]:
    """Join the default process group by ``env://`` rendezvous; return ``(rank, world_size)``.

    ``backend``: ``"nccl"`` or ``"gloo"``; ``None`` picks NCCL when CUDA is available (each process
    on ``cuda:LOCAL_RANK``), gloo otherwise. If the default group already exists (the script made it)
    it is used as it is. ``timeout``: seconds every collective may wait.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"simdist.torchrun.init: {', '.join(missing)} not set; start the script with torchrun "
            "(e.g. torchrun --standalone --nproc-per-node 4 script.py), or use simdist.launch on one host"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"simdist.torchrun.init: backend must be 'nccl' or 'gloo', got {backend!r}")
    kwargs = {}
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout), **kwargs)
    return dist.get_rank(), dist.get_world_size()


class Ranks:
    """What ``simdist.Pool`` is for ranks it started, for the ranks ``torchrun`` started.

    ``run(fn, *args)`` calls ``fn(rank, world_size, *args)`` *in this process* (every rank calls
    ``run`` with the same arguments) and returns every rank's result, in rank order, on every rank —
    so ``simdist.verify.run`` and the benchmark work unchanged. A rank that raises makes ``run``
    raise ``simdist.RankError`` on every rank, naming it (the exchange of results is itself the
    agreement; a rank that dies or hangs mid-collective is torchrun's to detect).
    """

    def __init__(self, group=None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def run(self, fn, *args, timeout: float | None = None) -> list:
        from simdist.runtime import RankError

        try:
            result = ("ok", fn(self.rank, self.world_size, *args))
        except Exception as err:  # reported to every rank below, then raised there
            result = ("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
        everyone = [None] * self.world_size
        dist.all_gather_object(everyone, _to_cpu(result), group=self.group)
        failed = {r: text for r, (status, text) in enumerate(everyone) if status != "ok"}
        if failed:
            first = min(failed)
            raise RankError(
                f"rank{'s' if len(failed) > 1 else ''} {sorted(failed)} raised; rank {first}: {failed[first]}",
                rank=first,
                exceptions=failed,
            )
        return [value for _, value in everyone]


def _to_cpu(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(y) for y in x)
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    return x


def main(argv=None) -> int:
    """Every scheme on the ranks torchrun started, against one device; a table on rank 0."""
    import argparse

    from simdist import verify

    parser = argparse.ArgumentParser(prog="torchrun ... -m simdist.torchrun", description=main.__doc__)
    parser.add_argument("--backend", default=None, choices=["nccl", "gloo"])
    parser.add_argument("--tokens-per-rank", type=int, default=5)
    args = parser.parse_args(argv)
    rank, W = init(args.backend)
    gpu = dist.get_backend() == "nccl"
    dtype, tol = ("float32", 1e-4) if gpu else ("float64", 1e-10)
    T = args.tokens_per_rank * W + 1  # chunks of unequal length
    q, k, v, do = verify.problem(1, 2, T, 8, 8, seed=0)
    cases = [
        verify.Case("lasp1", q, k, v, do, decay=[0.5, 0.9], scale=0.7),
        verify.Case("lasp2", q, k, v, do, decay=[0.5, 0.9], scale=0.7),
        verify.Case("lasp2", q, k, v, do, causal=False),
        verify.Case("lasp2h", q, k, v, do, scale=None),
        verify.Case("ring", q, k, v, do, scale=None),
    ]
    results = verify.run(Ranks(), cases, dtype=dtype)
    worst = 0.0
    if rank == 0:
        print(f"{W} ranks ({dist.get_backend()}), T = {T}, {dtype}: relative error against one device")
    for case, got in zip(cases, results):
        errs = verify.errors(got, verify.one_device(case))
        worst = max(worst, *errs.values())
        if rank == 0:
            shown = "  ".join(f"{name} {err:.1e}" for name, err in errs.items())
            print(f"  {case.name:<7} {'causal' if case.causal else 'bidirectional':<13} {shown}")
    dist.barrier()
    dist.destroy_process_group()
    if worst > tol:
        if rank == 0:
            print(f"ERROR: a scheme disagrees with one device beyond {tol:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
