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
# # Lesson 2 — Linear attention: one function, three forms
#
# Take the softmax out of attention and something remarkable happens: the output of token $t$ no
# longer needs the keys and values of all earlier tokens, only a fixed-size **state** that
# summarises them. The same function can then be computed in three ways, which cost very different
# amounts of work and of waiting:
#
# | form | how | work | sequential steps |
# | --- | --- | --- | --- |
# | recurrent | one token at a time, carrying the state | $O(T K V)$ | $T$ |
# | parallel | all tokens at once, a masked $T\times T$ product | $O(T^2 (K+V))$ | $1$ |
# | chunked | parallel inside chunks of $C$, the state between chunks | $O(T C (K+V) + T K V)$ | $T/C$ |
#
# In this lesson you will derive all three, show on random data that they agree to rounding,
# measure them on the CPU, and see why the chunked form is the one fast kernels use
# (Lightning Attention-2, GLA and their sequence-parallel versions are all chunked forms).

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from reference import linear_attention as la

rng = np.random.default_rng(0)
B, H, T, K, V = 2, 2, 300, 16, 24  # T = 300 is deliberately not a multiple of the chunk size
q = rng.standard_normal((B, H, T, K)) / np.sqrt(K)
k = rng.standard_normal((B, H, T, K)) / np.sqrt(K)
v = rng.standard_normal((B, H, T, V))

# %% [markdown]
# ## 1. From attention to a recurrence
#
# Causal softmax attention weighs value $v_s$ by $e^{q_t \cdot k_s}$, normalised over $s \le t$.
# Linear attention drops the exponential and the normalisation (the form used by the papers this
# package implements; `scale` multiplies $q$ and defaults to 1):
#
# $$
# o_t = \sum_{s \le t} (q_t \cdot k_s)\, v_s .
# $$
#
# With row vectors, $(q_t \cdot k_s)\,v_s = q_t\,(k_s^\top v_s)$, where $k_s^\top v_s$ is a
# $K \times V$ outer product. The sum over $s$ moves inside:
#
# $$
# o_t = q_t \underbrace{\sum_{s \le t} k_s^\top v_s}_{S_t}, \qquad S_t = S_{t-1} + k_t^\top v_t,
# \quad S_0 = 0 .
# $$
#
# That is the **recurrent form**: a state $S_t \in \mathbb{R}^{K\times V}$ that never grows,
# where softmax attention keeps a cache of all $t$ keys and values. Stacking all tokens into
# matrices gives the **parallel form**,
#
# $$
# O = \bigl( (Q K^\top) \odot M \bigr) V, \qquad M_{ts} = 1 \text{ if } s \le t \text{ else } 0,
# $$
#
# with $M$ lower-triangular **including** the diagonal (token $t$ sees itself).
#
# ## 2. The chunked form, derived
#
# Split the $T$ tokens into chunks of $C$ (the last one may be shorter). For a token in chunk $i$,
# split its sum into the earlier chunks and its own chunk:
#
# $$
# o_t = q_t \sum_{s \in \text{chunks } 0..i-1} k_s^\top v_s \;+\; \sum_{s \in \text{chunk } i,\ s\le t} (q_t\cdot k_s)\, v_s .
# $$
#
# The first sum is the state after chunks $0..i-1$ — an **exclusive** prefix, written $S_{[i]}$.
# The second is the parallel form restricted to one chunk. For all rows of chunk $i$ at once:
#
# $$
# O_i = \underbrace{\bigl((Q_i K_i^\top) \odot M\bigr) V_i}_{\text{intra-chunk}} \;+\;
#       \underbrace{Q_i\, S_{[i]}}_{\text{inter-chunk}}, \qquad
# S_{[i+1]} = S_{[i]} + K_i^\top V_i .
# $$
#
# Using the *inclusive* state (one that already contains chunk $i$) would count chunk $i$ twice
# and let tokens see their future — the most common bug in chunked kernels. The picture shows which
# part of the $T\times T$ interaction each term accounts for.

# %%
T_pic, C_pic = 64, 16
t_idx, s_idx = np.meshgrid(np.arange(T_pic), np.arange(T_pic), indexing="ij")
region = np.zeros((T_pic, T_pic))  # 0: never (future)
region[(s_idx <= t_idx) & (s_idx // C_pic == t_idx // C_pic)] = 2  # intra-chunk: masked Q_i K_iᵀ
region[(s_idx // C_pic) < (t_idx // C_pic)] = 1  # inter-chunk: through the state S_[i]

fig, ax = plt.subplots(figsize=(4.6, 4.2), constrained_layout=True)
ax.imshow(region, cmap=plt.matplotlib.colors.ListedColormap(["#f2f2f2", "#7fa7d9", "#e07a5f"]), vmin=0, vmax=2)
for x in range(0, T_pic + 1, C_pic):
    ax.axhline(x - 0.5, color="k", lw=0.6)
    ax.axvline(x - 0.5, color="k", lw=0.6)
ax.set(xlabel="key token s", ylabel="query token t", title=f"T = {T_pic}, chunks of C = {C_pic}")
handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ["#e07a5f", "#7fa7d9", "#f2f2f2"]]
labels = [r"intra: $((Q_i K_i^\top) \odot M)\, V_i$", r"inter: $Q_i\, S_{[i]}$", "future: never seen"]
ax.legend(handles, labels, loc="upper right", fontsize=7)
plt.show()

# %% [markdown]
# ## 3. Three forms, written out, and proven equal
#
# Here are the three forms for a single head, as plainly as NumPy allows. Below they are checked
# against each other and against `reference.linear_attention`, which is the same math written once
# for NumPy and PyTorch and tested by Hypothesis against a float64 oracle (`tests/test_linear_attention.py`).

# %%
def recurrent_form(q, k, v):
    """One head: q, k [T, K], v [T, V] -> (o [T, V], final state [K, V])."""
    S = np.zeros((q.shape[1], v.shape[1]))
    o = np.empty((q.shape[0], v.shape[1]))
    for t in range(q.shape[0]):
        S = S + np.outer(k[t], v[t])  # S_t = S_{t-1} + k_tᵀ v_t
        o[t] = q[t] @ S  # o_t = q_t S_t
    return o, S


def parallel_form(q, k, v):
    T = q.shape[0]
    M = np.tril(np.ones((T, T)))  # lower triangle, diagonal included
    return ((q @ k.T) * M) @ v


def chunked_form(q, k, v, C):
    S = np.zeros((q.shape[1], v.shape[1]))  # S_[0] = 0: nothing before the first chunk
    o = []
    for start in range(0, q.shape[0], C):
        q_i, k_i, v_i = q[start : start + C], k[start : start + C], v[start : start + C]
        n = len(q_i)  # the last chunk may be shorter
        intra = ((q_i @ k_i.T) * np.tril(np.ones((n, n)))) @ v_i
        inter = q_i @ S  # the EXCLUSIVE state: chunks before this one
        o.append(intra + inter)
        S = S + k_i.T @ v_i  # only now add this chunk
    return np.concatenate(o), S


# Our forms on every (batch, head), stacked back to [B, H, T, V].
def per_head(fn, *args):
    results = [[fn(q[b, h], k[b, h], v[b, h], *args) for h in range(H)] for b in range(B)]
    if isinstance(results[0][0], tuple):
        return tuple(np.array([[r[i] for r in row] for row in results]) for i in range(2))
    return np.array(results)


o_par = per_head(parallel_form)  # the yardstick
S_true = np.einsum("bhtk,bhtv->bhkv", k, v)  # the final state is the plain sum of outer products

candidates = {
    "ours: recurrent": per_head(recurrent_form),
    "ours: chunked, C = 64": per_head(chunked_form, 64),
    "ours: chunked, C = 37": per_head(chunked_form, 37),
    "ours: chunked, C = 1": per_head(chunked_form, 1),
    "ours: chunked, C = T": per_head(chunked_form, T),
    "reference.recurrent": la.recurrent(q, k, v),
    "reference.chunked(chunk_size=64)": la.chunked(q, k, v, chunk_size=64),
    "reference.parallel": (la.parallel(q, k, v), None),
}
rows = ["| form | max \\|o − parallel\\| | max \\|S − Σ kᵀv\\| |", "| --- | --- | --- |"]
for name, (o, S) in candidates.items():
    err_o = np.abs(o - o_par).max()
    err_S = "—" if S is None else f"{np.abs(S - S_true).max():.1e}"
    rows.append(f"| {name} | {err_o:.1e} | {err_S} |")
    assert err_o < 1e-12 and (S is None or np.abs(S - S_true).max() < 1e-12), name
display(Markdown("\n".join(rows)))

# %% [markdown]
# Every error is float64 rounding (outputs here are of order 1 to 10, errors below $10^{-13}$). Two rows are worth a
# second look: with $C = 1$ the chunked form *is* the recurrent form (each chunk is one token and
# the intra term is $q_t \cdot k_t\, v_t$), and with $C = T$ it *is* the parallel form (one chunk, no
# state). The chunk size slides between the two extremes. $C = 37$ leaves a last chunk of
# $300 - 8\cdot 37 = 4$ tokens: ragged chunks are handled by using each chunk's real length.
#
# ## 4. Why chunking wins: the cost model
#
# Count multiply-adds as 2 FLOPs, for one head:
#
# * **parallel**: $QK^\top$ is $2T^2K$, the masked product with $V$ is $2T^2V$:
#   $2T^2(K+V)$ in total. Quadratic, but all of it in two large matrix products.
# * **recurrent**: per token an outer product and a vector–matrix product, about $4KV$:
#   $4TKV$ in total. Linear, but in $T$ strictly sequential steps, each far too small to keep a
#   GPU's matrix units busy.
# * **chunked**: the intra term costs $2C^2(K+V)$ per chunk, i.e. $2TC(K+V)$ overall; the inter term
#   and the state update cost $2CKV$ each per chunk, $4TKV$ overall. Total $2TC(K+V) + 4TKV$:
#   **linear in $T$**, in only $T/C$ sequential steps, each made of $C\times K$ by $K\times C$ and
#   $C\times K$ by $K\times V$ matrix products — exactly the shapes tensor cores want.

# %%
Ts = 2.0 ** np.arange(8, 18)  # 256 .. 131072 tokens
Kd = Vd = 128
C = 64
flops = {
    "parallel": 2 * Ts**2 * (Kd + Vd),
    "recurrent": 4 * Ts * Kd * Vd,
    "chunked (C = 64)": 2 * Ts * C * (Kd + Vd) + 4 * Ts * Kd * Vd,
}
steps = {"parallel": np.ones_like(Ts), "recurrent": Ts, "chunked (C = 64)": Ts / C}
styles = {"parallel": "C3", "recurrent": "C0", "chunked (C = 64)": "C2"}

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
for name in flops:
    axes[0].loglog(Ts, flops[name], "o-", color=styles[name], label=name, ms=3)
    axes[1].loglog(Ts, steps[name], "o-", color=styles[name], label=name, ms=3)
axes[0].set(xlabel="sequence length T", ylabel="FLOPs per head", title=f"work (K = V = {Kd})")
axes[1].set(xlabel="sequence length T", ylabel="sequential steps", title="waiting: steps that must run one after another")
for ax in axes:
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
plt.show()

cross = 2 * (C * (Kd + Vd) + 2 * Kd * Vd) / (2 * (Kd + Vd))
print(f"parallel costs more FLOPs than chunked once T > {cross:.0f} tokens (K = V = {Kd}, C = {C})")
print(f"at T = 131072: parallel / chunked FLOPs = {flops['parallel'][-1] / flops['chunked (C = 64)'][-1]:.0f}×, "
      f"recurrent steps / chunked steps = {C}×")

# %% [markdown]
# The chunked form pays a modest constant over the recurrent form in FLOPs (the intra term) and
# gets back a factor $C$ in sequential depth; against the parallel form it saves a factor that
# grows linearly with $T$.
#
# ## 5. Measured: the three forms on this CPU
#
# Now time `reference.linear_attention`'s three forms, float64 NumPy, one batch, two heads,
# $K = V = 32$, for $T$ from 64 to 2048 (the fastest of several runs each). A CPU is not a GPU — it has no
# tensor cores and a Python loop step costs microseconds — but the shapes of the curves carry over.

# %%
def best_time(fn):
    """The fastest of several runs (at least 3, more for quick calls): robust to a busy machine."""
    start = time.perf_counter()
    fn()
    best = time.perf_counter() - start
    for _ in range(max(2, min(30, int(0.15 / best)))):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


T_list = [64, 128, 256, 512, 1024, 2048]
timings = {"recurrent": [], "parallel": [], "chunked (C = 64)": []}
for T_ in T_list:
    qb, kb, vb = (rng.standard_normal((1, 2, T_, 32)) for _ in range(3))
    timings["recurrent"].append(best_time(lambda: la.recurrent(qb, kb, vb)))
    timings["parallel"].append(best_time(lambda: la.parallel(qb, kb, vb)))
    timings["chunked (C = 64)"].append(best_time(lambda: la.chunked(qb, kb, vb, chunk_size=64)))

fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
for name, ts in timings.items():
    ax.loglog(T_list, np.array(ts) * 1e3, "o-", color=styles[name], label=name)
ax.loglog(T_list, timings["parallel"][-1] * 1e3 * (np.array(T_list) / T_list[-1]) ** 2, "k:", lw=1, label="slope 2 (quadratic)")
ax.loglog(T_list, timings["chunked (C = 64)"][-1] * 1e3 * (np.array(T_list) / T_list[-1]), "k--", lw=1, label="slope 1 (linear)")
ax.set(xlabel="sequence length T", ylabel="milliseconds (fastest run)", title="reference.linear_attention on this CPU")
ax.grid(True, which="major", alpha=0.3)
ax.legend(fontsize=8)
plt.show()

rows = ["| form | " + " | ".join(f"T = {t}" for t in T_list) + " | fitted exponent, T ≥ 256 |", "| --- |" + " --- |" * (len(T_list) + 1)]
large = np.array(T_list) >= 256
for name, ts in timings.items():
    exponent = np.polyfit(np.log(np.array(T_list)[large]), np.log(np.array(ts)[large]), 1)[0]
    rows.append(f"| {name} | " + " | ".join(f"{x * 1e3:.2f} ms" for x in ts) + f" | {exponent:.2f} |")
display(Markdown("\n".join(rows)))
fastest = [min(timings, key=lambda name: timings[name][i]) for i in range(len(T_list))]
print("fastest form at each T:", ", ".join(f"{t}: {f}" for t, f in zip(T_list, fastest)))
print(f"at T = {T_list[-1]}: chunked is {timings['recurrent'][-1] / timings['chunked (C = 64)'][-1]:.0f}× faster than recurrent "
      f"and {timings['parallel'][-1] / timings['chunked (C = 64)'][-1]:.0f}× faster than parallel")

# %% [markdown]
# How to read it: the last column fits time $\propto T^{p}$ over the larger lengths. Expect $p$ near
# 1 for the recurrent and chunked forms and near 2 for the parallel form once its $T \times T$
# products dominate (at small $T$ fixed overheads blur every slope, and a busy machine adds noise).
#
# The recurrent form does the fewest FLOPs but pays Python's per-step overhead $T$ times; the
# chunked form does the same work in $T/64$ steps of small matrix products and is several times
# faster. The parallel form is competitive only while $T^2$ is small; where it falls behind is
# this machine's crossover, printed above. On a GPU the same effects are much stronger: each
# sequential step is a synchronisation, and the matrix units only pay off on matrix-shaped work.
#
# ## 6. Without the mask: the right product first
#
# For bidirectional (non-causal) attention there is no mask, and matrix multiplication is
# associative:
#
# $$
# (Q K^\top) V = Q (K^\top V).
# $$
#
# The left side builds a $T\times T$ matrix, $2T^2(K+V)$ FLOPs; the right side builds the
# $K\times V$ state first, $4TKV$ FLOPs — linear in $T$, with no sequential steps at all. Under a
# causal mask the identity fails, $((QK^\top)\odot M)V \ne Q(K^\top V)$, because the mask sits between
# the two products. The chunked form is the way back: it pays the left product only inside each
# small chunk and uses the right product, through the state, for everything between chunks.

# %%
T_b = 2048
qb, kb, vb = (rng.standard_normal((1, 2, T_b, 32)) for _ in range(3))
left = best_time(lambda: (qb @ np.swapaxes(kb, -1, -2)) @ vb)
right = best_time(lambda: la.parallel(qb, kb, vb, causal=False))  # computes Q (Kᵀ V)
err = np.abs((qb @ np.swapaxes(kb, -1, -2)) @ vb - la.parallel(qb, kb, vb, causal=False)).max()
print(f"T = {T_b}: (Q Kᵀ) V takes {left * 1e3:.2f} ms, Q (Kᵀ V) takes {right * 1e3:.3f} ms "
      f"({left / right:.0f}× faster); max difference {err:.1e}")
causal_gap = np.abs(la.parallel(qb, kb, vb) - qb @ (np.swapaxes(kb, -1, -2) @ vb)).max()
print(f"with the causal mask the right-first shortcut is simply wrong: max difference {causal_gap:.1f}")

# %% [markdown]
# ## Exercises
#
# 1. **Decay.** Replace the recurrence by $S_t = \lambda S_{t-1} + k_t^\top v_t$ with
#    $0 < \lambda \le 1$. Rewrite `chunked_form`: which powers of $\lambda$ multiply the intra term,
#    the inter term and the state update? Check against `reference.lightning.chunked`
#    (Lesson 3 works it out; a common mistake is off by exactly one factor of $\lambda$, which a
#    test with $\lambda \approx 1$ never notices).
# 2. **Initial state.** Give `recurrent_form` and `chunked_form` an initial state $S_0$ and show
#    that running the first half of the sequence, then the second half starting from the first
#    half's final state, equals one run over everything. That is the whole idea of LASP-1 (Lesson 5):
#    each device owns a chunk and passes the state on.
# 3. **Choosing C.** The FLOP count $2TC(K+V) + 4TKV$ grows with $C$, so why not $C = 1$? Find the
#    $C$ at which the intra term costs as much as the state terms, and compare it with the chunk
#    sizes real kernels use (64 for Lightning Attention-2, 64 with sub-chunks of 16 for GLA).
# 4. **The exclusive state.** Change `chunked_form` to use the state *after* adding chunk $i$ in
#    the inter term. Which coloured cells of the figure in section 2 are now counted twice, which
#    future cells become visible, and by how much does the error table change?
#
# **Next:** Lesson 3 adds the decay $\lambda$ of Lightning Attention-2 and runs its Triton kernel on
# this CPU through Triton's interpreter; the algorithm is on the
# [Lightning Attention-2 page](../docs/lightning.md).
