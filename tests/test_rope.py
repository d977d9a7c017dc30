"""RoPE (reference.rope): both layouts, the permutation between them, and the properties that make it RoPE.

Every property is checked against a loop written independently here (one 2×2 rotation per channel
pair, in float64), and the relative-position property is checked on the scores themselves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import rope

pytestmark = pytest.mark.usefixtures("one_torch_thread")

dims = st.sampled_from([2, 4, 6, 8, 16, 32])
lengths = st.integers(1, 9)
bases = st.sampled_from([10.0, 10000.0, 500000.0])
layouts = st.sampled_from(rope.LAYOUTS)


def _pairs(D: int, layout: str):
    """The channel pairs ``(a, b)`` of each frequency ``i``, as each layout defines them."""
    if layout == "half":
        return [(i, i + D // 2) for i in range(D // 2)]
    return [(2 * i, 2 * i + 1) for i in range(D // 2)]


def oracle(x: np.ndarray, positions, base: float, layout: str) -> np.ndarray:
    """One explicit 2×2 rotation per (row, pair): ``[a, b] ↦ [[cos, -sin], [sin, cos]] [a, b]``."""
    x = np.asarray(x, dtype=np.float64)
    T, D = x.shape[-2:]
    out = np.empty_like(x)
    for t in range(T):
        for i, (a, b) in enumerate(_pairs(D, layout)):
            angle = positions[t] * base ** (-2.0 * i / D)
            c, s = math.cos(angle), math.sin(angle)
            out[..., t, a] = c * x[..., t, a] - s * x[..., t, b]
            out[..., t, b] = s * x[..., t, a] + c * x[..., t, b]
    return out


def _x(seed: int, T: int, D: int, lead=(2, 3)):
    return np.random.default_rng(seed).standard_normal((*lead, T, D))


@given(D=dims, T=lengths, base=bases, layout=layouts, seed=st.integers(0, 2**16), offset=st.integers(0, 5000))
def test_matches_the_rotation_oracle(D, T, base, layout, seed, offset):
    x = _x(seed, T, D)
    positions = np.arange(T) + offset
    np.testing.assert_allclose(rope.apply(x, positions, base=base, layout=layout), oracle(x, positions, base, layout), atol=1e-12)


@given(D=dims, T=lengths, base=bases, seed=st.integers(0, 2**16))
def test_layouts_agree_after_the_permutation(D, T, base, seed):
    x = _x(seed, T, D)
    positions = np.random.default_rng(seed).integers(0, 4096, size=T)
    half = rope.apply(x, positions, base=base, layout="half")
    inter = rope.apply(rope.to_interleaved(x), positions, base=base, layout="interleaved")
    np.testing.assert_allclose(rope.to_interleaved(half), inter, atol=1e-12)
    np.testing.assert_array_equal(rope.to_half(rope.to_interleaved(x)), x)
    # and the layouts really differ: without the permutation they disagree (D > 2, a non-zero angle)
    if D > 2 and np.any(positions):
        assert not np.allclose(rope.apply(x, positions, base=base, layout="interleaved"), half)


@pytest.mark.parametrize("D", [2, 4, 8, 10, 64])
def test_permutation_formula_and_inverse(D):
    perm = rope.layout_permutation(D)
    c = np.arange(D)
    np.testing.assert_array_equal(perm, (2 * c) % D + (2 * c) // D)
    assert sorted(perm.tolist()) == list(range(D))
    x = np.arange(D, dtype=np.float64)
    y = rope.to_interleaved(x[None])[0]
    np.testing.assert_array_equal(y[perm], x)  # channel c of the half layout sits at perm[c]
    # the pairs: half's (i, i + D/2) land on interleaved's (2i, 2i + 1)
    for i in range(D // 2):
        assert (perm[i], perm[i + D // 2]) == (2 * i, 2 * i + 1)


@given(D=dims, layout=layouts, base=bases, seed=st.integers(0, 2**16), m=st.integers(0, 3000), n=st.integers(0, 3000), shift=st.integers(-3000, 3000))
def test_scores_depend_only_on_the_offset(D, layout, base, seed, m, n, shift):
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((1, D)), rng.standard_normal((1, D))

    def score(a, b):
        return float(rope.apply(q, [a], base=base, layout=layout)[0] @ rope.apply(k, [b], base=base, layout=layout)[0])

    shift = max(shift, -min(m, n))  # positions stay non-negative
    assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-9 * (1 + abs(score(m, n))))
    # at offset 0 the rotations cancel: the score is the plain dot product
    assert score(m, m) == pytest.approx(float(q[0] @ k[0]), abs=1e-10)


@given(D=dims, T=lengths, layout=layouts, seed=st.integers(0, 2**16))
def test_norms_are_kept(D, T, layout, seed):
    x = _x(seed, T, D)
    y = rope.apply(x, np.arange(T) * 97, layout=layout)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)


def test_numpy_in_numpy_out_and_dtypes():
    x = _x(0, 5, 8).astype(np.float32)
    y = rope.apply(x, np.arange(5))
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, oracle(x, np.arange(5), 10000.0, "half"), atol=1e-5)
    np.testing.assert_array_equal(rope.apply(x, np.zeros(5, dtype=np.int64)), x)  # position 0: identity
    np.testing.assert_allclose(rope.apply(x, range(5)), y)  # a range works as positions


@pytest.mark.parametrize("layout", rope.LAYOUTS)
def test_torch_in_differentiable_torch_out(layout):
    x = torch.tensor(_x(1, 6, 8), dtype=torch.float64, requires_grad=True)
    positions = torch.arange(6) + 11
    y = rope.apply(x, positions, layout=layout)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64
    np.testing.assert_allclose(y.detach().numpy(), oracle(x.detach().numpy(), positions.numpy(), 10000.0, layout), atol=1e-12)
    torch.autograd.gradcheck(lambda t: rope.apply(t, positions, layout=layout), (x,))
    # a rotation's adjoint is its inverse: the gradient of <y, g> is g rotated back
    g = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((y * g).sum(), x)
    np.testing.assert_allclose(rope.apply(grad, positions, layout=layout).numpy(), g.numpy(), atol=1e-12)


def test_frequencies():
    np.testing.assert_allclose(rope.frequencies(8, base=10000.0), [1.0, 0.1, 0.01, 0.001])
    assert rope.angles([0, 2], 4, base=100.0).tolist() == [[0.0, 0.0], [2.0, 0.2]]


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: rope.apply(np.zeros((3, 5)), np.arange(3)), ValueError),  # odd D
        (lambda: rope.apply(np.zeros((3, 4)), np.arange(2)), ValueError),  # T mismatch
        (lambda: rope.apply(np.zeros((3, 4)), np.arange(3), layout="neox"), ValueError),
        (lambda: rope.apply(np.zeros((3, 4)), np.arange(3) * 0.5), TypeError),  # fractional positions
        (lambda: rope.apply(np.zeros((3, 4), dtype=np.int64), np.arange(3)), TypeError),
        (lambda: rope.apply(np.zeros((3, 4)), np.arange(3), base=1.0), ValueError),
        (lambda: rope.layout_permutation(7), ValueError),
        (lambda: rope.apply(np.zeros(4), [0]), ValueError),
    ],
)
def test_bad_input(call, error):
    with pytest.raises(error):
        call()
