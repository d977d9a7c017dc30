"""Gated Linear Attention reference: the packaged property suite (NumPy and torch, every chunked
variant), the options outside the contract, the gate, the layer, log-space safety in float32.

Every property of ``reference.testing.suites.gla`` (forms against the float64 oracle and each
other, gradients including ``d log_alpha``, the manual backward, odd lengths, tiny gates, the gate's
definition, bad inputs) runs here against ``reference.gla`` — the chunked properties once per
variant (sub-chunk sizes that do and do not divide the chunk, materialised or not).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference import gla, lightning, linear_attention
from reference.testing.checks import Target
from reference.testing.strategies import (
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
from reference.testing.suites import gla as suite

TOL = 1e-9


pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMPLS = [Target(gla, backend=b, name=f"reference.gla[{b}]") for b in BACKENDS]
# The chunked forms' options, each a variant the chunked properties run against as well.
# (The default, sub_chunk=16 and not materialised, is IMPLS.)
VARIANTS = [(2, True, "torch"), (5, False, "numpy")]  # (sub_chunk, materialize, backend)
CHUNKED_IMPLS = [
    Target(
        gla, backend=b, name=f"reference.gla[{b}, sub_chunk={sub}, materialize={m}]",
        chunked=functools.partial(gla.chunked, sub_chunk=sub, materialize=m),
        chunked_backward=functools.partial(gla.chunked_backward, sub_chunk=sub),
    )
    for sub, m, b in VARIANTS
]  # fmt: skip
PARAMS = [pytest.param(p, i, id=f"{p.name}[{i.BACKEND}]") for p in suite.PROPERTIES for i in IMPLS if p.applies_to(i)]
PARAMS += [
    pytest.param(p, i, id=f"{p.name}[{i.BACKEND}-sub{i.chunked.keywords['sub_chunk']}-mat{int(i.chunked.keywords['materialize'])}]")
    for p in suite.PROPERTIES
    for i in CHUNKED_IMPLS
    if p.applies_to(i) and any(fn.startswith("chunked") for fn in p.needs) and "bad_inputs" not in p.name
]


@pytest.mark.parametrize("prop, impl", PARAMS)
def test_suite(prop, impl):
    prop.check(impl)


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
def test_chunked_backward_with_states_and_sub_chunks_equals_autograd(data, backend):
    """The options outside the contract: an initial state, a gradient on the final state, any sub-chunk —
    dq, dk, dv, d log_alpha and d initial_state still equal autograd of the recurrence."""
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


def test_gate_single_head_large_inputs_and_torch():
    """The gate's definition is a suite property; here: ``w2: [r, K]`` gives one head, huge
    pre-activations stay finite and ≤ 0, torch in gives torch out with gradients."""
    rng = np.random.default_rng(0)
    B, T, d, r, H, K = 2, 5, 12, 16, 3, 4
    x = rng.standard_normal((B, T, d))
    w1 = rng.standard_normal((d, r)) / np.sqrt(d)
    w2 = rng.standard_normal((r, H, K)) / np.sqrt(r)
    b = rng.standard_normal((H, K))
    la = gla.gate(x, w1, w2, b, tau=16)
    assert la.shape == (B, H, T, K)
    # at z = 0: 0.5^(1/16) ≈ 0.958, not σ(0/16) = 0.5
    zero = gla.gate(x, np.zeros((d, r)), np.zeros((r, K)), np.zeros(K), tau=16)
    assert zero.shape == (B, 1, T, K)
    assert np.allclose(np.exp(zero), 0.5 ** (1 / 16)) and abs(np.exp(zero[0, 0, 0, 0]) - 0.958) < 1e-3
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
