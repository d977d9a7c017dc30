"""RoPE (reference.rope): both layouts, the permutation between them, and the properties that make it RoPE.

The rope suite's properties (``reference/testing/suites/rope.py``: a rotation loop as the oracle,
the layouts after the permutation, scores under a common shift of positions, norms) run on
``reference.rope`` and must catch every ``tests/mutants/rope_*.py``; here besides: torch in and
out with gradients, the permutation's formula, and bad input (the torch checks use the same loop).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import rope
from reference.testing.suites import rope as rope_suite

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = sorted((ROOT / "tests" / "mutants").glob("rope_*.py"))

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


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"mutant_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _x(seed: int, T: int, D: int, lead=(2, 3)):
    return np.random.default_rng(seed).standard_normal((*lead, T, D))


@pytest.mark.parametrize("prop", rope_suite.PROPERTIES, ids=lambda p: p.name)
def test_suite_property_holds(prop):
    """The rope suite (``reference/testing/suites/rope.py``) on ``reference.rope``: oracle, layouts, offsets, norms."""
    prop.check(rope)


@pytest.mark.parametrize("name", [p.stem for p in MUTANTS], ids=str)
def test_suite_catches_the_mutants(name):
    module = _load(ROOT / "tests" / "mutants" / f"{name}.py")
    props = {p.name: p for p in rope_suite.PROPERTIES}
    for prop_name in module.CAUGHT_BY:
        with pytest.raises(AssertionError):
            props[prop_name].check(module)


def test_there_are_mutants():
    assert len(MUTANTS) >= 3


@given(D=st.sampled_from([4, 6, 8, 16]), T=st.integers(2, 9), seed=st.integers(0, 2**16))
def test_the_layouts_differ_without_the_permutation(D, T, seed):
    x = _x(seed, T, D)
    positions = np.arange(T) + 1
    assert not np.allclose(rope.apply(x, positions, layout="interleaved"), rope.apply(x, positions, layout="half"))


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
