"""Properties of linear attention (``reference.linear_attention``'s contract; ``docs/linear_attention.md``).

Contract functions::

    recurrent(q, k, v, *, scale=1.0, initial_state=None) -> (o, S)
    parallel(q, k, v, *, scale=1.0, causal=True) -> o
    chunked(q, k, v, *, scale=1.0, chunk_size=64, initial_state=None) -> (o, S)

The shared properties of the linear family (``_family``), plus the bidirectional parallel form and
the gradient that reaches the initial state.
"""

from __future__ import annotations

import numpy as np
from hypothesis import example, given

from reference.testing import oracles
from reference.testing.checks import assert_close, inputs, tolerance
from reference.testing.strategies import Case, cases, to_numpy
from reference.testing.suites import _family
from reference.testing.suites._base import Property, configured, registrar

ALGORITHM = "linear"
CONTRACT = ("recurrent", "parallel", "chunked")
PROPERTIES: list[Property] = []
prop = registrar(PROPERTIES)

EXAMPLE = Case(B=1, H=2, T=7, K=3, V=3, seed=0, chunk_size=3, scale=0.5, initial_state=True)


def _oracle(a, case, with_state):
    s0 = a["initial_state"] if with_state else None
    return oracles.decayed_linear_attention(a["q"], a["k"], a["v"], scale=case.scale, initial_state=s0)


def _oracle_grads(a, case):
    return oracles.decayed_linear_attention_grads(a["q"], a["k"], a["v"], None, a["do"], scale=case.scale)


FAMILY = _family.Family(
    extra=None,
    oracle=_oracle,
    oracle_grads=_oracle_grads,
    cases=lambda **kw: cases(**kw),
    example=EXAMPLE,
)
_family.register(prop, FAMILY)


@prop("parallel")
def parallel_bidirectional_equals_the_oracle(impl):
    """``parallel(..., causal=False)``: every token sees every token, ``O = Q (Kᵀ V)``."""
    tol = tolerance(impl, _family.TOL)

    @configured
    @example(case=EXAMPLE)
    @given(case=cases(initial_state=False))
    def run(case):
        a = case.arrays()
        q, k, v = inputs(impl, a["q"], a["k"], a["v"])
        want, _ = oracles.decayed_linear_attention(a["q"], a["k"], a["v"], scale=case.scale, causal=False)
        got = impl.parallel(q, k, v, scale=case.scale, causal=False)
        assert_close(got, want, tol=tol, what="parallel(causal=False) vs the float64 oracle", case=case)

    run()


@prop("chunked", "recurrent", backends=("torch",))
def initial_state_gradient_reaches_chunked(impl):
    """The gradient with respect to the initial state through ``chunked`` equals the one through ``recurrent``."""
    tol = tolerance(impl, _family.TOL)

    @configured
    @example(case=EXAMPLE)
    @given(case=cases(max_T=12))
    def run(case):
        a = case.arrays()
        q, k, v = inputs(impl, a["q"], a["k"], a["v"])
        grads = []
        for form, kw in (("recurrent", {}), ("chunked", {"chunk_size": case.chunk_size})):
            (s0,) = inputs(impl, _state(case), requires_grad=True)
            o, s = getattr(impl, form)(q, k, v, scale=case.scale, initial_state=s0, **kw)
            (o.sum() + (s * s).sum()).backward()
            grads.append(to_numpy(s0.grad))
        assert_close(grads[1], grads[0], tol=tol, what="d(initial_state) through chunked vs through recurrent", name="d initial_state", case=case)

    run()


def _state(case):
    return np.random.default_rng(case.seed + 7).standard_normal((case.B, case.H, case.K, case.V))


# Poisoned tokens: causality bit for bit (reference.testing.suites._adversarial).
from reference.testing.suites import _adversarial  # noqa: E402

_adversarial.register(prop, FAMILY)
