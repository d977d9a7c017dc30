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
# # Lesson 3 — Lightning Attention-2: linear attention with a decay, tiled
#
# Linear attention replaces the softmax by a plain product, so the output of token $t$ becomes
# $o_t = q_t S_t$ with a running $K \times V$ state $S_t = \sum_{s \le t} k_s^\top v_s$. Lightning
# Attention-2 (Qin et al., 2024, arXiv 2401.04658) adds a **decay** $\lambda \in (0, 1]$ per head,
# so old tokens fade, and shows how to compute the causal version at matrix-unit speed by splitting
# every block of the sequence into an *intra* part and an *inter* part.
#
# In this lesson you will
#
# 1. draw the decay mask and check the three forms (recurrent, parallel, chunked) agree;
# 2. see why the causal cumulative sum is what makes plain linear attention slow;
# 3. draw the intra/inter tiling and write Algorithm 1 yourself;
# 4. derive the backward pass (Algorithm 2) and check it live against autograd, including the
#    off-by-$\lambda$ trap that a decay close to 1 hides;
# 5. plot the decay rates TransNormerLLM gives each head and layer;
# 6. run the Triton kernel (in Triton's CPU interpreter when there is no GPU) against the reference;
# 7. read the H100 benchmark from the committed JSON.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyArrowPatch, Rectangle

from reference import lightning, linear_attention

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels run on the CPU; set before importing them

rng = np.random.default_rng(0)
B, H, T, K, V = 1, 4, 96, 16, 16
q, k, v = rng.standard_normal((B, H, T, K)), rng.standard_normal((B, H, T, K)), rng.standard_normal((B, H, T, V))
decay = np.array([0.5, 0.8, 0.95, 1.0])  # one rate per head; 1.0 is plain linear attention
print("q, k:", q.shape, " v:", v.shape, " decay:", decay)

# %% [markdown]
# ## 1. The decay mask, and three forms of one function
#
# With a decay the recurrence becomes $S_t = \lambda S_{t-1} + k_t^\top v_t$, $o_t = q_t S_t$. Unrolled,
#
# $$ o_t = \sum_{s \le t} \lambda^{t-s}\,(q_t \cdot k_s)\, v_s, $$
#
# that is
#
# $$ O = \big[(QK^\top) \odot D\big] V,\qquad D_{ts} = \begin{cases}\lambda^{t-s} & t \ge s\\ 0 & t < s.\end{cases} $$
#
# $D$ is **lower** triangular with ones on the diagonal: a token sees itself and its past, the past
# fading geometrically. (Drawn upper triangular, as it easily is, it would let every token read the
# future — erratum 1; `tests/test_lightning.py` pins the right one.)

# %%
mask = lightning.decay_mask(decay, 24)
fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
for ax, h in zip(axes, range(H)):
    im = ax.imshow(mask[h], cmap="viridis", vmin=0, vmax=1)
    ax.set_title(f"D for λ = {decay[h]}")
    ax.set_xlabel("key position s")
axes[0].set_ylabel("query position t")
fig.colorbar(im, ax=axes, shrink=0.8)
plt.show()

# %%
o_rec, s_rec = lightning.recurrent(q, k, v, decay)
o_par = lightning.parallel(q, k, v, decay)
for chunk in (1, 7, 32, 200):
    o_chk, s_chk = lightning.chunked(q, k, v, decay, chunk_size=chunk)
    print(f"chunk {chunk:>3}: |chunked - parallel| = {np.abs(o_chk - o_par).max():.1e}, "
          f"|chunked state - recurrent state| = {np.abs(s_chk - s_rec).max():.1e}")
print(f"recurrent vs parallel: {np.abs(o_rec - o_par).max():.1e}")
print("λ = 1 is linear attention:", np.abs(lightning.chunked(q, k, v, np.ones(H))[0] - linear_attention.chunked(q, k, v)[0]).max())

# %% [markdown]
# ## 2. Why the cumulative sum is the bottleneck
#
# Without a mask, linear attention is cheap in any order: $Q(K^\top V)$ costs $O(TKV)$ and is three
# large matrix products. The **causal** mask breaks that: token $t$ needs $\sum_{s\le t} k_s^\top v_s$,
# a *cumulative sum* of $T$ outer products. Computed as a recurrence it is $T$ sequential steps, each
# a tiny rank-one update that no matrix unit can accelerate; computed as $[(QK^\top)\odot D]V$ it is
# matrix products again, but $O(T^2)$ of them. The chunked form takes the best of both: matrix
# products of size $C$ inside a block, and only $T/C$ sequential steps between blocks.
#
# Timing the three NumPy forms on the CPU shows the shapes of those costs (the absolute numbers are
# NumPy's, not a GPU's).

# %%
def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


lengths = [128, 256, 512, 1024, 2048]
timings = {"recurrent": [], "parallel": [], "chunked (C=64)": []}
for n in lengths:
    qn, kn, vn = (rng.standard_normal((1, 2, n, 32)) for _ in range(3))
    lam = np.array([0.9, 0.99])
    timings["recurrent"].append(best_of(lambda: lightning.recurrent(qn, kn, vn, lam), repeat=1))
    timings["parallel"].append(best_of(lambda: lightning.parallel(qn, kn, vn, lam)))
    timings["chunked (C=64)"].append(best_of(lambda: lightning.chunked(qn, kn, vn, lam, chunk_size=64)))

fig, ax = plt.subplots(figsize=(6, 4))
for name, ts in timings.items():
    ax.loglog(lengths, np.array(ts) * 1e3, "o-", label=name)
ax.set_xlabel("sequence length T")
ax.set_ylabel("CPU time (ms)")
ax.set_title("Lightning Attention-2 forms, NumPy on the CPU (B=1, H=2, K=V=32)")
ax.legend()
ax.grid(alpha=0.3, which="both")
plt.show()

# %% [markdown]
# The recurrent form grows linearly but with a large constant (one Python-level step per token);
# the parallel form grows quadratically; the chunked form grows linearly with the constant of a
# matrix product. On a GPU the gap is larger still, because only matrix products use the tensor
# cores.
#
# ## 3. The intra/inter tiling (Algorithm 1)
#
# Cut the sequence into blocks of $C$ tokens. For block $i$ with rows $Q_i, K_i, V_i$ and local
# positions $j = 1..n$ ($n = C$ except perhaps the last block), let $\Lambda = \mathrm{diag}(\lambda^1,
# \dots, \lambda^n)$ and $KV$ the state after the previous block. Then
#
# $$ O_i = \underbrace{\big[(Q_i K_i^\top) \odot D_n\big] V_i}_{\text{intra}} + \underbrace{\Lambda\, Q_i\, KV}_{\text{inter}},
#    \qquad KV \leftarrow \lambda^n\, KV + (\lambda^n \Lambda^{-1} K_i)^\top V_i . $$
#
# The picture: the diagonal blocks of the $T \times T$ attention matrix are computed directly
# (masked and decayed); every block below the diagonal is never formed — it is summarised by the
# state, which each block receives from the one before.

# %%
n_blocks = 6
fig, ax = plt.subplots(figsize=(5.5, 5.5))
for i in range(n_blocks):
    for j in range(n_blocks):
        if j == i:
            color, label = "#e4572e", "intra: [(Q_i K_iᵀ) ⊙ D] V_i"
        elif j < i:
            color, label = "#76b041", "inter: through the state KV"
        else:
            color, label = "#dddddd", "zero (future)"
        ax.add_patch(Rectangle((j, n_blocks - 1 - i), 1, 1, facecolor=color, edgecolor="white", lw=2, label=label))
for i in range(n_blocks - 1):
    ax.add_patch(FancyArrowPatch((i + 0.5, n_blocks - 1 - i + 0.15), (i + 1.5, n_blocks - 2 - i + 0.85),
                                 arrowstyle="->", mutation_scale=14, color="black"))
handles, labels = ax.get_legend_handles_labels()
unique = dict(zip(labels, handles))
ax.legend(unique.values(), unique.keys(), loc="upper right", fontsize=8)
ax.set_xlim(0, n_blocks)
ax.set_ylim(0, n_blocks)
ax.set_xticks(np.arange(n_blocks) + 0.5, [f"K{j}" for j in range(n_blocks)])
ax.set_yticks(np.arange(n_blocks) + 0.5, [f"Q{i}" for i in reversed(range(n_blocks))])
ax.set_title("Which blocks each form computes (arrows: the state KV)")
ax.set_aspect("equal")
plt.show()

# %% [markdown]
# Now write Algorithm 1 yourself, one head at a time, and compare it with the reference. Every
# power of $\lambda$ is formed with a non-negative exponent — $\lambda^{n-j}$, never
# $\lambda^n / \lambda^j$ — so a strong decay underflows to 0 instead of overflowing.

# %%
def algorithm_1(q, k, v, lam, C, *, query_exponent_shift=0):
    """One head: q, k [T, K], v [T, V] → o [T, V] (the paper's Algorithm 1, written out).

    ``query_exponent_shift`` exists only for the trap of section 4: -1 takes the query exponents of
    the official kernel (0..n-1) while keeping Algorithm 1's key exponents — off by a factor λ.
    """
    T, K = q.shape
    kv = np.zeros((K, v.shape[1]))
    out = []
    for start in range(0, T, C):
        qi, ki, vi = q[start:start + C], k[start:start + C], v[start:start + C]
        n = len(qi)
        j = np.arange(1, n + 1)
        D = np.tril(lam ** np.maximum(j[:, None] - j[None, :], 0))
        o_intra = ((qi @ ki.T) * D) @ vi
        o_inter = (lam ** (j + query_exponent_shift))[:, None] * (qi @ kv)
        out.append(o_intra + o_inter)
        kv = lam ** n * kv + ((lam ** (n - j))[:, None] * ki).T @ vi
    return np.concatenate(out)


mine = np.stack([algorithm_1(q[0, h], k[0, h], v[0, h], decay[h], C=20) for h in range(H)])[None]
print("my Algorithm 1 vs reference.lightning.parallel:", np.abs(mine - o_par).max())

# %% [markdown]
# ## 4. The backward pass (Algorithm 2)
#
# Given $dO = \partial L / \partial O$, differentiate $O_i = [(Q_iK_i^\top)\odot D]V_i + \Lambda Q_i KV$:
#
# * $Q_i$ appears in the intra term and against the **previous** state, so
#   $dQ_i = [(dO_i V_i^\top) \odot D] K_i + \Lambda\, dO_i\, KV^\top$ — a sweep **forward** in time.
# * $K_i$ and $V_i$ appear in their own block's intra term and in the state that every **later**
#   block reads. Let $dKV$ be the gradient with respect to the state after block $i$; then
#   $dK_i = [(dO_iV_i^\top)\odot D]^\top Q_i + (\lambda^n\Lambda^{-1}V_i)\,dKV^\top$ and
#   $dV_i = [(Q_iK_i^\top)\odot D]^\top dO_i + (\lambda^n\Lambda^{-1}K_i)\,dKV$, and moving one block
#   back, $dKV \leftarrow \lambda^n dKV + (\Lambda Q_i)^\top dO_i$ — a sweep **backward** in time.
#
# `reference.lightning.chunked_backward` implements exactly this; torch autograd of the parallel
# form is the judge.

# %%
do = rng.standard_normal((B, H, T, V))
leaves = [torch.tensor(x, requires_grad=True) for x in (q, k, v)]
(lightning.parallel(*leaves, decay) * torch.tensor(do)).sum().backward()
manual = lightning.chunked_backward(q, k, v, decay, do, chunk_size=20)
for name, mine_g, auto in zip(("dQ", "dK", "dV"), manual, leaves):
    print(f"{name}: Algorithm 2 vs autograd, max |difference| = {np.abs(mine_g - auto.grad.numpy()).max():.1e}")

# %% [markdown]
# **The off-by-$\lambda$ trap.** The official kernel uses exponents $0..n-1$ for the queries and
# $n..1$ for the keys; Algorithm 1 uses $1..n$ and $n-1..0$. Both are right — but a program that
# takes the query exponents from one convention and the key exponents from the other is off by a
# factor $\lambda$ in every inter term. With $\lambda$ close to 1 the error hides in rounding; a test
# with $\lambda \approx 0.5$ exposes it at once, which is why the property tests draw decays from 0.3.

# %%
for lam in (0.999, 0.5):
    right = algorithm_1(q[0, 0], k[0, 0], v[0, 0], lam, C=16)
    wrong = algorithm_1(q[0, 0], k[0, 0], v[0, 0], lam, C=16, query_exponent_shift=-1)
    print(f"λ = {lam}: relative error of the mixed version = {np.linalg.norm(wrong - right) / np.linalg.norm(right):.1e}")

# %% [markdown]
# ## 5. The decay rates of TransNormerLLM
#
# The official code gives head $h = 1..H$ the ALiBi slope $s_h = 2^{-8h/H}$, scales it per layer by
# $1 - l/(L-1) + 10^{-5}$, and sets $\lambda_h = e^{-s_h}$: early layers forget fast, the last layer
# hardly at all. fla's `chunk_lightning_attn` uses a different rule, linear in the head index with an
# undecayed head 0. `reference.lightning.tnl_decay` gives both (`rule="tnl"` is the default). The
# right panel shows the *memory length* $1/(1-\lambda)$, about how many tokens a head averages over.

# %%
H_model, L_model = 16, 12
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for layer in (0, 4, 8, 11):
    lam = lightning.tnl_decay(H_model, layer, L_model)
    axes[0].plot(range(1, H_model + 1), lam, "o-", label=f"tnl, layer {layer}")
    axes[1].semilogy(range(1, H_model + 1), 1 / (1 - lam), "o-", label=f"tnl, layer {layer}")
fla_rule = lightning.tnl_decay(H_model, 0, L_model, rule="fla")
axes[0].plot(range(1, H_model + 1), fla_rule, "k--", label="fla rule, layer 0")
axes[1].semilogy(range(1, H_model + 1), 1 / np.maximum(1 - fla_rule, 1e-12), "k--", label="fla rule, layer 0")
axes[0].set_ylabel("λ")
axes[1].set_ylabel("memory length 1/(1-λ) (tokens)")
for ax in axes:
    ax.set_xlabel("head")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.suptitle(f"Decay rates, H={H_model}, L={L_model}")
plt.show()

# %% [markdown]
# ## 6. The Triton kernel
#
# `kernels.lightning.attention` computes the same function on a GPU: one Triton kernel walks the
# blocks of a sequence (intra product, inter product against a state held on chip, state update),
# and serves all four passes — the forward, and Algorithm 2's $dQ$ (a forward walk over
# $(dO, V, K)$), $dV$ and $dK$ (backward walks over $(K, Q, dO)$ and $(V, dO, Q)$). Long sequences are
# cut into segments that run in parallel, each starting from a state computed by a cheap scan.
# Without a GPU the cell below runs the kernel in Triton's interpreter: slow, but the very same code.

# %%
from kernels import lightning as lightning_kernel  # noqa: E402  (after TRITON_INTERPRET is set)

device = "cuda" if torch.cuda.is_available() else "cpu"
tq, tk, tv = (torch.tensor(x, dtype=torch.float32, device=device, requires_grad=True) for x in (q, k, v))
o_kernel = lightning_kernel.attention(tq, tk, tv, decay, chunk_size=32)
o_kernel.backward(torch.tensor(do, dtype=torch.float32, device=device))
print(f"kernel on {device} ({'GPU' if device == 'cuda' else 'Triton interpreter'}), fp32:")
print(f"  output  max |kernel - reference| = {np.abs(o_kernel.detach().cpu().numpy() - o_par).max():.1e}")
for name, leaf, ref_grad in zip(("dQ", "dK", "dV"), (tq, tk, tv), manual):
    print(f"  {name}      max |kernel - Algorithm 2| = {np.abs(leaf.grad.cpu().numpy() - ref_grad).max():.1e}")

# %% [markdown]
# ## 7. How fast on an H100
#
# `python -m kernels.bench lightning` measures this kernel beside fla's `chunk_simple_gla` (the same
# function with `g_gamma = log λ`) and torch's causal SDPA (softmax attention, for scale), forward
# and forward+backward, at 65,536 tokens per step (B·T), 16 heads of width 128, bf16. The figure
# below is drawn from the committed JSON; its environment block records the device, versions and
# command.

# %%
from kernels.bench import lightning as lightning_bench  # noqa: E402
from kernels.bench.common import RESULTS_DIR, load_json, plot_throughput  # noqa: E402

if (RESULTS_DIR / "lightning.json").exists():
    result = load_json("lightning")
    rows = result["rows"]
    plot_throughput(result, lightning_bench.LABELS, algorithm="Lightning Attention-2")
    plt.show()
    for r in rows:
        o = r["ours"]
        print(f"T={r['T']:>6}: forward {o['fwd_speedup_vs_fla_chunk_simple_gla']:.2f}x fla, "
              f"forward+backward {o['fwdbwd_speedup_vs_fla_chunk_simple_gla']:.2f}x fla, "
              f"{o['fwdbwd_speedup_vs_torch_sdpa_causal']:.1f}x SDPA; "
              f"{o['roofline_fwdbwd']['fraction_of_floor']:.0%} of the memory floor")
else:
    print("The GPU benchmark has not been committed yet: run `python -m kernels.bench lightning` on a GPU.")
