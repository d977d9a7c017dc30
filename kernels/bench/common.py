"""Shared machinery of the GPU benchmarks: ceilings, timing, memory, roofline, JSON and plots.

Every benchmark measures the device's two ceilings in the same run (a large device-to-device copy
and a large bf16 matrix product), times each implementation with CUDA events (the median of many
repetitions after warm-up, ``triton.testing.do_bench``), and reports for each case its time, its
tokens per second, its ratio to every peer, its peak memory, and the fraction of the roofline floor
``max(bytes / copy bandwidth, FLOPs / matmul rate)`` that it reaches.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import platform
import shlex
import sys
from pathlib import Path

import torch

#: Where results land: ``docs/benchmarks/`` of the repository (the site shows them).
RESULTS_DIR = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"


def environment() -> dict:
    """Device, library versions, date and the command line: what makes a figure a result."""
    import triton

    env = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m kernels.bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    try:
        import fla

        env["fla"] = fla.__version__
    except Exception as err:  # fla is optional: the peer column says it is missing
        env["fla"] = f"not available ({type(err).__name__})"
    return env


def start_stack_dumps(interval_s: float = 60.0):
    """Print every thread's Python stack every ``interval_s`` seconds until ``.set()`` is called on
    the returned event: a step that stalls (a compiler, an autotuner) then says where it is.

    A Python thread that takes the interpreter lock to read the frames — not
    ``faulthandler.dump_traceback_later``, which reads other threads' frames without the lock and
    once killed a benchmark in the middle of a dump (``docs/benchmarks/logs/lightning_run6.log``).
    """
    import threading
    import traceback

    stop = threading.Event()

    def watch():
        while not stop.wait(interval_s):
            me = threading.get_ident()
            lines = [f"--- stacks after another {interval_s:g} s ---"]
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    lines.append(f"thread {ident}:\n" + "".join(traceback.format_stack(frame)[-12:]))
            print("\n".join(lines), file=sys.stderr, flush=True)

    threading.Thread(target=watch, name="stack-dumps", daemon=True).start()
    return stop


def time_ms(fn, *, warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of ``fn()`` on the GPU (CUDA events, after warm-up)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def peak_memory_mb(fn) -> float:
    """Peak GPU memory allocated during one call of ``fn`` beyond what was allocated before, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def profile_kernels(fn, *, top: int = 14) -> dict:
    """CUDA time per kernel name for one call of ``fn`` after a warm-up call, in ms (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = {}
    for evt in prof.key_averages():
        t = getattr(evt, "device_time_total", None)  # torch ≥ 2.4; older releases call it cuda_time_total
        if t is None:
            t = getattr(evt, "cuda_time_total", 0)
        if t > 0:
            out[evt.key[:60]] = round(t / 1e3, 4)
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:top])


def measure_ceilings() -> dict:
    """The copy bandwidth (bytes read + written per second) and the bf16 matmul rate, measured now."""
    x = torch.empty(2 * 1024**3 // 2, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x))
    copy_tbps = 2 * x.numel() * x.element_size() / ms / 1e9
    del x, y
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    ms = time_ms(lambda: a @ b)
    tflops = 2 * 8192**3 / ms / 1e9
    del a, b
    torch.cuda.empty_cache()
    return {"copy_TBps": round(copy_tbps, 3), "bf16_matmul_TFLOPs": round(tflops, 1)}


def roofline_fraction(ms: float, *, bytes_moved: float, flops: float, ceilings: dict) -> dict:
    """The floor ``max(bytes/bandwidth, flops/rate)`` in ms, and what fraction of it ``ms`` reaches."""
    t_bytes = bytes_moved / (ceilings["copy_TBps"] * 1e12) * 1e3
    t_flops = flops / (ceilings["bf16_matmul_TFLOPs"] * 1e12) * 1e3
    floor = max(t_bytes, t_flops)
    return {
        "floor_ms": round(floor, 4),
        "floor_bound": "memory" if t_bytes >= t_flops else "compute",
        "fraction_of_floor": round(floor / ms, 3),
    }


def write_json(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    """Write ``payload`` to ``docs/benchmarks/<name>.json`` (and to ``$OUT`` when that is set)."""
    out_dir = Path(out_dir) if out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    extra = os.environ.get("OUT")
    if extra:
        Path(extra, f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    return path


def copy_to_out(path: Path) -> None:
    """Copy a written file (a plot) to ``$OUT`` when that is set and is not where it already is."""
    extra = os.environ.get("OUT")
    target = os.path.join(extra, Path(path).name) if extra else None
    if target and not (os.path.exists(target) and os.path.samefile(target, path)):
        shutil.copy(path, target)


def load_json(name: str) -> dict:
    """A committed result, for lessons and docs pages."""
    return json.loads((RESULTS_DIR / f"{name}.json").read_text())


def plot_throughput(result: dict, labels: dict, *, algorithm: str):
    """Two bar charts (forward, forward+backward) of million tokens/s per implementation and length.

    ``result`` is a benchmark JSON (``rows`` with ``T``, ``B`` and, per implementation key of
    ``labels``, ``fwd_Mtok_s`` and ``fwdbwd_Mtok_s``); implementations absent from every row are
    left out. Returns the matplotlib figure (the benchmarks save it, the lessons show it).
    """
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [n for n in labels if any("fwd_Mtok_s" in r.get(n, {}) for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(names))
    for ax, mode, title in zip(axes, ("fwd", "fwdbwd"), ("forward", "forward + backward")):
        for i, n in enumerate(names):
            xs = [j + i * width for j in range(len(rows))]
            bars = ax.bar(xs, [r.get(n, {}).get(f"{mode}_Mtok_s", 0.0) for r in rows], width, label=labels[n])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(rows))])
        ax.set_xticklabels([f"T={r['T'] // 1024}k\nB={r['B']}" for r in rows])
        ax.set_ylabel("million tokens / s")
        ax.set_title(f"{algorithm}, {title}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    env = result["environment"]
    note = "" if result.get("complete", True) else f" — partial: {result.get('lengths_missing')} not measured"
    fig.suptitle(f"{env['device']}, bf16, H=16, K=V=128, 64k tokens per step — torch {env['torch']}, "
                 f"triton {env['triton']}, fla {env.get('fla')}, {env['date'][:10]}{note}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    return fig


def save_throughput_plot(result: dict, labels: dict, *, algorithm: str, path) -> None:
    """``plot_throughput`` written to ``path`` (PNG) and closed, for the benchmark commands (the
    backend is left as it is: a library never switches it)."""
    import matplotlib.pyplot as plt

    fig = plot_throughput(result, labels, algorithm=algorithm)
    fig.savefig(path, dpi=120)
    plt.close(fig)
