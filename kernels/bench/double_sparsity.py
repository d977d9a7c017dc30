"""``python -m kernels.bench double_sparsity``: one Double Sparsity decoding step, and offloaded decoding.

Part 1 — one decoding step (``kernels.double_sparsity.decode_with_labels``: label scores, top-k and
sparse attention, all included) beside torch SDPA dense decoding and the plain torch version of the
same sparse step a practitioner writes first (label matmul, ``torch.topk``, gather, SDPA). Shapes:
``S ∈ {32k, 128k, 256k}``, ``B ∈ {1, 8}``, ``H = Hkv = 32`` (multi-head: every query head has its own
kv head, the largest cache), ``D = 128``, fp16, ``top_k = S / 16``; labels at the paper's 1/16 of the
key bits two ways: ``r = 16`` channels at 8 bits (int8 plus one fp16 scale per token) and ``r = 8`` at
16 bits. Each case is checked first (our output against fp32 torch attention over the indices our
selection chose; our selection against ``torch.topk`` of fp32 label scores), then timed twice:
eagerly (``do_bench``: Python launches included) and as a CUDA graph replay (``do_bench_cudagraph``:
what a serving loop that captures its decode step pays). Ours is timed with both score keys:
the fp32 scores (the default: the reference's selection) and the scores rounded to fp16
(``Config(score_dtype="float16")``: the exact top-k of the rounded scores, checked against torch's
stable top-k of the same rounding); and with ``torch.topk`` in place of our selection
(``select="torch"``).

Part 2 — offloaded decoding (``kernels.double_sparsity_offload``): a synthetic 4-layer decoder with
random weights (``d_model = 4096, H = 32, D = 128``, fp16; per layer RMSNorm, W_q, attention, W_o),
every layer's K and V in pinned host memory, label caches on the GPU. Tokens per second of
Double Sparsity-Offload (the ``top_k = S/16`` selected rows fetched per layer, the next layer's
fetch predicted and overlapped) against the dense offloaded baseline that copies each layer's
whole cache (prefetching the next layer while this one computes), and a per-stream timeline of one
step of each drawn from CUDA-event timestamps. The offloaded step is checked against the same step
with the caches on the GPU (equal outputs).

Writes ``docs/benchmarks/double_sparsity.json`` / ``.png`` and ``double_sparsity_offload.json`` /
``double_sparsity_offload_timeline.png`` (and copies to ``$OUT`` when set) as it goes. Options:
``--quick`` (S = 32k, B = 1 only; small offload), ``--lengths``, ``--batches``, ``--no-offload``,
``--no-decode``, ``--no-sweep``, ``--out DIR``, ``--budget-s S`` (default 230: later cases are
skipped, never cut mid-way).
"""

from __future__ import annotations

import argparse
import time

import torch

from kernels.bench import common

DEVICE = "cuda"
H = 32
D = 128
DTYPE = torch.float16
ELEM = 2
LENGTHS = (32768, 131072, 262144)
OFFLOAD_LENGTHS = (32768, 262144)
OFFLOAD_LAYERS, OFFLOAD_D_MODEL = 4, 4096
BATCHES = (1, 8)
LABELS = {  # name: (r, bits)
    "r16_8bit": (16, 8),
    "r8_16bit": (8, 16),
}
PLOT_LABELS = {
    "sdpa_dense": "torch SDPA, dense",
    "ours_dense": "ours, dense (top_k = S)",
    "torch_sparse_r8_16bit": "torch sparse step (r=8, 16-bit)",
    "torch_sparse_r16_8bit": "torch sparse step (r=16, 8-bit)",
    "ours_r8_16bit": "ours, fp32 keys (r=8, 16-bit)",
    "ours_r16_8bit": "ours, fp32 keys (r=16, 8-bit)",
    "ours_r16_8bit_torch_topk": "ours with torch.topk (r=16, 8-bit)",
    "ours_r8_16bit_fp16keys": "ours, fp16 keys (r=8, 16-bit)",
    "ours_r16_8bit_fp16keys": "ours, fp16 keys (r=16, 8-bit)",
}
#: The score keys timed: the fp32 scores (the default, the reference's selection) and the scores
#: rounded to fp16 (``Config(score_dtype="float16")``: the exact top-k of the rounded scores).
KEYS = {"": {}, "_fp16keys": {"score_dtype": "float16"}}


def _rel(a, b) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def _bytes(B: int, S: int, top_k: int, r: int, bits: int) -> dict:
    """The fewest bytes a step can move: dense reads K and V once; the sparse step reads the labels
    (and int8 labels' fp16 scales) once and ``top_k`` rows of K and V per head."""
    label_bytes = r * bits // 8 + (2 if bits == 8 else 0)
    dense = 2 * B * H * S * D * ELEM
    sparse = B * H * S * label_bytes + 2 * B * H * top_k * D * ELEM
    scores = 2 * B * H * S * 4  # fp32 scores written and read once (our design; not in the floor)
    return {"dense": dense, "sparse": sparse, "sparse_plus_scores": sparse + scores}


def _torch_sparse(q, k, v, values, scale_tok, channels, top_k):
    """The plain torch version: label matmul, topk, gather, SDPA (what one writes first)."""
    ch = channels.long()
    qc = q.gather(2, ch[None].expand(q.shape[0], -1, -1))  # [B, H, r] (MHA: kv head = query head)
    lab = values if scale_tok is None else values.to(q.dtype) * scale_tok[..., None]
    s = torch.einsum("bhr,bhsr->bhs", qc, lab)
    idx = torch.topk(s, top_k, dim=-1).indices
    ix = idx[..., None].expand(-1, -1, -1, k.shape[-1])
    ks, vs = k.gather(2, ix), v.gather(2, ix)
    return torch.nn.functional.scaled_dot_product_attention(q[:, :, None], ks, vs)[:, :, 0]


def _sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q[:, :, None], k, v)[:, :, 0]


def _check(q, k, v, lab, channels, top_k, cfg) -> dict:
    """Ours against fp32 torch attention over our indices, and our selection against torch.topk
    (of the fp32 scores; with fp16 keys also the stable top-k of the scores rounded to fp16)."""
    from kernels import double_sparsity as ds

    o = ds.decode_with_labels(q, k, v, lab, channels, top_k=top_k, config=cfg)
    idx = ds.select(q, lab, channels, top_k=top_k, config=cfg).long()
    ix = idx[..., None].expand(-1, -1, -1, D)
    ks, vs = k.gather(2, ix).float(), v.gather(2, ix).float()
    want = torch.nn.functional.scaled_dot_product_attention(q[:, :, None].float(), ks, vs)[:, :, 0]
    values = lab.values.float() * (lab.scale.float()[..., None] if lab.scale is not None else 1.0)
    qc = q.float().gather(2, channels.long()[None].expand(q.shape[0], -1, -1))
    s = torch.einsum("bhr,bhsr->bhs", qc, values)
    kth = s.topk(top_k, dim=-1).values[..., -1:]
    chosen = s.gather(2, idx)
    t_idx = s.topk(top_k, dim=-1).indices
    overlap = torch.zeros_like(s, dtype=torch.bool).scatter_(2, t_idx, True).gather(2, idx).float().mean()
    out = {
        "o_rel_err_vs_fp32_same_indices": round(_rel(o, want), 6),
        "selected_below_kth_score": int((chosen < kth - 1e-4 * kth.abs().clamp_min(1)).sum()),
        "overlap_with_torch_topk": round(float(overlap), 6),
        "indices_increasing": bool((idx[..., 1:] > idx[..., :-1]).all()),
    }
    if cfg is not None and cfg.score_dtype == "float16":
        # torch sums in another order: a score's fp32 value (rarely its fp16 rounding) may differ by a unit
        s16 = s.half().float()
        order = torch.sort(-s16, dim=-1, stable=True).indices[..., :top_k]
        mine = torch.zeros_like(s16, dtype=torch.bool).scatter_(2, idx, True)
        theirs = torch.zeros_like(s16, dtype=torch.bool).scatter_(2, order, True)
        kth16 = s16.gather(2, order).min(dim=-1, keepdim=True).values
        differ = mine ^ theirs
        far = differ & ((s16 - kth16).abs() > torch.finfo(torch.float16).eps * kth16.abs())
        out["fp16_tokens_differing_from_torch_fp16_topk"] = int(differ.sum())
        out["fp16_differing_tokens_beyond_one_fp16_unit_of_kth"] = int(far.sum())
        out["fp16_tokens_differing_from_fp32_topk"] = int((~mine).logical_and(
            torch.zeros_like(mine).scatter_(2, t_idx, True)).sum())  # fmt: skip
    return out


#: Launch settings tried at the longest cache (each checked against the default first): the
#: selection (label scores, radix passes, counting and writing) and the attention, timed apart.
SELECT_SWEEP = {
    "default": {},
    "radix_block_2048": dict(radix_block=2048),
    "radix_block_8192": dict(radix_block=8192),
    "digits_5_5_6_8_8": dict(digits=(5, 5, 6, 8, 8)),
    "fp16keys": dict(score_dtype="float16"),
    "fp16keys_radix_block_1024": dict(score_dtype="float16", radix_block=1024),
    "fp16keys_radix_block_2048": dict(score_dtype="float16", radix_block=2048),
    "fp16keys_radix_block_8192": dict(score_dtype="float16", radix_block=8192),
    "fp16keys_digits_8_8": dict(score_dtype="float16", digits=(8, 8)),
    "fp16keys_digits_6_5_5": dict(score_dtype="float16", digits=(6, 5, 5)),
    "fp16keys_atomic_pass_2": dict(score_dtype="float16", atomic_from_pass=2),
    "fp16keys_digits_4_6_6": dict(score_dtype="float16", digits=(4, 6, 6)),
    "fp16keys_score_tiles_2": dict(score_dtype="float16", score_tiles=2),
    "fp16keys_score_tiles_8": dict(score_dtype="float16", score_tiles=8),
    "fp16keys_select_block_4096": dict(score_dtype="float16", select_block=4096),
    "fp16keys_warps_8": dict(score_dtype="float16", num_warps=8),
}
ATTN_SWEEP = {
    "default": {},
    "attn_block_32": dict(attn_block=32),
    "attn_block_128": dict(attn_block=128),
    "splits_x2": "x2",
    "prefetch": dict(attn_prefetch=True),
    "prefetch_block_32": dict(attn_prefetch=True, attn_block=32),
    "prefetch_block_32_splits_x2": ("x2", dict(attn_prefetch=True, attn_block=32)),
    "prefetch_warps_8": dict(attn_prefetch=True, attn_num_warps=8),
}


def _sweep(q, k, v, lab, ch, top_k, log) -> dict:
    """Graph-replay ms of ``select`` and ``sparse_attention`` under each setting of the sweeps."""
    import dataclasses

    from kernels import double_sparsity as ds

    B, H_ = q.shape[:2]
    out = {"select": {}, "attention": {}}
    idx0 = ds.select(q, lab, ch, top_k=top_k)
    idx16 = ds.select(q, lab, ch, top_k=top_k, config=ds.Config(score_dtype="float16"))
    o0 = ds.sparse_attention(q, k, v, idx0)
    for name, kw in SELECT_SWEEP.items():
        cfg = dataclasses.replace(ds.DEFAULT_CONFIG, **kw)
        try:  # the same indices as the default of the same score keys
            want = idx16 if cfg.score_dtype == "float16" else idx0
            same = bool(torch.equal(ds.select(q, lab, ch, top_k=top_k, config=cfg), want))
            out["select"][name] = {"ms": _time(lambda: ds.select(q, lab, ch, top_k=top_k, config=cfg), True, 100),
                                   "same_indices": same}  # fmt: skip
        except Exception as err:
            out["select"][name] = {"error": repr(err)[:300]}
    for name, kw in ATTN_SWEEP.items():
        if kw == "x2" or isinstance(kw, tuple):
            sm = torch.cuda.get_device_properties(q.device).multi_processor_count
            extra = kw[1] if isinstance(kw, tuple) else {}
            kw = dict(splits=max(1, 2 * triton_cdiv(4 * sm, B * H_)), **extra)
        cfg = dataclasses.replace(ds.DEFAULT_CONFIG, **kw)
        try:
            err = _rel(ds.sparse_attention(q, k, v, idx0, config=cfg), o0)
            out["attention"][name] = {"ms": _time(lambda: ds.sparse_attention(q, k, v, idx0, config=cfg), True, 100),
                                      "rel_err_vs_default": round(err, 6), "config": kw}  # fmt: skip
        except Exception as err:
            out["attention"][name] = {"error": repr(err)[:300]}
    log(f"sweep B={B}: {out}")
    return out


def _best_config(sweep: dict, fp16_keys: bool):
    """The default with the fastest correct selection setting (of the given score keys) and the
    fastest correct attention setting."""
    import dataclasses

    from kernels import double_sparsity as ds

    def fastest(entries, ok):
        good = {n: e for n, e in entries.items() if "ms" in e and ok(n, e)}
        return min(good, key=lambda n: good[n]["ms"]) if good else None

    sel = fastest(sweep["select"], lambda n, e: e["same_indices"] and n.startswith("fp16keys") == fp16_keys)
    sel = sel or ("fp16keys" if fp16_keys else "default")
    att = fastest(sweep["attention"], lambda n, e: e["rel_err_vs_default"] < 1e-3) or "default"
    kw = dict(SELECT_SWEEP[sel])
    kw.update(sweep["attention"][att].get("config", {}) if att != "default" else {})
    return dataclasses.replace(ds.DEFAULT_CONFIG, **kw)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _time(fn, graph: bool, rep: int) -> float | None:
    """Median ms: eager (``do_bench``) or a CUDA graph replay (``do_bench_cudagraph``)."""
    from triton.testing import do_bench_cudagraph

    if not graph:
        return round(common.time_ms(fn, warmup=25, rep=rep), 4)
    return round(float(do_bench_cudagraph(fn, rep=rep, return_mode="median")), 4)


# --------------------------------------------------------------------------------------------
# Part 1: one decoding step
# --------------------------------------------------------------------------------------------


def decode_part(args, env, ceilings, log, started, batches, state) -> dict:
    """Time the decoding step for ``batches`` (rows, profiles and skipped cases accumulate in ``state``)."""
    from kernels import double_sparsity as ds

    lengths = tuple(args.lengths) if args.lengths else ((32768,) if args.quick else LENGTHS)
    s_max, b_max = max(lengths), max(batches)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    # one allocation of each cache, viewed contiguously per case (no re-allocation between cases)
    k_flat = torch.empty(b_max * H * s_max * D, device=DEVICE, dtype=DTYPE).normal_(generator=g)
    v_flat = torch.empty_like(k_flat).normal_(generator=g)
    log(f"caches allocated: 2 x {k_flat.numel() * ELEM / 2**30:.1f} GiB")
    rows, profiles, skipped = state["rows"], state["profiles"], state["skipped"]
    for B in batches:
        for S in (lengths if B == 1 else sorted(lengths, reverse=True)):  # B > 1: the longest first
            if time.time() - started > args.budget_s * 0.75:
                skipped.append({"S": S, "B": B})
                log(f"S={S} B={B}: skipped (time budget)")
                continue
            top_k = S // 16
            n = B * H * S * D
            k, v = k_flat[:n].view(B, H, S, D), v_flat[:n].view(B, H, S, D)
            q = torch.randn(B, H, D, device=DEVICE, dtype=DTYPE, generator=g)
            row = {"S": S, "B": B, "H": H, "Hkv": H, "D": D, "top_k": top_k, "check": {}, "bytes": {}, "floor_ms": {}}
            impls = {"sdpa_dense": lambda: _sdpa(q, k, v)}
            if B == 1:
                impls["ours_dense"] = lambda: ds.decode(q, k, v, chs["r8_16bit"], top_k=S)
            chs, labs = {}, {}
            for name, (r, bits) in LABELS.items():
                gen = torch.Generator().manual_seed(r)
                chs[name] = torch.stack([torch.randperm(D, generator=gen)[:r] for _ in range(H)]).to(DEVICE, torch.int32)
                labs[name] = ds.build_labels(k, chs[name], bits=bits)
                b = _bytes(B, S, top_k, r, bits)
                row["bytes"][name] = b
                row["floor_ms"][name] = {kk: round(vv / (ceilings["copy_TBps"] * 1e12) * 1e3, 4) for kk, vv in b.items()}
                lab, ch = labs[name], chs[name]
                for suffix, kw in KEYS.items():
                    cfg = ds.Config(**kw)
                    row["check"][name + suffix] = _check(q, k, v, lab, ch, top_k, cfg)
                    impls[f"ours_{name}{suffix}"] = (
                        lambda lab=lab, ch=ch, cfg=cfg: ds.decode_with_labels(q, k, v, lab, ch, top_k=top_k, config=cfg))
                impls[f"torch_sparse_{name}"] = (
                    lambda lab=lab, ch=ch: _torch_sparse(q, k, v, lab.values, lab.scale, ch, top_k))  # fmt: skip
            lab, ch = labs["r16_8bit"], chs["r16_8bit"]
            cfg_t = ds.Config(select="torch")
            impls["ours_r16_8bit_torch_topk"] = lambda: ds.decode_with_labels(q, k, v, lab, ch, top_k=top_k, config=cfg_t)
            row["check"]["torch_sparse_r16_8bit_vs_ours_rel"] = round(_rel(impls["torch_sparse_r16_8bit"](), impls["ours_r16_8bit"]()), 5)
            row["check"]["ours_dense_vs_sdpa_rel"] = (
                round(_rel(impls["ours_dense"](), impls["sdpa_dense"]()), 6) if "ours_dense" in impls else None)  # fmt: skip
            log(f"S={S} B={B}: check {row['check']}")
            if S == max(lengths):
                for name in ("ours_r16_8bit", "ours_r16_8bit_fp16keys", "ours_r8_16bit_fp16keys",
                             "ours_r16_8bit_torch_topk", "torch_sparse_r16_8bit"):  # fmt: skip
                    profiles[f"S{S}_B{B}_{name}"] = common.profile_kernels(impls[name], top=12)
                log(f"profile {profiles}")
            rep = 60 if S * B <= 262144 else 150
            if S == max(lengths) and B == 1 and not args.quick and not args.no_sweep:
                row["sweep"] = _sweep(q, k, v, labs["r16_8bit"], chs["r16_8bit"], top_k, log)
                row["tuned_config"] = {}
                for suffix in KEYS:
                    tuned = _best_config(row["sweep"], fp16_keys=bool(suffix))
                    row["tuned_config"][suffix or "_fp32keys"] = {kk: str(vv) for kk, vv in tuned.__dict__.items()}
                    for name in LABELS:
                        lab, ch = labs[name], chs[name]
                        impls[f"ours_{name}{suffix}_tuned"] = (
                            lambda lab=lab, ch=ch, tuned=tuned: ds.decode_with_labels(q, k, v, lab, ch, top_k=top_k,
                                                                                      config=tuned))  # fmt: skip
            for name, fn in impls.items():
                entry = {}
                for mode, graph in (("eager", False), ("graph", True)):
                    try:
                        entry[f"{mode}_ms"] = _time(fn, graph, rep)
                    except Exception as err:  # a mode that fails is recorded, the rest goes on
                        entry[f"{mode}_error"] = repr(err)[:300]
                row[name] = entry
                log(f"S={S} B={B} {name}: {entry}")
            for mode in ("eager", "graph"):
                dense = row["sdpa_dense"].get(f"{mode}_ms")
                for name in impls:
                    t = row[name].get(f"{mode}_ms")
                    if dense and t:
                        row[name][f"{mode}_speedup_vs_sdpa_dense"] = round(dense / t, 3)
                for name in LABELS:
                    for suffix in KEYS:
                        a, b = row[f"ours_{name}{suffix}"].get(f"{mode}_ms"), row[f"torch_sparse_{name}"].get(f"{mode}_ms")
                        if a and b:
                            row[f"ours_{name}{suffix}"][f"{mode}_speedup_vs_torch_sparse"] = round(b / a, 3)
            for name in LABELS:
                for suffix in KEYS:
                    t = row[f"ours_{name}{suffix}"].get("graph_ms")
                    if t:
                        entry = row[f"ours_{name}{suffix}"]
                        entry["fraction_of_sparse_floor"] = round(row["floor_ms"][name]["sparse"] / t, 3)
                        entry["achieved_TBps_sparse_bytes"] = round(row["bytes"][name]["sparse"] / t / 1e9, 3)
            t = row["sdpa_dense"].get("graph_ms")
            if t:
                row["sdpa_dense"]["achieved_TBps"] = round(row["bytes"]["r8_16bit"]["dense"] / t / 1e9, 3)
            rows.append(row)
            del impls, labs, q, k, v
            torch.cuda.empty_cache()
            _write_decode(env, ceilings, rows, profiles, skipped, started, args)
    del k_flat, v_flat
    torch.cuda.empty_cache()
    return _write_decode(env, ceilings, rows, profiles, skipped, started, args)


def _write_decode(env, ceilings, rows, profiles, skipped, started, args) -> dict:
    from kernels import double_sparsity as ds

    result = {
        "benchmark": "double_sparsity",
        "environment": env,
        "ceilings": ceilings,
        "shapes": f"H = Hkv = {H}, D = {D}, fp16, top_k = S/16; labels r=16 at 8 bits (+fp16 scale/token) or r=8 at 16 bits",
        "timing": "median ms; eager = do_bench (Python launches included), graph = do_bench_cudagraph (CUDA graph replay)",
        "config": ds.DEFAULT_CONFIG.__dict__,
        "rows": rows,
        "profiles_ms": profiles,
        "skipped": skipped,
        "complete": not skipped,
        "elapsed_s": round(time.time() - started, 1),
    }
    path = common.write_json("double_sparsity", result, args.out)
    try:
        _plot_decode(result, path.with_suffix(".png"))
    except Exception as err:
        print(f"plot failed: {err!r}", flush=True)
    return result


def _plot_decode(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    batches = sorted({r["B"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 4.5), squeeze=False)
    for ax, B in zip(axes[0], batches):
        sub = [r for r in rows if r["B"] == B]
        names = [n for n in PLOT_LABELS if any("graph_ms" in r.get(n, {}) for r in sub)]
        width = 0.8 / max(1, len(names))
        for i, n in enumerate(names):
            xs = [j + i * width for j in range(len(sub))]
            vals = [r.get(n, {}).get("graph_ms", 0.0) for r in sub]
            bars = ax.bar(xs, vals, width, label=PLOT_LABELS[n], color=f"C{list(PLOT_LABELS).index(n)}")
            if n.startswith("ours_r"):
                ax.bar_label(bars, labels=[f"{r.get(n, {}).get('graph_speedup_vs_sdpa_dense', 0):.1f}x" for r in sub],
                             fontsize=7)  # fmt: skip
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(sub))])
        ax.set_xticklabels([f"S={r['S'] // 1024}k" for r in sub])
        ax.set_yscale("log")
        ax.set_ylabel("ms per decoding step (CUDA graph replay, median)")
        ax.set_title(f"B = {B}: labels and top-k included (label: speed-up over dense SDPA)", fontsize=9)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=7)
    env = result["environment"]
    fig.suptitle(f"Double Sparsity decode, {env['device']}, H=32, D=128, fp16, top_k=S/16 — torch {env['torch']}, "
                 f"triton {env['triton']}, {env['date'][:10]}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    common.copy_to_out(path)


# --------------------------------------------------------------------------------------------
# Part 2: offloaded decoding
# --------------------------------------------------------------------------------------------


def offload_part(args, env, log, started) -> dict:
    from kernels import double_sparsity as ds
    from kernels import double_sparsity_offload as off

    L, d_model, B = OFFLOAD_LAYERS, OFFLOAD_D_MODEL, 1
    lengths = OFFLOAD_LENGTHS[:1] if args.quick else OFFLOAD_LENGTHS
    model = off.SyntheticDecoder.random(L, d_model, H, D, seed=0, device=DEVICE, dtype=DTYPE)
    g = torch.Generator(device=DEVICE).manual_seed(1)
    rows, timelines = [], {}
    result = {"benchmark": "double_sparsity_offload", "environment": env}
    for S in lengths:
        if time.time() - started > args.budget_s - 45:
            log(f"offload S={S}: skipped (time budget)")
            continue
        top_k = S // 16
        row = {"S": S, "B": B, "layers": L, "d_model": d_model, "H": H, "D": D, "top_k": top_k, "labels": "r=16, 8-bit"}
        t0 = time.time()
        host_k, host_v, dev_k, dev_v, labels, chans = [], [], [], [], [], []
        for l in range(L):
            k = torch.randn(B, H, S, D, device=DEVICE, dtype=DTYPE, generator=g)
            v = torch.randn(B, H, S, D, device=DEVICE, dtype=DTYPE, generator=g)
            gen = torch.Generator().manual_seed(100 + l)
            ch = torch.stack([torch.randperm(D, generator=gen)[:16] for _ in range(H)]).to(DEVICE, torch.int32)
            labels.append(ds.build_labels(k, ch, bits=8))
            chans.append(ch)
            hk, hv = torch.empty(k.shape, dtype=DTYPE, pin_memory=True), torch.empty(v.shape, dtype=DTYPE, pin_memory=True)
            hk.copy_(k)
            hv.copy_(v)
            host_k.append(hk)
            host_v.append(hv)
            dev_k.append(k)
            dev_v.append(v)
        torch.cuda.synchronize()
        row["setup_s"] = round(time.time() - t0, 1)
        x = torch.randn(B, d_model, device=DEVICE, dtype=DTYPE, generator=g)
        # PCIe ceilings: one whole-layer copy, and our row gather from pinned memory alone
        buf = torch.empty_like(dev_k[0])
        ms = common.time_ms(lambda: buf.copy_(host_k[0], non_blocking=True), warmup=1, rep=30 if S > 65536 else 100)
        row["h2d_copy_GBps"] = round(host_k[0].numel() * ELEM / ms / 1e6, 2)
        del buf
        sparse = off.OffloadedDecoder(model, host_k, host_v, labels, chans, top_k=top_k)
        row["fetch_mode"] = sparse.fetch_mode
        idx = ds.select(x.new_empty(B, H, D).normal_(generator=g), labels[0], chans[0], top_k=top_k).view(B * H, top_k)
        for label, progs in (("", sparse.fetch_programs), ("_one_program_per_tile", None)):
            ms = common.time_ms(lambda p=progs: ds.gather_rows(idx, host_k[0], host_v[0], H, out=sparse.buffers[0],
                                                               programs=p), warmup=1, rep=100)  # fmt: skip
            row[f"gather_rows_from_host{label}_ms"] = round(ms, 3)
            row[f"gather_rows{label}_GBps"] = round(2 * B * H * top_k * D * ELEM / ms / 1e6, 2)
        row["fetch_programs"] = sparse.fetch_programs
        # correctness: the offloaded step equals the same step with the caches on the GPU
        want = off.sparse_step(model, x, dev_k, dev_v, labels, chans, top_k=top_k)
        got = sparse.step(x)
        row["offloaded_equals_on_device"] = bool(torch.equal(got, want))
        row["offloaded_vs_on_device_max_abs"] = float((got.float() - want.float()).abs().max())
        log(f"offload S={S}: setup {row['setup_s']} s, H2D {row['h2d_copy_GBps']} GB/s, gather {row['gather_rows_GBps']} GB/s "
            f"({sparse.fetch_mode}), equal {row['offloaded_equals_on_device']}")  # fmt: skip
        del dev_k, dev_v
        torch.cuda.empty_cache()
        dense = off.DenseOffloadedDecoder(model, host_k, host_v)
        for name, dec, steps in (("sparse_offload", sparse, 8), ("dense_offload", dense, 2 if S > 65536 else 4)):
            dec.step(x)  # warm-up
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(steps):
                dec.step(x)
            b.record()
            torch.cuda.synchronize()
            ms = a.elapsed_time(b) / steps
            _, spans = dec.step(x, trace=True)
            timelines[f"S{S}_{name}"] = [(lane, label, round(s0, 4), round(s1, 4)) for lane, label, s0, s1 in spans]
            row[name] = {"ms_per_step": round(ms, 3), "tokens_per_s": round(1e3 / ms * B, 2), "steps_timed": steps}
            log(f"offload S={S} {name}: {row[name]}")
        row["speedup_sparse_vs_dense_offload"] = round(row["dense_offload"]["ms_per_step"] / row["sparse_offload"]["ms_per_step"], 2)
        fetched = 2 * B * H * top_k * D * ELEM * L
        row["sparse_bytes_fetched_per_step_GB"] = round(fetched / 1e9, 3)
        row["dense_bytes_fetched_per_step_GB"] = round(2 * B * H * S * D * ELEM * L / 1e9, 3)
        rows.append(row)
        torch.cuda.synchronize()
        del sparse, dense, host_k, host_v, labels
        torch.cuda.empty_cache()
        _release_pinned_memory()
        result.update({
            "model": "synthetic decoder, random weights: per layer RMSNorm, W_q, attention over the layer's cache, W_o, residual; "
                     "caches given (not appended); B = 1, fp16",
            "rows": rows, "timelines_ms": timelines, "elapsed_s": round(time.time() - started, 1),
        })  # fmt: skip
        common.write_json("double_sparsity_offload", result, args.out)
        try:
            _plot_timeline(result, (args.out and __import__("pathlib").Path(args.out) or common.RESULTS_DIR)
                           / "double_sparsity_offload_timeline.png")  # fmt: skip
        except Exception as err:
            print(f"timeline plot failed: {err!r}", flush=True)
    return result


def _release_pinned_memory() -> None:
    """Hand the pinned host blocks torch caches back to the driver now (a run of 16 GB of pinned
    caches otherwise lives until the interpreter's exit)."""
    empty = getattr(torch._C, "_host_emptyCache", None)
    if empty is not None:
        empty()


def _plot_timeline(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    S = max(r["S"] for r in result["rows"])
    keys = [f"S{S}_sparse_offload", f"S{S}_dense_offload"]
    fig, axes = plt.subplots(2, 1, figsize=(12, 6.5))
    colors = {"select": "tab:orange", "fetch": "tab:red", "copy": "tab:red", "predict": "tab:purple",
              "attention": "tab:blue", "W_o": "tab:green", "q, norm": "tab:cyan", "norm": "tab:cyan"}  # fmt: skip
    row = next(r for r in result["rows"] if r["S"] == S)
    for ax, key in zip(axes, keys):
        spans = result["timelines_ms"].get(key, [])
        lanes = ["compute stream", "select stream", "fetch stream"]
        for lane, label, s0, s1 in spans:
            y = lanes.index(lane)
            color = next((c for word, c in colors.items() if word in label), "tab:gray")
            ax.barh(y, max(s1 - s0, 1e-3), left=s0, color=color, edgecolor="black", linewidth=0.3)
            if s1 - s0 > 0.04 * max(1e-9, max(e for *_, e in spans)):
                ax.text((s0 + s1) / 2, y, label, ha="center", va="center", fontsize=6)
        ax.set_yticks(range(len(lanes)))
        ax.set_yticklabels(lanes)
        ax.set_xlabel("ms from the start of the step")
        name = key.split("_", 1)[1]
        ax.set_title(f"{name.replace('_', ' ')}: {row[name]['ms_per_step']:.1f} ms per step "
                     f"({row[name]['tokens_per_s']:.1f} tokens/s)", fontsize=9)  # fmt: skip
        ax.grid(axis="x", alpha=0.3)
    env = result["environment"]
    fig.suptitle(f"One decoding step, 4 layers, S={S // 1024}k, top_k=S/16, KV cache in pinned host memory — "
                 f"{env['device']}, {env['date'][:10]} (speed-up {row['speedup_sparse_vs_dense_offload']}x)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    common.copy_to_out(path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench double_sparsity")
    parser.add_argument("--quick", action="store_true", help="S = 32k, B = 1; offload at 32k only")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--no-offload", action="store_true")
    parser.add_argument("--no-decode", action="store_true", help="the offloaded decoding part only")
    parser.add_argument("--no-sweep", action="store_true", help="no launch-setting sweep at the longest cache")
    parser.add_argument("--out", default=None, help="directory for the JSONs and plots (default docs/benchmarks)")
    parser.add_argument("--budget-s", type=float, default=230.0)
    args = parser.parse_args(argv)
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.1f} s] {msg}", flush=True)

    stack_dumps = common.start_stack_dumps(60)
    env = common.environment()
    ceilings = common.measure_ceilings()
    log(f"{env} {ceilings}")
    batches = tuple(args.batches) if args.batches else ((1,) if args.quick else BATCHES)
    state = {"rows": [], "profiles": {}, "skipped": []}
    # B = 1 first, then the offloaded decoder, then larger batches: a run cut short keeps the headline cases
    result = None
    if 1 in batches and not args.no_decode:
        result = decode_part(args, env, ceilings, log, started, [1], state)
    offload = None if args.no_offload else offload_part(args, env, log, started)
    if any(b != 1 for b in batches) and not args.no_decode:
        result = decode_part(args, env, ceilings, log, started, [b for b in batches if b != 1], state)
    stack_dumps.set()
    import threading

    for thread in threading.enumerate():  # the stack-dump thread ends before the interpreter does
        if thread.name == "stack-dumps":
            thread.join(timeout=5)
    torch.cuda.synchronize()
    _print_table(result, offload)
    return 0


def _print_table(result, offload) -> None:
    if result is None:
        return
    print("\nS      B  " + "  ".join(f"{n:>26}" for n in PLOT_LABELS))
    for r in result["rows"]:
        cells = []
        for n in PLOT_LABELS:
            e = r.get(n, {})
            cells.append(f"{e.get('graph_ms', float('nan')):9.4f} ms {e.get('graph_speedup_vs_sdpa_dense', float('nan')):6.2f}x".rjust(26))
        print(f"{r['S'] // 1024:4d}k {r['B']:2d}  " + "  ".join(cells))
    if offload:
        for r in offload.get("rows", []):
            print(f"offload S={r['S'] // 1024}k: sparse {r['sparse_offload']['tokens_per_s']} tok/s, dense "
                  f"{r['dense_offload']['tokens_per_s']} tok/s, x{r['speedup_sparse_vs_dense_offload']} ({r['fetch_mode']})")  # fmt: skip
