"""Lightning Attention-2 reference: the packaged property suite (NumPy and torch), Algorithm 2's
state options, and the decay rules.

Every property of ``reference.testing.suites.lightning`` (forms against the float64 oracles and each
other, gradients, the manual backward, odd lengths, strong decays, bad inputs) runs here against
``reference.lightning``; the tests below are about options and rules outside the contract.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference import lightning, linear_attention
from reference.testing.checks import Target
from reference.testing.strategies import BACKENDS, chunk_sizes, decays, dims, qkv, rel_err, to_backend
from reference.testing.suites import lightning as suite

TOL = 1e-9
IMPLS = [Target(lightning, backend=b, name=f"reference.lightning[{b}]") for b in BACKENDS]


@pytest.mark.parametrize(
    "prop, impl",
    [pytest.param(p, i, id=f"{p.name}[{i.BACKEND}]") for p in suite.PROPERTIES for i in IMPLS if p.applies_to(i)],
)
def test_suite(prop, impl):
    prop.check(impl)


@given(data=st.data())
def test_chunked_backward_with_states_equals_autograd(data):
    """With an initial state and a gradient on the final state, Algorithm 2 still matches autograd."""
    d = data.draw(dims(max_T=20))
    q, k, v = data.draw(qkv(d))
    decay = data.draw(decays(d.H))
    chunk = data.draw(chunk_sizes(d.T))
    rng = np.random.default_rng(3)
    s0, ds = rng.standard_normal((2, d.B, d.H, d.K, d.V))
    do = rng.standard_normal((d.B, d.H, d.T, d.V))
    qt, kt, vt, s0t = to_backend("torch", q, k, v, s0, requires_grad=True)
    o, s = lightning.recurrent(qt, kt, vt, decay, initial_state=s0t)
    ((o * torch.from_numpy(do)).sum() + (s * torch.from_numpy(ds)).sum()).backward()
    grads = lightning.chunked_backward(
        q, k, v, decay, do, chunk_size=chunk, initial_state=s0, d_final_state=ds, return_initial_state_grad=True
    )
    for got, want in zip(grads, (qt.grad, kt.grad, vt.grad, s0t.grad)):
        assert rel_err(got, want) < TOL


@given(data=st.data())
def test_no_decay_is_linear_attention(data):
    d = data.draw(dims())
    q, k, v = data.draw(qkv(d))
    chunk = data.draw(chunk_sizes(d.T))
    ones = np.ones(d.H)
    o1, s1 = lightning.chunked(q, k, v, ones, chunk_size=chunk)
    o2, s2 = linear_attention.chunked(q, k, v, chunk_size=chunk)
    assert rel_err(o1, o2) < TOL and rel_err(s1, s2) < TOL


@pytest.mark.parametrize("form", ["parallel", "recurrent", "chunked"])
def test_decay_may_be_a_tensor_with_gradient(form):
    """With torch inputs the decay may be a tensor requiring grad: every form is differentiable in λ."""
    rng = np.random.default_rng(2)
    q, k, v = (torch.from_numpy(rng.standard_normal((1, 2, 7, 3))) for _ in range(3))
    lam = torch.tensor([0.6, 0.9], dtype=torch.float64, requires_grad=True)
    run = {
        "parallel": lambda lam: lightning.parallel(q, k, v, lam),
        "recurrent": lambda lam: lightning.recurrent(q, k, v, lam)[0],
        "chunked": lambda lam: lightning.chunked(q, k, v, lam, chunk_size=3)[0],
    }[form]
    torch.autograd.gradcheck(run, (lam,))


def test_decay_is_not_rounded_to_a_16_bit_input_dtype():
    """0.999 is 1.0 in bfloat16: the rates must be powered precisely and rounded once, as factors."""
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal((1, 2, 256, 8)) for _ in range(3)]
    decay = [0.999, 0.9999]
    exact = lightning.parallel(*arrays, decay)
    for dtype, tol in ((torch.bfloat16, 3e-2), (torch.float16, 3e-3)):
        q, k, v = (torch.tensor(a, dtype=dtype) for a in arrays)
        for o in (lightning.parallel(q, k, v, decay), lightning.chunked(q, k, v, decay, chunk_size=64)[0]):
            assert o.dtype == dtype
            assert rel_err(o, exact) < tol, (dtype, rel_err(o, exact))


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_stays_float32(backend):
    x = np.ones((1, 2, 5, 3), dtype=np.float32)
    (q,) = to_backend(backend, x)
    decay = np.array([0.5, 0.9])  # float64 rates must not promote float32 inputs
    outs = [lightning.parallel(q, q, q, decay), *lightning.recurrent(q, q, q, decay), *lightning.chunked(q, q, q, decay, chunk_size=2)]
    outs += list(lightning.chunked_backward(q, q, q, decay, q, chunk_size=2))
    outs.append(lightning.decay_mask(decay.astype(np.float32), 4))
    for o in outs:
        assert str(o.dtype).endswith("float32"), o.dtype


def test_d_final_state_alone_reaches_the_gradients():
    """A gradient on the final state only (no output gradient, no initial state) still matches autograd."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 2, 9, 3)) for _ in range(3))
    ds = rng.standard_normal((1, 2, 3, 3))
    qt, kt, vt = to_backend("torch", q, k, v, requires_grad=True)
    _, s = lightning.recurrent(qt, kt, vt, [0.5, 0.8])
    (s * torch.from_numpy(ds)).sum().backward()
    grads = lightning.chunked_backward(q, k, v, [0.5, 0.8], np.zeros((1, 2, 9, 3)), chunk_size=4, d_final_state=ds)
    assert len(grads) == 3
    assert qt.grad is None and np.all(grads[0] == 0)  # the state does not depend on q
    for got, want in zip(grads[1:], (kt.grad, vt.grad)):
        assert rel_err(got, want) < TOL


def test_tnl_decay_rules():
    # Power of two: s_h = 2^(-8h/H) for h = 1..H.
    H = 8
    expected = np.exp(-(2.0 ** (-8.0 * np.arange(1, H + 1) / H)))
    assert np.allclose(lightning.tnl_decay(H), expected, rtol=0, atol=1e-15)
    # Not a power of two: ALiBi's interleaving rule (the 4 slopes of H=4, then every other slope of H=8).
    s4 = 2.0 ** (-8.0 * np.arange(1, 5) / 4)
    s8 = 2.0 ** (-8.0 * np.arange(1, 9) / 8)
    assert np.allclose(lightning.tnl_decay(6), np.exp(-np.concatenate([s4, s8[0::2][:2]])), atol=1e-15)
    # Per-layer scaling s_h · (1 - l/(L-1) + 1e-5): exact at the first, a middle and the last layer.
    s4 = 2.0 ** (-8.0 * np.arange(1, 5) / 4)
    for layer, factor in ((0, 1 + 1e-5), (2, 1 - 2 / 4 + 1e-5), (4, 1e-5)):
        got = lightning.tnl_decay(4, layer_idx=layer, num_layers=5)
        assert np.allclose(got, np.exp(-s4 * factor), rtol=0, atol=1e-15), layer
    # fla's rule: linear in the head index, head 0 undecayed.
    fla = lightning.tnl_decay(4, layer_idx=1, num_layers=2, rule="fla")
    assert np.allclose(np.log(fla), -(8 / 4) * 0.5 * np.arange(4), atol=1e-15)
    assert fla[0] == 1.0
