# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 7 — SeerAttention: a learned gate picks the blocks
#
# Causal softmax attention over $T$ tokens costs $T^2/2$ scores, yet most rows put nearly all their
# weight on a few places. SeerAttention (Gao et al., 2024, arXiv 2410.13276) cuts the sequence into
# blocks of $b$ tokens and trains a small **gate** to predict, for each query block, which key
# blocks matter; attention is then computed over those blocks only. The model is frozen: the gate
# learns by distillation from the model's own attention map, pooled to blocks.
#
# In this lesson you will
#
# 1. pool a real layer's queries and keys into blocks, as the gate sees them;
# 2. build the ground truth the gate learns — a max-pool of attention *probabilities* — in two
#    ways, one of which never materialises the $T \times T$ matrix;
# 3. put the trained gate's map beside the ground truth;
# 4. see why `nn.KLDivLoss()` with its default reduction is not the KL;
# 5. select blocks at a density, run block-sparse attention, and read held-out loss against
#    density on the tiny model, beside the paper's PG19 table;
# 6. run the Triton kernel (in the interpreter without a GPU) and read its benchmark.
#
# Everything runs on the package's tiny language model (`reference.model.pretrained("softmax")`:
# 4 layers, 4 query heads sharing 2 kv heads of width 32) and its committed gates.

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from reference import data, seer
from reference import model as tiny

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels run on the CPU; set before importing them

torch.set_num_threads(1)  # this notebook's process: tiny tensors run faster on one thread
model = tiny.pretrained("softmax")
gates = seer.load_gates()  # one AttnGate per layer, trained by `python -m reference.seer train-gate`
block = gates["0"].block
T = 512
window = torch.from_numpy(data.corpus("held_out")[None, 4096 : 4096 + T].astype(np.int64))
capture = []
with torch.no_grad():
    model(window, capture=capture)
layer, head = 2, 0
c = capture[layer]
print(f"block = {block} tokens, {T // block} blocks per row; layer {layer}: q {tuple(c['q'].shape)}, k {tuple(c['k'].shape)}")
print(bytes(window[0, :120].tolist()).decode("utf-8", "replace"))

# %% [markdown]
# ## 1. What the gate sees: pooled queries and keys
#
# The gate reads the layer's $Q$ and $K$ **before** RoPE and pools them along the sequence with
# kernel = stride = $b$: the queries by their mean, the keys three ways — max, min and mean — so a
# key block is summarised by $3D$ numbers. Each is then projected per head to the gate width
# $d_g$ and rotated by a RoPE of width $d_g$ at the block's first-token position $i\,b$:
#
# $$ \tilde q_i = \mathrm{RoPE}_{ib}\big(\mathrm{avgpool}(Q)_i W_q\big), \qquad
#    \tilde k_j = \mathrm{RoPE}_{jb}\big([\mathrm{max},\mathrm{min},\mathrm{avg}](K)_j W_k\big), \qquad
#    G_{ij} = \mathrm{softmax}_{j \le i}\big(\tilde q_i\cdot\tilde k_j/\sqrt{d_g}\big). $$
#
# Below: one head's pooled queries and its kv head's pooled keys, blocks down, channels across.

# %%
q_pool, k_pool = gates[str(layer)].pooled(c["q_pre"], c["k_pre"])
kv = head // (model.config.n_heads // model.config.n_kv_heads)
fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), layout="constrained")
D = model.config.head_dim
panels = [(q_pool[0, head], "avgpool(Q)"), (k_pool[0, kv, :, :D], "maxpool(K)"),
          (k_pool[0, kv, :, D : 2 * D], "minpool(K)"), (k_pool[0, kv, :, 2 * D :], "avgpool(K)")]  # fmt: skip
limit = float(max(x.abs().quantile(0.99) for x, _ in panels))  # one colour scale for all four
for ax, (x, title) in zip(axes, panels):
    im = ax.imshow(x.numpy(), cmap="RdBu_r", aspect="auto", vmin=-limit, vmax=limit)
    ax.set_title(title)
    ax.set_xlabel("channel")
axes[0].set_ylabel("block")
fig.colorbar(im, ax=axes, shrink=0.8)
plt.show()

# %% [markdown]
# ## 2. The ground truth: a max-pool of probabilities, renormalised per row
#
# The gate is trained to match the layer's real attention $P = \mathrm{softmax}(QK^\top/\sqrt D)$
# (post-RoPE, causal), pooled to blocks: $\mathrm{GT}_{ij}$ is the **maximum** of $P$ over the rows
# of query block $i$ and the columns of key block $j$, and each block-row is then divided by its
# sum. Not an average (one strong key would drown among $b^2$ entries) and not a pooling of logits
# (rows of one block have different normalisers) — erratum 8 of the
# [errata page](../docs/errata.md).
#
# A kernel cannot afford $P$. It walks each row's key blocks once, keeping the raw maximum score
# $r_{tj}$ of every block and the online-softmax statistics $m_t, \ell_t$; at the end, since softmax
# is monotone within a row, $\max_{s\in j} P_{ts} = e^{r_{tj} - m_t}/\ell_t$. Both forms agree:

# %%
gt = seer.ground_truth(c["q"], c["k"], block=block)
gt_tiled = seer.ground_truth_tiled(c["q"], c["k"], block=block)
print(f"max |tiled - materialised| = {float((gt - gt_tiled).abs().max()):.1e}; rows sum to 1: "
      f"{bool(torch.allclose(gt.sum(-1), torch.ones(()), atol=1e-6))}")  # fmt: skip

# %% [markdown]
# ## 3. The trained gate beside the ground truth
#
# One gate per layer was trained on the frozen model (`python -m reference.seer train-gate`: the
# model's activations on 96 training windows captured once, then Adam on the KL; under two minutes
# on one CPU thread). Its map is on the right of each pair; the held-out KL is in the title.

# %%
fig, axes = plt.subplots(2, 4, figsize=(15, 7.2), layout="constrained")
with torch.no_grad():
    for col, l in enumerate((0, 3)):
        cl = capture[l]
        truth = seer.ground_truth(cl["q"], cl["k"], block=block)
        log_g = gates[str(l)](cl["q_pre"], cl["k_pre"])
        kl = float(seer.kl_loss(truth, log_g))
        for row, h in enumerate((0, 3)):
            for k_, (x, name) in enumerate(((truth, "ground truth"), (log_g.exp(), "gate"))):
                ax = axes[row, 2 * col + k_]
                ax.imshow(x[0, h].numpy() ** 0.5, cmap="magma", vmin=0, vmax=1)  # sqrt: faint blocks visible
                ax.set_title(f"layer {l}, head {h}: {name}" + (f"\nKL {kl:.3f} nats/row" if k_ else ""), fontsize=9)
                ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("block attention maps (√ of the probability), query block down, key block across")
plt.show()

# %% [markdown]
# ## 4. The KL, and the reduction that is not the KL
#
# The loss is $\mathrm{KL}(\mathrm{GT}\,\|\,G)$ per block-row. `torch.nn.KLDivLoss()` defaults to
# `reduction="mean"`, which divides the summed divergence by the number of **entries** — here
# $B\cdot H\cdot n\cdot n$ — instead of the number of distributions $B\cdot H\cdot n$: the KL divided
# by $n$, which shrinks every gradient $n$-fold and changes with the sequence length.

# %%
import warnings  # noqa: E402

log_g = gates[str(layer)](c["q_pre"], c["k_pre"])
finite = torch.where(gt > 0, log_g, torch.zeros_like(log_g))  # KLDivLoss wants no -inf where GT is 0
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch warns about "mean" itself
    mean = float(torch.nn.KLDivLoss()(finite, gt))
n = gt.shape[-1]
batchmean = float(torch.nn.KLDivLoss(reduction="batchmean")(finite.reshape(-1, n), gt.reshape(-1, n)))
print(f"seer.kl_loss (batchmean)       = {float(seer.kl_loss(gt, log_g)):.4f} nats per block-row")
print(f"KLDivLoss(batchmean) on [.., n] = {batchmean:.4f}")
print(f"KLDivLoss() default 'mean'      = {mean:.5f}   = KL / {float(seer.kl_loss(gt, log_g)) / mean:.1f}  (n = {n})")

# %% [markdown]
# ## 5. Selecting blocks, and what it costs the model
#
# `select_topk(scores, density=ρ)` keeps in block-row $i$ its diagonal block and the best-scoring
# others, $k_i = \min(i+1, \max(1, \mathrm{round}(\rho(i+1))))$ blocks in all, so the kept share of
# the causal triangle is $\rho$ up to rounding. The diagonal is always kept: a query block must see
# itself, or its first query would have no key at all. `block_sparse_attention` then walks only the
# kept blocks with the online softmax. Below, the blocks the gate keeps at $\rho = 0.3$ beside
# those the ground truth itself would keep (the best any gate could do).

# %%
with torch.no_grad():
    probs = gates[str(layer)](c["q_pre"], c["k_pre"], log=False)
mask_gate = seer.select_topk(probs, density=0.3)
mask_oracle = seer.select_topk(gt, density=0.3)
scale = model.blocks[layer].attn.scale
o_sparse = seer.block_sparse_attention(c["q"], c["k"], c["v"], mask_gate, block=block, scale=scale)
o_dense = seer.block_sparse_attention(c["q"], c["k"], c["v"], seer.select_topk(gt, density=1.0), block=block, scale=scale)
print(f"achieved density {seer.achieved_density(mask_gate):.3f}; the gate's blocks hold "
      f"{float((gt * mask_gate).sum(-1).mean()):.0%} of the ground truth's mass per row "
      f"(the oracle's {float((gt * mask_oracle).sum(-1).mean()):.0%}); "
      f"relative change of the layer's output: {float((o_sparse - o_dense).norm() / o_dense.norm()):.3f}")  # fmt: skip
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for ax, m, name in zip(axes, (mask_gate, mask_oracle), ("gate's top-k", "oracle top-k")):
    ax.imshow(m[0, head].numpy(), cmap="Greys", vmin=0, vmax=1)
    ax.set_title(f"{name}, ρ = 0.3 (layer {layer}, head {head})", fontsize=9)
plt.show()

# %% [markdown]
# Now every layer at once, on held-out text. `python -m reference.seer evaluate` measured the
# tiny model's held-out bits per byte with every layer block-sparse at densities 1.0 / 0.5 / 0.3 /
# 0.1, the blocks chosen three ways: by the trained gate, by the ground truth (oracle), and at
# random. The figures come from the committed `docs/benchmarks/seer_tiny_lm.json`; the paper's
# PG19 perplexities (Llama-3.1-8B-Instruct gates) are printed beside them for the shape of the
# curve — a different model and metric, so only the shape compares.
#
# The tiny model pays more for sparsity than the paper's: its rows are short. At 512 bytes in blocks
# of 16, density 0.3 leaves a query 72 bytes of context on average (21 at density 0.1), where the
# paper's density 0.1 at 8k tokens still leaves about 400 tokens. Finer blocks help (the faint
# curve: blocks of 8, from `docs/benchmarks/seer_tiny_lm_block8.json`), and the gate stays close
# to the oracle throughout, while a random choice of as many blocks is far worse.

# %%
bench_dir = Path(seer.__file__).resolve().parents[1] / "docs" / "benchmarks"
result = json.loads((bench_dir / "seer_tiny_lm.json").read_text())
finer = json.loads((bench_dir / "seer_tiny_lm_block8.json").read_text())  # the same, with blocks of 8
dense = result["dense_bits_per_byte"]
fig, ax = plt.subplots(figsize=(6.5, 4))
for res, selection, style, label in ((result, "gate", "o-", "gate top-k"), (result, "oracle", "s--", "oracle top-k"),
                                     (result, "random", "^:", "random top-k"), (finer, "gate", "o-", "gate top-k, blocks of 8")):
    pts = sorted((r["density"], r["bits_per_byte"]) for r in res["rows"] if r["selection"] == selection)
    ax.plot(*zip(*pts), style, label=label, alpha=0.5 if res is finer else 1.0)
ax.axhline(dense, color="gray", lw=1, label="dense")
ax.set_xlabel("density (kept share of the causal blocks)")
ax.set_ylabel("held-out bits per byte")
ax.set_title(f"tiny LM, {result['settings']['blocks_per_row']} blocks of {result['settings']['block']} tokens per row")
ax.invert_xaxis()
ax.legend()
plt.show()
paper = {1.0: (10.03, 10.03), 0.5: (10.04, 10.05), 0.1: (10.61, 10.88)}
print(f"{'density':>8} {'gate':>8} {'oracle':>8} {'random':>8} {'Δ gate':>8}   paper PG19 ppl 8k / 128k")
rows = {(r["selection"], r["density"]): r for r in result["rows"]}
for d in (1.0, 0.5, 0.3, 0.1):
    p = paper.get(d)
    print(f"{d:>8} {rows[('gate', d)]['bits_per_byte']:>8.4f} {rows[('oracle', d)]['bits_per_byte']:>8.4f} "
          f"{rows[('random', d)]['bits_per_byte']:>8.4f} {rows[('gate', d)]['minus_dense']:>+8.4f}   "
          + (f"{p[0]:.2f} / {p[1]:.2f}" if p else "—"))  # fmt: skip
print(f"dense: {dense:.4f} bits per byte; the claim checked: the gate at density 0.3 within "
      f"{result['claims']['margin_at_0.3_bits_per_byte']} bits per byte of dense: {result['claims']['holds']}")  # fmt: skip

# %% [markdown]
# ## 6. The Triton kernel, and how fast it is
#
# `kernels.block_sparse.attention` computes `block_sparse_attention` on a GPU: each block-row first
# compacts its mask into the list of kept blocks, then walks exactly that list with the online
# softmax, masking only in the diagonal block. Without a GPU the cell runs it in Triton's
# interpreter, on the first 128 tokens of the layer above.

# %%
try:
    from kernels import block_sparse  # noqa: E402  (after TRITON_INTERPRET is set)
except ImportError as err:  # Triton is Linux-only
    block_sparse = None
    print(f"kernels.block_sparse is not available here ({err}); the reference above is the same function.")
if block_sparse is not None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    short = slice(0, 128)
    q_, k_, v_ = (c[name][:, :, short].contiguous().to(device) for name in ("q", "k", "v"))
    m_ = mask_gate[:, :, : 128 // block, : 128 // block].contiguous().to(device)
    with torch.no_grad():
        o_kernel = block_sparse.attention(q_, k_, v_, m_, block=block, scale=scale)
    o_ref = seer.block_sparse_attention(q_.cpu(), k_.cpu(), v_.cpu(), m_.cpu(), block=block, scale=scale)
    print(f"kernel on {device} ({'GPU' if device == 'cuda' else 'Triton interpreter'}), fp32: "
          f"max |kernel - reference| = {float((o_kernel.cpu() - o_ref).abs().max()):.1e}")  # fmt: skip

# %% [markdown]
# `python -m kernels.bench block_sparse` measures the kernel on a GPU beside `flex_attention` and
# dense SDPA (32 heads of width 128, bf16, 8k to 128k tokens, densities 0.1 / 0.3 / 0.5). The paper
# reports 5.67× over FlashAttention-2 at 90 % sparsity and 32k tokens.

# %%
bench_json = bench_dir / "block_sparse.json"
if bench_json.exists() and block_sparse is not None:
    from kernels.bench import block_sparse as bench  # noqa: E402

    bench_result = json.loads(bench_json.read_text())
    display(bench.plot(bench_result))  # a Figure made without pyplot: IPython's display shows it
    for r in sorted(bench_result["rows"], key=lambda r: (r["T"], r["block"])):
        if r["density"] == 0.1 and "ours_speedup_vs_sdpa_dense" in r:
            flex = r.get("flex_speedup_vs_sdpa_dense")
            print(f"T = {r['T'] // 1024:>3}k, blocks of {r['block']:>3}, density 0.1: "
                  f"{r['ours_speedup_vs_sdpa_dense']:.2f}x dense SDPA"
                  + (f" (flex_attention {flex:.2f}x)" if flex else ""))  # fmt: skip
else:
    print("The GPU benchmark of the block-sparse kernel has not been committed yet "
          "(`python -m kernels.bench block_sparse` on a GPU writes docs/benchmarks/block_sparse.json).")  # fmt: skip

# %% [markdown]
# ## What to take away
#
# * The gate reads pooled, **pre-RoPE** queries and keys and brings position back with a RoPE of its
#   own width at the block starts, after its projection.
# * Its target is a **max-pool of probabilities**, renormalised per block-row; a kernel gets it from
#   each block's raw maximum score and the row's final $m, \ell$.
# * Train with the KL per distribution (`batchmean` or a sum), not `KLDivLoss()`'s default.
# * Keep the diagonal block, choose the rest by score, and walk only the kept blocks.
#
# The [SeerAttention page](../docs/seer.md) has the math, the API and the tests that pin each point.
