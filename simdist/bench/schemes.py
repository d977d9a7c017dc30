"""``python -m simdist.bench``: LASP-1, LASP-2, LASP-2H and Ring Attention on every visible GPU.

Forward+backward throughput of one attention layer split over ``W`` GPUs (one rank per GPU, NCCL),
at per-rank chunks of 16k to 256k tokens (``B = 1, H = 16, K = V = 128``, bf16, TNL decays for the
linear schemes), and the same layer computed locally without any communication (``local``: what a
rank would do alone — the floor the schemes approach). Each series stops at the first chunk that
runs out of memory, or whose first iteration takes longer than ``--max-seconds`` (recorded).

Timing: a barrier, then CUDA events around one forward+backward on every rank; the iteration time
is the slowest rank's; the median over ``--reps`` iterations after warm-up (``--warmup``, at least
two: the first pays for kernel compilation and NCCL set-up, the second decides whether the case fits
``--max-seconds``). Tokens per second are
``W · chunk / time``. Bytes and messages come from ``simdist.accounting`` (one more iteration,
recorded). The linear schemes' local work is ``kernels.lightning.attention`` when it can be imported
— one call with the incoming state, plus one product for the state a rank sends (see
``simdist.local``) — else a torch fallback; the JSON's ``local_impl`` says which. ``local`` is that
kernel alone, forward and backward, with the decay on the host like the schemes. Nothing on the
timed path synchronises the host with the GPU (``accounting.CUDA_SYNC`` stays off: timelines are
for the CPU lesson). A communication probe measures the point-to-point latency and bandwidth and
the AllGather's, which ``simdist.costmodel.fit`` uses.

Results go to ``docs/benchmarks/simdist_nccl.json`` (device, versions, date, command) and the plots
``simdist_nccl.png``; ``--backend gloo`` runs the same machinery on CPU processes (for trying it
out; written as ``simdist_gloo.*``).

Under ``torchrun`` the benchmark runs on the ranks torchrun started instead of starting its own
(one ``W``: all of them; rank 0 writes the results)::

    torchrun --standalone --nproc-per-node 8 -m simdist.bench
    torchrun --nnodes 2 --node-rank N --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 -m simdist.bench

Examples::

    python -m simdist.bench                              # W = all GPUs
    python -m simdist.bench --world-sizes 2,4,8          # several W in one call
    python -m simdist.bench --backend gloo --world-sizes 2 --chunks 256,512 --heads 2 --dim 16 --dtype float32
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"
METHODS = ("local", "lasp1", "lasp2", "lasp2h", "ring")
LINEAR = ("local", "lasp1", "lasp2")


# --------------------------------------------------------------------------------------------
# What each rank runs
# --------------------------------------------------------------------------------------------


def _device():
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _timer(device):
    """``timed(fn) -> ms`` with CUDA events on a GPU, the wall clock on the CPU (after a barrier)."""
    import torch
    import torch.distributed as dist

    def timed(fn):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t0)

    return timed


def bench_case(rank: int, world_size: int, spec: dict) -> dict:
    """Time one (method, chunk) on this rank; see the module docstring."""
    import torch
    import torch.distributed as dist

    from reference.lightning import tnl_decay
    from simdist import accounting, kernel_path, lasp1, lasp2, lasp2h, local, ring

    device = _device()
    dtype = getattr(torch, spec["dtype"])
    C, H, D, W = spec["chunk"], spec["heads"], spec["dim"], world_size
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    g = torch.Generator(device=device).manual_seed(1000 + rank)
    q, k, v, do = (torch.randn(1, H, C, D, device=device, dtype=dtype, generator=g) for _ in range(4))
    leaves = [x.requires_grad_() for x in (q, k, v)]
    decay = torch.as_tensor(tnl_decay(H))
    lengths = [C] * W
    method = spec["method"]
    scale = D**-0.5
    if method == "local":
        # what one rank does alone: the same local code as the linear schemes, with no state to carry
        rates = local.rates(decay)
        if kernel_path.applies(q):

            def forward():
                return kernel_path.attention(*leaves, rates, scale)
        else:

            def forward():
                return local.intra(*leaves, rates, scale)
    elif method in ("lasp1", "lasp2"):
        fn = lasp1.attention if method == "lasp1" else lasp2.attention

        def forward():
            return fn(*leaves, decay=decay, scale=scale, lengths=lengths)
    else:
        fn = lasp2h.attention if method == "lasp2h" else ring.attention

        def forward():
            return fn(*leaves, scale=scale, lengths=lengths)

    def step():
        for x in leaves:
            x.grad = None
        forward().backward(do)

    timed = _timer(device)
    first = timed(step)  # includes one-time costs (kernel compilation, NCCL channel set-up)
    probe = timed(step)  # a warm iteration decides whether the case fits the time budget
    slowest = torch.tensor([probe], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # every rank takes the same decision
    if float(slowest) > 1e3 * spec["max_seconds"]:
        times = [probe]
    else:
        for _ in range(max(0, spec["warmup"] - 2)):
            timed(step)
        times = [timed(step) for _ in range(spec["reps"])]
    accounting.reset()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    record = accounting.snapshot()
    out = {
        "times_ms": times,
        "first_ms": first,
        "record": record,
        "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "local_impl": kernel_path.implementation(device, dtype) if method in LINEAR else ("torch SDPA (causal_lower_right)" if method == "lasp2h" else "aten flash attention + log-sum-exp merge" if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) else "explicit torch"),
    }
    return out


def comm_probe(rank: int, world_size: int, spec: dict) -> dict:
    """Point-to-point latency/bandwidth (rank 0 ↔ 1 ping-pong) and AllGather latency/bandwidth."""
    import torch
    import torch.distributed as dist

    device = _device()
    timed = _timer(device)
    out = {}

    def pingpong(nbytes: int, reps: int):
        x = torch.zeros(max(1, nbytes // 4), dtype=torch.float32, device=device)

        def go():
            for _ in range(reps):
                if rank == 0:
                    dist.send(x, 1)
                    dist.recv(x, 1)
                elif rank == 1:
                    dist.recv(x, 0)
                    dist.send(x, 0)

        go()  # warm-up (channel set-up)
        return timed(go) / (2 * reps) / 1e3  # seconds per one-way message

    def allgather(nbytes: int, reps: int):
        x = torch.zeros(max(1, nbytes // 4), dtype=torch.float32, device=device)
        outs = [torch.empty_like(x) for _ in range(world_size)]

        def go():
            for _ in range(reps):
                dist.all_gather(outs, x)

        go()
        return timed(go) / reps / 1e3

    small, large = 4096, spec.get("probe_bytes", 64 * 2**20)
    if world_size > 1:
        t_small, t_large = pingpong(small, 50), pingpong(large, 5)
        out["p2p_latency_s"] = t_small
        out["p2p_bandwidth_Bps"] = (large - small) / max(t_large - t_small, 1e-9)
        g_small, g_large = allgather(small, 50), allgather(large // world_size, 5)
        out["allgather_latency_s"] = g_small
        # bytes each rank receives per second: (W-1)/W of the gathered total
        out["allgather_bandwidth_Bps"] = (world_size - 1) * (large // world_size) / max(g_large - g_small, 1e-9)
    return out


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def _nccl_version():
    import torch

    try:
        version = torch.cuda.nccl.version()
    except Exception:
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def environment(backend: str) -> dict:
    import torch

    env = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "backend": backend,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": _nccl_version(),
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m simdist.bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    return env


def _summarise(method, W, spec, per_rank) -> dict:
    from simdist import accounting

    reps = len(per_rank[0]["times_ms"])
    slowest = [max(r["times_ms"][i] for r in per_rank) for i in range(reps)]
    ms = statistics.median(slowest)
    records = [r["record"] for r in per_rank]
    rows = accounting.summarize(records)
    peaks = [r["peak_mb"] for r in per_rank if r["peak_mb"] is not None]
    return {
        "W": W,
        "method": method,
        "chunk": spec["chunk"],
        "tokens": W * spec["chunk"],
        "status": "ok" if reps > 1 else "ok (one iteration: over the time budget, series stopped)",
        "ms": round(ms, 4),
        "ms_all": [round(t, 4) for t in slowest],
        "first_ms": round(max(r["first_ms"] for r in per_rank), 3),
        "tokens_per_s": W * spec["chunk"] / (ms / 1e3),
        "peak_mb": round(max(peaks), 1) if peaks else None,
        "bytes_sent_per_rank": max(r["bytes_sent"] for r in rows),
        "bytes_recv_per_rank": max(r["bytes_recv"] for r in rows),
        "p2p_messages": sum(r["p2p_sent"] for r in rows),
        "collectives_per_rank": max(r["collectives"] for r in rows),
        "sequential_steps": accounting.critical_path(records),
        "local_impl": per_rank[0]["local_impl"],
    }


def run(world_sizes, chunks, methods, *, backend="nccl", heads=16, dim=128, dtype="bfloat16", warmup=2, reps=5, max_seconds=2.0, probe_bytes=64 * 2**20, log=print, ranks=None) -> dict:
    """Run the whole sweep; returns the JSON payload (see the module docstring).

    ``ranks``: ranks that already exist (``simdist.torchrun.Ranks()``: every process torchrun
    started calls ``run`` alike, and ``world_sizes`` must be ``[their number]``); ``None`` starts a
    ``simdist.Pool`` of ``W`` ranks on this host for each ``W``.
    """
    import contextlib

    import simdist

    payload = {
        "environment": environment(backend),
        "config": {"B": 1, "H": heads, "K": dim, "V": dim, "dtype": dtype, "warmup": warmup, "reps": reps, "max_seconds": max_seconds, "probe_bytes": probe_bytes, "chunks": list(chunks), "methods": list(methods)},
        "probes": {},
        "results": [],
    }
    for W in world_sizes:
        log(f"W = {W}: starting {W} {backend} ranks")
        if ranks is not None and ranks.world_size != W:
            raise ValueError(f"world_sizes must be [{ranks.world_size}] for the ranks given, got {list(world_sizes)}")
        started = contextlib.nullcontext(ranks) if ranks is not None else simdist.Pool(W, backend=backend, timeout=600, start_timeout=300)
        with started as pool:
            try:
                payload["probes"][str(W)] = pool.run(comm_probe, {"probe_bytes": probe_bytes}, timeout=300)[0] if W > 1 else {}
                log(f"  probe: {payload['probes'][str(W)]}")
            except simdist.RankError as err:
                payload["probes"][str(W)] = {"error": str(err).splitlines()[0]}
            for method in methods:
                for chunk in chunks:
                    spec = dict(method=method, chunk=chunk, heads=heads, dim=dim, dtype=dtype, warmup=warmup, reps=reps, max_seconds=max_seconds)
                    t0 = time.monotonic()
                    try:
                        per_rank = pool.run(bench_case, spec, timeout=600)
                    except simdist.RankError as err:
                        text = " ".join(str(e) for e in err.exceptions.values()) + str(err)
                        status = "oom" if "out of memory" in text.lower() or "OutOfMemoryError" in text else "error: " + str(err).splitlines()[0][:300]
                        payload["results"].append({"W": W, "method": method, "chunk": chunk, "tokens": W * chunk, "status": status})
                        log(f"  {method:7s} chunk {chunk:>7d}: {status} — series stopped")
                        break
                    row = _summarise(method, W, spec, per_rank)
                    payload["results"].append(row)
                    log(
                        f"  {method:7s} chunk {chunk:>7d}: {row['ms']:9.3f} ms  {row['tokens_per_s'] / 1e6:8.3f} Mtok/s  "
                        f"recv {row['bytes_recv_per_rank'] / 2**20:9.2f} MiB/rank  steps {row['sequential_steps']}  ({time.monotonic() - t0:.1f} s)"
                    )
                    if row["status"] != "ok":
                        break
    return payload


def plot(payload: dict):
    """Tokens/s and bytes received per rank against the per-rank chunk, one column per W.

    Returns the matplotlib figure: ``write`` saves it, a notebook shows it (the backend is the caller's).
    """
    import matplotlib.pyplot as plt

    rows = payload["results"]
    Ws = sorted({r["W"] for r in rows})
    fig, axes = plt.subplots(2, len(Ws), figsize=(4.2 * len(Ws), 6.5), squeeze=False)
    style = {"local": ("0.5", ":"), "lasp1": ("tab:red", "-"), "lasp2": ("tab:blue", "-"), "lasp2h": ("tab:green", "--"), "ring": ("tab:purple", "--")}
    for j, W in enumerate(Ws):
        for method in payload["config"]["methods"]:
            pts = [r for r in rows if r["W"] == W and r["method"] == method and r["status"].startswith("ok")]
            if not pts:
                continue
            color, ls = style.get(method, ("k", "-"))
            x = [r["chunk"] for r in pts]
            axes[0][j].plot(x, [r["tokens_per_s"] / 1e6 for r in pts], ls, marker="o", color=color, label=method)
            if method != "local":
                axes[1][j].plot(x, [max(r["bytes_recv_per_rank"], 1) / 2**20 for r in pts], ls, marker="o", color=color, label=method)
            stopped = [r for r in rows if r["W"] == W and r["method"] == method and not r["status"].startswith("ok")]
            for r in stopped:
                axes[0][j].annotate(r["status"][:3], (r["chunk"], pts[-1]["tokens_per_s"] / 1e6), color=color, fontsize=7)
        axes[0][j].set_title(f"W = {W} ({payload['environment']['device']})", fontsize=9)
        for i in range(2):
            axes[i][j].set_xscale("log", base=2)
            axes[i][j].set_xlabel("tokens per rank")
        axes[1][j].set_yscale("log")
        axes[0][j].set_ylabel("forward+backward, M tokens/s")
        axes[1][j].set_ylabel("MiB received per rank per iteration")
        axes[0][j].legend(fontsize=7)
    fig.suptitle(f"simdist: one attention layer over W GPUs, H={payload['config']['H']}, K=V={payload['config']['K']}, {payload['config']['dtype']}", fontsize=10)
    fig.tight_layout()
    return fig


def _save(payload: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = plot(payload)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(payload: dict, name: str, out_dir: Path | None = None) -> list:
    out_dir = Path(out_dir) if out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.png"]
    paths[0].write_text(json.dumps(payload, indent=1) + "\n")
    _save(payload, paths[1])
    extra = os.environ.get("OUT")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        (Path(extra) / paths[0].name).write_text(paths[0].read_text())
        _save(payload, Path(extra) / paths[1].name)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simdist.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-sizes", default=None, help="comma-separated W values (default: all visible GPUs)")
    parser.add_argument("--chunks", default="16384,32768,65536,131072,262144", help="per-rank chunk lengths")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=2.0, help="stop a series after an iteration slower than this")
    parser.add_argument("--out", default=None, help="output directory (default docs/benchmarks)")
    args = parser.parse_args(argv)

    import torch

    from simdist import torchrun

    if torchrun.under_torchrun():  # the ranks exist already: each process runs this, rank 0 reports
        rank, W = torchrun.init(args.backend if torch.cuda.is_available() else "gloo")
        import torch.distributed as dist

        backend = dist.get_backend()
        chunks = [int(x) for x in args.chunks.split(",")]
        methods = [m for m in args.methods.split(",") if m]
        quiet = (lambda *_: None) if rank else print  # noqa: E731
        payload = run([W], chunks, methods, backend=backend, heads=args.heads, dim=args.dim, dtype=args.dtype,
                      warmup=args.warmup, reps=args.reps, max_seconds=args.max_seconds, log=quiet,
                      ranks=torchrun.Ranks())  # fmt: skip
        payload["environment"]["launcher"] = f"torchrun, {W} ranks on {int(os.environ.get('LOCAL_WORLD_SIZE', W))} per node"
        if rank == 0:
            for path in write(payload, "simdist_nccl" if backend == "nccl" else "simdist_gloo", args.out):
                print(f"wrote {path}")
        dist.destroy_process_group()
        return 0

    if args.backend == "nccl":
        if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
            print("simdist.bench with NCCL needs CUDA GPUs (use --backend gloo to try it on the CPU)", file=sys.stderr)
            return 2
        default_W = [torch.cuda.device_count()]
    else:
        default_W = [2]
    world_sizes = [int(x) for x in args.world_sizes.split(",")] if args.world_sizes else default_W
    chunks = [int(x) for x in args.chunks.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    t0 = time.monotonic()
    payload = run(world_sizes, chunks, methods, backend=args.backend, heads=args.heads, dim=args.dim, dtype=args.dtype, warmup=args.warmup, reps=args.reps, max_seconds=args.max_seconds)
    payload["environment"]["wall_s"] = round(time.monotonic() - t0, 1)
    name = "simdist_nccl" if args.backend == "nccl" else "simdist_gloo"
    for path in write(payload, name, args.out):
        print(f"wrote {path}")
    return 0
