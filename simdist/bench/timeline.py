"""``python -m simdist.bench.timeline``: each rank's CUDA kernels during one profiled step.

Where the benchmark says *how long* a scheme takes, this says *where the time goes*: every rank runs
a few warm steps of one scheme, then one step under ``torch.profiler``, and prints its CUDA kernels
(start and duration in milliseconds from that rank's first kernel; NCCL's send, receive and gather
kernels included) and the host calls that waited. Each rank's clock starts at its own first kernel,
so compare sequences within a rank, not times across ranks.

This is how a LASP-1 send found queued behind the attention kernel was found
(``docs/benchmarks/logs/lasp_profile_w4_run3.log``; ``docs/sequence_parallel.md``). NCCL only: it
needs one GPU per rank.

Options: ``--world-size W`` (default: every visible GPU), ``--methods lasp1,lasp2``,
``--chunk C`` tokens per rank (default 262144), ``--min-ms`` (hide kernels shorter than this,
default 0.03; NCCL kernels are always shown).
"""

from __future__ import annotations

import argparse


def profiled_step(rank: int, world_size: int, spec: dict) -> dict:
    """On one rank: warm steps, then one profiled step; its kernels and host waits."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from reference.lightning import tnl_decay
    from simdist import lasp1, lasp2

    device = torch.device("cuda", torch.cuda.current_device())
    H, D, C = spec["heads"], spec["dim"], spec["chunk"]
    g = torch.Generator(device=device).manual_seed(rank)
    q, k, v, do = (torch.randn(1, H, C, D, device=device, dtype=torch.bfloat16, generator=g) for _ in range(4))
    leaves = [x.requires_grad_() for x in (q, k, v)]
    decay = torch.as_tensor(tnl_decay(H))
    fn = {"lasp1": lasp1.attention, "lasp2": lasp2.attention}[spec["method"]]

    def step():
        for x in leaves:
            x.grad = None
        fn(*leaves, decay=decay, scale=D**-0.5, lengths=[C] * world_size).backward(do)

    for _ in range(3):  # compile, connect, fill caches
        step()
    torch.cuda.synchronize()
    torch.distributed.barrier()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        step()
        torch.cuda.synchronize()
    events = prof.events()
    gpu = [e for e in events if e.device_type.name == "CUDA"]
    t0 = min(e.time_range.start for e in gpu)
    kernels = sorted(
        (round((e.time_range.start - t0) / 1e3, 3), round((e.time_range.end - e.time_range.start) / 1e3, 3), e.name[:60])
        for e in gpu
    )
    kernels = [x for x in kernels if x[1] >= spec["min_ms"] or "nccl" in x[2].lower()]
    host_t0 = min(e.time_range.start for e in events)
    waits = sorted(
        (round((e.time_range.start - host_t0) / 1e3, 3), round((e.time_range.end - e.time_range.start) / 1e3, 3), e.name[:50])
        for e in events
        if e.device_type.name == "CPU" and any(w in e.name.lower() for w in ("synchron", "wait", "_local_scalar"))
    )
    return {"kernels": kernels, "host_waits": [w for w in waits if w[1] >= 0.05][:25]}


def main(argv=None) -> int:
    import torch

    import simdist
    # by its module's name, not __main__'s: the ranks unpickle it by reference
    from simdist.bench.timeline import profiled_step

    parser = argparse.ArgumentParser(prog="python -m simdist.bench.timeline", description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=None)
    parser.add_argument("--methods", default="lasp1,lasp2")
    parser.add_argument("--chunk", type=int, default=262144)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--min-ms", type=float, default=0.03)
    args = parser.parse_args(argv)
    W = args.world_size or torch.cuda.device_count()
    if W < 2:
        parser.error(f"needs at least 2 GPUs for 2 ranks, found {torch.cuda.device_count()}")
    with simdist.Pool(W, backend="nccl", timeout=300, start_timeout=300) as pool:
        for method in args.methods.split(","):
            spec = dict(method=method, chunk=args.chunk, heads=args.heads, dim=args.dim, min_ms=args.min_ms)
            for rank, out in enumerate(pool.run(profiled_step, spec, timeout=300)):
                print(f"=== {method} rank {rank}: CUDA kernels (start ms, duration ms, name)")
                for row in out["kernels"]:
                    print("  ", row)
                print(f"--- {method} rank {rank}: host calls that waited")
                for row in out["host_waits"]:
                    print("  ", row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
