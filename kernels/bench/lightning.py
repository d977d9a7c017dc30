"""``python -m kernels.bench lightning``: Lightning Attention-2 beside fla and torch SDPA on one GPU.

Shapes (issue #3): B·T = 65,536 tokens, T ∈ {2k, 8k, 32k}, H = 16, K = V = 128, bf16, decays from
``reference.lightning.tnl_decay`` (for fla, ``g_gamma = log λ``: the same function), scale ``K^-0.5``
for every implementation. Measured in one run: the device's copy bandwidth and bf16 matmul rate,
then forward and forward+backward of each implementation, a sweep of our kernel's tile settings,
peak memory, a per-kernel time profile, and a correctness check of every output before timing.

Options: ``--quick`` (T = 2k only, fewer repetitions), ``--no-sweep``, ``--out DIR``.
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from kernels.bench import common

TOKENS = 65536
H, K, V = 16, 128, 128
LENGTHS = (2048, 8192, 32768)


def _counts(T: int, B: int, chunk: int) -> dict:
    """Bytes a perfect implementation moves, and the FLOPs our chunked kernels issue."""
    elem = 2  # bf16
    th = B * T * H  # token-heads
    fwd_bytes = th * (K + K + V + V) * elem  # read q, k, v; write o
    bwd_bytes = th * (K + K + V + V) * elem + th * (K + K + V) * elem  # read q, k, v, do; write dq, dk, dv
    # Per token-head: intra 2·C·(K+V) (full blocks), inter 2·K·V, state update 2·K·V.
    fwd_flops = th * (2 * chunk * (K + V) + 4 * K * V)
    return {"fwd": (fwd_bytes, fwd_flops), "fwdbwd": (fwd_bytes + bwd_bytes, 4 * fwd_flops)}


def _inputs(T: int, B: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g)

    q, k, v, do = rnd(B, H, T, K), rnd(B, H, T, K), rnd(B, H, T, V), rnd(B, H, T, V)
    return q, k, v, do


def _rel(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


def _implementations(T: int, B: int, decay: torch.Tensor, q, k, v, do):
    """name -> (forward callable, forward+backward callable, output for the check)."""
    from kernels import lightning

    scale = K**-0.5
    impls = {}
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]

    def ours(**cfg):
        fwd = lambda: lightning.attention(*leaves, decay, scale=scale, **cfg)  # noqa: E731

        def fwdbwd():
            for x in leaves:
                x.grad = None
            fwd().backward(do)

        return fwd, fwdbwd

    impls["ours"] = ours()

    try:
        from fla.ops.simple_gla import chunk_simple_gla

        g_gamma = torch.log(decay).float().cuda()
        f_leaves = [x.detach().transpose(1, 2).contiguous().requires_grad_(True) for x in (q, k, v)]
        f_do = do.transpose(1, 2).contiguous()

        def fla_fwd():
            return chunk_simple_gla(*f_leaves, g_gamma=g_gamma, scale=scale)[0]

        def fla_fwdbwd():
            for x in f_leaves:
                x.grad = None
            fla_fwd().backward(f_do)

        impls["fla_chunk_simple_gla"] = (fla_fwd, fla_fwdbwd)
    except Exception as err:  # recorded in the JSON's environment; the ratios then omit fla
        print(f"fla unavailable: {err!r}")

    s_leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]

    def sdpa_fwd():
        return torch.nn.functional.scaled_dot_product_attention(*s_leaves, is_causal=True, scale=scale)

    def sdpa_fwdbwd():
        for x in s_leaves:
            x.grad = None
        sdpa_fwd().backward(do)

    impls["torch_sdpa_causal"] = (sdpa_fwd, sdpa_fwdbwd)
    return impls, ours


def _check(T: int, B: int, decay, q, k, v, impls) -> dict:
    """Relative error of our bf16 output against the fp32 reference (first sequence) and against fla."""
    from reference import lightning as ref

    scale = K**-0.5
    checks = {}
    o = impls["ours"][0]().float()
    qs, ks, vs = (x[:1, :4].float() for x in (q, k, v))
    want, _ = ref.chunked(qs, ks, vs, decay[:4].float(), scale=scale, chunk_size=256)
    checks["ours_vs_reference_fp32"] = _rel(o[:1, :4], want)
    if "fla_chunk_simple_gla" in impls:
        f = impls["fla_chunk_simple_gla"][0]().float().transpose(1, 2)
        checks["fla_vs_reference_fp32"] = _rel(f[:1, :4], want)
        checks["ours_vs_fla"] = _rel(o, f)
    # Gradients of ours against fp32 autograd of the reference on a slice.
    leaves = [x[:1, :4].float().requires_grad_(True) for x in (q, k, v)]
    out, _ = ref.chunked(*leaves, decay[:4].float(), scale=scale, chunk_size=256)
    do_slice = torch.randn_like(out)
    out.backward(do_slice)
    from kernels import lightning

    ours_leaves = [x[:1, :4].detach().clone().requires_grad_(True) for x in (q, k, v)]
    lightning.attention(*ours_leaves, decay[:4], scale=scale).backward(do_slice.bfloat16())
    for name, a, b in zip("qkv", ours_leaves, leaves):
        checks[f"ours_d{name}_vs_reference_fp32"] = _rel(a.grad, b.grad)
    return {k_: round(v_, 5) for k_, v_ in checks.items()}


def _segment_options(T: int, B: int):
    """Segment counts worth trying: none, and 2..16 when B·H walks alone would leave SMs idle."""
    options = [1]
    if B * H < 256:
        options += [n for n in (2, 4, 8, 16) if T // n >= 2048]
    return options


def _sweep(T: int, ours, rep: int, sweep: list) -> tuple | None:
    """Time our kernel over tile settings; append every result (errors too) to ``sweep``."""
    from kernels import lightning

    B = TOKENS // T
    best = None
    # (columns per program, warps): a 128-column fp32 state tile wants eight warps' registers.
    tiles = ((32, 4), (64, 4), (128, 4), (128, 8))
    settings = itertools.product(tiles, _segment_options(T, B), (False, True))
    for (block_c, warps), n_seg, fused in settings:
        config = lightning.Config(num_warps=warps, num_stages=2, block_c=block_c, fused_dkdv=fused)
        seg = -(-T // n_seg)
        seg = -(-seg // 64) * 64
        entry = {"T": T, "block_c": block_c, "warps": warps, "segments": n_seg, "fused_dkdv": fused}
        try:
            f, fb = ours(segment_size=seg, config=config)
            entry |= {"fwd_ms": round(common.time_ms(f, rep=rep // 2), 4),
                      "fwdbwd_ms": round(common.time_ms(fb, rep=rep // 2), 4)}  # fmt: skip
        except Exception as err:  # a setting the compiler rejects is a result too
            entry["error"] = repr(err)[:200]
        sweep.append(entry)
        print(entry, flush=True)
        if "fwdbwd_ms" in entry and (best is None or entry["fwdbwd_ms"] < best["fwdbwd_ms"]):
            best = entry
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench lightning")
    parser.add_argument("--quick", action="store_true", help="T = 2k only, fewer repetitions")
    parser.add_argument("--no-sweep", action="store_true", help="skip the sweep of tile settings")
    parser.add_argument("--out", default=None, help="directory for the JSON and plot (default docs/benchmarks)")
    args = parser.parse_args(argv)

    from reference.lightning import tnl_decay

    # If a step stalls, print every thread's stack each minute: the log then says where.
    stack_dumps = common.start_stack_dumps(60)
    env = common.environment()
    ceilings = common.measure_ceilings()
    print(env, ceilings, flush=True)
    rep = 30 if args.quick else 100
    lengths = (2048,) if args.quick else LENGTHS
    # On the host: the kernel checks it there and caches its device copy (no sync per call).
    decay = torch.tensor(tnl_decay(H), dtype=torch.float32)

    rows, sweep, profiles = [], [], {}
    for T in lengths:
        B = TOKENS // T
        q, k, v, do = _inputs(T, B)
        impls, ours = _implementations(T, B, decay, q, k, v, do)
        row = {"T": T, "B": B, "check": _check(T, B, decay, q, k, v, impls)}
        print(f"T={T} check {row['check']}", flush=True)

        if not args.no_sweep:
            best = _sweep(T, ours, rep, sweep)
            print(f"T={T} best setting {best}", flush=True)
        chunk_default = 64

        for name, (f, fb) in impls.items():
            ms_f = common.time_ms(f, rep=rep)
            ms_fb = common.time_ms(fb, rep=rep)
            mem = common.peak_memory_mb(fb)
            print(f"T={T} {name}: fwd {ms_f:.3f} ms, fwd+bwd {ms_fb:.3f} ms, peak {mem:.0f} MiB", flush=True)
            counts = _counts(T, B, chunk_default)
            row[name] = {
                "fwd_ms": round(ms_f, 4),
                "fwdbwd_ms": round(ms_fb, 4),
                "fwd_Mtok_s": round(TOKENS / ms_f / 1e3, 2),
                "fwdbwd_Mtok_s": round(TOKENS / ms_fb / 1e3, 2),
                "fwdbwd_peak_MiB": round(mem, 1),
            }
            if name == "ours":
                row[name]["roofline_fwd"] = common.roofline_fraction(ms_f, bytes_moved=counts["fwd"][0],
                                                                     flops=counts["fwd"][1], ceilings=ceilings)
                row[name]["roofline_fwdbwd"] = common.roofline_fraction(ms_fb, bytes_moved=counts["fwdbwd"][0],
                                                                        flops=counts["fwdbwd"][1], ceilings=ceilings)
        for peer in [n for n in impls if n != "ours"]:
            for mode in ("fwd", "fwdbwd"):
                row["ours"][f"{mode}_speedup_vs_{peer}"] = round(row[peer][f"{mode}_ms"] / row["ours"][f"{mode}_ms"], 3)
        profiles[T] = {"ours_fwdbwd": common.profile_kernels(impls["ours"][1], top=12)}
        if "fla_chunk_simple_gla" in impls:
            profiles[T]["fla_fwdbwd"] = common.profile_kernels(impls["fla_chunk_simple_gla"][1], top=12)
        print(row, flush=True)
        rows.append(row)
        del q, k, v, do, impls
        torch.cuda.empty_cache()

    result = {
        "benchmark": "lightning",
        "environment": env,
        "ceilings": ceilings,
        "shape": {"tokens": TOKENS, "H": H, "K": K, "V": V, "dtype": "bfloat16", "scale": K**-0.5,
                  "decay": "reference.lightning.tnl_decay(16)"},  # fmt: skip
        "rows": rows,
        "sweep": sweep,
        "profile_ms": profiles,
    }
    stack_dumps.set()
    name = "lightning_quick" if args.quick else "lightning"
    path = common.write_json(name, result, args.out)
    common.save_throughput_plot(result, LABELS, algorithm="Lightning Attention-2", path=path.with_suffix(".png"))
    _print_table(result)
    return 0


#: Implementation keys of the JSON, and how the figures name them.
LABELS = {"ours": "this package (Triton)", "fla_chunk_simple_gla": "fla chunk_simple_gla",
          "torch_sdpa_causal": "torch SDPA (causal softmax)"}  # fmt: skip


def _print_table(result: dict) -> None:
    print("\n  T      impl                       fwd ms   fwd+bwd ms   Mtok/s (f+b)   x fla (f, f+b)   x sdpa (f+b)")
    for r in result["rows"]:
        for n in ("ours", "fla_chunk_simple_gla", "torch_sdpa_causal"):
            if n not in r:
                continue
            x = r[n]
            fla = (f"{x.get('fwd_speedup_vs_fla_chunk_simple_gla', math.nan):.2f}, "
                   f"{x.get('fwdbwd_speedup_vs_fla_chunk_simple_gla', math.nan):.2f}") if n == "ours" else ""  # fmt: skip
            sd = f"{x.get('fwdbwd_speedup_vs_torch_sdpa_causal', math.nan):.2f}" if n == "ours" else ""
            print(f"{r['T']:>6}  {n:<26} {x['fwd_ms']:>8.3f} {x['fwdbwd_ms']:>11.3f} {x['fwdbwd_Mtok_s']:>13.2f}   {fla:>14}   {sd:>10}")
