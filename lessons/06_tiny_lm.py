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
# # Lesson 6 — A tiny language model that every attention here runs inside
#
# The earlier lessons proved attention forms equal on random tensors. Real attention sees real
# queries and keys: rotated by RoPE, shaped by training, read by other layers. This lesson puts every
# attention of the package inside one small Llama-style decoder, `reference.model.TinyLM`, trained on
# bytes of Python's own standard library (`reference.data`), and
#
# 1. draws the model and counts its parameters;
# 2. shows RoPE as what it is — a rotation per channel pair — and checks live that scores depend
#    only on the distance between tokens;
# 3. loads the committed checkpoint, measures it, and lets it write some Python;
# 4. trains a few steps live, with a progress bar;
# 5. checks that decoding token by token (KV cache, recurrent states) gives the full pass's logits;
# 6. draws the attention maps of trained heads;
# 7. reads LASP-2's Table 2 in miniature from the committed JSON;
# 8. runs one sequence-parallel training step on 4 ranks and compares it with one device.

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyBboxPatch

import simdist
from reference import data, model as M, rope

torch.set_num_threads(1)  # a lesson owns its kernel process; small tensors run best on one thread
ROOT = Path.cwd() if (Path.cwd() / "docs").is_dir() else Path.cwd().parent
lm = M.pretrained("softmax")
cfg = lm.config
print(cfg)

# %% [markdown]
# ## 1. The model
#
# Bytes in (vocabulary 256), logits out. Each block is pre-norm: RMSNorm → attention → residual,
# RMSNorm → SwiGLU → residual. Attention is grouped-query: $H$ query heads share $H_{kv}$ key/value
# heads (query head $h$ reads kv head $h / (H/H_{kv})$), which shrinks the KV cache by $H/H_{kv}$.
# The softmax layers rotate $q$ and $k$ by RoPE; the linear-family layers (linear, Lightning, GLA)
# do not — their decay or gate carries position — and normalise each head's output instead.

# %%
counts = {}
for name, p in lm.named_parameters():
    part = name.split(".")[2] if name.startswith("blocks") else name.split(".")[0]
    counts[part] = counts.get(part, 0) + p.numel()
total = sum(counts.values())
print(f"{total:,} parameters ({total * 4 / 1e6:.2f} MB in float32):", counts)

fig, ax = plt.subplots(figsize=(9, 5.2))
ax.set_axis_off()
boxes = [
    (0.5, "bytes [B, T] → embedding 256 × d", "#dddddd"),
    (1.5, "RMSNorm", "#f3e3c3"),
    (2.5, f"attention: q {cfg.n_heads}×{cfg.head_dim}, k/v {cfg.n_kv_heads}×{cfg.head_dim} (GQA) · RoPE on q, k · causal softmax", "#c6dbef"),
    (3.5, "+ residual", "#ffffff"),
    (4.5, "RMSNorm", "#f3e3c3"),
    (5.5, f"SwiGLU: d={cfg.d_model} → {cfg.ffn_hidden} → d", "#c7e9c0"),
    (6.5, "+ residual", "#ffffff"),
    (7.5, "RMSNorm → linear head → logits [B, T, 256]", "#dddddd"),
]
for y, text, colour in boxes:
    ax.add_patch(FancyBboxPatch((0.05, 8 - y - 0.35), 0.9, 0.7, boxstyle="round,pad=0.02", fc=colour, ec="k"))
    ax.text(0.5, 8 - y, text, ha="center", va="center", fontsize=9)
ax.add_patch(FancyBboxPatch((0.02, 1.05), 0.96, 5.9, boxstyle="round,pad=0.02", fc="none", ec="#555555", ls="--"))
ax.text(0.995, 4.0, f"× {cfg.n_layers} layers", rotation=90, ha="left", va="center", fontsize=10)
ax.set(xlim=(0, 1.04), ylim=(0, 8), title="TinyLM (the committed softmax checkpoint)")
plt.show()

# %% [markdown]
# ## 2. RoPE: a rotation per channel pair
#
# RoPE (arXiv 2104.09864) turns channel pair $i$ of the vector at position $m$ by the angle
# $m\theta_i$, $\theta_i = \text{base}^{-2i/D}$. High-frequency pairs spin fast, low-frequency ones
# hardly move. Below: one pair of a query, at positions 0..15, for a fast and a slow frequency.

# %%
D = 8
x = np.zeros((16, D))
x[:, 0], x[:, D // 2] = 1.0, 0.3  # pair 0 is channels (0, D/2) in the rotate-half layout
x[:, 3], x[:, 3 + D // 2] = 1.0, 0.3  # pair 3: the slowest frequency
rotated = rope.apply(x, np.arange(16), base=100.0)
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
for ax, pair in zip(axes[:2], [0, 3]):
    pts = rotated[:, [pair, pair + D // 2]]
    ax.plot(pts[:, 0], pts[:, 1], "-o", ms=3, color="#999999")
    for m in (0, 1, 2, 5):
        ax.annotate(f"m={m}", pts[m], textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(aspect="equal", xlim=(-1.2, 1.2), ylim=(-1.2, 1.2),
           title=f"pair {pair}: θ = {rope.frequencies(D, base=100.0)[pair]:.3f} rad per position")

# the relative-position property, live: q at m, k at n; the score depends only on m - n
rng = np.random.default_rng(0)
q, k = rng.standard_normal(32), rng.standard_normal(32)
P = 48
qs = rope.apply(np.tile(q, (P, 1)), np.arange(P))
ks = rope.apply(np.tile(k, (P, 1)), np.arange(P))
scores = qs @ ks.T  # scores[m, n] = R(m) q · R(n) k
diagonals = [np.ptp(np.diagonal(scores, offset=-d)) for d in range(P)]
print(f"largest spread of q_m · k_n along any diagonal m - n = const: {max(diagonals):.2e}")
im = axes[2].imshow(scores, cmap="RdBu_r")
axes[2].set(title="R(m)q · R(n)k: constant along diagonals", xlabel="key position n", ylabel="query position m")
plt.colorbar(im, ax=axes[2], shrink=0.8)
plt.tight_layout()
plt.show()

# the two channel layouts are one function after a fixed permutation
perm = rope.layout_permutation(D)
y = rng.standard_normal((5, D))
half = rope.apply(y, np.arange(5), layout="half")
inter = rope.apply(rope.to_interleaved(y), np.arange(5), layout="interleaved")
print("layout_permutation(8) =", perm, " max |interleaved − permuted half| =", np.abs(rope.to_interleaved(half) - inter).max())

# %% [markdown]
# ## 3. The committed checkpoint
#
# `reference.model.pretrained()` loads `reference/checkpoints/tiny_lm_softmax.pt` (how it was made:
# `reference/checkpoints/README.md`). Bits per byte is the cross-entropy in base 2: 8 would be
# guessing uniformly among 256 bytes; gzip gets Python source to roughly 2.

# %%
meta = lm.meta
print("made by:", meta["command"])
print(f"stated held-out bits per byte: {meta['held_out_bits_per_byte']:.3f} ({meta['eval_windows']} windows of {meta['train']['seq_len']} bytes)")
held_out = data.corpus("held_out")
t0 = time.perf_counter()
bpb = M.bits_per_byte(lm, held_out, seq_len=512, max_windows=4)
print(f"measured here on 4 windows: {bpb:.3f} bits per byte ({time.perf_counter() - t0:.1f} s)")
prompt_text = b"def __init__(self"
print((prompt_text + M.generate(lm, prompt_text, 160, temperature=0.6, seed=1)).decode("utf-8", "replace"))

# %% [markdown]
# ## 4. Training, live
#
# `python -m reference.model train` trains from scratch (seeded, deterministic on the CPU). Here, a
# few steps of a smaller hybrid model — three Lightning layers and one softmax layer, LASP-2's "1/4
# hybrid" — so the lesson stays fast. The loss falls from 8 bits per byte (uniform) at once.

# %%
small = M.Config(d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn_hidden=128, attention=M.hybrid("lightning", 4))
tc = M.TrainConfig(steps=25, batch_size=8, seq_len=128, lr=5e-3, warmup=5)
live, losses = M.train(small, tc)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(np.array(losses) / np.log(2))
ax.set(xlabel="step", ylabel="training bits per byte", title=f"{'/'.join(small.attention)}: {tc.steps} steps")
plt.show()

# %% [markdown]
# ## 5. Decoding equals the full pass
#
# Generation feeds one byte at a time. Softmax layers keep a **KV cache** of post-RoPE keys and
# values, $[B, H_{kv}, S, D]$, growing with $S$; linear-family layers keep their **recurrent state**
# $[B, H, D, D]$, the same size whatever $S$. Step by step the logits equal the full pass's — for
# the trained softmax model and for the hybrid just trained — up to float32 rounding (the full pass
# uses the chunked forms, decoding the recurrences; `tests/test_model.py` checks it to $10^{-12}$ in
# float64).

# %%
prompt = torch.tensor([list(b"import os\nimport sys\n")])
for name, mdl in [("softmax checkpoint", lm), ("Lightning 1/4 hybrid", live.eval())]:
    with torch.no_grad():
        full = mdl(prompt)
        cache = mdl.new_cache(1)
        stepped = torch.stack([mdl.decode_step(prompt[:, t], cache) for t in range(prompt.shape[1])], dim=1)
    sizes = {kind: tuple(next(iter(state.values())).shape) for kind, state in zip(mdl.config.attention, cache.layers)}
    print(f"{name}: max |step − full| = {(stepped - full).abs().max():.2e}; cache per kind: {sizes}")

# %% [markdown]
# ## 6. What trained heads look at
#
# `forward(tokens, capture=[])` hands back every layer's $q$ and $k$ before and after RoPE — what
# SeerAttention's gate pools and Double Sparsity's channel statistics read. Here the softmax
# attention maps of every head of the first and last layers, on a piece of held-out code.

# %%
start = held_out.tobytes().find(b"    def ", 20_000)  # a method of some held-out module
text = held_out[start : start + 160]
tokens = torch.from_numpy(text.astype(np.int64))[None]
captured = []
with torch.no_grad():
    lm(tokens, capture=captured)
fig, axes = plt.subplots(2, cfg.n_heads, figsize=(3.2 * cfg.n_heads, 6.4))
T = tokens.shape[1]
mask = torch.ones(T, T).tril().bool()
for row, layer in enumerate([0, cfg.n_layers - 1]):
    q, k = captured[layer]["q"][0], captured[layer]["k"][0]  # [H, T, D], [Hkv, T, D]
    k = k.repeat_interleave(cfg.n_heads // cfg.n_kv_heads, 0)
    w = torch.softmax((q @ k.transpose(-1, -2) * cfg.head_dim**-0.5).masked_fill(~mask, float("-inf")), -1)
    for h in range(cfg.n_heads):
        axes[row, h].imshow(w[h] ** 0.5, cmap="magma")  # square root: faint weights stay visible
        axes[row, h].set(title=f"layer {layer}, head {h} (kv {h // (cfg.n_heads // cfg.n_kv_heads)})", xticks=[], yticks=[])
plt.suptitle("attention weights (√ for contrast) on 160 held-out bytes: rows are queries")
plt.tight_layout()
plt.show()
print(bytes(text).decode("utf-8", "replace"))

# %% [markdown]
# ## 7. LASP-2's Table 2, in miniature
#
# LASP-2 (arXiv 2502.07563) trains Linear-Llama3-1B with pure linear attention and with a "1/4
# hybrid" (one softmax layer in four) and reports the losses in its Table 2: the hybrids close the gap
# to softmax. `python -m reference.model table2` runs the same comparison at toy scale, one budget
# for every row: held-out bits per byte on the corpus, and MQAR (associative recall) accuracy.

# %%
table = json.loads((ROOT / "docs" / "benchmarks" / "tiny_lm_table2.json").read_text())
print("command:", table["command"], "|", table["date"], "|", table.get("device", "cpu"), "| torch", table["torch"])
for r in table["rows"]:
    print(f"{r['attention']:>18}: {r['held_out_bits_per_byte']:.3f} bits/byte, MQAR {r['mqar_accuracy']:.2f}")
M.plot_table2(table)
plt.show()

# %% [markdown]
# Read it with care: a model of this size, trained for minutes, ranks attentions by how fast they
# learn *at this scale* — a difference of a few hundredths of a bit is within seed noise, and the
# paper's 1B models see 50B tokens at 16K context, in other units (nats per token). What it can
# show: every form trains inside the same model under one budget, which learns fastest at this
# scale, whether one softmax layer in four helps each linear form here, and numbers anyone can
# reproduce from the command above. `docs/tiny_lm.md` reads the committed run.
#
# ## 8. One sequence-parallel training step on 4 ranks
#
# Split every sequence into 4 chunks, one per rank. Linear-family layers run through
# `simdist.lasp2.attention` (with GLA's gates: each chunk's state decays per key row), softmax
# layers through `simdist.lasp2h.attention`; everything else is per token. The loss and every
# parameter's gradient equal one device's, in float64.

# %%
mixed = M.TinyLM(M.Config(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, ffn_hidden=48, max_len=64,
                          attention=("gla", "softmax", "lightning", "linear")), seed=0).double()
seq = torch.from_numpy(data.corpus("held_out")[:25].astype(np.int64))[None].repeat(2, 1)  # [B, T + 1]
want_loss, want_grads = M.step_gradients(mixed, seq)
lengths = [5, 7, 4, 8]
pool = simdist.shared_pool(4)
out = pool.run(M.sequence_parallel_step, mixed.config.to_dict(), mixed.state_dict(), seq, lengths)
loss_err = max(abs(o[0] - want_loss) for o in out)
grad_err = max(float((o[1][n] - g).abs().max()) for o in out for n, g in want_grads.items())
print(f"loss {want_loss:.6f}; 4 ranks vs one device: loss error {loss_err:.1e}, worst gradient error {grad_err:.1e} "
      f"over {len(want_grads)} parameters")

# %% [markdown]
# ## Exercises
#
# 1. Load the checkpoint, swap layer 3's attention for your own function through
#    `attention_override={3: fn}` (e.g. attention to the last 64 keys only) and measure the held-out
#    bits per byte. How much does a sliding window cost this model?
# 2. Permute the rows of `q_proj` and `k_proj` with `rope.layout_permutation` and switch the config to
#    `rope_layout="interleaved"`: the logits must not change (`tests/test_model.py` does it).
# 3. Train `--attention hybrid-lightning` and `--attention lightning` with the same budget and compare
#    their MQAR accuracy: where in the sequence does the pure model fail?
