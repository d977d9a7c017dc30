"""Linear attention: recurrent, parallel and chunked forms equal each other and a float64 oracle."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference import linear_attention as la
from tests import oracles
from tests.strategies import BACKENDS, chunk_sizes, dims, normal, qkv, rel_err, seeds, states, to_backend, to_numpy

TOL = 1e-9


@given(data=st.data(), backend=st.sampled_from(BACKENDS))
def test_every_form_equals_the_oracle(data, backend):
    d = data.draw(dims())
    q, k, v = data.draw(qkv(d))
    s0 = data.draw(states(d))
    scale = data.draw(st.sampled_from([1.0, 0.5, d.K ** -0.5]))
    chunk = data.draw(chunk_sizes(d.T))
    o_ref, s_ref = oracles.decayed_linear_attention(q, k, v, scale=scale, initial_state=s0)
    q_, k_, v_, s0_ = to_backend(backend, q, k, v, s0)

    o_rec, s_rec = la.recurrent(q_, k_, v_, scale=scale, initial_state=s0_)
    o_chk, s_chk = la.chunked(q_, k_, v_, scale=scale, chunk_size=chunk, initial_state=s0_)
    kind = np.ndarray if backend == "numpy" else torch.Tensor
    for out in (o_rec, s_rec, o_chk, s_chk):
        assert isinstance(out, kind)
    assert rel_err(o_rec, o_ref) < TOL and rel_err(s_rec, s_ref) < TOL
    assert rel_err(o_chk, o_ref) < TOL and rel_err(s_chk, s_ref) < TOL
    if s0 is None:  # the parallel form has no initial state
        assert rel_err(la.parallel(q_, k_, v_, scale=scale), o_ref) < TOL


@given(data=st.data(), backend=st.sampled_from(BACKENDS))
def test_bidirectional_parallel_equals_the_oracle(data, backend):
    d = data.draw(dims())
    q, k, v = data.draw(qkv(d))
    scale = data.draw(st.sampled_from([1.0, 0.5, d.K ** -0.5]))
    o_ref, _ = oracles.decayed_linear_attention(q, k, v, scale=scale, causal=False)
    out = la.parallel(*to_backend(backend, q, k, v), scale=scale, causal=False)
    assert rel_err(out, o_ref) < TOL


@given(data=st.data())
def test_gradients_of_every_form_equal_the_parallel_form(data):
    d = data.draw(dims(max_T=20))
    chunk = data.draw(chunk_sizes(d.T))
    q, k, v = to_backend("torch", *data.draw(qkv(d)), requires_grad=True)
    do = torch.from_numpy(normal(data.draw(seeds()), d.B, d.H, d.T, d.V))

    def grads(form):
        q.grad = k.grad = v.grad = None
        (form() * do).sum().backward()
        return [to_numpy(t.grad) for t in (q, k, v)]

    expected = grads(lambda: la.parallel(q, k, v, scale=0.5))
    for form in (lambda: la.recurrent(q, k, v, scale=0.5)[0], lambda: la.chunked(q, k, v, scale=0.5, chunk_size=chunk)[0]):
        for got, want in zip(grads(form), expected):
            assert rel_err(got, want) < TOL


@given(data=st.data())
def test_gradient_reaches_the_initial_state(data):
    """d(loss)/d(S_0) through the chunked form equals the recurrent form's."""
    d = data.draw(dims(max_T=12))
    q, k, v = to_backend("torch", *data.draw(qkv(d)))
    s0 = torch.from_numpy(normal(data.draw(seeds()), d.B, d.H, d.K, d.V)).requires_grad_()
    out = []
    for form in (la.recurrent, lambda *a, **kw: la.chunked(*a, chunk_size=3, **kw)):
        s0.grad = None
        o, s = form(q, k, v, initial_state=s0)
        (o.sum() + (s * s).sum()).backward()
        out.append(s0.grad.clone())
    assert rel_err(out[0], out[1]) < TOL


def test_float32_numpy_stays_float32():
    x = np.ones((1, 1, 3, 2), dtype=np.float32)
    o, s = la.chunked(x, x, x, chunk_size=2)
    assert o.dtype == np.float32 and s.dtype == np.float32
