"""Gated Linear Attention reference: every form, the manual backward, the gate, the layer, log-space safety."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference import gla, lightning, linear_attention
from tests import oracles
from tests.strategies import (
    BACKENDS,
    chunk_sizes,
    dims,
    log_gates,
    qkv,
    rel_err,
    states,
    sub_chunk_sizes,
    to_backend,
    to_numpy,
)

TOL = 1e-9


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@given(data=st.data(), backend=st.sampled_from(BACKENDS))
def test_every_form_equals_the_oracle(data, backend):
    """recurrent, parallel, chunked (both variants, any chunk and sub-chunk) = the defining sum."""
    d = data.draw(dims(max_T=33))
    q, k, v = data.draw(qkv(d))
    a = data.draw(log_gates(d, min_gate=1e-3))
    s0 = data.draw(states(d))
    chunk = data.draw(chunk_sizes(d.T))
    sub = data.draw(sub_chunk_sizes(chunk))
    scale = data.draw(st.sampled_from([1.0, 0.3]))
    o_ref, s_ref = oracles.gated_linear_attention(q, k, v, a, scale=scale, initial_state=s0)
    q_, k_, v_, a_, s0_ = to_backend(backend, q, k, v, a, s0)
    o_rec, s_rec = gla.recurrent(q_, k_, v_, a_, scale=scale, initial_state=s0_)
    assert rel_err(o_rec, o_ref) < TOL and rel_err(s_rec, s_ref) < TOL
    for materialize in (False, True):
        o_chk, s_chk = gla.chunked(
            q_, k_, v_, a_, scale=scale, chunk_size=chunk, sub_chunk=sub, initial_state=s0_, materialize=materialize
        )
        assert type(o_chk) is type(q_) and type(s_chk) is type(q_)
        assert rel_err(o_chk, o_ref) < TOL and rel_err(s_chk, s_ref) < TOL
    if s0 is None:
        assert rel_err(gla.parallel(q_, k_, v_, a_, scale=scale), o_ref) < TOL


@given(data=st.data())
def test_materialised_and_non_materialised_agree_exactly_in_structure(data):
    """The two FlashLinearAttention variants, and the states they pass between chunks, are the same."""
    d = data.draw(dims(max_T=40))
    q, k, v = data.draw(qkv(d))
    a = data.draw(log_gates(d))
    s0 = data.draw(states(d))
    chunk = data.draw(chunk_sizes(d.T))
    o1, s1 = gla.chunked(q, k, v, a, chunk_size=chunk, initial_state=s0, materialize=False)
    o2, s2 = gla.chunked(q, k, v, a, chunk_size=chunk, initial_state=s0, materialize=True)
    assert rel_err(o1, o2) < 1e-12 and rel_err(s1, s2) < 1e-12
    # chunk_states: entry i is the recurrence's state after the first i·C tokens.
    all_states = gla.chunk_states(k, v, a, chunk_size=chunk, initial_state=s0)
    n = -(-d.T // chunk)
    assert all_states.shape == (d.B, d.H, n + 1, d.K, d.V)
    for i in (0, n // 2, n):
        t = min(i * chunk, d.T)
        expected = s0 if s0 is not None else np.zeros((d.B, d.H, d.K, d.V))
        if t > 0:
            _, expected = gla.recurrent(q[..., :t, :], k[..., :t, :], v[..., :t, :], a[..., :t, :], initial_state=s0)
        assert rel_err(all_states[:, :, i], expected) < TOL


@given(data=st.data(), backend=st.sampled_from(BACKENDS))
def test_chunked_backward_equals_autograd_of_the_recurrent_form(data, backend):
    """dq, dk, dv, d log_alpha and d initial_state of Algorithm-style tiling = autograd of the recurrence."""
    d = data.draw(dims(max_T=30))
    q, k, v = data.draw(qkv(d))
    a = data.draw(log_gates(d, min_gate=1e-3))
    chunk = data.draw(chunk_sizes(d.T))
    sub = data.draw(sub_chunk_sizes(chunk))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    s0, ds = rng.standard_normal((2, d.B, d.H, d.K, d.V))
    do = rng.standard_normal((d.B, d.H, d.T, d.V))
    leaves = to_backend("torch", q, k, v, a, s0, requires_grad=True)
    o, s = gla.recurrent(*leaves[:4], scale=0.7, initial_state=leaves[4])
    ((o * torch.from_numpy(do)).sum() + (s * torch.from_numpy(ds)).sum()).backward()
    grads = gla.chunked_backward(
        *to_backend(backend, q, k, v, a, do), scale=0.7, chunk_size=chunk, sub_chunk=sub,
        initial_state=to_backend(backend, s0)[0], d_final_state=to_backend(backend, ds)[0],
        return_initial_state_grad=True,
    )  # fmt: skip
    for name, got, leaf in zip(("dq", "dk", "dv", "dlog_alpha", "d_initial_state"), grads, leaves):
        assert rel_err(got, leaf.grad) < TOL, name


@given(data=st.data())
def test_autograd_through_the_chunked_forms_equals_the_recurrent_form(data):
    """Gradients through both chunked variants (log-space rescaling, clipped exponents) = the recurrence's."""
    d = data.draw(dims(max_T=24))
    q, k, v = data.draw(qkv(d))
    a = data.draw(log_gates(d, min_gate=1e-3))
    chunk = data.draw(chunk_sizes(d.T))
    sub = data.draw(sub_chunk_sizes(chunk))
    leaves = to_backend("torch", q, k, v, a, requires_grad=True)
    do = torch.from_numpy(np.random.default_rng(5).standard_normal((d.B, d.H, d.T, d.V)))

    def grads(o):
        for x in leaves:
            x.grad = None
        (o * do).sum().backward()
        return [to_numpy(x.grad) for x in leaves]

    want = grads(gla.recurrent(*leaves)[0])
    for materialize in (False, True):
        got = grads(gla.chunked(*leaves, chunk_size=chunk, sub_chunk=sub, materialize=materialize)[0])
        for name, g, w in zip(("dq", "dk", "dv", "dlog_alpha"), got, want):
            assert rel_err(g, w) < TOL, name
    got = grads(gla.parallel(*leaves))
    for name, g, w in zip(("dq", "dk", "dv", "dlog_alpha"), got, want):
        assert rel_err(g, w) < TOL, name


@given(data=st.data(), backend=st.sampled_from(BACKENDS))
def test_extreme_gates_no_exponent_is_ever_positive(data, backend):
    """Gates down to e^-100 per step, in float64: a chunk of 64 spans e^-6400.

    Any exponent formed with the wrong sign (``e^{−b}``, or a rescaling point on the wrong side of a
    sub-block) would overflow float64 (``e^{709}``) and turn the output into inf/NaN. Every form,
    and the chunked gradients, must stay finite and equal the oracle.
    """
    d = data.draw(dims(min_T=17, max_T=40, max_K=4, max_V=4))
    q, k, v = data.draw(qkv(d))
    a = -np.random.default_rng(data.draw(st.integers(0, 2**16))).uniform(0, 100, (d.B, d.H, d.T, d.K))
    chunk = data.draw(st.sampled_from([16, 32, 64]))
    o_ref, s_ref = oracles.gated_linear_attention(q, k, v, a)
    q_, k_, v_, a_ = to_backend(backend, q, k, v, a)
    for o in (gla.parallel(q_, k_, v_, a_), gla.chunked(q_, k_, v_, a_, chunk_size=chunk)[0]):
        assert rel_err(o, o_ref) < TOL
    do = np.ones((d.B, d.H, d.T, d.V))
    grads = gla.chunked_backward(q_, k_, v_, a_, *to_backend(backend, do), chunk_size=chunk)
    assert all(np.isfinite(to_numpy(g)).all() for g in grads)


def test_sub_chunk_sizes_that_do_not_divide_the_chunk():
    """Sub-chunks tile a chunk from its start; a size that does not divide it leaves a shorter last one."""
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 1, 2, 45, 6))
    v = rng.standard_normal((1, 2, 45, 5))
    a = np.log(rng.uniform(1e-3, 1.0, (1, 2, 45, 6)))
    want, _ = gla.recurrent(q, k, v, a)
    for chunk, sub in [(20, 7), (20, 20), (20, 64), (16, 16), (45, 1), (64, 16), (13, 5)]:
        got, _ = gla.chunked(q, k, v, a, chunk_size=chunk, sub_chunk=sub)
        assert rel_err(got, want) < TOL, (chunk, sub)


@given(data=st.data())
def test_gate_of_one_is_linear_attention_and_a_constant_gate_is_lightning(data):
    d = data.draw(dims(max_T=30))
    q, k, v = data.draw(qkv(d))
    chunk = data.draw(chunk_sizes(d.T))
    zeros = np.zeros((d.B, d.H, d.T, d.K))
    o1, s1 = gla.chunked(q, k, v, zeros, chunk_size=chunk)
    o2, s2 = linear_attention.chunked(q, k, v, chunk_size=chunk)
    assert rel_err(o1, o2) < TOL and rel_err(s1, s2) < TOL
    lam = np.linspace(0.4, 0.99, d.H)
    const = np.broadcast_to(np.log(lam)[None, :, None, None], zeros.shape).copy()
    o3, s3 = gla.chunked(q, k, v, const, chunk_size=chunk)
    o4, s4 = lightning.chunked(q, k, v, lam, chunk_size=chunk)
    assert rel_err(o3, o4) < TOL and rel_err(s3, s4) < TOL


def test_float32_long_sequence_small_gates_chunked_is_finite_factorised_overflows():
    """T = 4096 in float32 with gates α ∈ [0.5, 0.9]: b falls to about −1400.

    The factorised form ``((Q ⊙ e^b)(K ⊙ e^{−b})ᵀ ⊙ M) V`` needs ``e^{1400}`` and overflows (inf, then
    NaN from inf · 0); the chunked form only ever exponentiates differences ≤ 0 and stays finite, its
    gradients too, and agrees with float64.
    """
    g = torch.Generator().manual_seed(0)
    B, H, T, K, V = 1, 1, 4096, 8, 8
    q, k, v = (torch.randn(B, H, T, d, generator=g) for d in (K, K, V))
    a = torch.log(torch.rand(B, H, T, K, generator=g) * 0.4 + 0.5)
    assert a.cumsum(-2).min() < -1000

    naive = gla.parallel_factorised(q, k, v, a)
    assert not torch.isfinite(naive).all(), "the factorised form was expected to overflow in float32"

    leaves = [x.clone().requires_grad_() for x in (q, k, v, a)]
    o, s = gla.chunked(*leaves, chunk_size=64, sub_chunk=16)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    o.square().mean().backward()
    assert all(torch.isfinite(x.grad).all() for x in leaves)

    o64, s64 = gla.chunked(*(x.double() for x in (q, k, v, a)), chunk_size=64, sub_chunk=16)
    assert rel_err(o, o64) < 1e-5 and rel_err(s, s64) < 1e-5


def test_gate_definition():
    """log α = logsigmoid(x W₁ W₂ + b)/τ: α = σ(z)^(1/τ), which is not σ(z/τ)."""
    rng = np.random.default_rng(0)
    B, T, d, r, H, K = 2, 5, 12, 16, 3, 4
    x = rng.standard_normal((B, T, d))
    w1 = rng.standard_normal((d, r)) / np.sqrt(d)
    w2 = rng.standard_normal((r, H, K)) / np.sqrt(r)
    b = rng.standard_normal((H, K))
    la = gla.gate(x, w1, w2, b, tau=16)
    assert la.shape == (B, H, T, K)
    z = np.einsum("btd,dr,rhk->bhtk", x, w1, w2) + b[None, :, None, :]
    sigma = 1.0 / (1.0 + np.exp(-z))
    assert np.allclose(np.exp(la), sigma ** (1 / 16), rtol=1e-12, atol=0)
    # at z = 0: 0.5^(1/16) ≈ 0.958, not σ(0/16) = 0.5
    zero = gla.gate(x, np.zeros((d, r)), np.zeros((r, K)), np.zeros(K), tau=16)
    assert zero.shape == (B, 1, T, K)
    assert np.allclose(np.exp(zero), 0.5 ** (1 / 16)) and abs(np.exp(zero[0, 0, 0, 0]) - 0.958) < 1e-3
    # huge pre-activations stay finite and ≤ 0; torch in gives torch out, with gradients
    big = gla.gate(x * 1e4, w1, w2, b)
    assert np.isfinite(big).all() and (big <= 0).all()
    xt, w1t, w2t, bt = to_backend("torch", x, w1, w2, b, requires_grad=True)
    lt = gla.gate(xt, w1t, w2t, bt)
    assert isinstance(lt, torch.Tensor) and np.allclose(to_numpy(lt), la, atol=1e-14)
    lt.sum().backward()
    assert torch.isfinite(w1t.grad).all()


def test_layer_runs_and_the_no_gate_baseline_has_unit_gates():
    torch.manual_seed(0)
    x = torch.randn(2, 37, 32)
    layer = gla.GLALayer(32, 2)
    assert (layer.key_dim, layer.value_dim, layer.head_k, layer.head_v) == (16, 32, 8, 16)
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert layer.gate_down.weight.grad is not None and layer.gate_down.weight.grad.abs().sum() > 0
    # the layer with the recurrent form gives the same output
    rec = gla.GLALayer(32, 2, attention=gla.recurrent)
    rec.load_state_dict(layer.state_dict())
    assert torch.allclose(rec(x), layer(x), atol=1e-5)
    base = gla.GLALayer(32, 2, use_gate=False)
    assert torch.equal(base.log_alpha(x), torch.zeros(2, 2, 37, 8))
    # the initial gate is close to 1 (σ(z)^(1/16) with z ≈ 0): the layer starts out remembering
    assert torch.exp(layer.log_alpha(x)).mean() > 0.9
