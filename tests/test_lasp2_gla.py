"""LASP-2 with GLA's gates (``simdist.lasp2.attention(..., log_alpha=)``) on gloo ranks equals one device (float64).

The chunk states decay per key row: ``P_{s+1} = Diag(γ_s) P_s + M_s``. Outputs and the gradients of
q, k, v *and* the gates are compared with ``reference.gla.recurrent`` on the whole sequence
(autograd), for W = 1..4 ranks, unequal chunks and strong gates; the messages are one AllGather
each way; bad gates fail on every rank.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import simdist
from reference import gla
from simdist import accounting, lasp2

TOL = 1e-11


def problem(B, H, T, K, V, *, seed, strength):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, H, T, K, generator=g, dtype=torch.float64), torch.randn(B, H, T, K, generator=g, dtype=torch.float64)
    v, do = torch.randn(B, H, T, V, generator=g, dtype=torch.float64), torch.randn(B, H, T, V, generator=g, dtype=torch.float64)
    log_alpha = -strength * torch.rand(B, H, T, K, generator=g, dtype=torch.float64)
    return q, k, v, log_alpha, do


def one_device(q, k, v, log_alpha, do, scale):
    leaves = [x.clone().requires_grad_() for x in (q, k, v, log_alpha)]
    o, _ = gla.recurrent(*leaves, scale=scale)
    o.backward(do)
    return o.detach(), [x.grad for x in leaves]


def rank_run(rank, world_size, q, k, v, log_alpha, do, lengths, scale):
    torch.set_num_threads(1)
    start = sum(lengths[:rank])
    sl = slice(start, start + lengths[rank])
    leaves = [x[:, :, sl].clone().requires_grad_() for x in (q, k, v, log_alpha)]
    accounting.reset()
    o = lasp2.attention(*leaves[:3], log_alpha=leaves[3], scale=scale)
    o.backward(do[:, :, sl])
    gathers = [e.label for e in accounting.snapshot().events if e.op == "all_gather" and e.kind == "data"]
    return o.detach(), [x.grad for x in leaves], gathers


def lengths_for(T, W, draw_cuts):
    cuts = sorted(draw_cuts)
    bounds = [0, *cuts, T]
    return [b - a for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=10)
@given(
    W=st.integers(1, 4),
    extra=st.integers(0, 6),
    B=st.integers(1, 2),
    H=st.integers(1, 2),
    K=st.integers(1, 5),
    V=st.integers(1, 4),
    strength=st.sampled_from([0.05, 1.0, 6.0]),
    scale=st.sampled_from([1.0, 0.5]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_lasp2_with_gates_equals_one_device(W, extra, B, H, K, V, strength, scale, seed, data):
    T = W + extra
    cuts = data.draw(st.lists(st.integers(1, T - 1), min_size=W - 1, max_size=W - 1, unique=True)) if W > 1 else []
    lengths = lengths_for(T, W, cuts)
    q, k, v, log_alpha, do = problem(B, H, T, K, V, seed=seed, strength=strength)
    want_o, want_grads = one_device(q, k, v, log_alpha, do, scale)
    out = simdist.shared_pool(W, timeout=120).run(rank_run, q, k, v, log_alpha, do, lengths, scale)
    got_o = torch.cat([o for o, _, _ in out], dim=2)
    torch.testing.assert_close(got_o, want_o, rtol=0, atol=TOL)
    for i, name in enumerate(["q", "k", "v", "log_alpha"]):
        got = torch.cat([grads[i] for _, grads, _ in out], dim=2)
        torch.testing.assert_close(got, want_grads[i], rtol=0, atol=TOL, msg=f"d{name}, lengths {lengths}")
    for _, _, gathers in out:  # LASP-2: one AllGather forward (states and gates together), one backward
        assert gathers == ([] if W == 1 else ["M, gates", "dP"])


def bad_gates(rank, world_size, which):
    q = torch.randn(1, 1, 3, 2, dtype=torch.float64)
    la = -torch.rand(1, 1, 3, 2, dtype=torch.float64)
    if which == "positive" and rank == 1:
        la = la + 1.0
    kwargs = {"log_alpha": la}
    if which == "bidirectional":
        kwargs["causal"] = False
    if which == "decay":
        kwargs["decay"] = [0.5]
    try:
        lasp2.attention(q, q, q, **kwargs)
    except ValueError as err:
        return str(err)
    return "no error"


@pytest.mark.parametrize("which, message", [("positive", "≤ 0"), ("bidirectional", "causal=True"), ("decay", "not both")])
def test_bad_gates_fail_on_every_rank(which, message):
    out = simdist.shared_pool(2, timeout=120).run(bad_gates, which)
    assert all(m != "no error" for m in out), out
    assert any(message in m for m in out), out
