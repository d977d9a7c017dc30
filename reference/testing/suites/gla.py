"""Properties of Gated Linear Attention (``reference.gla``'s contract; ``docs/gla.md``).

Contract functions::

    recurrent(q, k, v, log_alpha, *, scale=1.0, initial_state=None) -> (o, S)
    parallel(q, k, v, log_alpha, *, scale=1.0) -> o
    chunked(q, k, v, log_alpha, *, scale=1.0, chunk_size=64, initial_state=None) -> (o, S)
    chunked_backward(q, k, v, log_alpha, do, *, scale=1.0, chunk_size=64) -> (dq, dk, dv, dlog_alpha)
    gate(x, w1, w2, b, *, tau=16) -> log_alpha

The shared properties of the linear family (``_family``) with log-space gates whose per-step ``α``
reach down to 1e-3, plus tiny gates (down to ``e^-100`` per step) and the gate's definition.
"""

from __future__ import annotations

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from reference.testing import oracles
from reference.testing.checks import assert_close, inputs, tolerance
from reference.testing.strategies import Case, cases, seeds
from reference.testing.suites import _family
from reference.testing.suites._base import Property, configured, registrar

ALGORITHM = "gla"
CONTRACT = ("recurrent", "parallel", "chunked", "chunked_backward", "gate")
PROPERTIES: list[Property] = []
prop = registrar(PROPERTIES)

# Gates down to 0.05 per step; 7 tokens in chunks of 3; K = V so a gate on the wrong axis still runs.
EXAMPLE = Case(B=1, H=2, T=7, K=3, V=3, seed=0, chunk_size=3, scale=0.5, min_gate=0.05, initial_state=True)


def _oracle(a, case, with_state):
    s0 = a["initial_state"] if with_state else None
    return oracles.gated_linear_attention(a["q"], a["k"], a["v"], a["log_alpha"], scale=case.scale, initial_state=s0)


def _oracle_grads(a, case):
    return oracles.gated_linear_attention_grads(a["q"], a["k"], a["v"], a["log_alpha"], a["do"], scale=case.scale)


FAMILY = _family.Family(
    extra="log_alpha",
    oracle=_oracle,
    oracle_grads=_oracle_grads,
    cases=lambda **kw: cases(gates=True, **{"max_T": 33, **kw}),
    example=EXAMPLE,
    regime="gates down to α = 1e-3 per step",
    grad_names=("dq", "dk", "dv", "dlog_alpha"),
)
_family.register(prop, FAMILY)


def _tiny_gates(form):
    def check(impl):
        tol = tolerance(impl, _family.TOL)

        @configured
        @example(seed=0, T=20, chunk=16)
        @given(seed=seeds(), T=st.integers(17, 40), chunk=st.sampled_from([16, 32, 64]))
        def run(seed, T, chunk):
            rng = np.random.default_rng(seed)
            q, k, v = (rng.standard_normal((1, 2, T, 3)) for _ in range(3))
            a = -rng.uniform(0, 100, (1, 2, T, 3))  # α down to e^-100 per step: e^-6400 over a chunk
            want, _ = oracles.gated_linear_attention(q, k, v, a)
            args = inputs(impl, q, k, v, a)
            got = impl.parallel(*args) if form == "parallel" else _family._returns_pair(impl.chunked(*args, chunk_size=chunk), "chunked")[0]
            where = f"gates e^-100..1 per step, seed={seed}, T={T}" + (f", chunk_size={chunk}" if form == "chunked" else "")
            assert_close(got, want, tol=tol, what=f"{form} with tiny gates ({where}) vs the float64 oracle")

        run()

    check.__doc__ = (
        f"``{form}`` with gates down to ``e^-100`` per step stays finite and exact: every exponent is a "
        "difference ``b_t − b_s ≤ 0`` (never ``e^{b_t} · e^{−b_s}``, which overflows)."
    )
    prop(form, name=f"{form}_tiny_gates_stay_exact")(check)


for _form in ("parallel", "chunked"):
    _tiny_gates(_form)


@prop("chunked_backward")
def chunked_backward_tiny_gates_stay_exact(impl):
    """The manual backward with gates down to ``e^-100`` per step equals the oracle's derivative, finite."""
    tol = tolerance(impl, _family.TOL)

    @configured
    @example(seed=0, T=20, chunk=16)
    @given(seed=seeds(), T=st.integers(17, 30), chunk=st.sampled_from([16, 32]))
    def run(seed, T, chunk):
        rng = np.random.default_rng(seed)
        q, k, v, do = (rng.standard_normal((1, 1, T, 3)) for _ in range(4))
        a = -rng.uniform(0, 100, (1, 1, T, 3))
        want = oracles.gated_linear_attention_grads(q, k, v, a, do)
        grads = impl.chunked_backward(*inputs(impl, q, k, v, a, do), chunk_size=chunk)
        what = f"chunked_backward with tiny gates (e^-100..1 per step, seed={seed}, T={T}, chunk_size={chunk}) vs the oracle's derivative"
        for name, g, w in zip(FAMILY.grad_names, grads, want):
            assert_close(g, w, tol=tol, what=what, name=name)

    run()


@prop("gate")
def gate_equals_its_definition(impl):
    """``gate(x, w1, w2, b, tau=τ) = log σ(x W₁ W₂ + b) / τ``: ``α = σ(z)^(1/τ)``, not ``σ(z/τ)``."""
    tol = tolerance(impl, 1e-10)

    @configured
    @example(seed=0, B=1, T=3, d=4, r=2, H=2, K=3, tau=16.0)
    @given(
        seed=seeds(), B=st.integers(1, 2), T=st.integers(1, 5), d=st.integers(1, 6), r=st.integers(1, 4),
        H=st.integers(1, 3), K=st.integers(1, 4), tau=st.sampled_from([16.0, 4.0, 1.0]),
    )  # fmt: skip
    def run(seed, B, T, d, r, H, K, tau):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((B, T, d))
        w1 = rng.standard_normal((d, r)) / np.sqrt(d)
        w2 = rng.standard_normal((r, H, K)) / np.sqrt(r)
        b = rng.standard_normal((H, K))
        want = oracles.gla_gate(x, w1, w2, b, tau=tau)
        got = impl.gate(*inputs(impl, x, w1, w2, b), tau=tau)
        what = f"gate (seed={seed}, x: {x.shape}, w1: {w1.shape}, w2: {w2.shape}, tau={tau}) vs log σ(z)/τ"
        assert_close(got, want, tol=tol, what=what, name="log_alpha")

    run()


# Poisoned tokens: causality bit for bit (reference.testing.suites._adversarial).
from reference.testing.suites import _adversarial  # noqa: E402

_adversarial.register(prop, FAMILY)
_adversarial.register_resets(prop, FAMILY)
