"""LASP-1, LASP-2, LASP-2H and Ring Attention on gloo CPU ranks equal one device, exactly (float64).

Each rank runs its contiguous chunk forward and backward; the chunks' outputs and gradients are
put back together and compared with the ``reference`` package on the full sequence (autograd for
the gradients) and with the independent oracles of ``tests/oracles.py`` (outputs). Then: message
counts equal the theory, the exclusive-prefix erratum is pinned, and bad input gives a clear error
on every rank instead of a hang.

One pool of ranks per ``W`` serves the whole session (``simdist.shared_pool``), and every
Hypothesis example sends several cases in one call, so the suite stays fast on two cores.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

import simdist
from simdist import accounting, kernel_path, lasp2, local, verify
from tests import oracles
from tests.strategies import chunk_lengths, decays, rel_err, seeds

TOL = 1e-10  # float64 end to end: only rounding separates the schemes from one device
# Every example sends several cases to the ranks at once: a third of the profile's examples is plenty.
EXAMPLES = max(4, min(40, settings.default.max_examples // 3))
W_CI = [1, 2, 3, 4]
W_ALL = [*W_CI, pytest.param(8, marks=pytest.mark.thorough)]


def pool(W: int):
    return simdist.shared_pool(W, timeout=120)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@st.composite
def cases(draw, W: int):
    """One random problem for one scheme, cut into ``W`` chunks (lengths may differ)."""
    algorithm = draw(st.sampled_from(["lasp1", "lasp2", "lasp2h", "ring"]))
    B, H = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    K, V = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    T = draw(st.integers(W, max(W, 3 * W + 6)))
    lengths = draw(chunk_lengths(T, W))
    q, k, v, do = verify.problem(B, H, T, K, V, seed=draw(seeds()))
    if algorithm in ("lasp2h", "ring"):
        causal = draw(st.booleans())
        scale = draw(st.sampled_from([None, 0.7]))
        decay = None
    else:
        causal = algorithm == "lasp1" or draw(st.booleans())
        scale = draw(st.sampled_from([1.0, 0.5]))
        decay = draw(st.one_of(st.none(), decays(H))) if causal else None
    return verify.Case(algorithm, q, k, v, do, decay=decay, causal=causal, scale=scale, lengths=lengths)


def oracle(case: verify.Case) -> np.ndarray:
    """The output as its defining sum (tests/oracles.py): shares no code with reference or simdist."""
    if case.name in verify.SOFTMAX:
        return oracles.softmax_attention(case.q, case.k, case.v, causal=case.causal, scale=case.scale)
    o, _ = oracles.decayed_linear_attention(case.q, case.k, case.v, case.decay, scale=case.scale, causal=case.causal)
    return o


def check(case, got):
    want = verify.one_device(case)
    errs = verify.errors(got, want)
    assert max(errs.values()) < TOL, f"{case.name} causal={case.causal} lengths={case.lengths} decay={case.decay}: {errs}"
    assert rel_err(got["o"], oracle(case)) < TOL


# --------------------------------------------------------------------------------------------
# Every scheme equals one device
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("W", W_ALL)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_every_scheme_equals_one_device(W, data):
    """Outputs and dq, dk, dv of random problems (causal, decayed, bidirectional, unequal chunks)."""
    batch = [data.draw(cases(W)) for _ in range(6)]
    for case, got in zip(batch, verify.run(pool(W), batch)):
        check(case, got)


@pytest.mark.parametrize("W", W_CI)
@pytest.mark.parametrize("decay", [[0.3, 0.5], [0.45, 1.0]], ids=["lambda=0.3,0.5", "lambda=0.45,1"])
def test_strong_decays_and_lopsided_chunks(W, decay):
    """Strong decays catch a prefix off by one chunk (λ^C differs visibly from 1); every chunk shape."""
    T = 4 * W + 3
    lengths = [1] * (W - 1) + [T - (W - 1)] if W > 1 else [T]  # single-token chunks before a long one
    batch = []
    for algorithm in ("lasp1", "lasp2"):
        for split in (lengths, lengths[::-1], verify.split_lengths(T, W)):
            q, k, v, do = verify.problem(1, 2, T, 3, 4, seed=len(batch))
            batch.append(verify.Case(algorithm, q, k, v, do, decay=decay, lengths=split))
    for case, got in zip(batch, verify.run(pool(W), batch)):
        check(case, got)


# --------------------------------------------------------------------------------------------
# Communication: the counts of the theory
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("W", W_ALL)
def test_message_counts_equal_the_theory(W):
    B, H, T, K, V = 1, 2, 4 * W, 3, 5
    q, k, v, do = verify.problem(B, H, T, K, V, seed=1)
    batch = [
        verify.Case("lasp1", q, k, v, do, decay=[0.5, 0.9]),
        verify.Case("lasp2", q, k, v, do, decay=[0.5, 0.9]),
        verify.Case("lasp2", q, k, v, do, causal=False),
        verify.Case("lasp2h", q, k, v, do),
        verify.Case("ring", q, k, v, do),
    ]
    results = verify.run(pool(W), batch)
    state = B * H * K * V * 8  # one float64 state [B, H, K, V]
    kv = B * H * (T // W) * (K + V) * 8  # one chunk of [K | V]
    for case, got in zip(batch, results):
        records = got["records"]
        rows = accounting.summarize(records)
        steps = accounting.critical_path(records)
        handshakes = [row["meta_calls"] for row in rows]
        assert handshakes == [1 if W > 1 else 0] * W  # one shape check per forward, none on one rank
        if case.name == "lasp1":
            # W-1 states forward and W-1 state gradients backward, one after the other
            assert sum(row["p2p_sent"] for row in rows) == 2 * (W - 1)
            assert [row["p2p_sent"] for row in rows] == [int(r < W - 1) + int(r > 0) for r in range(W)]
            assert all(row["collectives"] == 0 for row in rows)
            assert all(row["bytes_sent"] == state * row["p2p_sent"] for row in rows)
            assert steps == 2 * (W - 1)
        elif case.name == "lasp2":
            # one AllGather forward, one backward, whatever W; each rank still receives W-1 states
            assert all(row["collectives"] == (2 if W > 1 else 0) and row["p2p_sent"] == 0 for row in rows)
            assert all(row["bytes_recv"] == 2 * (W - 1) * state for row in rows)
            assert steps == (2 if W > 1 else 0)
        elif case.name == "lasp2h":
            # AllGather of [K | V], reduce-scatter of [dK | dV]: 2 collectives whose size grows with T
            assert all(row["collectives"] == (2 if W > 1 else 0) for row in rows)
            assert all(row["bytes_recv"] == 2 * (W - 1) * kv for row in rows)
            assert steps == (2 if W > 1 else 0)
        else:
            # ring: K, V travel W-1 hops forward; backward K, V again (W-1) and dK, dV (W hops home)
            assert all(row["p2p_sent"] == (3 * W - 2 if W > 1 else 0) for row in rows)
            assert steps == (2 * W - 1 if W > 1 else 0)


def test_lasp2_steps_do_not_grow_with_W_and_lasp1_steps_do():
    steps = {"lasp1": [], "lasp2": []}
    for W in W_CI:
        q, k, v, do = verify.problem(1, 1, 2 * W, 2, 2, seed=W)
        batch = [verify.Case(name, q, k, v, do, decay=[0.5]) for name in steps]
        for case, got in zip(batch, verify.run(pool(W), batch)):
            steps[case.name].append(accounting.critical_path(got["records"]))
    assert steps["lasp1"] == [2 * (W - 1) for W in W_CI]
    assert steps["lasp2"] == [0, 2, 2, 2]


# --------------------------------------------------------------------------------------------
# The erratum: the prefix is exclusive
# --------------------------------------------------------------------------------------------


def prefix_outputs(rank, world_size, q, k, v, decay, lengths):
    start = sum(lengths[:rank])
    sl = slice(start, start + lengths[rank])
    chunk = [torch.from_numpy(x[:, :, sl].copy()) for x in (q, k, v)]
    return [lasp2.forward_with_prefix(*chunk, decay=decay, prefix=p) for p in ("exclusive", "inclusive")]


@pytest.mark.parametrize("W", [2, 4])
def test_the_exclusive_prefix_is_right_and_the_inclusive_one_wrong(W):
    """docs/errata.md, erratum 2: chunk t uses M_{1:t-1}. ``M_{1:t}`` counts the chunk twice."""
    T, lengths = 5 * W, None
    lengths = verify.split_lengths(T, W)
    q, k, v, do = verify.problem(1, 2, T, 3, 3, seed=5)
    decay = [0.4, 0.5]
    out = pool(W).run(prefix_outputs, q, k, v, decay, lengths)
    exclusive = torch.cat([o[0] for o in out], dim=2).numpy()
    inclusive = torch.cat([o[1] for o in out], dim=2).numpy()
    want = oracles.decayed_linear_attention(q, k, v, decay)[0]
    assert rel_err(exclusive, want) < TOL
    assert rel_err(inclusive, want) > 0.1  # visibly wrong...
    start = 0
    for r, C in enumerate(lengths):  # ...on every rank, the first included
        assert rel_err(inclusive[:, :, start : start + C], want[:, :, start : start + C]) > 0.05
        start += C


# --------------------------------------------------------------------------------------------
# Local pieces (no ranks needed)
# --------------------------------------------------------------------------------------------


@settings(max_examples=15)
@given(data=st.data())
def test_local_pieces_compose_to_chunked_lightning_with_a_state(data):
    """``intra + Λ Q P`` and ``λ^C P + M`` are chunked Lightning with ``initial_state = P``."""
    from reference import lightning

    B, H, C, K, V = data.draw(st.tuples(*(st.integers(1, n) for n in (2, 3, 20, 5, 5))))
    q, k, v, _ = verify.problem(B, H, C, K, V, seed=data.draw(seeds()))
    decay = data.draw(decays(H))
    P = np.random.default_rng(0).standard_normal((B, H, K, V))
    q, k, v, P = (torch.from_numpy(x) for x in (q, k, v, P))
    o, S = local.local_forward(q, k, v, decay, 0.6, P)
    o_ref, S_ref = lightning.chunked(q, k, v, decay, scale=0.6, chunk_size=7, initial_state=P)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL


@settings(max_examples=10)
@given(data=st.data())
def test_vectorised_torch_fallback_equals_the_reference(data):
    """The CUDA fallback (blocks in one batched product, a scan over blocks) on the CPU in float64."""
    from reference import lightning

    H = data.draw(st.integers(1, 3))
    T = data.draw(st.integers(1, 40))
    block = data.draw(st.sampled_from([1, 4, 8, 16]))
    q, k, v, _ = verify.problem(1, H, T, 3, 4, seed=data.draw(seeds()))
    decay = data.draw(st.one_of(st.none(), decays(H)))
    q, k, v = (torch.from_numpy(x) for x in (q, k, v))
    got = local._torch_chunked(q, k, v, local.rates(decay), 0.8, block=block)
    want = lightning.parallel(q, k, v, np.ones(H) if decay is None else decay, scale=0.8)
    assert rel_err(got, want) < TOL


@pytest.mark.parametrize("Tq, Tk, causal", [(5, 12, True), (7, 7, True), (4, 9, False)])
def test_the_gpu_softmax_path_aligns_the_mask_to_the_end_of_the_keys(Tq, Tk, causal):
    """LASP-2H's CUDA path (SDPA with causal_lower_right), run on the CPU in float64, equals the
    reference — outputs and gradients — for a chunk of queries after earlier chunks' keys."""
    from reference import softmax_attention

    q, _, _, do = verify.problem(1, 2, Tq, 4, 3, seed=Tq)
    _, k, v, _ = verify.problem(1, 2, Tk, 4, 3, seed=Tk)
    grads = []
    for use_sdpa in (True, False):
        leaves = [torch.from_numpy(x).requires_grad_() for x in (q, k, v)]
        o = local.softmax(*leaves, causal=causal, scale=0.6, use_sdpa=use_sdpa)
        (o * torch.from_numpy(do)).sum().backward()
        grads.append([o.detach()] + [x.grad for x in leaves])
    for got, want in zip(*grads):
        assert rel_err(got, want) < TOL
    ref = softmax_attention.naive(q, k, v, causal=causal, scale=0.6)
    assert rel_err(grads[0][0], ref) < TOL


def test_the_kernel_path_of_the_local_work_equals_the_reference():
    """What the linear schemes call on GPUs (kernels.lightning), here in Triton's interpreter in fp32."""
    needs_kernel()
    from reference import lightning

    q, k, v, do = verify.problem(1, 2, 19, 16, 16, seed=4)
    decay = np.array([0.5, 0.95])
    outs = []
    for intra in (kernel_path.attention, local.intra):
        leaves = [torch.from_numpy(x).float().requires_grad_() for x in (q, k, v)]
        o = intra(*leaves, local.rates(decay), 0.5)
        (o * torch.from_numpy(do).float()).sum().backward()
        outs.append([o.detach()] + [x.grad for x in leaves])
    for got, want in zip(*outs):
        assert rel_err(got, want) < 1e-5
    assert rel_err(outs[0][0], lightning.parallel(q, k, v, decay, scale=0.5)) < 1e-5


# --------------------------------------------------------------------------------------------
# The kernel path (what CUDA runs), here in Triton's interpreter in float32
# --------------------------------------------------------------------------------------------

KERNEL_TOL = 2e-5  # float32 kernel and products against the float64 one-device reference


def needs_kernel():
    if kernel_path.kernel() is None:
        pytest.skip("kernels.lightning is not importable here")


def kernel_rank_run(rank, world_size, cases):
    """``verify.rank_run`` in float32 with the kernel path forced (the pool's ranks run the interpreter)."""
    kernel_path.USE_KERNEL = True
    try:
        return verify.rank_run(rank, world_size, cases, "float32")
    finally:
        kernel_path.USE_KERNEL = None


@pytest.mark.parametrize("W", [2, 3])
def test_the_kernel_path_of_the_schemes_equals_one_device(W):
    """LASP-1 and LASP-2 as they run on GPUs — the state through the kernel's initial and final
    state, the sent states by ``kernel_path.chunk_state``/``grad_incoming`` — equal one device (float32 vs float64):
    decays strong and absent, a head without decay, unequal chunks, a scale; same messages as the theory."""
    needs_kernel()
    T = 9 * W + 2
    q, k, v, do = verify.problem(1, 2, T, 5, 3, seed=W)
    uneven = [4] + [9] * (W - 2) + [T - 4 - 9 * (W - 2)]
    batch = [
        verify.Case("lasp1", q, k, v, do, decay=None),
        verify.Case("lasp2", q, k, v, do, decay=[0.45, 1.0], scale=1.3),
    ]
    if W > 2:  # the middle of the chain, and a prefix of two states (interpreter time is dear: W = 3 only)
        batch += [
            verify.Case("lasp1", q, k, v, do, decay=[0.3, 0.95], scale=0.7, lengths=uneven),
            verify.Case("lasp2", q, k, v, do, decay=[0.3, 0.95], scale=0.7, lengths=uneven[::-1]),
        ]
    per_rank = pool(W).run(kernel_rank_run, batch)
    state = 1 * 2 * 5 * 3 * 4  # one float32 state [B, H, K, V]
    for i, case in enumerate(batch):
        parts = [per_rank[r][i] for r in range(W)]
        got = {n: torch.cat([p[n] for p in parts], dim=2).double().numpy() for n in ("o", "dq", "dk", "dv")}
        errs = verify.errors(got, verify.one_device(case))
        assert max(errs.values()) < KERNEL_TOL, f"{case.name} decay={case.decay} lengths={case.lengths}: {errs}"
        records = [p["record"] for p in parts]
        for rec in records:  # the kernel path ran, forward and backward, on every rank
            labels = {s.label for s in rec.spans}
            assert {"kernel", "kernel backward"} <= labels and "intra" not in labels, labels
        rows = accounting.summarize(records)
        if case.name == "lasp1":
            assert [row["p2p_sent"] for row in rows] == [int(r < W - 1) + int(r > 0) for r in range(W)]
            assert all(row["bytes_sent"] == state * row["p2p_sent"] for row in rows)
            assert accounting.critical_path(records) == 2 * (W - 1)
        else:
            assert all(row["collectives"] == 2 and row["bytes_recv"] == 2 * (W - 1) * state for row in rows)
            assert accounting.critical_path(records) == 2


def test_the_kernel_path_pieces_equal_their_definitions():
    """``kernel_path.attention`` with an initial state and its final state (values and gradients, the
    final state's included), ``chunk_state``, ``grad_incoming`` and ``local.advance``, in float32 against float64."""
    needs_kernel()
    from reference import lightning

    B, H, C, K, V = 1, 2, 23, 4, 3
    q, k, v, do = verify.problem(B, H, C, K, V, seed=7)
    rng = np.random.default_rng(8)
    P, dS = rng.standard_normal((B, H, K, V)), rng.standard_normal((B, H, K, V))
    lam, scale = np.array([0.4, 0.97]), 0.6
    rates = local.rates(torch.from_numpy(lam))
    leaves = [torch.from_numpy(x).float().requires_grad_() for x in (q, k, v)]
    o, final = kernel_path.attention(*leaves, rates, scale, initial_state=torch.from_numpy(P).float(), output_final_state=True)
    ((o * torch.from_numpy(do).float()).sum() + (final * torch.from_numpy(dS).float()).sum()).backward()
    got = [o.detach(), final.detach()] + [x.grad for x in leaves]
    leaves = [torch.from_numpy(x).requires_grad_() for x in (q, k, v)]
    o, final = lightning.chunked(*leaves, lam, scale=scale, chunk_size=5, initial_state=torch.from_numpy(P))
    ((o * torch.from_numpy(do)).sum() + (final * torch.from_numpy(dS)).sum()).backward()
    want = [o.detach(), final.detach()] + [x.grad for x in leaves]
    for a, b in zip(got, want):
        assert rel_err(a, b) < KERNEL_TOL

    # the sent states, as their defining sums (j = 1..C)
    j = np.arange(1, C + 1)
    for rates_lam in (lam, np.array([1.0, 0.5]), None):
        r = local.rates(None if rates_lam is None else torch.from_numpy(rates_lam))
        lam_ = np.ones(H) if rates_lam is None else rates_lam
        M = np.einsum("hj,bhjk,bhjv->bhkv", lam_[:, None] ** (C - j), k, v)
        dM = scale * np.einsum("hj,bhjk,bhjv->bhkv", lam_[:, None] ** j, q, do)
        assert rel_err(kernel_path.chunk_state(torch.from_numpy(k).float(), torch.from_numpy(v).float(), r), M) < KERNEL_TOL
        assert rel_err(kernel_path.grad_incoming(torch.from_numpy(q).float(), torch.from_numpy(do).float(), r, scale), dM) < KERNEL_TOL
        want_S = (lam_[None, :, None, None] ** C) * P + M
        assert rel_err(local.advance(torch.from_numpy(P).float(), torch.from_numpy(M).float(), r, C), want_S) < KERNEL_TOL


def test_the_state_horizon_drops_only_weights_below_fp32_range():
    """Strong decays over a long chunk: ``chunk_state``/``grad_incoming`` read only the tokens within the horizon
    (every weight beyond it is below 2^-126) and equal the full sums; with a head at λ = 1, without
    decay, or when the horizon is more than half the chunk they read everything. The products are
    cut into slices (``local.gram``), which must not change the sums either."""
    B, H, C, K, V = 1, 2, 400, 3, 2
    q, k, v, do = (torch.from_numpy(x) for x in verify.problem(B, H, C, K, V, seed=9))
    lam = np.array([0.05, 0.3])  # 2^-126 is reached after 30 and 73 tokens
    rates = local.rates(torch.from_numpy(lam))
    L = kernel_path.horizon(rates, C)
    assert np.ceil(126 / -np.log2(0.3)) <= L < C and L % 64 == 0
    assert kernel_path.horizon(local.rates(torch.tensor([0.05, 1.0], dtype=torch.float64)), C) == C
    assert kernel_path.horizon(None, C) == C and kernel_path.horizon(rates, 2 * L - 1) == 2 * L - 1
    j = np.arange(1, C + 1)
    for lam_, r in ((lam, rates), (np.ones(H), None)):
        M = np.einsum("hj,bhjk,bhjv->bhkv", lam_[:, None] ** (C - j), k.numpy(), v.numpy())
        dM = 0.8 * np.einsum("hj,bhjk,bhjv->bhkv", lam_[:, None] ** j, q.numpy(), do.numpy())
        assert rel_err(kernel_path.chunk_state(k.float(), v.float(), r), M) < KERNEL_TOL
        assert rel_err(kernel_path.grad_incoming(q.float(), do.float(), r, 0.8), dM) < KERNEL_TOL
    # the tokens beyond the horizon are not read: garbage there changes nothing
    M = np.einsum("hj,bhjk,bhjv->bhkv", lam[:, None] ** (C - j), k.numpy(), v.numpy())
    dM = 0.8 * np.einsum("hj,bhjk,bhjv->bhkv", lam[:, None] ** j, q.numpy(), do.numpy())
    k2, q2 = k.float().clone(), q.float().clone()
    k2[:, :, : C - L] = float("nan")
    q2[:, :, L:] = float("nan")
    assert rel_err(kernel_path.chunk_state(k2, v.float(), rates), M) < KERNEL_TOL
    assert rel_err(kernel_path.grad_incoming(q2, do.float(), rates, 0.8), dM) < KERNEL_TOL


def test_the_kernel_path_is_taken_only_where_the_kernel_runs():
    q64, q32 = torch.zeros(1, 1, 2, 2, dtype=torch.float64), torch.zeros(1, 1, 2, 2)
    assert not kernel_path.applies(q64) and not kernel_path.applies(q32)  # CPU tensors: the split path
    try:
        kernel_path.USE_KERNEL = True
        assert kernel_path.applies(q32) == (kernel_path.kernel() is not None)
        assert not kernel_path.applies(q64)  # the kernel takes no float64
    finally:
        kernel_path.USE_KERNEL = None
    assert local.rates(None) is None and local.rates(torch.ones(3, dtype=torch.float64)) is None
    assert local.rates(torch.tensor([0.5, 1.0], dtype=torch.float64)) == (0.5, 1.0)
    assert local.rates([0.5, 0.25]) == (0.5, 0.25) and local.rates(np.array([1.0, 1.0])) is None
    assert "reference" in kernel_path.implementation("cpu", torch.float64)


# --------------------------------------------------------------------------------------------
# Ring Attention: NCCL's one work per batch, and the flash operator's call
# --------------------------------------------------------------------------------------------


def coalesced_rank_run(rank, world_size, cases):
    """``verify.rank_run`` with ``batch_isend_irecv`` returning ONE work for the whole batch, as NCCL does."""
    real = dist.batch_isend_irecv
    calls = []

    class Coalesced:
        def __init__(self, works):
            self.works = works
            self.waits = 0

        def wait(self):
            self.waits += 1
            for w in self.works:
                w.wait()

    def one_work(ops):
        calls.append(Coalesced(real(ops)))
        return [calls[-1]]

    dist.batch_isend_irecv = one_work
    try:
        results = verify.rank_run(rank, world_size, cases)
    finally:
        dist.batch_isend_irecv = real
    return results, [c.waits for c in calls]


@pytest.mark.parametrize("W", [2, 3])
def test_exchange_handles_one_coalesced_work(W):
    """NCCL (torch 2.x) returns one work for a batch of a send and a receive; gloo one per operation.
    ``comm.exchange`` must work with both: Ring Attention, all of whose messages are exchanges,
    equals one device with the NCCL behaviour faked on gloo, and each batch's work is waited once."""
    T = 4 * W + 1
    q, k, v, do = verify.problem(1, 2, T, 3, 3, seed=W)
    batch = [verify.Case("ring", q, k, v, do, causal=causal, scale=None) for causal in (True, False)]
    per_rank = pool(W).run(coalesced_rank_run, batch)
    for i, case in enumerate(batch):
        parts = [per_rank[r][0][i] for r in range(W)]
        got = {n: torch.cat([p[n] for p in parts], dim=2).double().numpy() for n in ("o", "dq", "dk", "dv")}
        check(case, got)
        assert sum(row["p2p_sent"] for row in accounting.summarize([p["record"] for p in parts])) == W * (3 * W - 2)
    for _, waits in per_rank:  # 3W-2 exchanges per rank and case, each batch's one work waited once
        assert waits == [1] * (len(batch) * (3 * W - 2))


def test_the_flash_operator_call_fits_the_installed_torch():
    """Ring Attention's GPU path calls private aten flash operators; their schema is checked here on
    ``meta`` tensors (no GPU needed): argument order, the nine outputs, the backward's three."""
    from simdist import ring

    q = torch.empty(1, 2, 16, 64, device="meta", dtype=torch.bfloat16)
    o, lse, saved = ring.flash_forward(q, q, q, causal=True, scale=0.125)
    assert o.shape == q.shape and o.dtype == q.dtype and tuple(lse.shape) == (1, 2, 16) and lse.dtype == torch.float32
    grads = ring.flash_backward(q, q, q, q, o, lse, saved, causal=True, scale=0.125)
    assert [tuple(g.shape) for g in grads] == [tuple(q.shape)] * 3


def test_exclusive_prefix_closed_form():
    """Equal chunks: the scan equals ``Σ_{s<r} λ^{C(r-1-s)} M_s``."""
    rng = np.random.default_rng(2)
    W, C, lam = 5, 3, 0.6
    M = [torch.from_numpy(rng.standard_normal((1, 1, 2, 2))) for _ in range(W)]
    for r in range(W):
        want = sum((lam ** (C * (r - 1 - s)) * M[s] for s in range(r)), torch.zeros(1, 1, 2, 2, dtype=torch.float64))
        assert rel_err(lasp2.exclusive_prefix(M, [C] * W, r, local.rates([lam])), want) < TOL
    with pytest.raises(TypeError, match="rates"):  # a tensor of rates (or of their logs) is no host tuple
        lasp2.exclusive_prefix(M, [C] * W, 2, torch.tensor([np.log(lam)]))


# --------------------------------------------------------------------------------------------
# Bad input: a clear error on every rank, never a hang
# --------------------------------------------------------------------------------------------


def call_with(rank, world_size, name, problem):
    """Each rank calls ``name`` on its own (possibly bad) input from ``problem(rank)``."""
    q, k, v, kwargs = problem(rank, world_size)
    return verify.ALGORITHMS[name](q, k, v, **kwargs)


def _chunk(K=3, V=2, C=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 2, C, K, generator=g, dtype=dtype), torch.randn(1, 2, C, K, generator=g, dtype=dtype), torch.randn(1, 2, C, V, generator=g, dtype=dtype))


def key_width_differs(rank, W):
    return (*_chunk(K=4 if rank == 1 else 3), {})


def decay_wrong_everywhere(rank, W):
    return (*_chunk(), {"decay": [0.5, 0.5, 0.5]})


def decay_wrong_on_rank_2(rank, W):
    return (*_chunk(), {"decay": [0.5, 2.0] if rank == 2 else [0.5, 0.9]})


def v_too_short_on_rank_2(rank, W):
    q, k, v = _chunk()
    return (q, k, v[:, :, :2] if rank == 2 else v, {})


def decay_differs(rank, W):
    return (*_chunk(), {"decay": [0.5, 0.9 if rank else 0.8]})


def dtype_differs(rank, W):
    return (*_chunk(dtype=torch.float32 if rank == 0 else torch.float64), {})


def lengths_for_another_group(rank, W):
    return (*_chunk(), {"lengths": [3] * (W + 1)})


def outside_the_group(rank, W):
    group = dist.new_group([0, 1])  # every rank must create it; rank 2 is not a member
    return (*_chunk(), {"group": group})


def bidirectional_on_rank_1(rank, W):
    return (*_chunk(), {"causal": rank != 1})


def bidirectional_with_decay_on_rank_1(rank, W):
    return (*_chunk(), {"causal": rank != 1, "decay": [0.5, 0.9]})


def decay_on_rank_1_bidirectional(rank, W):
    return (*_chunk(), {"causal": False, "decay": [0.5, 0.9] if rank == 1 else None})


def prefix_on_rank_1(rank, W):
    return (*_chunk(), {"prefix": "sideways" if rank == 1 else "exclusive"})


def call_prefix(rank, world_size, name, problem):
    """``lasp2.forward_with_prefix`` on each rank's input from ``problem(rank)`` (``name`` unused)."""
    q, k, v, kwargs = problem(rank, world_size)
    return lasp2.forward_with_prefix(q, k, v, **kwargs)


@pytest.mark.parametrize("name", ["lasp1", "lasp2"])
@pytest.mark.parametrize(
    "problem, every_rank_says",
    [
        (key_width_differs, "key width K differs across ranks: rank 0: 3, rank 1: 4, rank 2: 3"),
        (decay_wrong_everywhere, r"decay must have shape \[H\] = \[2\], got \(3,\)"),
        (decay_differs, "decay differs across ranks"),
        (dtype_differs, "dtype differs across ranks"),
        (lengths_for_another_group, r"lengths must give one chunk length per rank \(3\), got 4"),
    ],
    ids=["K-differs", "decay-shape", "decay-differs", "dtype-differs", "lengths-size"],
)
def test_disagreeing_input_raises_the_same_error_on_every_rank(name, problem, every_rank_says):
    p = pool(3)
    restarts = p.restarts
    with pytest.raises(simdist.RankError) as info:
        p.run(call_with, name, problem, timeout=30)
    errors = info.value.exceptions
    assert sorted(errors) == [0, 1, 2], "every rank must raise"
    for e in errors.values():
        assert isinstance(e, (ValueError, TypeError)) and re.search(every_rank_says, str(e)), str(e)
    assert p.restarts == restarts  # a collective error: the ranks stay consistent and are kept


@pytest.mark.parametrize("name", ["lasp1", "lasp2", "lasp2h", "ring"])
def test_one_bad_rank_is_named_by_the_others(name):
    """Rank 2 alone has a bad input: it raises its own error, the others one naming rank 2."""
    p = pool(3)
    problems = [v_too_short_on_rank_2] + ([decay_wrong_on_rank_2] if name in ("lasp1", "lasp2") else [])
    for problem in problems:
        with pytest.raises(simdist.RankError) as info:
            p.run(call_with, name, problem, timeout=30)
        errors = info.value.exceptions
        assert sorted(errors) == [0, 1, 2]
        own = "decay must lie in (0, 1]" if problem is decay_wrong_on_rank_2 else "v must have shape [B, H, C, V]"
        assert own in str(errors[2])
        assert all("rank [2] rejected its input" in str(errors[r]) for r in (0, 1))


REJECTED = r"rank \[1\] rejected its input"


@pytest.mark.parametrize(
    "name, problem, rank_1_says, the_others_say",
    [
        ("lasp1", bidirectional_on_rank_1, "LASP-1 is the causal ring", REJECTED),
        ("lasp2", bidirectional_on_rank_1, *["causal differs across ranks: rank 0: True, rank 1: False, rank 2: True"] * 2),
        ("lasp2", bidirectional_with_decay_on_rank_1, r"\(causal=False\) attention has no decay", REJECTED),
        ("lasp2", decay_on_rank_1_bidirectional, r"\(causal=False\) attention has no decay", REJECTED),
        ("prefix", prefix_on_rank_1, "prefix must be 'exclusive' or 'inclusive', got 'sideways'", REJECTED),
    ],
    ids=["lasp1-causal", "lasp2-causal", "lasp2-causal-with-decay", "lasp2-decay-bidirectional", "lasp2-prefix"],
)
def test_options_that_differ_on_one_rank_fail_every_rank_at_once(name, problem, rank_1_says, the_others_say):
    """Rank 1 alone passes ``causal=False`` or a decay LASP-1/LASP-2 cannot take with it, or an unknown
    prefix: these rules are checked inside the handshake, so every rank raises at once (none waits in
    a collective for the pool's grace period) and the ranks stay consistent (the pool is kept)."""
    p = pool(3)
    restarts = p.restarts
    t0 = time.monotonic()
    with pytest.raises(simdist.RankError) as info:
        p.run(call_prefix if name == "prefix" else call_with, name, problem, timeout=30)
    assert time.monotonic() - t0 < p.grace, "a rank waited for another that had already raised"
    errors = info.value.exceptions
    assert sorted(errors) == [0, 1, 2], "every rank must raise"
    assert all(isinstance(e, ValueError) for e in errors.values())
    assert re.search(rank_1_says, str(errors[1])), str(errors[1])
    assert all(re.search(the_others_say, str(errors[r])) for r in (0, 2)), [str(errors[r]) for r in (0, 2)]
    assert p.restarts == restarts and p.alive


def test_a_rank_outside_the_group_is_told_so():
    p = pool(3)
    with pytest.raises(simdist.RankError) as info:
        p.run(call_with, "lasp2", outside_the_group, timeout=30)
    assert info.value.rank == 2 and "not a member of the group" in str(info.value.exceptions[2])


def test_errors_without_ranks():
    q, k, v = _chunk()
    with pytest.raises(ValueError, match="LASP-1 is the causal ring"):
        simdist.lasp1.attention(q, k, v, causal=False)
    with pytest.raises(ValueError, match="bidirectional"):
        simdist.lasp2.attention(q, k, v, decay=[0.5, 0.5], causal=False)
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="process group"):
            simdist.lasp2.attention(q, k, v)


# --------------------------------------------------------------------------------------------
# GPUs (NCCL): the same schemes against one device, in float32 and bfloat16
# --------------------------------------------------------------------------------------------

GPU_TOL = {"float32": 5e-3, "bfloat16": 4e-2}  # relative; tf32 matmuls and bf16 storage


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nccl_schemes_equal_one_device(dtype):
    W = min(torch.cuda.device_count(), 4)
    if W < 2:
        pytest.skip("needs at least 2 GPUs")
    T = 256 * W
    q, k, v, do = verify.problem(1, 2, T, 64, 64, seed=0)
    q, k = q * 0.3, k * 0.3  # keep softmax logits and decayed sums in a well-conditioned range
    batch = [
        verify.Case("lasp1", q, k, v, do, decay=[0.99, 0.999]),
        verify.Case("lasp2", q, k, v, do, decay=[0.99, 0.999]),
        verify.Case("lasp2", q, k, v, do, causal=False, scale=1.0 / T),
        verify.Case("lasp2h", q, k, v, do),
        verify.Case("ring", q, k, v, do),
        verify.Case("lasp2", q, k, v, do, decay=[0.99, 0.999], lengths=[T // W - 16] + [T // W] * (W - 2) + [T // W + 16]),
    ]
    with simdist.Pool(W, backend="nccl", timeout=300) as gpus:
        results = verify.run(gpus, batch, dtype=dtype)
    for case, got in zip(batch, results):
        errs = verify.errors(got, verify.one_device(case))
        assert max(errs.values()) < GPU_TOL[dtype], f"{case.name} causal={case.causal}: {errs}"
        if case.name in ("lasp1", "lasp2") and case.causal:  # the kernel path ran on every rank
            assert all("kernel" in {s.label for s in rec.spans} for rec in got["records"]), case.name


def no_sync_rank_run(rank, world_size, C):
    """LASP-1 and LASP-2 forward + backward (bf16, TNL decays, lengths given as the benchmark does)
    with CUDA's sync debug mode set to "error": any host–device synchronisation raises."""
    from reference.lightning import tnl_decay
    from simdist import lasp1

    device = torch.device("cuda", torch.cuda.current_device())
    g = torch.Generator(device=device).manual_seed(rank)
    H, D = 4, 64
    q, k, v, do = (torch.randn(1, H, C, D, device=device, dtype=torch.bfloat16, generator=g) for _ in range(4))
    leaves = [x.requires_grad_() for x in (q, k, v)]
    decay = torch.as_tensor(tnl_decay(H))  # on the host, as a training loop keeps it
    lengths = [C] * world_size

    def steps():
        for fn in (lasp1.attention, lasp2.attention, kernel_path.attention):
            for x in leaves:
                x.grad = None
            if fn is kernel_path.attention:
                o = fn(*leaves, local.rates(decay), D**-0.5)
            else:
                o = fn(*leaves, decay=decay, scale=D**-0.5, lengths=lengths)
            o.backward(do)

    steps()  # first calls: kernels compile, caches fill, NCCL connects
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        steps()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return kernel_path.implementation(device, torch.bfloat16)


@pytest.mark.gpu
def test_nccl_kernel_path_never_synchronises_the_host():
    """The hot path of LASP-1 and LASP-2 on GPUs queues work without waiting for the GPU: no
    ``.item()``, no blocking copy of decay rates, no stream synchronisation (the benchmark's timing
    and a training loop both rely on the host running ahead)."""
    W = min(torch.cuda.device_count(), 4)
    if W < 2:
        pytest.skip("needs at least 2 GPUs")
    with simdist.Pool(W, backend="nccl", timeout=300) as gpus:
        impls = gpus.run(no_sync_rank_run, 4096)
    assert all(i.startswith("kernels.lightning.attention") for i in impls), impls
