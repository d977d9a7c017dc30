"""Softmax attention reference: the packaged property suite (NumPy and torch), the log-sum-exp, the
online-softmax step and dtypes.

Every property of ``reference.testing.suites.softmax`` (naive and tiled against the float64 oracle
and each other, gradients, large logits, bad inputs) runs here against ``reference.softmax_attention``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given

from reference import softmax_attention as sa
from reference.testing.checks import Target
from reference.testing.strategies import BACKENDS, rel_err, softmax_cases, to_backend
from reference.testing.suites import softmax as suite

TOL = 1e-9
IMPLS = [Target(sa, backend=b, name=f"reference.softmax_attention[{b}]") for b in BACKENDS]


@pytest.mark.parametrize(
    "prop, impl",
    [pytest.param(p, i, id=f"{p.name}[{i.BACKEND}]") for p in suite.PROPERTIES for i in IMPLS if p.applies_to(i)],
)
def test_suite(prop, impl):
    prop.check(impl)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=softmax_cases())
def test_tiled_lse_and_the_library_of_the_result(backend, case):
    """``return_lse``: the log of the softmax denominator, against the scores directly; NumPy in gives
    NumPy out, torch in gives torch out."""
    a = case.arrays()
    q_, k_, v_ = to_backend(backend, a["q"], a["k"], a["v"])
    naive = sa.naive(q_, k_, v_, causal=case.causal, scale=case.scale)
    tiled, lse = sa.tiled(
        q_, k_, v_, causal=case.causal, scale=case.scale, block_q=case.chunk_size, block_k=case.block_k, return_lse=True
    )
    kind = np.ndarray if backend == "numpy" else torch.Tensor
    assert isinstance(naive, kind) and isinstance(tiled, kind) and isinstance(lse, kind)
    Tk = case.keys
    s = (case.scale if case.scale is not None else case.K ** -0.5) * np.einsum("bhik,bhjk->bhij", a["q"], a["k"])
    if case.causal:
        s = np.where(np.arange(case.T)[:, None] + Tk - case.T >= np.arange(Tk)[None, :], s, -np.inf)
    ref_lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
    assert rel_err(lse, ref_lse) < TOL


def test_online_softmax_update_keeps_unseen_rows_at_zero():
    """A row that has seen only masked scores stays (m=-inf, l=0, acc=0), never NaN."""
    import array_api_compat.numpy as xp

    m = np.full((2, 1), -np.inf)
    l = np.zeros((2, 1))
    acc = np.zeros((2, 3))
    scores = np.array([[-np.inf, -np.inf], [0.5, -np.inf]])
    m, l, acc = sa.online_softmax_update(xp, m, l, acc, scores, np.ones((2, 3)))
    assert np.isneginf(m[0, 0]) and l[0, 0] == 0 and np.all(acc[0] == 0)
    assert m[1, 0] == 0.5 and l[1, 0] == 1.0 and np.allclose(acc[1], 1.0)


def test_causal_rejects_more_queries_than_keys():
    q = np.zeros((1, 1, 5, 2))
    k = v = np.ones((1, 1, 4, 2))
    with pytest.raises(ValueError, match="at least as many keys as queries"):
        sa.naive(q, k, v)
    with pytest.raises(ValueError, match="at least as many keys as queries"):
        sa.tiled(q, k, v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_stays_float32(backend):
    (x,) = to_backend(backend, np.ones((1, 2, 5, 3), dtype=np.float32))
    for o in (sa.naive(x, x, x), *sa.tiled(x, x, x, block_q=2, block_k=3, return_lse=True)):
        assert str(o.dtype).endswith("float32"), o.dtype
