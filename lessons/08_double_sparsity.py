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
# # Lesson 8 — Double Sparsity: a few channels pick the tokens
#
# At long context, one decoding step of softmax attention is a pass over memory: every cached key
# and value is read to produce one output row per head. Most of that reading is wasted, because a
# query puts nearly all its weight on a few tokens. Double Sparsity (Yang et al., 2024,
# arXiv 2408.07092) finds those tokens cheaply, with two kinds of sparsity:
#
# * **channel sparsity**, found once offline: a few channels of each head carry most of $q \cdot k$,
#   so the partial dot product over those $r$ "heavy" channels ranks the tokens almost as the full
#   one does;
# * **token sparsity**, every step: rank all tokens by that cheap *label score*, fetch only the
#   top $k$ keys and values, and attend to them exactly.
#
# In this lesson you will
#
# 1. measure the three outlier statistics on the tiny model and see how concentrated its channels are;
# 2. follow a heavy channel from one RoPE layout to the other;
# 3. count what a step reads, in bits, the way the paper's "1/16" counts it;
# 4. decode one step by hand and measure how often the label top-k is the exact top-k;
# 5. read held-out loss against sparsity on the tiny model (and check that one forward pass with a
#    causal override is the same as decoding token by token);
# 6. run the Triton kernel (in the interpreter without a GPU) and read its benchmark.
#
# The model is the package's tiny language model, `reference.model.pretrained("softmax")`: 4 layers,
# 4 query heads sharing 2 kv heads (GQA), head width $D = 32$, trained on Python's standard library.

# %%
import copy
import json
import os
from fractions import Fraction
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import reference
from reference import data, rope
from reference import double_sparsity as ds
from reference import model as tiny

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels run on the CPU; set before importing them

torch.set_num_threads(1)  # this notebook's process: tiny tensors run faster on one thread
BENCH = Path(reference.__file__).resolve().parents[1] / "docs" / "benchmarks"
model = tiny.pretrained("softmax")
cfg = model.config
L, H, Hkv, D = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
T = 512
calib = data.sample_batch(data.corpus("train"), batch_size=4, seq_len=T, rng=0)  # a little training text
captures = []
with torch.no_grad():
    model(torch.from_numpy(calib[:, :-1]), capture=captures)
caps = [{name: t.double() for name, t in c.items()} for c in captures]
print(f"{L} layers, H = {H} query heads, Hkv = {Hkv} kv heads, D = {D}; calibration: {calib.shape[0]} x {T} bytes")

# %% [markdown]
# ## 1. Outlier channels, and which side of RoPE to measure them on
#
# The paper ranks the channels of each head by one of three statistics, averaged over a little
# calibration text (`ds.channel_outliers`):
#
# | statistic | per channel $c$ | measured on |
# | --- | --- | --- |
# | q-outlier | $\operatorname{mean}_t \lvert q_{tc}\rvert$ | queries **before** RoPE |
# | k-outlier | $\operatorname{mean}_t \lvert k_{tc}\rvert$ | keys **before** RoPE |
# | qk-outlier | $\operatorname{mean}_t \lvert q_{tc}\, k_{tc}\rvert$ | queries and keys **after** RoPE, each token with its own key |
#
# The qk statistic measures directly what a channel adds to the logits the attention really
# computes, which are post-RoPE. With grouped-query attention the query heads of a group share one
# key cache, hence one label cache, hence one heavy set: `ds.heavy_channels` sums the group's
# statistics and keeps the top $r$ per kv head.

# %%
stats = {}
for kind in ds.KINDS:
    side = "_pre" if ds.ROPE_SIDE[kind] == "pre" else ""
    stats[kind] = np.stack([ds.channel_outliers(c["q" + side], c["k" + side], kind=kind).numpy() for c in caps])  # [L, H, D]

fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
for ax, kind in zip(axes, ds.KINDS):
    grid = stats[kind].reshape(L * H, D)
    im = ax.imshow(grid / grid.mean(axis=1, keepdims=True), aspect="auto", cmap="magma")
    ax.set_title(f"{kind}-outlier ({ds.ROPE_SIDE[kind]}-RoPE), ÷ row mean")
    ax.set_xlabel("channel c (rotate-half: c and c+16 are a RoPE pair)")
    ax.set_yticks(np.arange(0, L * H, H), [f"layer {l}" for l in range(L)])
    for l in range(1, L):
        ax.axhline(l * H - 0.5, color="white", lw=0.8)
    fig.colorbar(im, ax=ax, shrink=0.8)
plt.tight_layout()
plt.show()

# %% [markdown]
# How concentrated is that? The share of a kv head's qk mass carried by its top $r$ channels,
# against $r/D$ for channels that were all alike. A 7B model's heads have a handful of channels far
# above the rest (that is what the paper builds on); a model of 0.6 M parameters need not — so we
# measure rather than assume.

# %%
shares = {r: [ds.channel_concentration(ds.group_statistics(torch.from_numpy(stats["qk"][l]), Hkv), r).numpy()
              for l in range(L)] for r in (2, 4, 8)}  # fmt: skip
for r, per_layer in shares.items():
    flat = np.concatenate(per_layer)
    print(f"top {r:>2} of {D} channels carry {flat.min():.0%}..{flat.max():.0%} of |q·k| (uniform: {r / D:.0%})")
max_over_mean = np.concatenate([s.max(axis=-1) / s.mean(axis=-1) for s in stats["qk"]])
print(f"largest channel / mean channel, per query head: {max_over_mean.min():.1f}..{max_over_mean.max():.1f}")

# %% [markdown]
# ## 2. A heavy channel belongs to a RoPE layout
#
# RoPE turns pairs of channels. The rotate-half layout (Hugging Face's Llama, this model) pairs $c$
# with $c + D/2$; the interleaved layout (the RoPE paper, Meta's original Llama code) pairs $2i$ with
# $2i+1$. The same model can be written either way by permuting the rows of $W_q$ and $W_k$ — and
# then channel $c$ of one layout is channel $(2c \bmod D) + \lfloor 2c/D \rfloor$ of the other
# (`rope.layout_permutation`, `ds.permute_channels`). Heavy-channel indices calibrated in one layout
# and applied in the other pick the wrong channels, silently.

# %%
chosen = ds.calibrate(caps, kind="qk", r=4)  # [Hkv, 4] per layer
perm = rope.layout_permutation(D)
heavy = set(chosen[0][0].tolist())
fig, ax = plt.subplots(figsize=(13, 2.6))
for c in range(D):
    color, lw = ("crimson", 2.2) if c in heavy else ("lightgray", 0.8)
    ax.plot([c, perm[c]], [1, 0], color=color, lw=lw)
ax.scatter(range(D), [1] * D, s=12, color="k")
ax.scatter(range(D), [0] * D, s=12, color="k")
ax.set_yticks([0, 1], ["interleaved", "rotate-half"])
ax.set_xlabel("channel index")
ax.set_title(f"layer 0, kv head 0: heavy channels {sorted(heavy)} (rotate-half) → "
             f"{sorted(perm[sorted(heavy)].tolist())} (interleaved)")  # fmt: skip
plt.show()

# The same step in both layouts: permute q and the caches, permute the channels, same output.
q_last, k_all, v_all = caps[0]["q"][:, :, -1], caps[0]["k"], caps[0]["v"]
same = ds.decode(q_last, k_all, v_all, chosen[0], top_k=32)
moved = ds.decode(rope.to_interleaved(q_last), rope.to_interleaved(k_all), v_all,
                  ds.permute_channels(chosen[0], D), top_k=32)  # fmt: skip
print("largest difference between the layouts:", float((same - moved).abs().max()))

# %% [markdown]
# ## 3. What a step reads, counted in bits (erratum 9)
#
# The **label cache** keeps the heavy channels of every cached key — the keys **after** RoPE, the
# ones attention uses — in one contiguous block per kv head, `[B, Hkv, S, r]`, appended each step
# (`ds.LabelCache`). A step reads all $S$ labels, then $k$ full keys and values. The paper's
# "sparsity 1/16" is a ratio of **bits**, $r \cdot b / (16 D)$ for $r$ labels of $b$ bits against $D$
# channels of 16 bits, with a token budget $k = S/16$ — not "1/16 of the channels": with 4-bit labels
# the same 1/16 buys four times the channels (`ds.label_sparsity`, `ds.channels_for`).

# %%
print(f"{'sparsity':>9} | {'r, 16-bit':>9} | {'r, 8-bit':>8} | {'r, 4-bit':>8}   (D = {D}; Llama-2-7B has D = 128: four times these)")
for s in (Fraction(1, 4), Fraction(1, 8), Fraction(1, 16)):
    print(f"{str(s):>9} | " + " | ".join(f"{ds.channels_for(s, D, bits=b):>8}" for b in (16, 8, 4)))

S = np.array([1024, 4096, 16384, 65536, 262144])
Dp = 128  # a Llama-2-7B head
dense_bytes = S * Dp * 2 * 2  # keys and values, fp16
fig, ax = plt.subplots(figsize=(7, 3.8))
ax.loglog(S, dense_bytes / 1e6, "o-", label="dense: all keys and values")
for bits, r in ((16, 8), (4, 32)):
    k = np.array([ds.token_budget(int(s), Fraction(1, 16)) for s in S])
    sparse = S * r * bits / 8 + k * Dp * 2 * 2  # labels, then k keys and values
    if bits == 4:
        sparse = sparse + S * 2  # one fp16 scale per token
    ax.loglog(S, sparse / 1e6, "s--", label=f"1/16: {r} labels of {bits} bits + k = S/16 rows")
ax.set_xlabel("context S (tokens)")
ax.set_ylabel("MB read per step per kv head")
ax.legend()
ax.set_title("bytes one decoding step reads (D = 128)")
plt.show()

# %% [markdown]
# ## 4. One step by hand, and the recall of the label top-k
#
# For one query: label scores $\hat s_j = q[C]\cdot K_j[C]$ over the label cache, the top $k$ of them
# (ties to the lower token index; every token while $S \le k$), then the exact softmax over those
# rows only. On the left, label score against the exact logit for every cached token of one head;
# the tokens the label top-k keeps are marked.

# %%
layer, head, top_k = 1, 0, 32
c = caps[layer]
t = T - 1
cache = ds.LabelCache(chosen[layer]).append(c["k"][:1, :, : t + 1])  # post-RoPE keys
label = ds.label_scores(c["q"][:1, :, t], cache.labels(), chosen[layer])[0, head]
exact = (c["q"][0, head, t] @ c["k"][0, head // (H // Hkv), : t + 1].T)
kept = ds.select(label, top_k)
exact_top = ds.select(exact, top_k)
fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
axes[0].scatter(exact[~kept], label[~kept], s=6, color="gray", label="not kept")
axes[0].scatter(exact[kept], label[kept], s=12, color="crimson", label=f"label top-{top_k}")
axes[0].set_xlabel("exact logit q·k")
axes[0].set_ylabel(f"label score over r = 4 channels")
axes[0].set_title(f"layer {layer}, head {head}, position {t}: recall {(kept & exact_top).sum().item() / top_k:.0%}")
axes[0].legend()

bench = json.loads((BENCH / "double_sparsity_tiny_lm.json").read_text())
rows = bench["recall"]["rows"]
rs, ks = sorted({x["r"] for x in rows}), sorted({x["top_k"] for x in rows})
grid = np.array([[next(x["recall_mean"] for x in rows if x["r"] == r and x["top_k"] == k) for k in ks] for r in rs])
im = axes[1].imshow(grid, cmap="viridis", vmin=0, vmax=1)
for i in range(len(rs)):
    for j in range(len(ks)):
        axes[1].text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w" if grid[i, j] < 0.6 else "k")
axes[1].set_xticks(range(len(ks)), ks)
axes[1].set_yticks(range(len(rs)), rs)
axes[1].set_xlabel("token budget k")
axes[1].set_ylabel(f"heavy channels r (of {D})")
axes[1].set_title("label top-k recall of the exact top-k (committed run)")
fig.colorbar(im, ax=axes[1], shrink=0.8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Held-out loss against sparsity
#
# To measure the loss of a model that decodes with Double Sparsity we need, for every position $t$,
# the output of a decoding step over the first $t+1$ tokens. `ds.causal_decode` computes all of
# those rows at once, with a $T \times T$ mask — the same function as $T$ decoding steps (checked
# here on 40 tokens against `decode_step` with `ds.decode`, and in `tests/test_double_sparsity.py`).

# %%
ids = torch.from_numpy(data.corpus("held_out")[None, :40].astype(np.int64))
chosen2 = ds.calibrate(caps, kind="qk", r=2)
m64 = copy.deepcopy(model).double()  # float64: no near-tie of label scores can round two ways
with torch.no_grad():
    at_once = m64(ids, attention_override=ds.attention_overrides(chosen2, top_k=8))
    state = m64.new_cache(1)
    stepwise = torch.stack([m64.decode_step(ids[:, i], state, decode_override=ds.decode_overrides(chosen2, top_k=8))
                            for i in range(40)], dim=1)  # fmt: skip
print("largest logit difference, one pass vs token by token:", float((at_once - stepwise).abs().max()))

# %% [markdown]
# The committed run (`python -m reference.double_sparsity`, its JSON in
# `docs/benchmarks/double_sparsity_tiny_lm.json`) calibrated the channels on a little training text
# and evaluated held-out windows of 512 bytes at three sparsities, with 16-bit labels: $r = D \cdot s$
# channels, and a budget either **fixed** at $k = 512\,s$ (rows with fewer tokens are dense, as in
# decoding) or **proportional**, row $t$ keeping $\lceil (t+1)\,s \rceil$ tokens. Beside them, the
# exact top-$k$ (all 32 channels as labels: only the token budget costs anything).

# %%
ho = bench["held_out"]
labels_, fixed, prop, exact_k = [], [], [], []
for row in ho["double_sparsity"]:
    labels_.append(f"{row['sparsity']}\nr={row['r']}, k={row['top_k_fixed']}")
    fixed.append(row["bpb_fixed"])
    prop.append(row["bpb_proportional"])
    exact_k.append(row["bpb_exact_topk_fixed"])
x = np.arange(len(labels_))
fig, ax = plt.subplots(figsize=(9, 4))
ax.axhline(ho["dense_bpb"], color="k", lw=1.2, label=f"dense {ho['dense_bpb']:.4f}")
ax.plot(x, exact_k, "o:", label="exact top-k (fixed k)")
ax.plot(x, fixed, "s-", label="Double Sparsity, fixed k")
ax.plot(x, prop, "^-", label="Double Sparsity, k ∝ context")
ax.set_xticks(x, labels_)
ax.set_ylabel("held-out bits per byte")
ax.set_title(f"tiny model, {ho['windows']} held-out windows of {ho['seq_len']} bytes")
ax.legend()
plt.show()
for v in ho["variants"]:
    print(f"{v['what']:>42}: {v['bpb_fixed']:.4f} bits/byte (dense {ho['dense_bpb']:.4f})")

# %% [markdown]
# What the committed run says about this model:
#
# * **The token budget is cheap.** Attending to the *exact* top 32 of 512 tokens costs about
#   0.006 bits per byte: the attention of this model is concentrated enough for $k = S/16$.
# * **The labels are what cost.** At 1/16 with 16-bit labels, $r = 32/16 = 2$ channels — and the
#   two heaviest are, in most kv heads, the two halves of one slowly turning RoPE pair (channels 9
#   and 25 in the rotate-half layout; see the heatmap). Two channels find only about 60 % of the
#   exact top-32 and the loss rises by almost half a bit per byte. A Llama-2-7B head has $D = 128$,
#   so its 1/16 is 8 channels.
# * **Counting bits (erratum 9) matters.** The same 1/16 with 4-bit labels is $r = 8$ channels, and
#   the loss comes within 0.05 bits per byte of dense; at 1/4 (16-bit, $r = 8$, $k = 128$) it is
#   within 0.003.
# * **The statistic matters.** At 1/16 the qk-outlier channels beat the k-outlier ones clearly, and
#   the q-outlier channels are little better than random ones.
# * **A budget proportional to the context is harsh** at the start of a window, where rows keep 1
#   or 2 tokens; decoding with a fixed $k$ is dense there.

# %% [markdown]
# ## 6. The kernel, and the benchmark
#
# `kernels.double_sparsity.decode` computes the same function in Triton (label scores, an exact
# top-k by radix select with the same tie rule, then attention split over the kept rows). Without a
# GPU it runs in Triton's interpreter — slowly, so on a small step here.

# %%
try:
    from kernels import double_sparsity as kds
except ImportError as err:  # Triton is Linux-only
    print("the Triton kernel is not available here:", err)
else:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 32, generator=g)
    kc, vc = torch.randn(1, 2, 300, 32, generator=g), torch.randn(1, 2, 300, 32, generator=g)
    ch = chosen[1].clone()
    if torch.cuda.is_available():
        q, kc, vc, ch = q.cuda(), kc.cuda(), vc.cuda(), ch.cuda()
    o_kernel = kds.decode(q, kc, vc, ch, top_k=19)
    o_ref = ds.decode(q.double().cpu(), kc.double().cpu(), vc.double().cpu(), ch.cpu(), top_k=19)
    print("kernel vs reference, largest difference:", float((o_kernel.double().cpu() - o_ref).abs().max()))

# %%
# The kernel's committed benchmark (`python -m kernels.bench double_sparsity` on an H100): decode
# time against dense at long context, and the timeline of offloaded decoding (KV cache in pinned
# CPU memory, the next layer's top-k rows fetched while this layer computes). The numbers behind
# them are in the JSON beside each plot and on the Benchmarks page.
found = sorted(p for p in BENCH.glob("double_sparsity*.png") if "tiny_lm" not in p.name)
if not found:
    print("no Double Sparsity kernel benchmark is committed yet (python -m kernels.bench double_sparsity on a GPU writes it)")
for png in found:
    meta = next((m for m in (BENCH / f"{png.stem}.json", BENCH / f"{png.stem.removesuffix('_timeline')}.json") if m.exists()), None)
    if meta is not None:
        env = json.loads(meta.read_text()).get("environment", {})
        print(f"{png.name}: {env.get('device', '?')}, {env.get('date', '?')}, from {meta.name}")
    fig, ax = plt.subplots(figsize=(12, 6))
    ax.imshow(plt.imread(png))
    ax.set_title(png.name)
    ax.axis("off")
    plt.show()

# %% [markdown]
# ## What to take away
#
# * The label cache holds **post-RoPE** keys; the qk-outlier statistic is measured post-RoPE, the
#   q- and k-outlier ones pre-RoPE.
# * "1/16" counts label bits and sets $k = S/16$; the channel count depends on the label width.
# * Channel indices belong to a RoPE layout; move them with the permutation.
# * A tiny model need not have a 7B model's outlier channels: measure the concentration before
#   trusting $r = D/16$ — the recall grid and the loss above say how much it costs here.
#
# The [Double Sparsity page](../docs/double_sparsity.md) has the math, the API and the results in
# one place; `tests/test_double_sparsity.py` pins every claim above.
