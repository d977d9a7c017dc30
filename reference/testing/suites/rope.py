"""Properties of rotary position embeddings (``reference.rope``'s contract; ``docs/tiny_lm.md``).

Contract functions::

    apply(x, positions, *, base=10000.0, layout="half") -> x rotated     # x: [..., T, D], positions: [T] ints
        # layout "half": pair i is channels (i, i + D/2); "interleaved": (2i, 2i + 1); θ_i = base^(-2i/D)
    layout_permutation(D) -> perm [D]   # perm[c] = (2c mod D) + ⌊2c/D⌋: rotate-half channel c's interleaved slot

The oracle is one explicit 2×2 rotation per row and channel pair, in float64.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from reference.testing.checks import assert_close, inputs, tolerance
from reference.testing.suites._base import Property, configured, registrar

ALGORITHM = "rope"
CONTRACT = ("apply", "layout_permutation")
PROPERTIES: list[Property] = []
prop = registrar(PROPERTIES)
TOL = 1e-10

dims = st.sampled_from([2, 4, 6, 8, 16, 32])
layouts = st.sampled_from(["half", "interleaved"])
bases = st.sampled_from([10.0, 10000.0, 500000.0])


def oracle(x: np.ndarray, positions, base: float, layout: str) -> np.ndarray:
    """``[a, b] ↦ [a cos mθ_i − b sin mθ_i, b cos mθ_i + a sin mθ_i]`` for every row and pair, a loop."""
    x = np.asarray(x, dtype=np.float64)
    T, D = x.shape[-2:]
    out = np.empty_like(x)
    for t in range(T):
        for i in range(D // 2):
            a, b = (i, i + D // 2) if layout == "half" else (2 * i, 2 * i + 1)
            angle = int(positions[t]) * base ** (-2.0 * i / D)
            c, s = math.cos(angle), math.sin(angle)
            out[..., t, a] = c * x[..., t, a] - s * x[..., t, b]
            out[..., t, b] = s * x[..., t, a] + c * x[..., t, b]
    return out


def _x(seed: int, T: int, D: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, T, D))


@prop("apply")
def apply_equals_the_rotation_oracle(impl):
    """``apply`` turns pair i at position m by mθ_i, θ_i = base^(-2i/D), in either layout (positions up to 5000)."""
    tol = tolerance(impl, TOL)

    @configured
    @example(D=8, T=3, base=10000.0, layout="half", seed=0, offset=4093)
    @example(D=8, T=3, base=10000.0, layout="interleaved", seed=0, offset=1)
    @given(D=dims, T=st.integers(1, 7), base=bases, layout=layouts, seed=st.integers(0, 2**16), offset=st.integers(0, 5000))
    def run(D, T, base, layout, seed, offset):
        x = _x(seed, T, D)
        positions = np.arange(T) + offset
        (xi,) = inputs(impl, x)
        got = impl.apply(xi, positions, base=base, layout=layout)
        assert_close(got, oracle(x, positions, base, layout), tol=tol, what=f"apply (layout={layout!r}, base={base}) vs the rotation loop")

    run()


@prop("apply", "layout_permutation")
def layouts_agree_after_the_permutation(impl):
    """Rotating in the half layout and moving channel c to ``perm[c]`` equals rotating the moved channels interleaved."""
    tol = tolerance(impl, TOL)

    @configured
    @example(D=8, T=4, seed=1)
    @given(D=dims, T=st.integers(1, 6), seed=st.integers(0, 2**16))
    def run(D, T, seed):
        x = _x(seed, T, D)
        positions = np.arange(T) * 7 + 3
        perm = np.asarray(impl.layout_permutation(D))
        c = np.arange(D)
        if perm.shape != (D,) or not np.array_equal(perm, (2 * c) % D + (2 * c) // D):
            raise AssertionError(f"layout_permutation({D}) should be {((2 * c) % D + (2 * c) // D).tolist()}, got {perm.tolist()}")
        moved = np.empty_like(x)
        moved[..., perm] = x
        (xh, xm) = inputs(impl, x, moved)
        half = np.asarray(impl.apply(xh, positions, layout="half"), dtype=np.float64)
        half_moved = np.empty_like(half)
        half_moved[..., perm] = half
        got = impl.apply(xm, positions, layout="interleaved")
        assert_close(got, half_moved, tol=tol, what="interleaved apply of the permuted channels vs the permuted half-layout apply")

    run()


@prop("apply")
def scores_depend_only_on_the_offset(impl):
    """``apply(q, [m]) · apply(k, [n])`` is unchanged when m and n shift together (and is ``q · k`` when m = n)."""

    @configured
    @example(D=8, layout="half", seed=0, m=5, n=2, shift=4000)
    @given(D=dims, layout=layouts, seed=st.integers(0, 2**16), m=st.integers(0, 3000), n=st.integers(0, 3000), shift=st.integers(0, 3000))
    def run(D, layout, seed, m, n, shift):
        rng = np.random.default_rng(seed)
        q, k = rng.standard_normal((1, D)), rng.standard_normal((1, D))
        qi, ki = inputs(impl, q, k)

        def score(a, b):
            qa = np.asarray(impl.apply(qi, [a], layout=layout), dtype=np.float64)
            kb = np.asarray(impl.apply(ki, [b], layout=layout), dtype=np.float64)
            return float(qa[0] @ kb[0])

        before, after = score(m, n), score(m + shift, n + shift)
        if abs(before - after) > 1e-8 * (1 + abs(before)):
            raise AssertionError(f"score at (m, n) = ({m}, {n}) is {before:.12g} but at ({m + shift}, {n + shift}) {after:.12g} (layout {layout!r}, D = {D})")
        same = score(m, m)
        if abs(same - float(q[0] @ k[0])) > 1e-8 * (1 + abs(same)):
            raise AssertionError(f"at equal positions the rotations should cancel: got {same:.12g}, q · k = {float(q[0] @ k[0]):.12g}")

    run()


@prop("apply")
def norms_are_kept(impl):
    """A rotation keeps every row's length."""

    @configured
    @given(D=dims, T=st.integers(1, 6), layout=layouts, seed=st.integers(0, 2**16))
    def run(D, T, layout, seed):
        x = _x(seed, T, D)
        (xi,) = inputs(impl, x)
        y = np.asarray(impl.apply(xi, np.arange(T) * 97, layout=layout), dtype=np.float64)
        assert_close(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), tol=1e-12, what="row norms after apply vs before", name="norms")

    run()
