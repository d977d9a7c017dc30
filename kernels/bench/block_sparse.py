"""``python -m kernels.bench block_sparse``: SeerAttention's kernels beside flex_attention and torch SDPA.

Shapes: ``B = 1, H = 32, D = 128``, bf16, ``T ∈ {8k, 32k, 128k}``, blocks of 64 and 128, densities
0.1, 0.3, 0.5 of the causal block triangle. A mask keeps, in block-row ``i``, its diagonal and
``min(i+1, max(1, round(ρ(i+1)))) − 1`` other causal blocks drawn at random (seeded): the rule of
``reference.seer.select_topk``, applied to random scores. One run measures, printing as it goes:

1. the device's copy bandwidth and bf16 matmul rate;
2. at ``T = 32k``, density 0.1, a small sweep of our launch settings per block (``SWEEP``), each
   checked against fp32 SDPA on the token mask (two heads, the last 1024 rows) before it is
   timed; the fastest is used below;
3. per length (32k first, then 8k, then 128k) and block and density: ours end to end
   (``kernels.block_sparse.attention``: the mask's compaction and the attention kernel), ours on
   a mask compacted beforehand, ``flex_attention`` (compiled with ``torch.compile``) with a
   ``BlockMask`` built from the same kept blocks — off-diagonal blocks as *full* blocks (no mask
   function), the diagonal as the only *partial* block (a causal ``mask_mod``) — and its
   BlockMask build time apart; torch SDPA dense causal once per length. Our output is checked
   against flex's and against fp32 SDPA on the token mask (relative errors);
4. the ground-truth kernel (``kernels.seer.ground_truth``) against SDPA's dense causal forward: at
   32k a small sweep of its launch settings (``GT_SWEEP``, blocks of 64), the fastest then used at
   every length; blocks of 128 at 32k too;
5. per length, the gate's own cost (block 64, density 0.1): ``gate_mask`` — our pooling kernel,
   the per-head projections, ``kernels.seer.gate_topk`` (RoPE, scores, block-causal softmax,
   top-k in two kernels) — its stages apart, the CUDA time of each kernel, and the same gate in
   torch ops (``_TorchGate``), as a share of our sparse attention at that point.

``docs/benchmarks/block_sparse.json`` and ``.png`` are rewritten after every length (and copied to
``$OUT`` when set), ``"complete": false`` until the end. A time budget (``--budget-s``) skips what
would start too late. Options: ``--quick`` (8k only), ``--lengths T …``, ``--out DIR``, ``--budget-s S``,
``--parts`` (any of ``attention ground_truth gate``).
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
B, H, D = 1, 32, 128
LENGTHS = (32768, 8192, 131072)
BLOCKS = (64, 128)
DENSITIES = (0.1, 0.3, 0.5)
GATE_DIM = 128
SWEEP_T = 32768  # where the launch settings are swept
PARTS = ("attention", "ground_truth", "gate")
#: The pooling's launch settings tried at 32k, as (blocks per program, warps): few warps, which
#: keep its reductions inside threads (perf log, run 3).
POOL_SWEEP = ((1, 4), (1, 2), (2, 2), (4, 2), (1, 1), (2, 4))

#: Launch settings tried at T = 32k, density 0.1, as (block_m, block_n, num_warps, num_stages)
#: (each checked against SDPA on a slice before it is timed). Run 1's best first.
SWEEP = {
    64: {"default": None, "m64_n64_w4_s3": (64, None, 4, 3), "m64_n128_w8_s3": (64, 128, 8, 3),
         "m64_n128_w4_s2": (64, 128, 4, 2)},
    128: {"default": None, "m128_w8_s3": (128, None, 8, 3), "m128_n64_w8_s3": (128, 64, 8, 3),
          "m128_n64_w8_s4": (128, 64, 8, 4)},
}  # fmt: skip

#: Ground-truth launch settings tried at T = 32k, blocks of 64, as ``kernels.seer.Config``
#: (block_rows, num_warps, num_stages); the fastest correct one is used at every length.
GT_SWEEP = {"default": None, "r1_w4_s2": (1, 4, 2), "r2_w4_s3": (2, 4, 3), "r2_w8_s3": (2, 8, 3)}


def _inputs(T: int, seed: int = 0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return [torch.randn(B, H, T, D, device=DEVICE, dtype=torch.float32, generator=g).to(DTYPE) for _ in range(3)]


def _mask(T: int, block: int, density: float, seed: int) -> torch.Tensor:
    """Random scores through the density rule of ``reference.seer.select_topk`` (diagonal kept)."""
    n = -(-T // block)
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    scores = torch.rand(B, H, n, n, device=DEVICE, generator=g)
    return _select(scores, density)


def _select(scores: torch.Tensor, density: float) -> torch.Tensor:
    """Row ``i`` keeps its diagonal and the ``k_i − 1`` best other causal blocks,
    ``k_i = min(i+1, max(1, round(ρ(i+1))))``: one sort, ranks by a scatter."""
    n = scores.shape[-1]
    i = torch.arange(n, device=scores.device)
    keep_n = torch.tensor([min(r + 1, max(1, round(density * (r + 1)))) for r in range(n)], device=scores.device)
    s = scores.masked_fill(i[None, :] > i[:, None], float("-inf"))
    s = s.masked_fill(torch.eye(n, dtype=torch.bool, device=scores.device), float("inf"))
    order = s.argsort(-1, descending=True)
    rank = torch.empty_like(order).scatter_(-1, order, i.expand_as(order))
    return rank < keep_n[:, None]


def _density(mask: torch.Tensor) -> float:
    n = mask.shape[-1]
    return float(mask.sum()) / (mask.shape[0] * mask.shape[1] * n * (n + 1) / 2)


def _rel(a, b) -> float:
    """Relative Frobenius error, three significant digits."""
    a, b = a.float(), b.float()
    return float(f"{float((a - b).norm() / b.norm()):.3g}")


def _counts(T: int, block: int, density: float) -> tuple[float, float]:
    """(bytes, FLOPs) of a perfect block-sparse forward: q, k, v read once, o written once; the
    products ``q kᵀ`` and ``p v`` of the kept blocks (the diagonal ones half, causally)."""
    n = T / block
    kept = density * n * (n + 1) / 2
    pairs = (kept - n) * block * block + n * block * (block + 1) / 2
    return 4 * B * H * T * D * 2, 4 * B * H * D * pairs


def _flex_setup():
    """flex_attention compiled (``torch.compile``), and a BlockMask builder from a compacted mask."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    # one compiled function per block size: each sees three shapes (no recompile limit is reached)
    compiled = {block: torch.compile(flex_attention, dynamic=False) for block in BLOCKS}
    params = inspect.signature(BlockMask.from_kv_blocks).parameters

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    def block_mask(idx, cnt, T, block):
        """Off-diagonal kept blocks as full blocks; the diagonal as the one partial block."""
        n = idx.shape[-1]
        full_idx, full_cnt = idx, (cnt - 1).clamp_min(0).to(torch.int32)  # the diagonal is the last kept entry
        diag_idx = torch.arange(n, device=idx.device, dtype=torch.int32).view(1, 1, n, 1).expand(B, H, n, n).contiguous()
        diag_cnt = torch.ones(B, H, n, device=idx.device, dtype=torch.int32)
        extra = {}
        if "seq_lengths" in params:
            extra["seq_lengths"] = (T, T)
        if "compute_q_blocks" in params:
            extra["compute_q_blocks"] = False  # the forward needs the kv side only
        return BlockMask.from_kv_blocks(diag_cnt, diag_idx, full_cnt, full_idx.contiguous(), BLOCK_SIZE=block,
                                        mask_mod=causal, **extra)  # fmt: skip

    def run(q, k, v, bm, block):
        opts = None if block == 128 else {"BLOCK_M": block, "BLOCK_N": block}
        return compiled[block](q, k, v, block_mask=bm, scale=D**-0.5, kernel_options=opts)

    return block_mask, run


def gate_mask(q, k, wq, wk, *, block: int, density: float, rope_base: float = 10000.0, pool_setting=None) -> torch.Tensor:
    """The gate at inference, as this benchmark times it: ``q``'s mean and ``k``'s max, min and mean
    per block (``kernels.seer``'s pooling kernel), the per-head projections (one batched matmul
    each), then ``kernels.seer.gate_topk`` (RoPE at each block's first position, the block-causal
    softmax, the top-k rule) — the steps of ``reference.seer.AttnGate`` and ``select_topk``
    (``tests/test_seer_kernel.py`` checks this function against them). No host synchronisation:
    the RoPE tables and the per-row counts are built once per shape.

    ``q [B, H, T, D]`` and ``k [B, Hkv, T, D]`` before RoPE, ``wq [H, D, d_g]``, ``wk [Hkv, 3D, d_g]``;
    ``pool_setting``: ``(blocks per program, warps)`` of the pooling kernel (``None``: its
    defaults). Returns the bool block mask ``[B, H, n, n]``."""
    from kernels import seer

    if pool_setting is None:
        qf, kf = seer.pool_features(q, block=block, kinds=("avg",)), seer.pool_features(k, block=block)
    else:
        per, warps = pool_setting
        qf = seer._pool(q, block, ("avg",), per_program=per, num_warps=warps)
        kf = seer._pool(k, block, ("max", "min", "avg"), per_program=per, num_warps=warps)
    return seer.gate_topk(qf @ wq.to(q.dtype), kf @ wk.to(k.dtype), density=density, block=block, rope_base=rope_base)


class _TorchGate:
    """The same gate written in torch ops (``_torch_pool``, matmuls, rotate-half RoPE from cached
    tables, masked softmax, ``torch.topk`` at the row's largest count, a scatter), the baseline of
    ``gate_mask``. Ties may break differently (``topk`` does not promise the lower index)."""

    def __init__(self, n: int, gate_dim: int, block: int, density: float, device, dtype, base: float = 10000.0):
        theta = (torch.arange(n, dtype=torch.float64) * block)[:, None] * base ** (
            -torch.arange(0, gate_dim, 2, dtype=torch.float64) / gate_dim)  # fmt: skip
        self.cos = torch.cat([theta.cos(), theta.cos()], -1).to(device, dtype)
        self.sin = torch.cat([theta.sin(), theta.sin()], -1).to(device, dtype)
        counts = [min(r + 1, max(1, round(density * (r + 1)))) for r in range(n)]
        self.top = max(counts) - 1
        i = torch.arange(n, device=device)
        extra = torch.tensor(counts, device=device) - 1  # off-diagonal blocks kept per row
        self.keep = torch.arange(max(1, self.top), device=device)[None, :] < extra[:, None]
        self.causal = i[None, :] <= i[:, None]
        self.below = i[None, :] < i[:, None]
        self.eye = torch.eye(n, dtype=torch.bool, device=device)
        self.block, self.scale = block, gate_dim**-0.5

    def rope(self, x):
        a, b = x.chunk(2, dim=-1)
        return x * self.cos + torch.cat([-b, a], -1) * self.sin

    def __call__(self, q, k, wq, wk):
        qf = _torch_pool(q, self.block, "avg")
        kf = torch.cat([_torch_pool(k, self.block, kd) for kd in ("max", "min", "avg")], dim=-1)
        qg, kg = self.rope(qf @ wq.to(q.dtype)), self.rope(kf @ wk.to(k.dtype))
        kg = kg.repeat_interleave(q.shape[1] // k.shape[1], 1)  # GQA: each kv head's gate key to its query heads
        s = (qg.float() @ kg.float().transpose(-1, -2)) * self.scale
        p = s.masked_fill(~self.causal, float("-inf")).softmax(-1)
        mask = self.eye.expand_as(p).clone()
        if self.top > 0:
            idx = p.masked_fill(~self.below, float("-inf")).topk(self.top, dim=-1).indices
            mask.scatter_(-1, idx, self.keep.expand_as(idx) | mask.gather(-1, idx))
        return mask, p


def _gate_pipeline(T: int, block: int, density: float, result: dict):
    """The gate's stages at one point, weights random: ``({stage: fn}, checks, total)``; the whole
    pipeline is ``"total"`` (``gate_mask``, also returned as ``total``), its torch-ops version
    ``"torch_total"``. At 32k our pooling's launch settings are swept first (``POOL_SWEEP``,
    ``k``'s three kinds); the fastest is used in ``"total"`` at every length
    (``result["gate_pool_setting"]``)."""
    from kernels import seer

    g = torch.Generator(device=DEVICE).manual_seed(5)
    wq = (torch.randn(H, D, GATE_DIM, device=DEVICE, generator=g) * D**-0.5).to(DTYPE)
    wk = (torch.randn(H, 3 * D, GATE_DIM, device=DEVICE, generator=g) * (3 * D) ** -0.5).to(DTYPE)
    q, k, _ = _inputs(T, seed=1)
    n = -(-T // block)
    checks = {}
    if T == SWEEP_T:  # (blocks per program, warps)
        want = seer._pool(k, block, ("max", "min", "avg"))
        sweep = {}
        for per, warps in POOL_SWEEP:
            def run(per=per, warps=warps):
                return seer._pool(k, block, ("max", "min", "avg"), per_program=per, num_warps=warps)

            if torch.equal(run(), want):
                sweep[f"{per},{warps}"] = round(common.time_ms(run), 4)
        checks["pool_k_sweep_ms"] = sweep
        result["gate_pool_setting"] = tuple(int(x) for x in min(sweep, key=sweep.get).split(","))
    setting = result.get("gate_pool_setting") or (1, None)
    checks["pool_setting"] = {"per_program": setting[0], "num_warps": setting[1]}
    torch_gate = _TorchGate(n, GATE_DIM, block, density, DEVICE, DTYPE)

    def pool():
        return (seer._pool(q, block, ("avg",), per_program=setting[0], num_warps=setting[1]),
                seer._pool(k, block, ("max", "min", "avg"), per_program=setting[0], num_warps=setting[1]))  # fmt: skip

    def pool_torch():
        return _torch_pool(q, block, "avg"), torch.cat([_torch_pool(k, block, kd) for kd in ("max", "min", "avg")], dim=-1)

    qf, kf = pool()
    qg, kg = qf @ wq, kf @ wk
    stages = {
        "pool_triton": pool,
        "pool_torch": pool_torch,
        "project": lambda: (qf @ wq, kf @ wk),
        "select": lambda: seer.gate_topk(qg, kg, density=density, block=block),
        "total": lambda: gate_mask(q, k, wq, wk, block=block, density=density, pool_setting=setting),
        "torch_total": lambda: torch_gate(q, k, wq, wk),
    }
    diffs = [float((a.float() - b.float()).abs().max()) for a, b in zip(pool(), pool_torch())]
    checks["pool_triton_vs_torch_max_abs_diff"] = max(diffs)
    mask, probs = seer.gate_topk(qg, kg, density=density, block=block, return_probs=True)
    checks["total_equals_its_stages"] = bool(torch.equal(stages["total"](), mask))
    tmask, tprobs = torch_gate(q, k, wq, wk)
    checks["probs_rel_err_vs_torch"] = _rel(probs, tprobs)
    checks["mask_agreement_vs_torch"] = round(float((mask == tmask).float().mean()), 6)
    checks["mask_density"] = round(_density(mask), 4)
    return stages, checks, stages["total"]


def _torch_pool(x, block: int, kind: str):
    """Block pooling in torch (pad, view, reduce: one pass per kind), the baseline of ours."""
    b, h, T, d = x.shape
    n = -(-T // block)
    fill = {"avg": 0.0, "max": float("-inf"), "min": float("inf")}[kind]
    xp = torch.nn.functional.pad(x, (0, 0, 0, n * block - T), value=fill).view(b, h, n, block, d)
    if kind == "max":
        return xp.amax(3)
    if kind == "min":
        return xp.amin(3)
    counts = torch.full((n, 1), float(block), device=x.device)
    counts[-1] = T - (n - 1) * block
    return (xp.float().sum(3) / counts).to(x.dtype)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench block_sparse")
    parser.add_argument("--quick", action="store_true", help="T = 8k only, no sweep")
    parser.add_argument("--out", default=None, help="directory for the JSON and plot (default docs/benchmarks)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths (default 32768 8192 131072)")
    parser.add_argument("--budget-s", type=float, default=230.0, help="start nothing new after this many seconds")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to measure (default all): the attention points, the ground truth, the gate")  # fmt: skip
    args = parser.parse_args(argv)

    from kernels import seer

    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.1f} s] {msg}", flush=True)

    def late(need_s: float) -> bool:
        return time.time() - started > args.budget_s - need_s

    stack_dumps = common.start_stack_dumps(60)
    env = common.environment()
    ceilings = common.measure_ceilings()
    log(f"{env} {ceilings}")
    lengths = tuple(args.lengths) if args.lengths else ((8192,) if args.quick else LENGTHS)
    name = "block_sparse_quick" if args.quick else "block_sparse"
    flex_mask, flex_run = _flex_setup()
    result = {
        "benchmark": "block_sparse",
        "environment": env,
        "ceilings": ceilings,
        "shape": {"B": B, "H": H, "Hkv": H, "D": D, "dtype": "bfloat16", "scale": D**-0.5,
                  "mask": "diagonal + random causal blocks, k_i = min(i+1, max(1, round(rho (i+1)))) per row, seeded"},  # fmt: skip
        "sweep": [],
        "rows": [],
        "sdpa_dense_ms": {},
        "gate": [],
        "ground_truth_sweep": [],
        "ground_truth": [],
        "skipped": [],
    }
    best = {blk: None for blk in BLOCKS}
    gt_best = None

    def save():
        result["wall_s"] = round(time.time() - started, 1)
        _write(name, result, args.out)

    with torch.no_grad():
        for T in lengths:
            q, k, v = _inputs(T)
            if late(20):
                result["skipped"].append({"T": T, "why": "time budget"})
                log(f"T={T}: skipped (budget)")
                continue
            sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
            sdpa()
            result["sdpa_dense_ms"][str(T)] = round(common.time_ms(sdpa), 4)
            log(f"T={T}: SDPA dense causal {result['sdpa_dense_ms'][str(T)]} ms")
            for block in BLOCKS if "attention" in args.parts else ():
                for density in DENSITIES:
                    if late(15 if T <= 32768 else 25):
                        result["skipped"].append({"T": T, "block": block, "density": density, "why": "time budget"})
                        log(f"T={T} block={block} density={density}: skipped (budget)")
                        continue
                    row = _point(T, block, density, q, k, v, best, result, flex_mask, flex_run, args, log)
                    result["rows"].append(row)
                    log(f"T={T} block={block} density={density}: {row}")
                save()
            if "ground_truth" in args.parts and not late(15):
                sd = result["sdpa_dense_ms"][str(T)]
                if T == SWEEP_T and gt_best is None:
                    gt_best = _ground_truth_sweep(T, q, k, sd, result, log)
                for block in BLOCKS if T == SWEEP_T else BLOCKS[:1]:
                    cfg = gt_best if block == BLOCKS[0] else None
                    result["ground_truth"].append(_ground_truth(T, block, q, k, sd, seer, log, config=cfg))
                save()
            if "gate" in args.parts and not late(10):
                result["gate"].append(_gate(T, BLOCKS[0], 0.1, result, log, (q, k, v)))
                save()
            del q, k, v
            torch.cuda.empty_cache()

    stack_dumps.set()
    result["complete"] = not result["skipped"]
    save()
    _print_table(result)
    return 0


def _point(T, block, density, q, k, v, best, result, flex_mask, flex_run, args, log) -> dict:
    from kernels import block_sparse

    mask = _mask(T, block, density, seed=T + block + int(density * 100))
    row = {"T": T, "block": block, "density": density, "achieved_density": round(_density(mask), 4)}
    idx, cnt = block_sparse.compact(mask)
    t0 = time.time()
    bm = flex_mask(idx, cnt, T, block)
    torch.cuda.synchronize()
    row["flex_blockmask_build_s"] = round(time.time() - t0, 3)
    o_flex = None
    try:
        t0 = time.time()
        o_flex = flex_run(q, k, v, bm, block)
        torch.cuda.synchronize()
        row["flex_compile_and_first_call_s"] = round(time.time() - t0, 1)
    except Exception as err:  # a failure of the peer is a result too
        row["flex_error"] = repr(err)[:300]
        log(f"flex failed: {err!r}")

    # the sweep, once per block, at the first point of 32k / density 0.1
    if best[block] is None and T == SWEEP_T and density == 0.1 and not args.quick:
        fastest = (math.inf, None)
        for tag, setting in SWEEP[block].items():
            cfg = None if setting is None else block_sparse.Config(*setting)
            entry = {"T": T, "block": block, "setting": tag, "config": dataclasses.asdict(cfg or block_sparse.config_for(block))}
            try:
                t0 = time.time()
                o = block_sparse.attention(q, k, v, mask, block=block, config=cfg)
                torch.cuda.synchronize()
                entry["compile_and_first_call_s"] = round(time.time() - t0, 1)
                entry["rel_err_vs_flex"] = _rel(o, o_flex) if o_flex is not None else None
                entry["rel_err_vs_sdpa_fp32_slice"] = _check_slice(o, q, k, v, mask, block)
                ok = entry["rel_err_vs_sdpa_fp32_slice"] < 2e-2
                entry["correct"] = ok
                entry["ms"] = round(common.time_ms(lambda: block_sparse.attention(q, k, v, (idx, cnt), block=block,
                                                                                    config=cfg)), 4)  # fmt: skip
                if ok and entry["ms"] < fastest[0]:
                    fastest = (entry["ms"], cfg)
            except Exception as err:
                entry["error"] = repr(err)[:300]
            result["sweep"].append(entry)
            log(f"sweep {entry}")
        best[block] = fastest[1] or block_sparse.config_for(block)
    cfg = best[block] or block_sparse.config_for(block)
    row["config"] = dataclasses.asdict(cfg)

    def ours():
        return block_sparse.attention(q, k, v, mask, block=block, config=cfg)

    def ours_kernel():
        return block_sparse.attention(q, k, v, (idx, cnt), block=block, config=cfg)

    o = ours()
    if o_flex is not None:
        row["rel_err_vs_flex"] = _rel(o, o_flex)
    row["rel_err_vs_sdpa_fp32_slice"] = _check_slice(o, q, k, v, mask, block)
    row["ours_ms"] = round(common.time_ms(ours), 4)
    row["ours_kernel_only_ms"] = round(common.time_ms(ours_kernel), 4)
    row["ours_compact_ms"] = round(common.time_ms(lambda: block_sparse.compact(mask)), 4)
    if o_flex is not None:
        row["flex_ms"] = round(common.time_ms(lambda: flex_run(q, k, v, bm, block)), 4)
        row["ours_speedup_vs_flex"] = round(row["flex_ms"] / row["ours_ms"], 3)
        row["ours_kernel_speedup_vs_flex"] = round(row["flex_ms"] / row["ours_kernel_only_ms"], 3)
    sd = result["sdpa_dense_ms"][str(T)]
    row["ours_speedup_vs_sdpa_dense"] = round(sd / row["ours_ms"], 3)
    if "flex_ms" in row:
        row["flex_speedup_vs_sdpa_dense"] = round(sd / row["flex_ms"], 3)
    bytes_, flops = _counts(T, block, row["achieved_density"])
    row["roofline_ours"] = common.roofline_fraction(row["ours_ms"], bytes_moved=bytes_, flops=flops, ceilings=result["ceilings"])
    row["ours_TFLOPs"] = round(flops / row["ours_ms"] / 1e9, 1)
    del bm, idx, cnt, mask
    return row


def _check_slice(o, q, k, v, mask, block, heads: int = 2, rows: int = 1024) -> float:
    """Our rows ``[T − rows, T)`` of the first ``heads`` heads against fp32 SDPA on the token mask."""
    T = q.shape[2]
    rows = min(rows, T)
    t = torch.arange(T - rows, T, device=q.device)
    s = torch.arange(T, device=q.device)
    visible = mask[0, :heads][:, t // block][:, :, s // block] & (s[None, :] <= t[:, None])
    want = torch.nn.functional.scaled_dot_product_attention(
        q[0, :heads, T - rows:].float(), k[0, :heads].float(), v[0, :heads].float(), attn_mask=visible, scale=D**-0.5
    )
    return _rel(o[0, :heads, T - rows:], want)


def _gate(T, block, density, result, log, qkv) -> dict:
    """The gate's cost beside our sparse attention at the same point (timed here when the attention
    points were not run)."""
    from kernels import block_sparse

    out = {"T": T, "block": block, "density": density, "gate_dim": GATE_DIM}
    try:
        stages, checks, total = _gate_pipeline(T, block, density, result)
        out.update(checks)
        for stage, fn in stages.items():
            fn()
            out[f"{stage}_ms"] = round(common.time_ms(fn), 4)
        out["total_kernels_ms"] = common.profile_kernels(total)
        sparse = [r["ours_ms"] for r in result["rows"] if r["T"] == T and r["block"] == block and r["density"] == density]
        if not sparse:
            mask = _mask(T, block, density, seed=T + block + int(density * 100))
            sparse = [round(common.time_ms(lambda: block_sparse.attention(*qkv, mask, block=block)), 4)]
        out["sparse_attention_ms"] = sparse[0]
        out["gate_share_of_sparse_attention"] = round(out["total_ms"] / sparse[0], 3)
        out["torch_gate_share_of_sparse_attention"] = round(out["torch_total_ms"] / sparse[0], 3)
    except Exception as err:
        out["error"] = repr(err)[:300]
    log(f"gate {out}")
    return out


def _ground_truth_sweep(T, q, k, sdpa_ms, result, log):
    """``GT_SWEEP`` at blocks of 64, each checked (rows sum to 1, equal to the default's output)
    before it is timed; the fastest ``Config``."""
    from kernels import seer

    fastest, ref = (math.inf, None), None
    for tag, setting in GT_SWEEP.items():
        cfg = seer.config_for(64) if setting is None else seer.Config(*setting)
        entry = {"T": T, "block": 64, "setting": tag, "config": dataclasses.asdict(cfg)}
        try:
            g = seer.ground_truth(q, k, block=64, config=cfg)
            ref = g if ref is None else ref
            entry["rel_err_vs_default"] = _rel(g, ref)
            entry["rows_sum_to_one_max_err"] = float((g.sum(-1) - 1).abs().max())
            del g
            entry["ms"] = round(common.time_ms(lambda: seer.ground_truth(q, k, block=64, config=cfg)), 4)
            entry["ratio_to_sdpa_dense_forward"] = round(entry["ms"] / sdpa_ms, 3)
            if entry["rel_err_vs_default"] < 1e-4 and entry["rows_sum_to_one_max_err"] < 1e-4 and entry["ms"] < fastest[0]:
                fastest = (entry["ms"], cfg)
        except Exception as err:
            entry["error"] = repr(err)[:300]
        result["ground_truth_sweep"].append(entry)
        log(f"ground-truth sweep {entry}")
    return fastest[1]


def _ground_truth(T, block, q, k, sdpa_ms, seer, log, config=None) -> dict:
    cfg = config or seer.config_for(block)
    entry = {"T": T, "block": block, "config": dataclasses.asdict(cfg)}
    try:
        t0 = time.time()
        g = seer.ground_truth(q, k, block=block, config=cfg)
        torch.cuda.synchronize()
        entry["compile_and_first_call_s"] = round(time.time() - t0, 1)
        entry["rows_sum_to_one_max_err"] = float((g.sum(-1) - 1).abs().max())
        if T <= 8192:  # against the materialised probabilities of two heads, fp32
            qs, ks = q[:, :2].float(), k[:, :2].float()
            s = (qs @ ks.transpose(-1, -2)) * D**-0.5
            t = torch.arange(T, device=DEVICE)
            P = s.masked_fill(t[None, :] > t[:, None], float("-inf")).softmax(-1)
            n = -(-T // block)
            pooled = P.view(1, 2, n, block, n, block).amax((3, 5))
            want = pooled / pooled.sum(-1, keepdim=True)
            entry["rel_err_vs_materialised_fp32"] = _rel(g[:, :2], want)
            del s, P
        entry["ms"] = round(common.time_ms(lambda: seer.ground_truth(q, k, block=block, config=cfg)), 4)
        entry["sdpa_dense_forward_ms"] = sdpa_ms
        entry["ratio_to_sdpa_dense_forward"] = round(entry["ms"] / sdpa_ms, 3)
    except Exception as err:
        entry["error"] = repr(err)[:300]
    log(f"ground truth {entry}")
    return entry


def _write(name: str, result: dict, out_dir) -> None:
    path = common.write_json(name, result, out_dir)
    try:
        fig = plot(result)
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
        png = path.with_suffix(".png")
        fig.savefig(png, dpi=110)
        common.copy_to_out(png)
    except Exception as err:  # the JSON is what matters
        print(f"plot failed: {err!r}", flush=True)


def plot(result: dict):
    """Speed-up over SDPA dense causal against density, per length and block: ours and flex, with
    ``1/density`` (the ideal) dashed. Returns a matplotlib ``Figure`` (no pyplot, no backend change)."""
    from matplotlib.figure import Figure

    rows = result["rows"]
    lengths = sorted({r["T"] for r in rows})
    fig = Figure(figsize=(4.2 * max(1, len(lengths)), 3.8))
    axes = fig.subplots(1, max(1, len(lengths)), squeeze=False)[0]
    for ax, T in zip(axes, lengths):
        for block, color in zip(BLOCKS, ("tab:blue", "tab:orange")):
            pts = sorted((r for r in rows if r["T"] == T and r["block"] == block), key=lambda r: r["density"])
            if not pts:
                continue
            dens = [r["achieved_density"] for r in pts]
            ax.plot(dens, [r["ours_speedup_vs_sdpa_dense"] for r in pts], "o-", color=color, label=f"ours, block {block}")
            fl = [(r["achieved_density"], r["flex_speedup_vs_sdpa_dense"]) for r in pts if "flex_speedup_vs_sdpa_dense" in r]
            if fl:
                ax.plot(*zip(*fl), "s--", color=color, alpha=0.6, label=f"flex_attention, block {block}")
        xs = [0.08 + 0.01 * i for i in range(50)]
        ax.plot(xs, [1 / x for x in xs], ":", color="gray", label="1 / density")
        ax.set_title(f"T = {T // 1024}k (SDPA dense {result['sdpa_dense_ms'].get(str(T), float('nan')):.2f} ms)", fontsize=9)
        ax.set_xlabel("kept share of the causal blocks")
        ax.set_ylabel("speed-up over SDPA dense causal")
        ax.set_ylim(0, 12)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    env = result["environment"]
    fig.suptitle(f"block-sparse attention, B=1, H=32, D=128, bf16 — {env['device']}, torch {env['torch']}, "
                 f"triton {env['triton']}, {env['date'][:10]}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    return fig


def _print_table(result: dict) -> None:
    print("\nsweep:")
    for e in result["sweep"]:
        print(f"  block {e['block']:>3} {e['setting']:<12} {e.get('ms', math.nan):>8.3f} ms  err vs flex {e.get('rel_err_vs_flex')}  {e.get('error', '')[:80]}")
    print("\n     T  blk  dens  ach.   ours ms  kernel ms  flex ms  x flex  x sdpa (flex x sdpa)  TFLOP/s  err vs flex, vs sdpa slice")
    for r in result["rows"]:
        print(f"{r['T']:>6} {r['block']:>4} {r['density']:>5} {r['achieved_density']:>6.3f} {r['ours_ms']:>9.3f} {r['ours_kernel_only_ms']:>10.3f}"
              f" {r.get('flex_ms', math.nan):>8.3f} {r.get('ours_speedup_vs_flex', math.nan):>7.2f} {r['ours_speedup_vs_sdpa_dense']:>7.2f}"
              f" ({r.get('flex_speedup_vs_sdpa_dense', math.nan):>5.2f}) {r['ours_TFLOPs']:>12.0f}  {r.get('rel_err_vs_flex')}, {r.get('rel_err_vs_sdpa_fp32_slice')}")  # fmt: skip
    print(f"\nSDPA dense causal ms: {result['sdpa_dense_ms']}")
    for e in result["gate"]:
        print(f"gate: {e}")
    for e in result["ground_truth_sweep"]:
        print(f"ground-truth sweep: {e}")
    for e in result["ground_truth"]:
        print(f"ground truth: {e}")
    if result["skipped"]:
        print(f"skipped: {result['skipped']}")
