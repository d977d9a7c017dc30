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
# # Lesson 4 — Gated Linear Attention: learning what to forget
#
# Lightning Attention-2 lets old tokens fade at a fixed rate $\lambda$ per head. Gated Linear
# Attention (GLA; Yang, Wang, Shen, Panda and Kim, 2023, arXiv 2312.06635) makes the forgetting
# **data-dependent** and **per channel**: every token decides, for each of the $K$ key channels of
# the state, how much of the past to keep.
#
# In this lesson you will
#
# 1. write the recurrence and the gate, and check the four forms agree;
# 2. train a tiny GLA and a gate-less linear attention on a task that needs forgetting, and look at
#    what the learned gate does;
# 3. watch the naive factorised form overflow in float32, live, and see how log-space arithmetic
#    and *secondary chunking* avoid every positive exponent;
# 4. compare the two FlashLinearAttention variants, materialised and non-materialised;
# 5. run the Triton kernel (in Triton's CPU interpreter when there is no GPU) against the reference;
# 6. read the H100 benchmark from the committed JSON.

# %%
import os
import sys
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle
from torch import nn

from reference import gla, lightning

with warnings.catch_warnings():  # tqdm.auto: a live widget in JupyterLab with ipywidgets, else a text bar
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels run on the CPU; set before importing them
torch.set_num_threads(1)  # tiny tensors: one thread is fastest (no synchronisation between threads)
# Products of small gates reach denormal floats (below 1e-38), which x86 CPUs compute ~100x slower.
# Flushing them to zero changes nothing visible here and keeps the lesson fast.
torch.set_flush_denormal(True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The recurrence and the gate
#
# With row vectors $q_t, k_t \in \mathbb{R}^K$, $v_t \in \mathbb{R}^V$ and a state
# $S_t \in \mathbb{R}^{K \times V}$,
#
# $$ S_t = \operatorname{Diag}(\alpha_t)\, S_{t-1} + k_t^\top v_t, \qquad o_t = q_t S_t,
#    \qquad \alpha_t \in (0, 1]^K . $$
#
# The gate multiplies the **key rows** of the state: row $k$ (what the state remembers along key
# channel $k$) is scaled by $\alpha_{tk}$. The paper computes it from the layer input with a
# low-rank map and a temperature,
#
# $$ \alpha_t = \sigma(x_t W_1 W_2 + b)^{1/\tau}, \qquad W_1 \in \mathbb{R}^{d \times 16},\;
#    W_2 \in \mathbb{R}^{16 \times K},\; \tau = 16, $$
#
# and we always work with its logarithm $a_t = \log \alpha_t = \operatorname{logsigmoid}(x_t W_1 W_2 + b)/\tau \le 0$.
# Note $\sigma(z)^{1/16} \ne \sigma(z/16)$: at $z = 0$ the first is $0.5^{1/16} \approx 0.958$ (a
# fresh layer remembers), the second $0.5$.
#
# Unrolling with the cumulative sum $b_t = \sum_{r \le t} a_r$ (which never increases):
#
# $$ o_t = \sum_{s \le t} \sum_k q_{tk}\, k_{sk}\, e^{\,b_{tk} - b_{sk}}\, v_s . $$
#
# Every exponent $b_{tk} - b_{sk}$ with $s \le t$ is $\le 0$. That single fact drives the whole
# numerical story of section 3.

# %%
print(f"sigma(0)^(1/16) = {0.5 ** (1 / 16):.3f}   vs   sigma(0/16) = 0.5")
x = rng.standard_normal((1, 6, 32))
zero_gate = gla.gate(x, np.zeros((32, 16)), np.zeros((16, 2, 8)), np.zeros((2, 8)))
print("gate of a fresh layer (W = 0, b = 0):", np.exp(zero_gate[0, 0, 0, :3]).round(3), "...")

B, H, T, K, V = 2, 2, 77, 8, 6  # T = 77: no chunk size divides it
q, k = rng.standard_normal((2, B, H, T, K))
v = rng.standard_normal((B, H, T, V))
log_alpha = np.log(rng.uniform(1e-3, 1.0, (B, H, T, K)))  # gates down to 0.001 per step
o_rec, s_rec = gla.recurrent(q, k, v, log_alpha)
forms = {
    "parallel": gla.parallel(q, k, v, log_alpha),
    "chunked (non-materialised)": gla.chunked(q, k, v, log_alpha, chunk_size=32, sub_chunk=16)[0],
    "chunked (materialised)": gla.chunked(q, k, v, log_alpha, chunk_size=32, materialize=True)[0],
}
for name, o in forms.items():
    print(f"{name:<28} max |o - recurrent| = {np.abs(o - o_rec).max():.1e}")

# %% [markdown]
# A constant gate per head is Lightning Attention-2 (lesson 3), and a gate of one is plain linear
# attention (lesson 2) — GLA contains both:

# %%
lam = np.array([0.6, 0.95])
const = np.broadcast_to(np.log(lam)[None, :, None, None], log_alpha.shape).copy()
o_gla, _ = gla.chunked(q, k, v, const, chunk_size=32)
o_lightning, _ = lightning.chunked(q, k, v, lam, chunk_size=32)
print(f"GLA with a constant gate vs Lightning Attention-2: max difference {np.abs(o_gla - o_lightning).max():.1e}")

# %% [markdown]
# ## 2. What a data-dependent gate forgets
#
# A task that needs forgetting: a stream of symbols $0..5$ cut into segments by a `RESET` token.
# At every position the model must say **which symbols have appeared since the last `RESET`**
# (six yes/no answers). A linear-attention state is a natural bag of what was written into it, so
# this is easy — *if* the state can be emptied at `RESET`. Without a gate it can never forget, so
# symbols from earlier segments keep looking present.
#
# Both models are one `reference.gla.GLALayer` (projections, gate, Swish output gate, per-head norm)
# between an embedding and a read-out; the baseline is the same layer with `use_gate=False`
# ($\alpha = 1$: plain linear attention). They are trained on the CPU for a few seconds each.

# %%
S_SYMBOLS, RESET, SEQ = 6, 6, 48


def make_batch(n, generator):
    """Tokens [n, SEQ], targets [n, SEQ, 6] (symbol seen since the last RESET), loss mask [n, SEQ]."""
    x = np.zeros((n, SEQ), dtype=np.int64)
    y = np.zeros((n, SEQ, S_SYMBOLS), dtype=np.float32)
    mask = np.ones((n, SEQ), dtype=np.float32)
    for i in range(n):
        t, bag = 0, np.zeros(S_SYMBOLS)
        while t < SEQ:
            x[i, t], mask[i, t], bag[:] = RESET, 0.0, 0.0
            t += 1
            for _ in range(generator.integers(3, 11)):
                if t >= SEQ:
                    break
                s = generator.integers(0, S_SYMBOLS)
                x[i, t], bag[s] = s, 1.0
                y[i, t] = bag
                t += 1
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask)


class TinyModel(nn.Module):
    def __init__(self, use_gate: bool, d: int = 32, heads: int = 2):
        super().__init__()
        self.embed = nn.Embedding(S_SYMBOLS + 1, d)
        self.mix = gla.GLALayer(d, heads, use_gate=use_gate)
        self.readout = nn.Linear(d, S_SYMBOLS)

    def forward(self, tokens):
        h = self.embed(tokens)
        return self.readout(h + self.mix(h))


def exact_match(model, batch):
    x, y, mask = batch
    with torch.no_grad():
        right = ((model(x) > 0).float() == y).all(-1).float()
    return float((right * mask).sum() / mask.sum())


def train(use_gate: bool, steps: int = 150, seed: int = 0):
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    model = TinyModel(use_gate)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    test = make_batch(256, np.random.default_rng(1234))
    curve = []
    for step in tqdm(range(steps), desc="GLA" if use_gate else "no gate", mininterval=1.0, file=sys.stdout):
        x, y, mask = make_batch(32, generator)
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y, reduction="none").mean(-1)
        loss = (loss * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9:
            curve.append((step + 1, exact_match(model, test)))
    return model, curve, test


start = time.perf_counter()
gla_model, gla_curve, test_batch = train(use_gate=True)
base_model, base_curve, _ = train(use_gate=False)
print(f"trained both in {time.perf_counter() - start:.1f} s")
print(f"exact-match accuracy on held-out sequences: GLA {gla_curve[-1][1]:.1%}, no gate {base_curve[-1][1]:.1%}")

# %% [markdown]
# The learned gate explains the gap. Below, one held-out sequence: the mean gate $\alpha_t$ over
# the key channels of each head, with the `RESET` positions marked. The gate stays near one inside
# a segment (remember everything) and collapses at `RESET` (forget the old segment) — a decision
# the model makes from the token itself, which no fixed decay could express.

# %%
x_test, y_test, _ = test_batch
with torch.no_grad():
    alpha = torch.exp(gla_model.mix.log_alpha(gla_model.embed(x_test[:1])))[0]  # [H, T, K]
tokens = x_test[0].numpy()
fig, axes = plt.subplots(1, 2, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 2]})
axes[0].plot(*zip(*gla_curve), marker="o", label="GLA (learned gate)")
axes[0].plot(*zip(*base_curve), marker="s", label="no gate (linear attention)")
axes[0].set(xlabel="training step", ylabel="exact-match accuracy", ylim=(0, 1.05), title="held-out accuracy")
axes[0].legend()
axes[0].grid(alpha=0.3)
for h in range(alpha.shape[0]):
    axes[1].plot(alpha[h].min(-1).values.numpy(), drawstyle="steps-mid", label=f"head {h}: min over channels")
for t in np.flatnonzero(tokens == RESET):
    axes[1].axvline(t, color="red", alpha=0.25, lw=4)
axes[1].set(xlabel="position (red: RESET)", ylabel=r"gate $\alpha_t$", ylim=(-0.02, 1.05),
            title="what the trained gate keeps, per position")  # fmt: skip
axes[1].legend(loc="lower right", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Log space, the overflow, and secondary chunking
#
# The parallel form needs, for every pair $s \le t$, the factor $e^{b_t - b_s}$. The tempting way to
# get a matrix product is to factor it: $e^{b_t - b_s} = e^{b_t} \cdot e^{-b_s}$, so that
#
# $$ O = \Big( \big( (Q \odot e^{b})\,(K \odot e^{-b})^\top \big) \odot M \Big) V . $$
#
# But $b$ is a running sum of negative numbers: with gates $\alpha \approx 0.7$ it reaches
# about $-1500$ after 4096 tokens, and $e^{1500}$ is not a float32 (the largest is about $e^{88.7}$).
# The product becomes `inf`, and `inf · 0 = NaN` spreads. Watch it happen:

# %%
gen = torch.Generator().manual_seed(0)
TL, KL = 4096, 8
ql, kl, vl = (torch.randn(1, 1, TL, KL, generator=gen) for _ in range(3))
la_long = torch.log(torch.rand(1, 1, TL, KL, generator=gen) * 0.4 + 0.5)  # α ∈ [0.5, 0.9]
naive = gla.parallel_factorised(ql, kl, vl, la_long)
safe, _ = gla.chunked(ql, kl, vl, la_long, chunk_size=64, sub_chunk=16)
exact, _ = gla.chunked(*(t.double() for t in (ql, kl, vl, la_long)), chunk_size=64)
b_long = la_long.cumsum(-2)[0, 0, :, 0]
first_bad = int(torch.nonzero(~torch.isfinite(naive[0, 0]).all(-1))[0])
print(f"float32, T = {TL}: b falls to {b_long.min():.0f}")
print(f"factorised: {int((~torch.isfinite(naive)).sum())} of {naive.numel()} outputs are inf/NaN (first at t = {first_bad})")
print(f"chunked   : all finite = {bool(torch.isfinite(safe).all())}, "
      f"relative error vs float64 = {float((safe.double() - exact).norm() / exact.norm()):.1e}")  # fmt: skip

fig, ax = plt.subplots(figsize=(9, 3))
ax.plot(b_long.numpy(), label=r"$b_t$ (channel 0)")
ax.axhline(-88.7, color="red", ls="--", label=r"$-88.7$: $e^{-b}$ overflows float32 below this")
ax.axvline(first_bad, color="gray", ls=":", label="first non-finite output of the factorised form")
ax.set(xlabel="t", ylabel="cumulative log gate")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# **The fix is to never form $e^{-b}$ on its own.** FlashLinearAttention splits the sequence into
# chunks of $C = 64$, and inside a chunk measures $b$ from the chunk start; across chunks the state
# carries the rest (every factor there, $e^{b}$ and $e^{b_C - b}$, has a negative exponent). Inside
# a chunk the matrix $P_{js} = \sum_k q_{jk} k_{sk} e^{b_{jk} - b_{sk}}$ still needs care: even 64
# steps of gates $0.2$ make $e^{-b}$ overflow ($64 \ln 5 \approx 103 > 88.7$). **Secondary chunking** cuts the chunk into
# sub-chunks of 16:
#
# * an **off-diagonal** sub-block (queries in sub-chunk $u$, keys in an earlier sub-chunk $w$) is a
#   matrix product after rescaling both sides by $b_n$, the cumulative gate at the first position
#   of $u$: $\;(Q_u \odot e^{b - b_n})\,(K_w \odot e^{b_n - b})^\top$. Every query of $u$ comes at or
#   after $n$ and every key of $w$ before it, so **both exponents are $\le 0$**;
# * a **diagonal** sub-block has no such point between its queries and keys, so it is computed
#   element by element, $e^{b_{jk} - b_{sk}}$ with $s \le j$ — in full precision, in log space;
# * blocks above the diagonal are zero (causality).
#
# Most of the work lands in the matrix products that tensor cores run fast; only the thin diagonal
# is element-wise.

# %%
C_DEMO, SUB_DEMO = 64, 16
fig, ax = plt.subplots(figsize=(4.2, 4.2))
for u in range(C_DEMO // SUB_DEMO):
    for w in range(C_DEMO // SUB_DEMO):
        color = "tab:blue" if w < u else ("tab:orange" if w == u else "white")
        ax.add_patch(Rectangle((w * SUB_DEMO, u * SUB_DEMO), SUB_DEMO, SUB_DEMO, facecolor=color, edgecolor="black"))
        label = "dot" if w < u else ("exact" if w == u else "0")
        ax.text(w * SUB_DEMO + 8, u * SUB_DEMO + 8, label, ha="center", va="center", fontsize=9)
ax.set(xlim=(0, C_DEMO), ylim=(C_DEMO, 0), xlabel="key s in the chunk", ylabel="query j in the chunk",
       title="one chunk of P: 6 matrix products,\n4 element-wise diagonal blocks")  # fmt: skip
plt.show()

# %% [markdown]
# **The diagonal blocks on tensor cores, too.** Element by element, a $16 \times 16$ diagonal block
# costs $16 \cdot 16 \cdot K$ exponentials, and on a GPU exponentials are scarce (an H100
# multiprocessor computes 16 per clock against 128 fused multiply-adds). The kernel uses a trick that
# applies the rescaling idea *recursively*: a query $j$ and a key $s < j$ of one sub-block first
# differ in some bit $L$ of their row numbers. At that level the rows fall into blocks of $2^{L+1}$,
# with $j$ in the upper half of a block and $s$ in the lower half of the same block — so the last
# row $r$ of that lower half lies between them, and
# $e^{b_j - b_s} = e^{b_j - b_r}\, e^{b_r - b_s}$ with both exponents $\le 0$. All pairs of one
# level are one small matrix product; four levels (16 = $2^4$) and the gate-free diagonal
# $q_j \cdot k_j$ give the block exactly:

# %%
def diagonal_block_by_halving(q_u, k_u, c_u):
    """The exact 16×16 diagonal block from four masked matrix products (c_u: cumulative gate)."""
    n = len(q_u)
    rows = np.arange(n)
    block = np.diag((q_u * k_u).sum(-1))  # s = j: no gate
    for level in range(int(np.log2(n))):
        mid = ((rows >> (level + 1)) << (level + 1)) + (1 << level) - 1  # row r of each row's block
        upper = (rows >> level) & 1 == 1
        q_side = np.where(upper[:, None], q_u * np.exp(np.minimum(c_u - c_u[mid], 0)), 0)
        k_side = np.where(upper[:, None], 0, k_u * np.exp(np.minimum(c_u[mid] - c_u, 0)))
        pairs = ((rows[:, None] >> (level + 1)) == (rows[None, :] >> (level + 1))) & upper[:, None] & ~upper[None, :]
        block += np.where(pairs, q_side @ k_side.T, 0)
    return block


qd, kd = rng.standard_normal((2, 16, 8))
cd = np.cumsum(np.log(rng.uniform(1e-3, 1, (16, 8))), axis=0)  # gates down to 1e-3 per step
direct = np.einsum("jk,sk,jsk->js", qd, kd, np.exp(np.minimum(cd[:, None] - cd[None], 0))) * np.tri(16)
print(f"recursive halving vs element-wise: max difference {np.abs(diagonal_block_by_halving(qd, kd, cd) - direct).max():.1e}")

levels = np.full((16, 16), np.nan)
for j in range(16):
    for s_ in range(j):
        levels[j, s_] = (j ^ s_).bit_length() - 1  # the highest bit in which j and s differ
fig, ax = plt.subplots(figsize=(5, 4))
im = ax.imshow(levels, cmap="viridis")
ax.set(xlabel="key s", ylabel="query j", title="the product (level L) that covers\neach pair s < j; blank: s = j or s > j")
fig.colorbar(im, ax=ax, ticks=range(4))
plt.show()

# %% [markdown]
# The reference implements exactly this (`reference.gla.chunked`); the test suite checks it at
# gates down to $e^{-100}$ per step in float64 — any exponent formed with the wrong sign would
# overflow even float64 there. Gradients follow the same tiling: `reference.gla.chunked_backward`
# computes $dQ, dK, dV$ and $d\log\alpha$ without autograd. The gate's gradient has a neat form:
# each $b_j$ enters only through $Q \odot e^{b}$ and $K \odot e^{-b}$ (relative to the chunk start)
# and the chunk's last value $b_C$, so $\partial L/\partial b_j = q_j \odot dq_j - k_j \odot dk_j$
# (plus one state term on the chunk's last row), and $d\log\alpha$ is its reverse cumulative sum
# *within the chunk*:

# %%
do = rng.standard_normal((B, H, T, V))
leaves = [torch.tensor(t, requires_grad=True) for t in (q, k, v, log_alpha)]
(gla.recurrent(*leaves)[0] * torch.tensor(do)).sum().backward()
manual = gla.chunked_backward(q, k, v, log_alpha, do, chunk_size=32)
for name, got, leaf in zip(("dQ", "dK", "dV", "d log alpha"), manual, leaves):
    print(f"{name:<12} max |chunked_backward - autograd of the recurrence| = {np.abs(got - leaf.grad.numpy()).max():.1e}")

# %% [markdown]
# ## 4. Materialised or not
#
# FlashLinearAttention comes in two variants that compute the same numbers:
#
# | variant | pass 1 | pass 2 | parallelism on a GPU | extra memory traffic |
# | --- | --- | --- | --- | --- |
# | non-materialised | — | chunks in order, state on chip | $B \cdot H$ (× tiles of $V$) | none |
# | materialised | every chunk's starting state $S_{[i]}$, in order ($K \times V$ work only) | all chunks at once | $B \cdot H \cdot T/C$ | one $K \times V$ state per chunk, written and read |
#
# At $B = 2$, $H = 16$, $T = 32\text{k}$ there are only 32 (batch, head) pairs for an H100's 132
# multiprocessors, and each pair's walk is 512 chunks long: the non-materialised variant leaves the
# GPU mostly idle. The materialised variant's first pass is cheap (one small matrix product per
# chunk), and its second pass — the expensive intra-chunk work with the gates — runs on all
# $32 \times 512$ chunks at once. That is the variant `kernels.gla` implements.

# %%
o_nm, s_nm = gla.chunked(q, k, v, log_alpha, chunk_size=16, materialize=False)
o_m, s_m = gla.chunked(q, k, v, log_alpha, chunk_size=16, materialize=True)
states = gla.chunk_states(k, v, log_alpha, chunk_size=16)
print(f"materialised vs non-materialised: max |Δo| = {np.abs(o_m - o_nm).max():.1e}, max |ΔS_T| = {np.abs(s_m - s_nm).max():.1e}")
print(f"chunk_states: {states.shape} = [B, H, n + 1, K, V]: the state entering each of the n = {states.shape[2] - 1} chunks, and the final one")
C_BENCH, KV = 64, 128
print(f"at K = V = {KV}, C = {C_BENCH}, bf16: the states cost {KV * KV * 2 / C_BENCH:.0f} bytes per token and head, "
      f"beside {5 * KV * 2} bytes of q, k, v, log α and o")  # fmt: skip

# %% [markdown]
# ## 5. The Triton kernel
#
# `kernels.gla.attention(q, k, v, log_alpha, *, scale, initial_state, output_final_state)` runs the
# materialised variant in five Triton kernels: the forward's state pass, and the output — with
# the intra-chunk matrix built on chip by the recursive halving above, applied to the whole chunk
# of 64 rows (six levels, each one $64 \times 64$ tensor-core product) instead of 16-row blocks;
# the backward's reverse state pass, $dV$ with $dP$, and $dQ, dK, d\log\alpha$ by the same levels.
# Without a GPU the cell below runs it in Triton's interpreter — slow, but the very same code — and
# compares every output and gradient with the float64 reference.

# %%
from kernels import gla as gla_kernel  # noqa: E402  (after TRITON_INTERPRET is set)

device = "cuda" if torch.cuda.is_available() else "cpu"
kB, kH, kT, kK, kV = 1, 2, 100, 16, 16
g = torch.Generator().manual_seed(1)
inputs = [torch.randn(kB, kH, kT, d, generator=g) for d in (kK, kK, kV)]
inputs.append(torch.log(torch.rand(kB, kH, kT, kK, generator=g) * 0.99 + 0.01))
s0 = torch.randn(kB, kH, kK, kV, generator=g)
dout = torch.randn(kB, kH, kT, kV, generator=g)

k_leaves = [t.clone().to(device).requires_grad_() for t in [*inputs, s0]]
start = time.perf_counter()
o_k, s_k = gla_kernel.attention(*k_leaves[:4], scale=0.25, initial_state=k_leaves[4], output_final_state=True,
                                config=gla_kernel.Config(chunk_size=32))  # fmt: skip
(o_k * dout.to(device)).sum().backward()
elapsed = time.perf_counter() - start
r_leaves = [t.detach().double().requires_grad_() for t in [*inputs, s0]]
o_r, s_r = gla.chunked(*r_leaves[:4], scale=0.25, initial_state=r_leaves[4])
(o_r * dout.double()).sum().backward()


def rel(a, b):
    return float((a.detach().cpu().double() - b.detach()).norm() / b.detach().norm())


print(f"kernel on {device} ({'GPU' if device == 'cuda' else 'Triton interpreter'}), fp32, forward+backward in {elapsed:.1f} s")
print(f"  o            relative error {rel(o_k, o_r):.1e}")
print(f"  final state  relative error {rel(s_k, s_r):.1e}")
for name, a, b in zip(("dq", "dk", "dv", "d log_alpha", "d initial_state"), k_leaves, r_leaves):
    print(f"  {name:<12} relative error {rel(a.grad, b.grad):.1e}")

# %% [markdown]
# ## 6. How fast on an H100
#
# `python -m kernels.bench gla` measures this kernel beside fla's `chunk_gla` (the materialised
# FlashLinearAttention by the paper's authors) and torch's causal SDPA (softmax attention, for
# scale), forward and forward+backward, at 65,536 tokens per step (B·T), 16 heads of width 128,
# bf16, gates $\operatorname{logsigmoid}(\text{randn})/16$. It checks every output first, sweeps the
# kernel's launch settings and reports the best. The figure below is drawn from the committed JSON;
# its environment block records the device, versions, date and command.

# %%
from kernels.bench import gla as gla_bench  # noqa: E402
from kernels.bench.common import RESULTS_DIR, load_json, plot_throughput  # noqa: E402

if (RESULTS_DIR / "gla.json").exists():
    result = load_json("gla")
    rows = result["rows"]
    plot_throughput(result, gla_bench.LABELS, algorithm="Gated Linear Attention")
    plt.show()
    for r in rows:
        o = r.get("ours", {})
        if "fwd_ms" not in o:
            continue
        line = f"T={r['T']:>6}: best setting {r['best_setting']}, forward {o['fwd_ms']:.2f} ms, forward+backward {o['fwdbwd_ms']:.2f} ms"
        if "fwdbwd_speedup_vs_fla_chunk_gla" in o:
            line += f" = {o['fwd_speedup_vs_fla_chunk_gla']:.2f}x / {o['fwdbwd_speedup_vs_fla_chunk_gla']:.2f}x fla"
        line += f"; {o['roofline_fwdbwd']['fraction_of_floor']:.0%} of the memory floor"
        print(line)
else:
    print("The GPU benchmark has not been run yet: `python -m kernels.bench gla` on a GPU writes docs/benchmarks/gla.json.")

# %% [markdown]
# ## What to remember
#
# * GLA's state forgets per key channel, at a rate each token chooses: $S_t = \operatorname{Diag}(\alpha_t) S_{t-1} + k_t^\top v_t$.
#   A constant gate is Lightning Attention-2; a gate of one is linear attention.
# * Work in log space and only ever exponentiate **differences** $b_t - b_s \le 0$; the factorised
#   form $e^{b} \cdot e^{-b}$ overflows float32 within a few hundred tokens.
# * Secondary chunking keeps most of the intra-chunk work in matrix products (rescaled at a point
#   between queries and keys) and leaves only the diagonal sub-blocks element-wise.
# * The materialised variant trades one $K \times V$ state per chunk of memory traffic for
#   parallelism over all chunks — the right trade when $B \cdot H$ is small and $T$ is long.
#
# **Exercises.** (1) Train the toy with `tau=1.0` in `GLALayer`: does the gate learn faster, and
# why does the paper prefer $\tau = 16$ for language models? (2) Set `sub_chunk` to the chunk size
# in `reference.gla.chunked` and find the smallest gate (per step) at which float32 still overflows.
# (3) Derive $\partial L / \partial b_C$ for the chunk's last row and check it against
# `chunked_backward`.
