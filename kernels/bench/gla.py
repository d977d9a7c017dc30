"""``python -m kernels.bench gla``: Gated Linear Attention beside fla's ``chunk_gla`` and torch SDPA.

Shapes: B·T = 65,536 tokens, T ∈ {2k, 8k, 32k}, H = 16, K = V = 128, bf16, gates
``logsigmoid(randn) / 16`` (``log α ≤ 0``, per step ``α ≈ 0.96``), scale ``K^-0.5`` for every
implementation. One run measures: the device's copy bandwidth and bf16 matmul rate; then per length,
in this order, printing progress as it goes:

1. fla's first call (forward and backward: fla autotunes its kernels on first use, which took
   minutes on a fresh H100), timed and recorded, so that nothing later waits on it;
2. a per-kernel time profile of ours (where the time goes, first: a run cut short still says it);
3. a small sweep of our launch settings (``SWEEP``: at most three), each checked against a float32
   reference before it is timed;
4. a check of every output (ours and fla's against the float32 reference, our gradients against
   float32 autograd of the reference), then forward and forward+backward times of ours (the best
   setting), fla and SDPA with tokens/s, ratios, peak memory and the fraction of the roofline floor,
   and fla's per-kernel profile;
5. ``docs/benchmarks/gla.json`` and ``gla.png`` rewritten (and copied to ``$OUT`` when set) with
   every length measured so far: ``"complete": false`` and ``"lengths_missing"`` until the last one.

A time budget (``--budget-s``, default 290 s) skips lengths that would start less than a minute
before it ends, and past it only the default setting is measured, so the run ends in about the
budget with a valid JSON whatever happens. Options: ``--quick`` (T = 2k only, default setting),
``--no-sweep``, ``--lengths T …``, ``--out DIR``, ``--budget-s S``.
"""

from __future__ import annotations

import argparse
import dataclasses
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

# Launch settings measured per length (each checked against the reference before timing): the
# default (config=None: DEFAULT_CONFIG with state tiles sized to the GPU: 64 × 64, and 16 × 64 at
# T = 32k where B·H = 32), and two alternatives for the backward's dQ/dK kernel, the largest: key
# tiles of 32 (compiled for sm_90, no register spills; the default's 64 spill 32–40 bytes but measured
# faster in the tuning run, perf log entry 4) and 8 warps (64-wide tiles without spills, one program
# per multiprocessor).
SWEEP = {
    "auto": None,
    "bwd_k32": dict(bwd_block_k=32),
    "bwd_8warps": dict(bwd_num_warps=8),
}


def _counts(T: int, B: int, chunk: int) -> dict:
    """Bytes a perfect implementation moves, and the matrix-product FLOPs of the chunked algorithm.

    Bytes (bf16): forward reads q, k, v, log α and writes o; backward reads q, k, v, log α, dO and
    writes dq, dk, dv, d log α. FLOPs per token and head (C the chunk; the off-diagonal part of the
    intra-chunk matrix, ``K·C``; ``P V``, ``2·C·V``; ``(Q ⊙ e^b) S``, ``2KV``; the state update,
    ``2KV``. Backward: ``dP = dO Vᵀ`` and ``Pᵀ dO`` (``2·2·C·V``), the two intra gradients
    (``2 · K·C``), and five ``2KV`` products (dv, dq, dk inter; dS scan). These are the algorithm's
    FLOPs, not the kernels' (which spend more: one masked ``C × C`` product per halving level).
    """
    th = B * T * H
    fwd_bytes = th * (K + K + V + K + V) * ELEM
    bwd_bytes = th * (K + K + V + K + V) * ELEM + th * (K + K + V + K) * ELEM
    off = K * chunk
    fwd_flops = th * (off + 2 * chunk * V + 4 * K * V)
    bwd_flops = th * (4 * chunk * V + 2 * off + 10 * K * V)
    return {"fwd": (fwd_bytes, fwd_flops), "fwdbwd": (fwd_bytes + bwd_bytes, fwd_flops + bwd_flops)}


def _design_bytes(T: int, B: int, cfg) -> dict:
    """What our five kernels read and write in HBM, kernel by kernel (K = V; re-reads of the same
    data by programs that run at the same time are counted once: they hit the L2).

    ``x``: one ``[B, H, T, 128]`` bf16 tensor; ``s``: one bf16 state per chunk; ``p``: the bf16
    ``C × C`` matrix ``P`` (or ``dP``) per chunk.
    """
    th, C = B * T * H, cfg.chunk_size
    x = th * K * ELEM
    s = th / C * K * V * ELEM
    p = th * C * ELEM
    fwd = (
        (3 * x + s)  # states: read k, g, v; write S
        + (4 * x + s + x + p)  # output: read q, k, g, v, S; write o, P
    )
    bwd = (
        (3 * x + 2 * s)  # dstates: read q, g, dO, S_[i+1]; write dS
        + (4 * x + p + s + x + p)  # dv: read k, g, v, dO, P, dS; write dv, dP
        + (5 * x + 2 * s + p + 3 * x)  # bwd: read q, k, g, v, dO, S, dS, dP; write dq, dk, dg
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
    """fla's chunk_gla in its [B, T, H, D] layout."""
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


def _sweep(T, q, k, v, la, do, want, rep, settings, sweep_log, log) -> tuple:
    """Check and time every setting; return (best name, best Config or None, found) by forward+backward time."""
    from kernels import gla

    best = (None, None, math.inf)
    for name, kw in settings.items():
        # alternatives change the default as the GPU sizes it (config=None), one field at a time
        cfg = None if kw is None else dataclasses.replace(gla.config_for(q.shape[0], H, K, V, q.device), **kw)
        entry = {"T": T, "setting": name, "config": kw}
        t0 = time.time()
        try:
            fwd, fwdbwd, _ = _ours(q, k, v, la, do, cfg)
            o = fwd()
            fwdbwd()
            torch.cuda.synchronize()
            entry["compile_and_first_call_s"] = round(time.time() - t0, 1)
            entry["o_rel_err_vs_reference_fp32"] = round(_rel(o[:1, :4], want), 5)
            entry["fwd_ms"] = round(common.time_ms(fwd, rep=rep), 4)
            entry["fwdbwd_ms"] = round(common.time_ms(fwdbwd, rep=rep), 4)
            ok = entry["o_rel_err_vs_reference_fp32"] < 3e-2
            entry["correct"] = ok
            if ok and entry["fwdbwd_ms"] < best[2]:
                best = (name, cfg, entry["fwdbwd_ms"])
            if cfg is None:
                entry["config"] = dataclasses.asdict(gla.config_for(q.shape[0], H, K, V, q.device))
        except Exception as err:  # a setting the compiler rejects is a result too
            entry["error"] = repr(err)[:300]
        sweep_log.append(entry)
        log(f"T={T} sweep {entry}")
    return best[0], best[1], best[0] is not None


def _time_impl(f, fb, rep) -> dict:
    ms_f = common.time_ms(f, rep=rep)
    ms_fb = common.time_ms(fb, rep=rep)
    mem = common.peak_memory_mb(fb)
    return {
        "fwd_ms": round(ms_f, 4),
        "fwdbwd_ms": round(ms_fb, 4),
        "fwd_Mtok_s": round(TOKENS / ms_f / 1e3, 3),
        "fwdbwd_Mtok_s": round(TOKENS / ms_fb / 1e3, 3),
        "fwdbwd_peak_MiB": round(mem, 1),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench gla")
    parser.add_argument("--quick", action="store_true", help="T = 2k only, the default setting")
    parser.add_argument("--no-sweep", action="store_true", help="only the default setting")
    parser.add_argument("--out", default=None, help="directory for the JSON and plot (default docs/benchmarks)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths (default 2048 8192 32768)")
    parser.add_argument("--budget-s", type=float, default=290.0,
                        help="start no length after budget - 60 s; past the budget, only the default setting (default 290)")  # fmt: skip
    args = parser.parse_args(argv)

    from kernels import gla

    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.1f} s] {msg}", flush=True)

    # If a step stalls, print every thread's stack each minute: the log then says where.
    stack_dumps = common.start_stack_dumps(60)
    env = common.environment()
    ceilings = common.measure_ceilings()
    log(f"{env} {ceilings}")
    rep = 30 if args.quick else 60
    lengths = tuple(args.lengths) if args.lengths else ((2048,) if args.quick else LENGTHS)
    settings = {"auto": None} if (args.no_sweep or args.quick) else dict(SWEEP)

    rows, sweep_log, profiles, fla_first_call = [], [], {}, {}
    skipped = []
    name = "gla_quick" if args.quick else "gla"
    for T in lengths:
        # a length takes ~1 min once compiled (more with fla's first call): do not start one too late
        if time.time() - started > args.budget_s - 60:
            skipped.append(T)
            log(f"T={T}: skipped (time budget {args.budget_s:.0f} s)")
            continue
        B = TOKENS // T
        q, k, v, la, do = _inputs(T, B)
        want = _reference_slice(q, k, v, la)
        log(f"T={T}: inputs and reference ready")
        row = {"T": T, "B": B}
        profiles[T] = {}

        # 1. fla's first call (autotuning), before anything else
        impls = {}
        try:
            t0 = time.time()
            f = _fla(q, k, v, la, do)
            f[1]()
            torch.cuda.synchronize()
            fla_first_call[T] = round(time.time() - t0, 1)
            impls["fla_chunk_gla"] = f
            log(f"T={T}: fla first forward+backward (autotuning) took {fla_first_call[T]} s")
        except Exception as err:  # recorded: the ratios then omit fla
            row["fla_error"] = repr(err)[:300]
            log(f"T={T}: fla unavailable: {err!r}")

        # 2. where our time goes
        try:
            profiles[T]["ours_auto_fwdbwd"] = common.profile_kernels(_ours(q, k, v, la, do, None)[1])
            log(f"T={T}: profile of ours (auto) {profiles[T]['ours_auto_fwdbwd']}")
        except Exception as err:
            profiles[T]["ours_auto_fwdbwd"] = {"error": repr(err)[:300]}
            log(f"T={T}: ours failed: {err!r}")

        # 3. the sweep (past the budget: the default setting only)
        late = time.time() - started > args.budget_s
        todo = {"auto": None} if late else settings
        if late and len(settings) > 1:
            log(f"T={T}: past the time budget: the default setting only")
        best_name, cfg, found = _sweep(T, q, k, v, la, do, want, rep, todo, sweep_log, log)
        row["best_setting"] = best_name
        if found:
            used = cfg if cfg is not None else gla.config_for(B, H, K, V, q.device)
            row["best_config"] = dataclasses.asdict(used)
            impls = {"ours": _ours(q, k, v, la, do, cfg), **impls}
        else:
            log(f"T={T}: no setting of ours compiled and passed the check; timing the peers only")
        impls["torch_sdpa_causal"] = _sdpa(q, k, v, do)

        # 4. correctness, then times
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
        log(f"T={T}: check {check}")

        counts = _counts(T, B, 64 if cfg is None else cfg.chunk_size)
        for impl, (f, fb, _) in impls.items():
            try:
                row[impl] = _time_impl(f, fb, rep)
            except Exception as err:
                row[impl] = {"error": repr(err)[:300]}
                continue
            x = row[impl]
            log(f"T={T} {impl}: fwd {x['fwd_ms']:.3f} ms, fwd+bwd {x['fwdbwd_ms']:.3f} ms, peak {x['fwdbwd_peak_MiB']:.0f} MiB")
            if impl == "ours":
                design = _design_bytes(T, B, cfg if cfg is not None else gla.config_for(B, H, K, V, q.device))
                for mode in ("fwd", "fwdbwd"):
                    roof = common.roofline_fraction(x[f"{mode}_ms"], bytes_moved=counts[mode][0],
                                                    flops=counts[mode][1], ceilings=ceilings)  # fmt: skip
                    roof["design_bytes_GB"] = round(design[mode] / 1e9, 3)
                    roof["design_bytes_floor_ms"] = round(design[mode] / (ceilings["copy_TBps"] * 1e12) * 1e3, 4)
                    x[f"roofline_{mode}"] = roof
        if "fwd_ms" in row.get("ours", {}):
            for peer in [n for n in impls if n != "ours" and "fwd_ms" in row.get(n, {})]:
                for mode in ("fwd", "fwdbwd"):
                    row["ours"][f"{mode}_speedup_vs_{peer}"] = round(row[peer][f"{mode}_ms"] / row["ours"][f"{mode}_ms"], 3)
        if "fla_chunk_gla" in impls and "fwd_ms" in row.get("fla_chunk_gla", {}):
            try:
                profiles[T]["fla_chunk_gla_fwdbwd"] = common.profile_kernels(impls["fla_chunk_gla"][1])
            except Exception as err:
                profiles[T]["fla_chunk_gla_fwdbwd"] = {"error": repr(err)[:300]}
        rows.append(row)
        log(f"T={T}: {row}")
        del q, k, v, la, do, impls
        torch.cuda.empty_cache()

        # 5. the result so far: a run cut short keeps what it measured
        missing = [t for t in lengths if t not in [r["T"] for r in rows]]
        result = _result(env, ceilings, rows, sweep_log, profiles, fla_first_call, started, missing)
        path = _write(name, result, args.out)
        log(f"T={T}: wrote {path} ({'complete' if not missing else 'partial: missing ' + str(missing)})")

    stack_dumps.set()
    missing = [t for t in lengths if t not in [r["T"] for r in rows]]
    result = _result(env, ceilings, rows, sweep_log, profiles, fla_first_call, started, missing)
    path = _write(name, result, args.out)
    _print_table(result)
    log(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


def _write(name: str, result: dict, out_dir):
    path = common.write_json(name, result, out_dir)
    try:
        common.save_throughput_plot(result, LABELS, algorithm="Gated Linear Attention", path=path.with_suffix(".png"))
        common.copy_to_out(path.with_suffix(".png"))
    except Exception as err:  # the JSON is what matters; a plotting failure must not cost it
        print(f"plot failed: {err!r}", flush=True)
    return path


def _result(env, ceilings, rows, sweep_log, profiles, fla_first_call, started, missing) -> dict:
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
        "fla_first_call_s": fla_first_call,
        "complete": not missing,
        "lengths_missing": missing,
        "wall_s": round(time.time() - started, 1),
    }


LABELS = {
    "ours": "this package (Triton)",
    "fla_chunk_gla": "fla chunk_gla",
    "torch_sdpa_causal": "torch SDPA (causal softmax)",
}


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
    if not result.get("complete", True):
        print(f"\npartial result: lengths {result.get('lengths_missing')} were not measured")
