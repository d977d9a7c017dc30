"""``python -m kernels.bench gla``: Gated Linear Attention beside fla's ``chunk_gla`` and torch SDPA.

Shapes: B·T = 65,536 tokens, T ∈ {2k, 8k, 32k}, H = 16, K = V = 128, bf16, gates
``logsigmoid(randn) / 16`` (``log α ≤ 0``, per step ``α ≈ 0.96``), scale ``K^-0.5`` for every
implementation. One run measures: the device's copy bandwidth and bf16 matmul rate; a check of every
output (ours against a float32 reference and against fla, our gradients against float32 autograd of
the reference) before any timing; a sweep of our kernel's launch settings (``kernels.gla.Config``),
each checked and timed; then forward and forward+backward of ours (the best setting of the sweep),
fla and SDPA with tokens/s, ratios, peak memory and the fraction of the roofline floor; and a
per-kernel time profile of ours and fla. Results go to ``docs/benchmarks/gla.json`` and ``gla.png``.

Options: ``--quick`` (T = 2k only, two settings, fewer repetitions), ``--no-sweep``, ``--lengths T …``,
``--out DIR``. A profile of our kernels comes first at every length, and ``gla_partial.json`` is
written after every length, so a run cut short still reports what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import inspect
import math
import time

import torch

from kernels.bench import common

DEVICE = "cuda"
DTYPE = torch.bfloat16
TOKENS = 65536
H, K, V = 16, 128, 128
LENGTHS = (2048, 8192, 32768)
ELEM = 2  # bf16 bytes

# Launch settings swept in one run (every one is checked against the reference before timing).
# What each tests (run 1, T = 2k, showed 8 warps and C = 128 far slower with the first design's
# row-by-row diagonal loops; those loops are gone, so both are measured again): smaller state tiles
# (more programs for the two sequential walks: T = 32k has only 32 (b, h) pairs), a narrower K tile
# in the dQ/dK kernel, 8 warps, a V tile of 128 in the output and dV kernels (q and log α read once),
# and C = 128 (half the states, twice the intra work).
SWEEP = {
    "auto": None,  # config=None: DEFAULT_CONFIG with state tiles sized to the GPU
    "c64_default": dict(),
    "c64_state32x32": dict(state_block_k=32, state_block_v=32),
    "c64_dqk32": dict(dqk_block_k=32),
    "c64_w8": dict(num_warps=8),
    "c64_bv128": dict(block_v=128),
    "c128_w8": dict(chunk_size=128, num_warps=8),
}


def _counts(T: int, B: int, chunk: int) -> dict:
    """Bytes a perfect implementation moves, and the matrix-product FLOPs of our chunked algorithm.

    Bytes (bf16): forward reads q, k, v, log α and writes o; backward reads q, k, v, log α, dO and
    writes dq, dk, dv, d log α. FLOPs per token and head (C the chunk, 16 the sub-chunk): the
    off-diagonal sub-blocks of P, ``2·K·C·(1 − 16/C)/2``; ``P V``, ``2·C·V``; ``(Q ⊙ e^b) S``, ``2KV``;
    the state update, ``2KV``. Backward: ``dP = dO Vᵀ`` and ``Pᵀ dO`` (``2·2·C·V``), the two intra
    gradients (``2 · K·C·(1 − 16/C)``), and five ``2KV`` products (dv, dq, dk inter; dS scan).
    """
    th = B * T * H
    fwd_bytes = th * (K + K + V + K + V) * ELEM
    bwd_bytes = th * (K + K + V + K + V) * ELEM + th * (K + K + V + K) * ELEM
    off = K * chunk * (1 - 16 / chunk)
    fwd_flops = th * (off + 2 * chunk * V + 4 * K * V)
    bwd_flops = th * (4 * chunk * V + 2 * off + 10 * K * V)
    return {"fwd": (fwd_bytes, fwd_flops), "fwdbwd": (fwd_bytes + bwd_bytes, fwd_flops + bwd_flops)}


def _design_bytes(T: int, B: int, cfg) -> dict:
    """What our six kernels read and write in HBM, kernel by kernel (K = V; caches ignored).

    ``x``: one ``[B, H, T, 128]`` bf16 tensor; ``s``: one bf16 state per chunk; ``p``: the bf16
    ``C × C`` matrix ``P`` per chunk, ``dp``: the fp32 ``dP``. Tiles over ``V`` (``K``) re-read ``k, g``
    (``v``).
    """
    th, C = B * T * H, cfg.chunk_size
    x = th * K * ELEM
    s = th / C * K * V * ELEM
    p, dp = th * C * ELEM, th * C * 4
    nk, nv, nvo = K // cfg.state_block_k, V // cfg.state_block_v, max(1, V // cfg.block_v)
    fwd = (
        (2 * nv * x + nk * x + s)  # states: read k, g per V tile and v per K tile; write S
        + (3 * x + p)  # intra: read q, k, g; write P
        + (2 * nvo * x + s + p + x + x)  # output: read q, g per V tile, S, P, v; write o
    )
    bwd = (
        (2 * nv * x + nk * x + s)  # dstates: read q, g, dO; write dS
        + (p + 4 * x + s + x + dp)  # dv: read P, k, g, dO, v, dS; write dV, dP
        + (5 * x + 3 * s + dp + 3 * x)  # dqk: read q, k, v, g, dO, S (twice), dS, dP; write dq, dk, dg
    )
    return {"fwd": fwd, "fwdbwd": fwd + bwd}


def _inputs(T: int, B: int, seed: int = 0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, device=DEVICE, dtype=torch.float32, generator=g)

    q, k, v, do = (rnd(B, H, T, d).to(DTYPE) for d in (K, K, V, V))
    la = (torch.nn.functional.logsigmoid(rnd(B, H, T, K)) / 16).to(DTYPE)
    return q, k, v, la, do


def _rel(a, b) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def _ours(q, k, v, la, do, cfg):
    from kernels import gla

    scale = K**-0.5
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v, la)]

    def fwd():
        return gla.attention(*leaves, scale=scale, config=cfg)

    def fwdbwd():
        for x in leaves:
            x.grad = None
        fwd().backward(do)

    return fwd, fwdbwd, leaves


def _fla(q, k, v, la, do):
    """fla's chunk_gla in its [B, T, H, D] layout, or None (the reason is printed and recorded)."""
    from fla.ops.gla import chunk_gla

    scale = K**-0.5
    leaves = [x.detach().transpose(1, 2).contiguous().requires_grad_(True) for x in (q, k, v, la)]
    f_do = do.transpose(1, 2).contiguous()
    extra = {"head_first": False} if "head_first" in inspect.signature(chunk_gla).parameters else {}

    def fwd():
        return chunk_gla(*leaves, scale=scale, **extra)[0]

    def fwdbwd():
        for x in leaves:
            x.grad = None
        fwd().backward(f_do)

    return fwd, fwdbwd, leaves


def _sdpa(q, k, v, do):
    scale = K**-0.5
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]

    def fwd():
        return torch.nn.functional.scaled_dot_product_attention(*leaves, is_causal=True, scale=scale)

    def fwdbwd():
        for x in leaves:
            x.grad = None
        fwd().backward(do)

    return fwd, fwdbwd, leaves


def _reference_slice(q, k, v, la, heads: int = 4):
    """float32 reference output for the first sequence's first ``heads`` heads."""
    from reference import gla as ref

    xs = [x[:1, :heads].float() for x in (q, k, v, la)]
    o, _ = ref.chunked(*xs, scale=K**-0.5, chunk_size=64, sub_chunk=16)
    return o


def _grad_check(q, k, v, la, cfg, T_slice: int = 2048) -> dict:
    """Our gradients against float32 autograd of the reference on a [1, 4, 2048] slice."""
    from kernels import gla
    from reference import gla as ref

    xs = [x[:1, :4, :T_slice].detach() for x in (q, k, v, la)]
    r = [x.float().clone().requires_grad_(True) for x in xs]
    o_r, _ = ref.chunked(*r, scale=K**-0.5, chunk_size=64, sub_chunk=16)
    do = torch.randn_like(o_r)
    o_r.backward(do)
    ours = [x.clone().requires_grad_(True) for x in xs]  # bf16, as benchmarked
    gla.attention(*ours, scale=K**-0.5, config=cfg).backward(do.to(DTYPE))
    return {f"d{n}": round(_rel(a.grad, b.grad), 5) for n, a, b in zip(("q", "k", "v", "log_alpha"), ours, r)}


def _profile(fn) -> dict:
    """CUDA time per kernel name for one call of ``fn`` (where the time goes), in ms."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = {}
    for evt in prof.key_averages():
        t = getattr(evt, "device_time_total", None)
        if t is None:
            t = getattr(evt, "cuda_time_total", 0)
        if t > 0:
            out[evt.key[:60]] = round(t / 1e3, 4)
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:14])


def _sweep(T, q, k, v, la, do, want, rep, settings, sweep_log) -> tuple:
    """Check and time every setting; return (best name, best Config) by forward+backward time."""
    from kernels import gla

    best = (None, None, math.inf)  # (name, Config or None for auto, ms)
    for name, kw in settings.items():
        cfg = None if kw is None else gla.Config(**kw)
        entry = {"T": T, "setting": name, "config": kw}
        t0 = time.time()
        try:
            fwd, fwdbwd, _ = _ours(q, k, v, la, do, cfg)
            o = fwd()
            torch.cuda.synchronize()
            entry["compile_and_first_call_s"] = round(time.time() - t0, 1)
            entry["o_rel_err_vs_reference_fp32"] = round(_rel(o[:1, :4], want), 5)
            fwdbwd()
            entry["fwd_ms"] = round(common.time_ms(fwd, rep=rep), 4)
            entry["fwdbwd_ms"] = round(common.time_ms(fwdbwd, rep=rep), 4)
            ok = entry["o_rel_err_vs_reference_fp32"] < 3e-2
            entry["correct"] = ok
            if ok and entry["fwdbwd_ms"] < best[2]:
                best = (name, cfg, entry["fwdbwd_ms"])
            if cfg is None:
                B = q.shape[0]
                entry["config"] = dataclasses.asdict(gla._auto_config(B, H, K, V, q.device))
        except Exception as err:  # a setting the compiler rejects is a result too
            entry["error"] = repr(err)[:300]
        sweep_log.append(entry)
        print(entry, flush=True)
    return best[0], best[1], best[0] is not None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench gla")
    parser.add_argument("--quick", action="store_true", help="T = 2k only, two settings, fewer repetitions")
    parser.add_argument("--no-sweep", action="store_true", help="only the default setting")
    parser.add_argument("--out", default=None, help="directory for the JSON and plot (default docs/benchmarks)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths (default 2048 8192 32768)")
    args = parser.parse_args(argv)

    from kernels import gla

    started = time.time()
    # If a step stalls, print every thread's stack each minute: the log then says where.
    faulthandler.dump_traceback_later(60, repeat=True)
    env = common.environment()
    ceilings = common.measure_ceilings()
    print(env, ceilings, flush=True)
    rep = 30 if args.quick else 60
    lengths = tuple(args.lengths) if args.lengths else ((2048,) if args.quick else LENGTHS)
    settings = dict(SWEEP)
    if args.no_sweep:
        settings = {"auto": None}
    elif args.quick:
        settings = {n: SWEEP[n] for n in ("auto", "c128_w8")}

    rows, sweep_log, profiles = [], [], {}
    for T in lengths:
        B = TOKENS // T
        q, k, v, la, do = _inputs(T, B)
        want = _reference_slice(q, k, v, la)
        print(f"T={T}: reference ready ({time.time() - started:.0f} s)", flush=True)
        profiles[T] = {}
        try:  # where the time goes, first: a run cut short still says which kernel to fix
            profiles[T]["ours_auto_fwdbwd"] = _profile(_ours(q, k, v, la, do, None)[1])
            print(f"T={T}: profile of ours (auto) {profiles[T]['ours_auto_fwdbwd']}", flush=True)
        except Exception as err:
            profiles[T]["ours_auto_fwdbwd"] = {"error": repr(err)[:300]}
        best_name, cfg, found = _sweep(T, q, k, v, la, do, want, rep, settings, sweep_log)
        row = {"T": T, "B": B, "best_setting": best_name}
        if found:
            used = cfg if cfg is not None else gla._auto_config(B, H, K, V, q.device)
            row["best_config"] = dataclasses.asdict(used)
        impls = {}
        if found:
            impls["ours"] = _ours(q, k, v, la, do, cfg)
        else:
            print(f"T={T}: no setting of ours compiled and passed the check; timing the peers only", flush=True)
        try:
            impls["fla_chunk_gla"] = _fla(q, k, v, la, do)
        except Exception as err:  # recorded: the ratios then omit fla
            row["fla_error"] = repr(err)[:300]
            print(f"fla unavailable: {err!r}", flush=True)
        impls["torch_sdpa_causal"] = _sdpa(q, k, v, do)

        # correctness before timing
        check = {}
        if "ours" in impls:
            o = impls["ours"][0]().float()
            check["ours_vs_reference_fp32"] = round(_rel(o[:1, :4], want), 5)
            check["ours_grads_vs_reference_fp32"] = _grad_check(q, k, v, la, cfg)
        if "fla_chunk_gla" in impls:
            try:
                f = impls["fla_chunk_gla"][0]().float().transpose(1, 2)
                check["fla_vs_reference_fp32"] = round(_rel(f[:1, :4], want), 5)
                if "ours" in impls:
                    check["ours_vs_fla"] = round(_rel(o, f), 5)
            except Exception as err:
                row["fla_error"] = repr(err)[:300]
                del impls["fla_chunk_gla"]
        row["check"] = check
        print(f"T={T} check {check}", flush=True)

        counts = _counts(T, B, 64 if cfg is None else cfg.chunk_size)  # (auto uses C = 64)
        for name, (f, fb, _) in impls.items():
            try:
                ms_f = common.time_ms(f, rep=rep)
                ms_fb = common.time_ms(fb, rep=rep)
                mem = common.peak_memory_mb(fb)
            except Exception as err:
                row[name] = {"error": repr(err)[:300]}
                continue
            print(f"T={T} {name}: fwd {ms_f:.3f} ms, fwd+bwd {ms_fb:.3f} ms, peak {mem:.0f} MiB", flush=True)
            row[name] = {
                "fwd_ms": round(ms_f, 4),
                "fwdbwd_ms": round(ms_fb, 4),
                "fwd_Mtok_s": round(TOKENS / ms_f / 1e3, 3),
                "fwdbwd_Mtok_s": round(TOKENS / ms_fb / 1e3, 3),
                "fwdbwd_peak_MiB": round(mem, 1),
            }
            if name == "ours":
                design = _design_bytes(T, B, cfg if cfg is not None else gla._auto_config(B, H, K, V, q.device))
                for mode, ms in (("fwd", ms_f), ("fwdbwd", ms_fb)):
                    roof = common.roofline_fraction(ms, bytes_moved=counts[mode][0], flops=counts[mode][1],
                                                    ceilings=ceilings)  # fmt: skip
                    roof["design_bytes_GB"] = round(design[mode] / 1e9, 3)
                    roof["design_bytes_floor_ms"] = round(design[mode] / (ceilings["copy_TBps"] * 1e12) * 1e3, 4)
                    row[name][f"roofline_{mode}"] = roof
        if "ours" in row and "fwd_ms" in row["ours"]:
            for peer in [n for n in impls if n != "ours" and "fwd_ms" in row.get(n, {})]:
                for mode in ("fwd", "fwdbwd"):
                    row["ours"][f"{mode}_speedup_vs_{peer}"] = round(row[peer][f"{mode}_ms"] / row["ours"][f"{mode}_ms"], 3)
        for name in ("ours", "fla_chunk_gla"):
            if name in impls and "fwd_ms" in row.get(name, {}):
                profiles[T][f"{name}_fwdbwd"] = _profile(impls[name][1])
        print(row, flush=True)
        rows.append(row)
        del q, k, v, la, do, impls
        torch.cuda.empty_cache()
        # a partial result after every length: a run cut short keeps what it measured
        common.write_json("gla_partial", _result(env, ceilings, rows, sweep_log, profiles, started, complete=False), args.out)

    faulthandler.cancel_dump_traceback_later()
    result = _result(env, ceilings, rows, sweep_log, profiles, started, complete=True)
    name = "gla_quick" if args.quick else "gla"
    path = common.write_json(name, result, args.out)
    plot(result, path.with_suffix(".png"))
    _print_table(result)
    print(f"wrote {path} and {path.with_suffix('.png')} in {result['wall_s']} s")
    return 0


def _result(env, ceilings, rows, sweep_log, profiles, started, *, complete: bool) -> dict:
    from kernels import gla

    return {
        "benchmark": "gla",
        "environment": env,
        "ceilings": ceilings,
        "shape": {"tokens": TOKENS, "H": H, "K": K, "V": V, "dtype": "bfloat16", "scale": K**-0.5,
                  "log_alpha": "logsigmoid(randn) / 16, bf16"},  # fmt: skip
        "default_config": dataclasses.asdict(gla.DEFAULT_CONFIG),
        "rows": rows,
        "sweep": sweep_log,
        "profile_ms": profiles,
        "complete": complete,
        "wall_s": round(time.time() - started, 1),
    }


LABELS = {
    "ours": "this package (Triton)",
    "fla_chunk_gla": "fla chunk_gla",
    "torch_sdpa_causal": "torch SDPA (causal softmax)",
}


def plot(result: dict, path) -> None:
    """Bar charts of tokens/s per implementation, forward and forward+backward, per length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [n for n in LABELS if any("fwd_ms" in r.get(n, {}) for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(names))
    for ax, mode, title in zip(axes, ("fwd", "fwdbwd"), ("forward", "forward + backward")):
        for i, n in enumerate(names):
            xs = [j + i * width for j in range(len(rows))]
            ys = [r.get(n, {}).get(f"{mode}_Mtok_s", 0.0) for r in rows]
            bars = ax.bar(xs, ys, width, label=LABELS[n])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(rows))])
        ax.set_xticklabels([f"T={r['T'] // 1024}k\nB={r['B']}" for r in rows])
        ax.set_ylabel("million tokens / s")
        ax.set_title(f"Gated Linear Attention, {title}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    env = result["environment"]
    fig.suptitle(f"{env['device']}, bf16, H=16, K=V=128, 64k tokens per step — torch {env['torch']}, "
                 f"triton {env['triton']}, fla {env.get('fla')}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_table(result: dict) -> None:
    print("\nsweep (ms):   T  setting                      fwd      fwd+bwd   rel.err   first call s")
    for e in result["sweep"]:
        if "error" in e:
            print(f"        {e['T']:>6}  {e['setting']:<26} error: {e['error'][:60]}")
        else:
            print(f"        {e['T']:>6}  {e['setting']:<26} {e.get('fwd_ms', math.nan):>7.3f}  {e.get('fwdbwd_ms', math.nan):>9.3f}"
                  f"  {e.get('o_rel_err_vs_reference_fp32', math.nan):>8.1e}  {e.get('compile_and_first_call_s', math.nan):>6.1f}")  # fmt: skip
    print("\n     T  impl                  fwd ms  fwd+bwd ms  Mtok/s f+b  x fla (f, f+b)  x sdpa (f+b)  floor frac (f, f+b)  peak MiB")
    for r in result["rows"]:
        for n in LABELS:
            x = r.get(n, {})
            if "fwd_ms" not in x:
                continue
            fla = sd = roof = ""
            if n == "ours":
                fla = f"{x.get('fwd_speedup_vs_fla_chunk_gla', math.nan):.2f}, {x.get('fwdbwd_speedup_vs_fla_chunk_gla', math.nan):.2f}"
                sd = f"{x.get('fwdbwd_speedup_vs_torch_sdpa_causal', math.nan):.2f}"
                roof = f"{x['roofline_fwd']['fraction_of_floor']:.2f}, {x['roofline_fwdbwd']['fraction_of_floor']:.2f}"
            print(f"{r['T']:>6}  {n:<20} {x['fwd_ms']:>7.3f} {x['fwdbwd_ms']:>10.3f} {x['fwdbwd_Mtok_s']:>11.2f}"
                  f"  {fla:>14}  {sd:>12}  {roof:>19}  {x['fwdbwd_peak_MiB']:>8.0f}")  # fmt: skip
