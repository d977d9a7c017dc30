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
# # Lesson 5 — Sequence parallelism: LASP-1, LASP-2 and the hybrid LASP-2H
#
# A sequence of a million tokens does not fit on one GPU. *Sequence parallelism* cuts it into
# $W$ contiguous chunks, one per GPU (a *rank*), and lets the ranks talk just enough to compute
# exactly what one huge GPU would. For linear attention the talking is tiny: a rank needs only the
# $K \times V$ **state** of everything before it, whatever the sequence length. Two schemes move it:
#
# * **LASP-1** (Sun et al., 2024, arXiv 2404.02882) passes the state along a chain of ranks — a ring
#   of point-to-point messages, $2(W-1)$ of them one after another per training step;
# * **LASP-2** (Sun et al., 2025, arXiv 2502.07563) lets every rank publish its own chunk's state in
#   one **AllGather**, then each rank combines what it needs: 2 collective steps, whatever $W$.
#
# Softmax attention has no such state; LASP-2H gathers the keys and values themselves for the
# softmax layers of a hybrid model. In this lesson you will
#
# 1. split the attention of one sequence into per-rank pieces and find the exclusive prefix;
# 2. run LASP-1 and LASP-2 **live on 4 CPU processes** (gloo), check them against one device,
#    draw their timelines and count every message;
# 3. see the exclusive-prefix erratum produce a wrong answer;
# 4. run the bidirectional form, LASP-2H and Ring Attention;
# 5. project the schemes to 128 GPUs with a cost model and set it beside the paper's numbers.

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import simdist
from reference import lightning
from simdist import accounting, costmodel, verify

W = 4
t0 = time.perf_counter()
pool = simdist.shared_pool(W)  # 4 processes in one gloo process group, kept for the whole lesson
print(f"{W} ranks up in {time.perf_counter() - t0:.1f} s: process ids {pool.pids}")
# one small warm-up run of every scheme, so that first-call costs (autograd's threads, allocators)
# do not show up in the timelines below
warm = verify.problem(1, 1, 8, 2, 2, seed=0)
_ = verify.run(pool, [verify.Case(name, *warm, decay=None) for name in verify.ALGORITHMS])

# %% [markdown]
# ## 1. What a rank must know
#
# Lightning attention (lesson 3) with decay $\lambda$ per head computes
# $o_t = \sum_{s \le t} \lambda^{t-s} (q_t \cdot k_s)\, v_s$. Give rank $r$ the chunk of $C_r$ tokens
# starting at position $a_r$, and number its tokens $j = 1..C_r$. Split the sum at the chunk boundary:
#
# $$ O_r = \underbrace{\big[(Q_r K_r^\top) \odot D\big] V_r}_{\text{intra: the chunk alone}}
#        \;+\; \underbrace{\Lambda\, Q_r\, P_r}_{\text{inter: everything before}},\qquad
#        \Lambda = \mathrm{diag}(\lambda^1, \dots, \lambda^{C_r}), $$
#
# where $P_r$ is the decayed state of **all earlier chunks** — and only those. Let
# $M_s = (\lambda^{C_s}\Lambda^{-1} K_s)^\top V_s$ be chunk $s$'s own state (row $j$ of $K_s$ scaled
# by $\lambda^{C_s - j}$). Then $P_r$ is the **exclusive** decayed prefix
#
# $$ P_0 = 0, \qquad P_r = \lambda^{C_{r-1}} P_{r-1} + M_{r-1}. $$
#
# Let us check the split on one device before any communication.

# %%
rng = np.random.default_rng(0)
B, H, T, K, V = 1, 2, 24, 4, 3
q, k, v = rng.standard_normal((B, H, T, K)), rng.standard_normal((B, H, T, K)), rng.standard_normal((B, H, T, V))
decay = np.array([0.4, 0.9])
lengths = [5, 7, 3, 9]  # chunks need not be equal
starts = np.cumsum([0] + lengths[:-1])

full = lightning.parallel(q, k, v, decay)
P = np.zeros((B, H, K, V))
pieces = []
for a, C in zip(starts, lengths):
    qs, ks, vs = q[:, :, a : a + C], k[:, :, a : a + C], v[:, :, a : a + C]
    j = np.arange(1, C + 1)
    Lam = decay[:, None] ** j  # [H, C]: λ^j
    intra = lightning.parallel(qs, ks, vs, decay)
    inter = (Lam[None, :, :, None] * qs) @ P
    pieces.append(intra + inter)
    M = np.swapaxes((decay[:, None] ** (C - j))[None, :, :, None] * ks, -1, -2) @ vs
    P = decay[None, :, None, None] ** C * P + M  # the prefix for the NEXT chunk
print("max |split − one device| =", np.abs(np.concatenate(pieces, axis=2) - full).max())

# %% [markdown]
# ## 2. LASP-1: the state travels along a chain
#
# Rank $r$ receives $P_r$ from rank $r-1$, computes $O_r$, and sends
# $\lambda^{C_r} P_r + M_r$ on to rank $r+1$. The backward pass runs the same chain the other way for
# $dP$. Every message waits for the previous one: $2(W-1)$ **sequential** steps per iteration.
# `simdist.lasp1.attention` posts the receive first and computes the intra term (and $M_r$) while
# the state is in flight.
#
# `simdist.verify` cuts a problem into chunks, runs the scheme on every rank forward and backward,
# and puts the outputs and the gradients $dQ, dK, dV$ back together; `one_device` computes the same
# with autograd on the full sequence.

# %%
B, H, T, K, V = 1, 4, 4 * 512, 32, 32
q, k, v, do = verify.problem(B, H, T, K, V, seed=1)
decay = [0.5, 0.9, 0.99, 1.0]
cases = [verify.Case("lasp1", q, k, v, do, decay=decay), verify.Case("lasp2", q, k, v, do, decay=decay)]
t0 = time.perf_counter()
results = verify.run(pool, cases)
print(f"both schemes, forward and backward on {W} ranks: {time.perf_counter() - t0:.2f} s")
reference_result = verify.one_device(cases[0])
for case, got in zip(cases, results):
    errs = verify.errors(got, reference_result)
    print(f"{case.name}: relative error against one device  " + "  ".join(f"{n} {e:.1e}" for n, e in errs.items()))

# %% [markdown]
# Each rank recorded every message it sent or received and every stretch of local work
# (`simdist.accounting`). Blue is computing, orange is waiting for data, grey the small shape check
# every scheme starts with (so a bad input fails on every rank instead of hanging); red arrows are
# point-to-point messages.

# %%
fig, axes = plt.subplots(2, 1, figsize=(10, 5.5), sharex=False)
for ax, case, got in zip(axes, cases, results):
    accounting.plot_timeline(got["records"], ax=ax, title=f"{case.name}: forward then backward on {W} gloo ranks")
fig.tight_layout()
plt.show()

# %% [markdown]
# In LASP-1's forward, rank 3 cannot finish before the state has crossed ranks 0, 1 and 2; in the
# backward, rank 0 waits for ranks 3, 2, 1. In LASP-2 every rank waits once per direction, for one
# collective. The message counts, measured:

# %%
for case, got in zip(cases, results):
    print(f"--- {case.name}")
    print(accounting.table(got["records"]))

# %% [markdown]
# Read the bytes column carefully. LASP-1's rank receives **one** state per direction. LASP-2's
# receives **$W-1$** states per direction: it moves *more* bytes, not fewer. What it saves is
# steps — the time spent waiting for a chain — and it turns many small dependent messages into one
# collective that can overlap the intra-chunk work. The critical path (the longest chain of
# dependent messages, computed from the recorded happened-before order) is $2(W-1) = 6$ for LASP-1
# and $2$ for LASP-2 — and stays $2$ at any $W$.

# %% [markdown]
# ## 3. LASP-2 and the exclusive prefix (an erratum)
#
# After the AllGather, rank $r$ holds $M_0, \dots, M_{W-1}$ and forms
# $P_r = \sum_{s<r} \lambda^{C_{s+1} + \dots + C_{r-1}} M_s$ by the scan above. A quick reading of
# the paper's worked example writes chunk $t$'s output as $O_t = Q_t M_{1:t} + O_{t,\text{intra}}$ — an
# **inclusive** prefix. That counts the chunk's own tokens twice (once in the intra term, once
# through $M_t$) and lets every token see the later tokens of its chunk. The released LASP-2
# kernels (Linear-MoE) are not exact either: "with mask" lets a token see later tokens of its
# 64-token sub-block, and lengths not divisible by 256 leave memory uninitialised. `simdist.lasp2.forward_with_prefix` lets you
# choose:

# %%
B, H, T, K, V = 1, 2, 32, 4, 4
q, k, v, _ = verify.problem(B, H, T, K, V, seed=2)
decay = [0.4, 0.5]
lengths = verify.split_lengths(T, W)
want = lightning.parallel(q, k, v, np.array(decay))
for prefix in ("exclusive", "inclusive"):
    got = torch.cat(pool.run(verify.prefix_run, q, k, v, decay, lengths, prefix), dim=2).numpy()
    print(f"{prefix:9s} prefix: relative error {np.linalg.norm(got - want) / np.linalg.norm(want):.2e}")

# %% [markdown]
# Strong decays ($\lambda \approx 0.4$) make such mistakes loud; with $\lambda$ close to 1 an
# off-by-one-chunk decay hides in the rounding. The tests use $\lambda$ down to 0.3.
#
# ## 4. Bidirectional attention, and the hybrid's softmax layers
#
# Without a mask (LASP-2's Algorithm 1, no decay) every rank needs the *sum* of all states:
# $O_r = Q_r \sum_s K_s^\top V_s$ — one AllGather again. (LASP-1, a chain, would need the state to
# travel there and back; `simdist.lasp1` refuses `causal=False` and says to use LASP-2.)
#
# Softmax attention has no fixed-size state. **LASP-2H** gathers $[K \mid V]$ of every chunk, lets
# rank $r$ attend with its queries over keys $[0, \text{end}_r)$ — the causal mask aligned to the
# *end* of the keys — and sends $dK, dV$ back to their owners with a reduce-scatter. **Ring
# Attention** instead passes the key/value chunks around the ring, merging partial softmaxes by
# their log-sum-exp.

# %%
B, H, T, K, V = 1, 2, 64, 8, 8
q, k, v, do = verify.problem(B, H, T, K, V, seed=3)
cases = [
    verify.Case("lasp2", q, k, v, do, causal=False),
    verify.Case("lasp2h", q, k, v, do, scale=None),
    verify.Case("ring", q, k, v, do, scale=None),
]
results = verify.run(pool, cases)
rows = []
for case, got in zip(cases, results):
    errs = verify.errors(got, verify.one_device(case))
    summary = accounting.summarize(got["records"])
    rows.append((case.name, "causal" if case.causal else "bidirectional", max(errs.values()), summary[0]["p2p_sent"], summary[0]["collectives"], summary[0]["bytes_recv"], accounting.critical_path(got["records"])))
print(f"{'scheme':8s} {'mask':14s} {'max rel err':>11s} {'p2p sent':>9s} {'collectives':>11s} {'bytes recv':>10s} {'steps':>5s}")
for r in rows:
    print(f"{r[0]:8s} {r[1]:14s} {r[2]:11.1e} {r[3]:9d} {r[4]:11d} {r[5]:10,d} {r[6]:5d}")

# %% [markdown]
# How the traffic grows with the sequence, per rank and iteration (float64, $H = 2$, $K = V = 8$):
# the linear schemes move states whose size does not depend on $T$; LASP-2H and Ring Attention move
# keys and values, whose size does.

# %%
traffic = {name: [] for name in ("lasp1", "lasp2", "lasp2h", "ring")}
Ts = [32, 64, 128, 256]
for T in Ts:
    q, k, v, do = verify.problem(1, 2, T, 8, 8, seed=T)
    batch = [verify.Case(name, q, k, v, do, scale=None if name in verify.SOFTMAX else 1.0) for name in traffic]
    for case, got in zip(batch, verify.run(pool, batch)):
        traffic[case.name].append(max(r["bytes_recv"] for r in accounting.summarize(got["records"])))
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, ys in traffic.items():
    ax.plot(Ts, ys, "-o", label=name)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("sequence length T (4 ranks)")
ax.set_ylabel("bytes received per rank")
ax.legend()
plt.show()

# %% [markdown]
# ## 5. From 4 CPU processes to 128 GPUs: a cost model
#
# The counts above are exact; how much they cost depends on the machine. `simdist.costmodel` puts a
# latency $\alpha$ on every message, a bandwidth $\beta$ on every byte (NVLink inside a node of 8
# GPUs, the network across), a rate on the compute, and lets communication hide behind the
# intra-chunk work. Its parameters are calibrated from documented H100/NVLink figures (and
# `costmodel.fit` refits them on the measured benchmark in one call: section 6 shows both). Projected
# for Linear-Llama3-1B:

# %%
rows = costmodel.project(costmodel.H100_NVLINK, world_sizes=(8, 16, 32, 64, 128), seq_lens=(2048 * 1024,))
print(f"{'GPUs':>5s} {'chunk':>7s} {'LASP-1 Mtok/s':>14s} {'LASP-2 Mtok/s':>14s} {'Ring Mtok/s':>12s} {'LASP-2 vs LASP-1':>17s}")
for r in rows:
    print(f"{r['W']:5d} {r['chunk']:7d} {r['lasp1_tokens_per_s'] / 1e6:14.2f} {r['lasp2_tokens_per_s'] / 1e6:14.2f} {r['ring_tokens_per_s'] / 1e6:12.2f} {100 * r['lasp2_over_lasp1']:+16.1f}%")
fig, ax = plt.subplots(figsize=(7, 4.2))
costmodel.plot_projection(costmodel.A100_PAPER, ax=ax, overlap=False)
plt.show()

# %% [markdown]
# Set beside the paper (64 A100s, Linear-Llama3-1B; stars and crosses above):

# %%
for r in costmodel.paper_comparison(costmodel.A100_PAPER, overlap=False):
    print(
        f"N = {r['N'] // 1024}K on {r['W']} GPUs:  over LASP-1 model {100 * r['model_over_lasp1']:+.1f}% vs paper {100 * r['paper_over_lasp1']:+.1f}%;"
        f"  over Ring model {100 * r['model_over_ring']:+.0f}% vs paper {100 * r['paper_over_ring']:+.1f}%"
    )
for N, gain in ((2048 * 1024, 0.152), (512 * 1024, 0.073)):
    alpha = costmodel.implied_step_latency(gain, N=N)
    print(f"a per-message cost of {1e6 * alpha:.0f} µs would make LASP-1 {100 * gain:.1f}% slower at {N // 1024}K")

# %% [markdown]
# The model and the paper disagree, and the disagreement teaches something. With the states only
# $H \cdot K \cdot V \cdot 4$ = 1 MiB per layer, the model finds both LASP-1's chain and LASP-2's
# AllGather nearly free next to the dense layers at these chunk sizes — and LASP-2's gather, which
# brings $W-1$ states to every rank through the slowest link, even a little slower across nodes.
# To lose 15.2 % at 2048K, LASP-1 would have to pay about the latency printed above per message;
# to lose 7.3 % at 512K, a different one — a fixed latency cannot produce a gain that *grows* with
# the chunk, as the paper's does. So the paper's speed-ups come from costs this model leaves out
# (its LASP-1 implementation's synchronisation and scheduling), not from bytes or step counts
# alone. The model's Ring Attention, which moves keys and values ($\propto C$) through the network,
# is far slower than the paper's; its baseline evidently moved much less. Measure before you
# believe either: the benchmark below is the measurement. It found one such cost in this package's
# own LASP-1: on 4 GPUs, each rank's send was queued beside its attention kernel, waited for free
# multiprocessors, and so every hop of the chain cost part of a kernel — LASP-2 came out 26–31 %
# faster at 128k–256k tokens per GPU, a gain that *grew* with the chunk, as the paper's does. Sending
# before launching the kernel removed it (`docs/sequence_parallel.md`, "A chain that waited for the
# kernel").
#
# ## 6. The GPU benchmark
#
# `python -m simdist.bench` runs the same code with NCCL, one GPU per rank, at 16k–256k tokens per
# GPU, and writes `docs/benchmarks/simdist_nccl.json` with its plot. Below the plot: what each linear
# scheme costs beyond the local kernel, measured, beside what the cost model charges for its
# messages — the model's blind spot, in numbers.

# %%
bench = Path("..") / "docs" / "benchmarks" / "simdist_nccl.json"
if not bench.is_file():
    bench = Path("docs") / "benchmarks" / "simdist_nccl.json"
if bench.is_file():
    import json

    from IPython.display import Markdown, display

    from simdist.bench import schemes

    payload = json.loads(bench.read_text())
    print(payload["environment"]["device"], payload["environment"]["date"], payload["environment"]["command"])
    schemes.plot(payload)
    plt.show()
    fitted = costmodel.fit(bench)
    table = ["| cost-model parameter | documented H100 | refitted on this run |", "| --- | ---: | ---: |"]
    for field, unit, factor in (("alpha_p2p", "µs", 1e6), ("alpha_coll", "µs", 1e6), ("beta_intra", "GB/s", 1e-9),
                                ("beta_inter", "GB/s", 1e-9), ("dense_flops", "TFLOP/s", 1e-12),
                                ("linear_tokens_per_s", "M tokens/s", 1e-6)):  # fmt: skip
        documented, refitted = (getattr(hw, field) * factor for hw in (costmodel.H100_NVLINK, fitted))
        table.append(f"| `{field}` ({unit}) | {documented:.3g} | {refitted:.3g} |")
    display(Markdown("\n".join(table)))
    print(f"{'W':>2} {'scheme':<6} {'tokens/GPU':>10} {'measured overhead':>18} {'model':>9} {'ratio':>6}")
    for row in costmodel.measured_against_model(payload, fitted):
        print(f"{row['W']:>2} {row['method']:<6} {row['chunk']:>10} {row['measured_overhead_ms']:>15.2f} ms "
              f"{row['model_comm_ms']:>6.2f} ms {row['measured_over_model']:>6.1f}")  # fmt: skip
else:
    print("No GPU measurement committed yet: run `python -m simdist.bench` on a machine with GPUs.")

# %% [markdown]
# ## Exercises
#
# 1. Make `simdist.lasp2` use the inclusive prefix for the backward pass only (edit a copy). Which
#    of $dQ, dK, dV$ go wrong, and on which ranks? Run `pytest tests/test_lasp.py` against it.
# 2. Give one rank a chunk of a single token (`verify.Case(..., lengths=[1, 30, 1, 32])`). Why must
#    LASP-2 know every chunk's length, and where does it learn them?
# 3. In the LASP-1 timeline, which ranks wait longest in the forward, and which in the backward?
#    Predict the answer for $W = 8$, then check it with `simdist.shared_pool(8)`.
# 4. With `costmodel.iteration_time`, find the chunk length below which LASP-2 beats LASP-1 on 64
#    H100s, and explain why there is one.
# 5. LASP-2H gathers the keys and values of *every* chunk on every rank, though rank $r$ needs only
#    chunks $0..r$. Count the wasted bytes, and sketch a scheme that avoids them. What does it cost?
