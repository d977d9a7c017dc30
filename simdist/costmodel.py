r"""A latency–bandwidth–compute model of LASP-1, LASP-2 and Ring Attention, projected to many GPUs.

One training iteration of a linear-attention model (``L`` layers) on a sequence of ``N`` tokens cut
into ``W`` chunks of ``C = N / W`` (one per GPU, ``g`` GPUs per node) costs, per GPU,

$$
t = \underbrace{6 P C / F}_{\text{dense layers}} + L \Big( \underbrace{C / R}_{\text{attention}}
    + \underbrace{e_{\text{method}}}_{\text{exposed communication}} \Big)
$$

with ``F`` the effective dense FLOP rate, ``R`` the tokens per second of one linear-attention layer
(forward + backward) on one GPU, and the exposed communication of one layer:

* **LASP-1** — ``2(W-1)`` sequential messages of one state ``S = H·K·V·4`` bytes, each
  ``α_p2p + S/β`` (``β`` of NVLink inside a node, of the network across); the chain can hide behind
  the intra-chunk work ``t_f`` (forward, a third of ``C/R``) and ``t_b`` (backward, two thirds):
  ``e = max(0, chain − t_f) + max(0, chain − t_b)``.
* **LASP-2** — two AllGathers of ``S`` per rank, each ``α_coll + (W-1)·S/β_min`` (ring algorithm;
  ``β_min`` the slowest link of the ring): ``e = max(0, ag − t_f) + max(0, ag − t_b)``.
* **Ring Attention** (on the same linear model, as the paper compares it) — the keys and values
  themselves travel: ``W-1`` steps forward and ``2W-1`` backward, each moving ``C·H·(K+V)·2`` bytes
  over the slowest link, each hidden only behind one block's share of the attention work.

Throughput is ``N / t`` tokens per second for the whole job. The structure is what matters: LASP-1's
chain grows with ``W`` and not with ``C``; LASP-2's cost grows only through the bandwidth term
``(W-1)·S/β`` (bytes are the same as LASP-1's: it saves *steps*); Ring Attention's grows with ``C``.

Parameters: ``H100_NVLINK`` is calibrated from documented H100 SXM / NVLink 4 / NDR InfiniBand
figures and two H100 figures measured before this package's benchmarks existed (705 TFLOP/s bf16
matmul, ~12.4 M tokens/s for fla's ``chunk_simple_gla`` forward+backward at ``H=16, K=V=128``;
``docs/benchmarks/lightning.json`` has since measured 730 TFLOP/s and 15.0 M tokens/s at T = 2k);
``A100_PAPER`` approximates the paper's cluster (DGX-A100, NVLink 3, HDR InfiniBand). Neither is a
measurement of communication: ``fit(path)`` refits ``α, β, R`` on a benchmark JSON such as the
committed ``docs/benchmarks/simdist_nccl.json`` (what ``python -m simdist.bench`` writes) — one call.

The paper's anchors (64 A100s, Linear-Llama3-1B, ``PAPER``) are reported beside the projection;
``implied_step_latency`` asks what per-message cost would reproduce them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Hardware",
    "Model",
    "H100_NVLINK",
    "A100_PAPER",
    "LINEAR_LLAMA3_1B",
    "PAPER",
    "sequential_steps",
    "bytes_per_rank",
    "iteration_time",
    "project",
    "paper_comparison",
    "implied_step_latency",
    "fit",
    "measured_against_model",
    "plot_projection",
    "plot_throughput",
    "main",
]

METHODS = ("lasp1", "lasp2", "ring")


@dataclass(frozen=True)
class Hardware:
    """Communication and compute rates of one cluster (seconds, bytes per second, FLOP/s, tokens/s)."""

    name: str
    alpha_p2p: float  # one point-to-point message: launch + latency
    alpha_coll: float  # one small collective
    beta_intra: float  # bytes/s per GPU per direction inside a node
    beta_inter: float  # bytes/s per GPU per direction across nodes
    gpus_per_node: int
    dense_flops: float  # effective FLOP/s of the model's dense layers (MFU included)
    linear_tokens_per_s: float  # one linear-attention layer, forward+backward, per GPU
    source: str = ""


@dataclass(frozen=True)
class Model:
    """The model being trained: layers, attention shape, parameters (for ``6·P`` FLOPs per token)."""

    name: str
    layers: int
    heads: int
    head_dim: int
    params: float
    state_bytes: int = 4  # fp32 states
    act_bytes: int = 2  # bf16 activations


H100_NVLINK = Hardware(
    name="H100 SXM (documented NVLink 4 / NDR figures + project anchors)",
    alpha_p2p=15e-6,
    alpha_coll=20e-6,
    beta_intra=350e9,  # NVLink 4: 450 GB/s per direction, ~350 achieved by NCCL
    beta_inter=45e9,  # one 400 Gb/s NDR port per GPU, ~90 % achieved
    gpus_per_node=8,
    dense_flops=0.5 * 705e12,  # half of the measured bf16 matmul ceiling
    linear_tokens_per_s=12.4e6,  # fla simple_gla fwd+bwd, H=16, K=V=128 (an early H100 measurement)
    source="documented figures and early H100 measurements of matmul and fla; not a communication measurement",
)

A100_PAPER = Hardware(
    name="A100 80GB cluster as in the paper (approximated)",
    alpha_p2p=20e-6,
    alpha_coll=25e-6,
    beta_intra=230e9,  # NVLink 3: 300 GB/s per direction
    beta_inter=22e9,  # one 200 Gb/s HDR port per GPU
    gpus_per_node=8,
    dense_flops=0.45 * 312e12,
    linear_tokens_per_s=5e6,
    source="documented DGX-A100 figures (NVLink 3, HDR InfiniBand); rates assumed, not measured",
)

LINEAR_LLAMA3_1B = Model(name="Linear-Llama3-1B (16 layers, 16 heads of 128)", layers=16, heads=16, head_dim=128, params=1.24e9)

#: The paper's throughput gains of LASP-2 (64 A100s, Linear-Llama3-1B), keyed by total tokens.
PAPER = {
    "gpus": 64,
    2048 * 1024: {"over_lasp1": 0.152, "over_ring": 0.366},
    512 * 1024: {"over_lasp1": 0.073, "over_ring": 0.178},
}


def sequential_steps(method: str, W: int) -> int:
    """Sequential communication steps of one forward+backward (what ``simdist.accounting`` measures)."""
    if W < 1:
        raise ValueError(f"W must be at least 1, got {W}")
    if W == 1:
        return 0
    return {"lasp1": 2 * (W - 1), "lasp2": 2, "ring": 2 * W - 1}[method]


def bytes_per_rank(method: str, model: Model, N: int, W: int) -> float:
    """Bytes one rank receives per layer per iteration (forward + backward)."""
    state = model.heads * model.head_dim**2 * model.state_bytes
    kv = (N / W) * model.heads * 2 * model.head_dim * model.act_bytes
    return {"lasp1": 2 * state if W > 1 else 0, "lasp2": 2 * (W - 1) * state, "ring": (3 * W - 2) * kv if W > 1 else 0}[method]


def _hop(hw: Hardware, nbytes: float, inter: bool) -> float:
    return hw.alpha_p2p + nbytes / (hw.beta_inter if inter else hw.beta_intra)


def _slowest_beta(hw: Hardware, W: int) -> float:
    return hw.beta_inter if W > hw.gpus_per_node else hw.beta_intra


def iteration_time(method: str, hw: Hardware, model: Model, N: int, W: int, *, overlap: bool = True) -> dict:
    """Seconds per iteration per GPU, split into ``dense``, ``attention`` and ``comm`` (exposed)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    C = N / W
    dense = 6 * model.params * C / hw.dense_flops
    attn_layer = C / hw.linear_tokens_per_s
    t_f, t_b = (attn_layer / 3, 2 * attn_layer / 3) if overlap else (0.0, 0.0)
    state = model.heads * model.head_dim**2 * model.state_bytes
    if W == 1:
        comm = 0.0
    elif method == "lasp1":
        inter_hops = math.ceil(W / hw.gpus_per_node) - 1
        chain = inter_hops * _hop(hw, state, True) + (W - 1 - inter_hops) * _hop(hw, state, False)
        comm = max(0.0, chain - t_f) + max(0.0, chain - t_b)
    elif method == "lasp2":
        ag = hw.alpha_coll + (W - 1) * state / _slowest_beta(hw, W)
        comm = max(0.0, ag - t_f) + max(0.0, ag - t_b)
    else:
        kv = C * model.heads * 2 * model.head_dim * model.act_bytes
        hop = hw.alpha_p2p + kv / _slowest_beta(hw, W)
        comm = (W - 1) * max(0.0, hop - t_f / W) + (2 * W - 1) * max(0.0, hop - t_b / W)
    total = dense + model.layers * (attn_layer + comm)
    return {"dense": dense, "attention": model.layers * attn_layer, "comm": model.layers * comm, "total": total}


def project(hw: Hardware = H100_NVLINK, model: Model = LINEAR_LLAMA3_1B, *, world_sizes=(8, 16, 32, 64, 128), seq_lens=(512 * 1024, 2048 * 1024), overlap: bool = True) -> list:
    """Tokens/s of each method for every ``(W, N)``, and LASP-2's gain over the others."""
    rows = []
    for N in seq_lens:
        for W in world_sizes:
            times = {m: iteration_time(m, hw, model, N, W, overlap=overlap) for m in METHODS}
            row = {"W": W, "N": N, "chunk": N // W}
            for m in METHODS:
                row[f"{m}_tokens_per_s"] = N / times[m]["total"]
                row[f"{m}_comm_s"] = times[m]["comm"]
            row["lasp2_over_lasp1"] = times["lasp1"]["total"] / times["lasp2"]["total"] - 1
            row["lasp2_over_ring"] = times["ring"]["total"] / times["lasp2"]["total"] - 1
            rows.append(row)
    return rows


def paper_comparison(hw: Hardware = A100_PAPER, model: Model = LINEAR_LLAMA3_1B, *, overlap: bool = True) -> list:
    """The model's LASP-2 gains beside the paper's, at the paper's settings (64 GPUs)."""
    W = PAPER["gpus"]
    out = []
    for N in (512 * 1024, 2048 * 1024):
        (row,) = project(hw, model, world_sizes=(W,), seq_lens=(N,), overlap=overlap)
        out.append(
            {
                "N": N,
                "W": W,
                "model_over_lasp1": row["lasp2_over_lasp1"],
                "paper_over_lasp1": PAPER[N]["over_lasp1"],
                "model_over_ring": row["lasp2_over_ring"],
                "paper_over_ring": PAPER[N]["over_ring"],
            }
        )
    return out


def implied_step_latency(gain: float, hw: Hardware = A100_PAPER, model: Model = LINEAR_LLAMA3_1B, *, N: int = 2048 * 1024, W: int = 64, overlap: bool = False) -> float:
    """The per-message latency ``α_p2p`` at which LASP-1 would be ``gain`` slower than LASP-2.

    Found by bisection on ``iteration_time``; returns ``inf`` if no latency below one second does it.
    """
    lasp2 = iteration_time("lasp2", hw, model, N, W, overlap=overlap)["total"]

    def excess(alpha):
        t1 = iteration_time("lasp1", dataclasses.replace(hw, alpha_p2p=alpha), model, N, W, overlap=overlap)["total"]
        return t1 / lasp2 - 1 - gain

    lo, hi = 0.0, 1.0
    if excess(hi) < 0:
        return math.inf
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def fit(path=None, *, base: Hardware = H100_NVLINK) -> Hardware:
    """Refit ``α_p2p, α_coll, β_intra`` and the attention rate on a ``simdist.bench`` JSON.

    Uses the communication probe of the largest ``W`` measured (point-to-point latency and
    bandwidth, AllGather latency) and the median per-GPU rate of the ``local`` rows (one layer's
    forward+backward without communication). Inter-node bandwidth and the dense rate stay ``base``'s
    (one node measures neither).
    """
    path = Path(path) if path is not None else Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "simdist_nccl.json"
    payload = json.loads(Path(path).read_text())
    probes = {int(W): p for W, p in payload.get("probes", {}).items() if p and "error" not in p}
    changes = {}
    if probes:
        p = probes[max(probes)]
        changes.update(alpha_p2p=p["p2p_latency_s"], alpha_coll=p["allgather_latency_s"], beta_intra=p["p2p_bandwidth_Bps"])
    rates = [r["chunk"] / (r["ms"] / 1e3) for r in payload["results"] if r.get("method") == "local" and str(r.get("status", "")).startswith("ok")]
    if rates:
        cfg = payload.get("config", {})
        # scale to the model's layer shape (cost ∝ H·K) if the benchmark used another
        factor = (cfg.get("H", 16) * cfg.get("K", 128)) / (LINEAR_LLAMA3_1B.heads * LINEAR_LLAMA3_1B.head_dim)
        changes["linear_tokens_per_s"] = statistics.median(rates) * factor
    env = payload.get("environment", {})
    return dataclasses.replace(base, name=f"fitted: {env.get('device', '?')}", source=f"fitted on {path.name} ({env.get('date', '?')}, {env.get('command', '?')})", **changes)


def measured_against_model(payload: dict, hw: Hardware) -> list:
    """Per ``(W, method, chunk)`` of a ``simdist.bench`` payload: what the schemes cost beyond the local
    kernel, measured, beside the communication the model charges for one layer.

    ``measured_overhead_ms`` is the scheme's forward+backward time minus the ``local`` row's at the
    same chunk (same run, same GPUs); ``model_comm_ms`` is ``iteration_time``'s exposed
    communication for one layer of the benchmark's shape with nothing hidden (``overlap=False``: on
    GPUs the schemes run state-first, see ``simdist.lasp1``). Their ratio says how much of the real
    cost the model's ``α + bytes/β`` per message accounts for.
    """
    cfg = payload.get("config", {})
    layer = Model(name="one benchmark layer", layers=1, heads=cfg.get("H", 16), head_dim=cfg.get("K", 128), params=0.0)
    ok = [r for r in payload["results"] if str(r.get("status", "")).startswith("ok") and r.get("ms") is not None]
    local = {(r["W"], r["chunk"]): r["ms"] for r in ok if r["method"] == "local"}
    rows = []
    for r in ok:
        if r["method"] not in ("lasp1", "lasp2") or r["W"] < 2 or (r["W"], r["chunk"]) not in local:
            continue
        model_ms = 1e3 * iteration_time(r["method"], hw, layer, r["chunk"] * r["W"], r["W"], overlap=False)["comm"]
        measured = r["ms"] - local[(r["W"], r["chunk"])]
        rows.append({"W": r["W"], "method": r["method"], "chunk": r["chunk"], "measured_overhead_ms": round(measured, 4),
                     "model_comm_ms": round(model_ms, 4), "measured_over_model": round(measured / model_ms, 2)})  # fmt: skip
    return sorted(rows, key=lambda x: (x["W"], x["method"], x["chunk"]))


def plot_projection(hw: Hardware = H100_NVLINK, model: Model = LINEAR_LLAMA3_1B, *, seq_lens=(512 * 1024, 2048 * 1024), world_sizes=(8, 16, 32, 64, 128), ax=None, overlap: bool = True):
    """LASP-2's projected gain over LASP-1 and Ring Attention against W, with the paper's points."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    colors = {512 * 1024: "tab:orange", 2048 * 1024: "tab:blue"}
    for N in seq_lens:
        rows = project(hw, model, world_sizes=world_sizes, seq_lens=(N,), overlap=overlap)
        Ws = [r["W"] for r in rows]
        c = colors.get(N, None)
        ax.plot(Ws, [100 * r["lasp2_over_lasp1"] for r in rows], "-o", color=c, label=f"over LASP-1, N = {N // 1024}K")
        ax.plot(Ws, [100 * r["lasp2_over_ring"] for r in rows], "--s", color=c, label=f"over Ring, N = {N // 1024}K")
        if N in PAPER:
            ax.plot([PAPER["gpus"]], [100 * PAPER[N]["over_lasp1"]], "*", ms=14, color=c, markeredgecolor="k")
            ax.plot([PAPER["gpus"]], [100 * PAPER[N]["over_ring"]], "P", ms=11, color=c, markeredgecolor="k")
    ax.set_xscale("log", base=2)
    ax.set_yscale("symlog", linthresh=10)
    ax.set_xlabel("GPUs W")
    ax.set_ylabel("LASP-2 throughput gain (%)")
    ax.set_title(f"cost model: {hw.name}\n(★ over LASP-1, ✚ over Ring: the paper's measurements)", fontsize=8)
    ax.legend(fontsize=7)
    return ax


def plot_throughput(hw: Hardware = H100_NVLINK, model: Model = LINEAR_LLAMA3_1B, *, N: int = 2048 * 1024, world_sizes=(8, 16, 32, 64, 128), ax=None, overlap: bool = True):
    """Projected tokens/s of the three schemes against W at a fixed total length ``N``."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    rows = project(hw, model, world_sizes=world_sizes, seq_lens=(N,), overlap=overlap)
    Ws = [r["W"] for r in rows]
    for m, style in (("lasp1", "-o"), ("lasp2", "-s"), ("ring", "--^")):
        ax.plot(Ws, [r[f"{m}_tokens_per_s"] / 1e6 for r in rows], style, label={"lasp1": "LASP-1", "lasp2": "LASP-2", "ring": "Ring Attention"}[m])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("GPUs W")
    ax.set_ylabel("projected M tokens/s (whole job)")
    ax.set_title(f"{model.name}, N = {N // 1024}K tokens\n{hw.name}", fontsize=8)
    ax.legend(fontsize=8)
    return ax


def main(argv=None) -> int:
    """``python -m simdist.costmodel``: write ``docs/benchmarks/simdist_costmodel.{json,png}``.

    Uses parameters refitted on ``docs/benchmarks/simdist_nccl.json`` when that file exists (or on
    ``--fit PATH``), else the documented ``H100_NVLINK`` figures; the JSON records which.
    """
    import argparse
    import datetime as _dt
    import shlex
    import sys

    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(prog="python -m simdist.costmodel", description=main.__doc__.splitlines()[0])
    out_default = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
    parser.add_argument("--fit", default=None, help="benchmark JSON to refit on (default: docs/benchmarks/simdist_nccl.json if present)")
    parser.add_argument("--out", default=str(out_default))
    args = parser.parse_args(argv)
    measured = Path(args.fit) if args.fit else out_default / "simdist_nccl.json"
    hw = fit(measured) if measured.is_file() else H100_NVLINK
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join(["python -m simdist.costmodel", *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "note": "a projection from a latency-bandwidth-compute model, not a measurement",
        "hardware": dataclasses.asdict(hw),
        "paper_hardware": dataclasses.asdict(A100_PAPER),
        "model": dataclasses.asdict(LINEAR_LLAMA3_1B),
        "projection": project(hw),
        "paper_comparison": paper_comparison(A100_PAPER, overlap=False),
        "measured_vs_model": measured_against_model(json.loads(measured.read_text()), hw) if measured.is_file() else [],
        "implied_step_latency_s": {"2048K": implied_step_latency(PAPER[2048 * 1024]["over_lasp1"]), "512K": implied_step_latency(PAPER[512 * 1024]["over_lasp1"], N=512 * 1024)},
    }
    (out / "simdist_costmodel.json").write_text(json.dumps(payload, indent=1) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    plot_throughput(hw, ax=axes[0])
    plot_projection(A100_PAPER, ax=axes[1], overlap=False)
    fig.tight_layout()
    fig.savefig(out / "simdist_costmodel.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'simdist_costmodel.json'} and {out / 'simdist_costmodel.png'} ({hw.source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
