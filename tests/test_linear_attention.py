"""Linear attention reference: the packaged property suite (NumPy and torch) and its dtypes.

Every property of ``reference.testing.suites.linear`` (each form against the float64 oracle and the
others, bidirectional, gradients, initial states, odd lengths, bad inputs) runs here against
``reference.linear_attention``.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference import linear_attention as la
from reference.testing.checks import Target
from reference.testing.strategies import BACKENDS
from reference.testing.suites import linear as suite

IMPLS = [Target(la, backend=b, name=f"reference.linear_attention[{b}]") for b in BACKENDS]


@pytest.mark.parametrize(
    "prop, impl",
    [pytest.param(p, i, id=f"{p.name}[{i.BACKEND}]") for p in suite.PROPERTIES for i in IMPLS if p.applies_to(i)],
)
def test_suite(prop, impl):
    prop.check(impl)


def test_float32_numpy_stays_float32():
    x = np.ones((1, 1, 3, 2), dtype=np.float32)
    o, s = la.chunked(x, x, x, chunk_size=2)
    assert o.dtype == np.float32 and s.dtype == np.float32
