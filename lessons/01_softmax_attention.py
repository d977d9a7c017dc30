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
# # Lesson 1 — Softmax attention, one tile at a time
#
# Softmax attention compares every query with every key. Written down directly it builds a
# $T \times T$ matrix of scores, which for a long sequence does not fit anywhere fast. FlashAttention
# computes **exactly the same output** while only ever holding one small tile of that matrix. The
# trick that makes it possible is the *online softmax*: a softmax computed block by block, fixing up
# what was already summed whenever a larger score appears.
#
# In this lesson you will
#
# 1. write naive attention and check it against `reference.softmax_attention.naive`;
# 2. see why every practical softmax subtracts the row maximum;
# 3. derive the online softmax step by step and watch it converge on one row;
# 4. tile the whole computation, skip the blocks above the causal diagonal, and draw which tiles run;
# 5. meet the log-sum-exp, the one number per row that the backward pass and sequence parallelism need.
#
# Everything runs on NumPy in float64 on the CPU, in a few seconds. The same algorithm, written once
# for NumPy and PyTorch, is `reference.softmax_attention.tiled`.

# %%
import numpy as np
import matplotlib.pyplot as plt
from matplotlib.colors import ListedColormap

from reference import softmax_attention as sa

rng = np.random.default_rng(0)
B, H, T, K, V = 1, 2, 256, 32, 32  # batch, heads, tokens, key width, value width
q = rng.standard_normal((B, H, T, K))
k = rng.standard_normal((B, H, T, K))
v = rng.standard_normal((B, H, T, V))
scale = K**-0.5  # the usual temperature 1/sqrt(K)
print(f"q, k: {q.shape}   v: {v.shape}")

# %% [markdown]
# ## 1. Naive attention
#
# With queries $Q \in \mathbb{R}^{T\times K}$, keys $K \in \mathbb{R}^{T\times K}$ and values
# $V \in \mathbb{R}^{T\times V}$ (one head; rows are tokens), causal softmax attention is
#
# $$
# S = s\,QK^\top, \qquad P = \operatorname{softmax}_{\text{row}}(S + M), \qquad O = PV,
# $$
#
# where $s$ is the scale and the mask $M_{ij} = 0$ for $j \le i$ and $-\infty$ for $j > i$: token
# $i$ sees itself and everything before it. Row $i$ of the output is a weighted average of value
# rows, with weights $P_{ij} = e^{S_{ij}} / \sum_{j' \le i} e^{S_{ij'}}$.

# %%
def naive_attention(q, k, v, scale):
    """Causal softmax attention by building the whole [T, T] score matrix."""
    T = q.shape[-2]
    s = scale * q @ np.swapaxes(k, -1, -2)  # [B, H, T, T]
    s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)  # the causal mask
    p = np.exp(s - s.max(axis=-1, keepdims=True))  # why subtract the max: section 2
    p = p / p.sum(axis=-1, keepdims=True)
    return p @ v


o_naive = naive_attention(q, k, v, scale)
o_ref = sa.naive(q, k, v, causal=True, scale=scale)
print(f"max |ours - reference.naive| = {np.abs(o_naive - o_ref).max():.2e}")
print(f"scores held at once here: B·H·T² = {B * H * T * T:,} numbers")
print(f"one head at T = 131,072 in bf16: {131_072**2 * 2 / 2**30:.0f} GiB of scores")

# %% [markdown]
# The output is right, but the memory is quadratic: at 128k tokens the scores of a single head are
# 32 GiB. Worse, on a GPU the scores would be written to main memory and read back, and that traffic,
# not the arithmetic, sets the time. The rest of the lesson removes the $T\times T$ matrix.
#
# ## 2. Why every softmax subtracts the maximum
#
# $e^{x}$ overflows float32 above $x \approx 88.7$. Softmax does not change when a constant $c$ is
# subtracted from a whole row,
#
# $$
# \frac{e^{s_j - c}}{\sum_{j'} e^{s_{j'} - c}} = \frac{e^{-c}\, e^{s_j}}{e^{-c} \sum_{j'} e^{s_{j'}}}
# = \frac{e^{s_j}}{\sum_{j'} e^{s_{j'}}},
# $$
#
# and with $c = \max_j s_j$ every exponent is $\le 0$, so nothing overflows and the largest term is
# exactly 1.

# %%
row = np.array([1000.0, 999.0, 990.0], dtype=np.float32)
with np.errstate(over="ignore", invalid="ignore"):
    unsafe = np.exp(row) / np.exp(row).sum()
safe = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
print("exp(s) / sum exp(s)         =", unsafe)
print("exp(s - m) / sum exp(s - m) =", safe)

# %% [markdown]
# The catch: the maximum of a row is only known after *all* of its scores have been seen. The
# online softmax removes that catch.
#
# ## 3. The online softmax, derived
#
# Take one query row and split its keys into blocks $\mathcal{B}_1, \mathcal{B}_2, \dots,
# \mathcal{B}_n$. After the first $j$ blocks keep three running quantities:
#
# $$
# m_j = \max_{i \in \mathcal{B}_{1..j}} s_i, \qquad
# \ell_j = \sum_{i \in \mathcal{B}_{1..j}} e^{s_i - m_j}, \qquad
# a_j = \sum_{i \in \mathcal{B}_{1..j}} e^{s_i - m_j}\, v_i .
# $$
#
# When block $j+1$ arrives, the new maximum is $m_{j+1} = \max\bigl(m_j, \max_{i \in
# \mathcal{B}_{j+1}} s_i\bigr)$. Every old term was computed relative to $m_j$; relative to $m_{j+1}$
# it is $e^{s_i - m_{j+1}} = e^{s_i - m_j}\, e^{m_j - m_{j+1}}$. So the old sums need a single
# multiplication each:
#
# $$
# \ell_{j+1} = e^{m_j - m_{j+1}}\,\ell_j + \sum_{i \in \mathcal{B}_{j+1}} e^{s_i - m_{j+1}}, \qquad
# a_{j+1} = e^{m_j - m_{j+1}}\,a_j + \sum_{i \in \mathcal{B}_{j+1}} e^{s_i - m_{j+1}}\, v_i .
# $$
#
# The correction factor $e^{m_j - m_{j+1}}$ is at most 1 (it is exactly 1 when the maximum did not
# move), so the running sums only ever shrink. At every step $a_j / \ell_j$ is the exact softmax
# attention over the keys seen so far; after the last block it is the answer,
# $o = a_n / \ell_n$. We start from $m_0 = -\infty$, $\ell_0 = 0$, $a_0 = 0$.
#
# Let us run it on row 200 of head 0, 32 keys at a time, and check after **every** block that
# $a_j/\ell_j$ equals `reference.softmax_attention.naive` restricted to the keys seen so far.

# %%
t, block = 200, 32
q_t = q[0, 0, t] * scale  # one scaled query row
m, l, a = -np.inf, 0.0, np.zeros(V)
trace = []
print(" block  keys      block max   m_j      e^(m_(j-1)-m_j)   l_j       |a_j/l_j - naive|")
for j, start in enumerate(range(0, t + 1, block)):
    stop = min(start + block, t + 1)  # causal: row t sees keys 0..t
    s_blk = k[0, 0, start:stop] @ q_t  # the scores of this block only
    m_new = max(m, s_blk.max())
    correction = np.exp(m - m_new)  # exp(-inf) = 0 on the first block
    p = np.exp(s_blk - m_new)
    l = correction * l + p.sum()
    a = correction * a + p @ v[0, 0, start:stop]
    m = m_new
    # the softmax attention of row t over keys 0..stop-1 only, by the reference:
    prefix = sa.naive(q[0:1, 0:1, t : t + 1], k[0:1, 0:1, :stop], v[0:1, 0:1, :stop], causal=False, scale=scale)
    err = np.abs(a / l - prefix[0, 0, 0]).max()
    trace.append((stop, m, l))
    print(f"{j:5d}  {start:3d}-{stop - 1:<3d}  {s_blk.max():9.3f}  {m:7.3f}  {correction:14.4f}  {l:9.3f}   {err:.1e}")

print(f"\nfinal a/l vs row {t} of naive attention: {np.abs(a / l - o_ref[0, 0, t]).max():.2e}")

# %% [markdown]
# Read the table: whenever a block holds a new maximum, the correction factor drops below 1 and
# shrinks what was summed before; otherwise it is exactly 1. The last column is zero to rounding at
# every step: the online softmax is never an approximation.
#
# ## 4. Tiles, and the causal skip
#
# FlashAttention applies the same update to a whole **block of query rows** at once: for query
# block $Q_i$ (rows $r_0..r_1$) it walks the key blocks $K_j, V_j$ left to right, computes the
# small score tile $S_{ij} = s\,Q_i K_j^\top$, and updates per-row $m, \ell$ and the accumulator
# $A$ (one row of $a$ per query). Under the causal mask each tile is one of three kinds:
#
# * **below the diagonal** — every key is before every query: compute it, no mask;
# * **on the diagonal** — the tile straddles it: compute it and mask the entries with key > query;
# * **above the diagonal** — every key is after every query: its contribution is zero, **skip it**
#   (and every later tile of that row of tiles).
#
# Skipping saves about half of the work. Below, the full algorithm in NumPy, recording what it did
# with every tile.

# %%
SKIPPED, MASKED, FULL = 0, 1, 2


def flash_attention(q, k, v, scale, block_q=32, block_k=32):
    """Causal softmax attention tile by tile; returns (o, lse, status of every tile)."""
    T = q.shape[-2]
    n_q, n_k = -(-T // block_q), -(-T // block_k)  # ceil: the last block may be shorter
    o = np.zeros(q.shape[:-1] + (v.shape[-1],))
    lse = np.zeros(q.shape[:-1])
    status = np.full((n_q, n_k), SKIPPED)
    for i in range(n_q):
        r0, r1 = i * block_q, min((i + 1) * block_q, T)  # query rows r0..r1-1
        q_i = scale * q[..., r0:r1, :]
        m = np.full(q_i.shape[:-1] + (1,), -np.inf)
        l = np.zeros_like(m)
        acc = np.zeros(q_i.shape[:-1] + (v.shape[-1],))
        for j in range(n_k):
            c0, c1 = j * block_k, min((j + 1) * block_k, T)  # keys c0..c1-1
            if c0 > r1 - 1:
                break  # above the diagonal: this tile and all later ones are skipped
            s = q_i @ np.swapaxes(k[..., c0:c1, :], -1, -2)  # the [block_q, block_k] tile
            if c1 - 1 > r0:  # some key is after some query: mask inside the tile
                s = np.where(np.arange(c0, c1)[None, :] <= np.arange(r0, r1)[:, None], s, -np.inf)
                status[i, j] = MASKED
            else:
                status[i, j] = FULL
            m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
            correction = np.exp(m - m_new)
            p = np.exp(s - m_new)
            l = correction * l + p.sum(axis=-1, keepdims=True)
            acc = correction * acc + p @ v[..., c0:c1, :]
            m = m_new
        o[..., r0:r1, :] = acc / l
        lse[..., r0:r1] = (m + np.log(l))[..., 0]
    return o, lse, status


o_flash, lse_flash, status = flash_attention(q, k, v, scale)
o_tiled, lse_tiled = sa.tiled(q, k, v, causal=True, scale=scale, block_q=32, block_k=32, return_lse=True)
print(f"max |ours - reference.naive|  = {np.abs(o_flash - o_ref).max():.2e}")
print(f"max |ours - reference.tiled|  = {np.abs(o_flash - o_tiled).max():.2e}")
print(f"max |our lse - reference lse| = {np.abs(lse_flash - lse_tiled).max():.2e}")
counts = {name: int((status == code).sum()) for name, code in [("full", FULL), ("masked", MASKED), ("skipped", SKIPPED)]}
print(f"tiles: {counts}  ->  {1 - counts['skipped'] / status.size:.0%} of the tiles computed")

# %% [markdown]
# The picture: on the left the causal attention weights of head 0 (log scale) with the tile grid;
# in the middle what `flash_attention` did with each $32\times 32$ tile; on the right the same for
# unequal, ragged blocks ($T = 200$, query blocks of 48, key blocks of 32), where the last blocks
# are shorter and a tile can straddle the diagonal without sitting on it symmetrically.

# %%
P = np.exp(scale * q[0, 0] @ k[0, 0].T - lse_flash[0, 0][:, None])  # probabilities, rebuilt from lse
P = np.where(np.tril(np.ones((T, T), dtype=bool)), P, np.nan)
_, _, status_ragged = flash_attention(q[..., :200, :], k[..., :200, :], v[..., :200, :], scale, block_q=48, block_k=32)
cmap = ListedColormap(["#eeeeee", "#f4a259", "#5b8e7d"])  # skipped, masked, full

fig, axes = plt.subplots(1, 3, figsize=(13, 4.3), constrained_layout=True)
im = axes[0].imshow(np.log10(P), cmap="viridis", vmin=-4, vmax=0)
for x in range(0, T + 1, 32):
    axes[0].axhline(x - 0.5, color="white", lw=0.4)
    axes[0].axvline(x - 0.5, color="white", lw=0.4)
axes[0].set(title="causal weights $\\log_{10} P$ and 32×32 tiles", xlabel="key", ylabel="query")
fig.colorbar(im, ax=axes[0], shrink=0.8)


def draw_status(ax, status, block_q, block_k, T, title):
    ax.imshow(status, cmap=cmap, vmin=0, vmax=2, extent=(0, status.shape[1] * block_k, status.shape[0] * block_q, 0))
    ax.plot([0, T], [0, T], color="black", lw=1)  # the diagonal key = query
    ax.set_xticks(range(0, status.shape[1] * block_k + 1, block_k))
    ax.set_yticks(range(0, status.shape[0] * block_q + 1, block_q))
    ax.grid(color="white", lw=1.5)
    ax.tick_params(labelsize=7)
    ax.set(xlim=(0, T), ylim=(T, 0), title=title, xlabel="key", ylabel="query")


draw_status(axes[1], status, 32, 32, T, "tiles, T = 256, 32×32")
draw_status(axes[2], status_ragged, 48, 32, 200, "tiles, T = 200, 48×32 (ragged)")
handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in cmap.colors]
axes[2].legend(handles, ["skipped (above the diagonal)", "computed + masked", "computed, no mask"], loc="upper right", fontsize=8)
plt.show()

# %% [markdown]
# With $n$ blocks per side, $n(n+1)/2$ of the $n^2$ tiles are computed ($n$ of them masked), so the
# causal skip saves a fraction $(n-1)/(2n)$ of the work, approaching one half for long sequences.
# The memory held at any moment is one tile of scores plus $m, \ell, A$ for one block of rows:
# $O(\text{block}_q \cdot (\text{block}_k + V))$ per head instead of $O(T^2)$.
#
# ## 5. The log-sum-exp
#
# Besides the output, the tiled pass produces one extra number per row almost for free:
#
# $$
# \operatorname{lse}_i = \log \sum_{j \le i} e^{S_{ij}} = m_n + \log \ell_n .
# $$
#
# It is worth keeping, for two reasons.
#
# **The backward pass.** Any probability can be rebuilt from the scores and the lse,
# $P_{ij} = e^{S_{ij} - \operatorname{lse}_i}$, so the backward pass recomputes each tile of $P$ on
# the fly instead of storing $T^2$ of them (the heat map above was drawn exactly that way).
#
# **Merging partial results.** If the keys of a row are split into two sets $\mathcal{A}$ and
# $\mathcal{B}$ whose partial attentions $o_\mathcal{A}, o_\mathcal{B}$ were computed separately
# (on different devices, say), then
#
# $$
# o = \frac{e^{\operatorname{lse}_\mathcal{A}}\, o_\mathcal{A} + e^{\operatorname{lse}_\mathcal{B}}\, o_\mathcal{B}}
#          {e^{\operatorname{lse}_\mathcal{A}} + e^{\operatorname{lse}_\mathcal{B}}}, \qquad
# \operatorname{lse} = \log\bigl(e^{\operatorname{lse}_\mathcal{A}} + e^{\operatorname{lse}_\mathcal{B}}\bigr),
# $$
#
# which is how ring attention and split-key decoding combine their pieces. Below, the last 32
# queries attend to the first 224 keys (all visible: no mask) and to their own 32 keys (causal)
# separately, and the two halves are merged.

# %%
# 1. Rebuild one row of probabilities from the lse and compare with the naive softmax.
s_row = scale * q[0, 0, t] @ k[0, 0, : t + 1].T
p_naive = np.exp(s_row - s_row.max()) / np.exp(s_row - s_row.max()).sum()
print(f"row {t}: max |exp(s - lse) - softmax(s)| = {np.abs(np.exp(s_row - lse_flash[0, 0, t]) - p_naive).max():.2e}")

# 2. Merge two partial attentions with their lse.
cut = T - 32
q_last = q[..., cut:, :]
o_a, lse_a = sa.tiled(q_last, k[..., :cut, :], v[..., :cut, :], causal=False, scale=scale, return_lse=True)
o_b, lse_b = sa.tiled(q_last, k[..., cut:, :], v[..., cut:, :], causal=True, scale=scale, return_lse=True)
lse_ab = np.logaddexp(lse_a, lse_b)
o_merged = np.exp(lse_a - lse_ab)[..., None] * o_a + np.exp(lse_b - lse_ab)[..., None] * o_b
print(f"merged vs naive, last 32 rows: {np.abs(o_merged - o_ref[..., cut:, :]).max():.2e}")
print(f"merged lse vs one-pass lse:    {np.abs(lse_ab - lse_flash[..., cut:]).max():.2e}")

# %% [markdown]
# Note the form of the merge: each weight $e^{\operatorname{lse}_\mathcal{A} - \operatorname{lse}}$
# is at most 1, the same "subtract the maximum" idea as section 2, so it cannot overflow either.
#
# ## Exercises
#
# 1. Call `flash_attention` with `block_k=1`. The tile loop becomes a loop over single keys: the
#    *online normaliser* of Milakov and Gimelshein (2018). Does the output change? Does the number of
#    exponentials?
# 2. Change the key block size alone (`block_q=32, block_k=8`). Count the skipped tiles and check
#    the fraction of work saved against $(n-1)/(2n)$. Why does the formula need adjusting?
# 3. Non-causal attention with fewer keys than queries is fine, but causal attention with
#    `Tq > Tk` leaves rows with no key at all. What does `online_softmax_update` in
#    `reference/softmax_attention.py` do so that such a row gives 0 instead of `nan`, and why does
#    `naive` refuse the input instead?
# 4. Write the backward pass: given $dO$, show $dV = P^\top dO$ and
#    $dS_{ij} = P_{ij}\,(dP_{ij} - \sum_{j'} P_{ij'} dP_{ij'})$ with $dP = dO\,V^\top$, and that the
#    sum equals $dO_i \cdot O_i$, so each tile needs only $S$, the lse and one dot product per row.
#    Check it against `torch.autograd` on `reference.softmax_attention.tiled` with torch tensors.
#
# **Next:** [Lesson 2](02_linear_attention.py) drops the softmax altogether and finds that
# attention then becomes a recurrence with a fixed-size state.
