"""Properties of Lightning Attention-2 (``reference.lightning``'s contract; ``docs/lightning.md``).

Contract functions::

    recurrent(q, k, v, decay, *, scale=1.0, initial_state=None) -> (o, S)
    parallel(q, k, v, decay, *, scale=1.0) -> o
    chunked(q, k, v, decay, *, scale=1.0, chunk_size=64, initial_state=None) -> (o, S)   # Algorithm 1
    chunked_backward(q, k, v, decay, do, *, scale=1.0, chunk_size=64) -> (dq, dk, dv)  # Algorithm 2
    decay_mask(decay, T) -> D: [H, T, T]

The shared properties of the linear family (``_family``) with ``decay: [H]`` drawn down to 0.3
(strong decays, exactly 1 included), plus the decay mask and strong decays over long blocks in
float32 (outputs, and with torch inputs the gradients).
"""

from __future__ import annotations

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from reference.testing import oracles
from reference.testing.checks import assert_close, inputs, tolerance
from reference.testing.strategies import Case, cases, decays, to_numpy
from reference.testing.suites import _family
from reference.testing.suites._base import Property, backend_of, configured, registrar

ALGORITHM = "lightning"
CONTRACT = ("recurrent", "parallel", "chunked", "chunked_backward", "decay_mask")
PROPERTIES: list[Property] = []
prop = registrar(PROPERTIES)

# Strong decay on one head, mild on the other; 7 tokens in chunks of 3 (the last has 1).
EXAMPLE = Case(B=1, H=2, T=7, K=3, V=3, seed=0, chunk_size=3, scale=0.5, decay=(0.5, 0.9), initial_state=True)


def _oracle(a, case, with_state):
    s0 = a["initial_state"] if with_state else None
    return oracles.decayed_linear_attention(a["q"], a["k"], a["v"], a["decay"], scale=case.scale, initial_state=s0)


def _oracle_grads(a, case):
    return oracles.decayed_linear_attention_grads(a["q"], a["k"], a["v"], a["decay"], a["do"], scale=case.scale)


FAMILY = _family.Family(
    extra="decay",
    oracle=_oracle,
    oracle_grads=_oracle_grads,
    cases=lambda **kw: cases(decay=True, **kw),
    example=EXAMPLE,
    regime="decays down to λ = 0.3, exactly 1 included",
)
_family.register(prop, FAMILY)


@st.composite
def _mask_cases(draw):
    """``(T, decay)``: a length and one rate per head, down to 0.05."""
    H = draw(st.integers(1, 4))
    return draw(st.integers(1, 16)), tuple(float(x) for x in draw(decays(H, min_decay=0.05)))


@prop("decay_mask")
def decay_mask_is_lower_triangular_powers(impl):
    """``decay_mask(decay, T)[h, t, s] = λ_h^(t-s)`` for ``t ≥ s`` and 0 above the diagonal (causal)."""

    @configured
    @example(T_decay=(5, (0.5, 0.9)))
    @given(T_decay=_mask_cases())
    def run(T_decay):
        T, decay = T_decay
        H = len(decay)
        want = np.zeros((H, T, T))
        for h in range(H):
            for t in range(T):
                for s in range(t + 1):
                    want[h, t, s] = decay[h] ** (t - s)
        (lam,) = inputs(impl, np.asarray(decay))
        what = f"decay_mask(decay={list(decay)}, T={T}) vs λ^(t-s) on and below the diagonal, 0 above"
        assert_close(impl.decay_mask(lam, T), want, tol=1e-12, what=what, name="D")

    run()


def _strong_decay_long_block(form):
    def check(impl):
        T = 200  # 0.3^-199 ≈ 1e104: past float32's range (3e38) if a power is formed with a negative exponent
        rng = np.random.default_rng(1)
        q, k, v = (rng.standard_normal((1, 1, T, 4)) for _ in range(3))
        want, _ = oracles.decayed_linear_attention(q, k, v, [0.3])
        q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
        torch_in = backend_of(impl) == "torch"
        leaves = inputs(impl, q32, k32, v32)
        if torch_in:
            leaves = tuple(x.float().requires_grad_() for x in leaves)  # inputs() makes float64 tensors
        args = (*leaves, *inputs(impl, np.array([0.3])))
        if form == "parallel":
            got = impl.parallel(*args)
        else:
            got = _family._returns_pair(impl.chunked(*args, chunk_size=T), "chunked")[0]
        what = f"{form} in float32, λ = 0.3 over one block of {T} tokens"
        assert_close(
            np.asarray(to_numpy(got), dtype=np.float64), want, tol=max(tolerance(impl, 0.0), 1e-5),
            what=f"{what}, vs the float64 oracle",
        )  # fmt: skip
        if torch_in:  # and the gradients stay finite too
            got.sum().backward()
            for name, x in zip(("dq", "dk", "dv"), leaves):
                if x.grad is None or not bool(x.grad.isfinite().all()):
                    raise AssertionError(f"{what}: {name} through autograd is missing or not finite")

    check.__doc__ = (
        f"``{form}`` in float32 with ``λ = 0.3`` over a block of 200 tokens stays finite and equals "
        "float64: powers of λ formed with non-negative exponents only (``λ^(n-j)``, not ``λ^n · λ^-j``)."
    )
    prop(form, name=f"{form}_strong_decay_over_a_long_block")(check)


for _form in ("parallel", "chunked"):
    _strong_decay_long_block(_form)


# Poisoned tokens: causality bit for bit (reference.testing.suites._adversarial).
from reference.testing.suites import _adversarial  # noqa: E402

_adversarial.register(prop, FAMILY)
