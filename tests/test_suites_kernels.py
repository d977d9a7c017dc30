"""The packaged property suites run against the Triton kernels (in the interpreter on a CPU).

``kernels.lightning.attention`` and ``kernels.gla.attention`` compute the chunked form: ``(o, S)``
from ``q, k, v``, the decay or gates and an initial state. A small adapter exposes each as the
contract's ``chunked`` — float64 in and out like the suites feed it, float32 inside, its own block
size whatever ``chunk_size`` the property asks for (the result does not depend on it) — and every
property of ``chunked`` runs on it: against the float64 oracles, short last chunks, gradients through
autograd, strong decays or tiny gates, bad inputs. Small shapes and few examples: the interpreter
executes every program instance in Python.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

from reference.testing.suites import gla as gla_suite
from reference.testing.suites import lightning as lightning_suite
from reference.testing.suites._base import using
from tests.conftest import HAS_GPU, PROFILE

pytest.importorskip("triton", reason="Triton is installed on Linux only (pyproject.toml)")
from kernels import gla, lightning  # noqa: E402  (after conftest has set TRITON_INTERPRET)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEVICE = "cuda" if HAS_GPU else "cpu"
EXAMPLES = {"dev": 3, "ci": 4, "thorough": 40}[PROFILE]
# float32 inside: relative errors of ~1e-7 observed for outputs, ~1e-6 for gradients.
TOLERANCE = 2e-5


def _f32(x):
    return None if x is None else x.to(DEVICE, torch.float32)


def _checked_chunk(chunk_size):
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


class LightningKernel:
    """``kernels.lightning.attention`` as the contract's ``chunked`` (the adapter's own part: dtypes,
    the block size and the check of ``chunk_size``, which the kernel does not take freely)."""

    BACKEND = "torch"
    TOLERANCE = TOLERANCE

    @staticmethod
    def chunked(q, k, v, decay, *, scale=1.0, chunk_size=64, initial_state=None):
        _checked_chunk(chunk_size)
        if isinstance(decay, torch.Tensor):
            decay = decay.to(DEVICE)
        o, s = lightning.attention(
            _f32(q), _f32(k), _f32(v), decay, scale=scale, initial_state=_f32(initial_state),
            output_final_state=True, chunk_size=16,
        )  # fmt: skip
        return o.double().cpu(), s.double().cpu()


class GLAKernel:
    """``kernels.gla.attention`` as the contract's ``chunked`` (its chunks are the kernel's own)."""

    BACKEND = "torch"
    TOLERANCE = TOLERANCE

    @staticmethod
    def chunked(q, k, v, log_alpha, *, scale=1.0, chunk_size=64, initial_state=None):
        _checked_chunk(chunk_size)
        o, s = gla.attention(
            _f32(q), _f32(k), _f32(v), _f32(log_alpha), scale=scale, initial_state=_f32(initial_state),
            output_final_state=True,
        )  # fmt: skip
        return o.double().cpu(), s.double().cpu()


KERNELS = [(lightning_suite, LightningKernel), (gla_suite, GLAKernel)]
# A value check of every gate would synchronise the device on each call, so the kernel checks
# log_alpha's shape only: a positive log_alpha is not rejected (the reference rejects it).
KNOWN_GAPS = {
    ("gla", "chunked_rejects_bad_inputs"): "kernels.gla.attention does not check log_alpha ≤ 0 (shape only)",
}
# A poisoned v may reach every row of its chunk; the property takes the chunk to be the chunk_size it
# asks for, while a kernel chunks by its own block. tests/test_reliability.py checks the kernels with
# their own block (reference.testing.suites._adversarial.poison_limit).
OWN_BLOCK = {"chunked_poisoned_v_changes_no_earlier_chunk"}
PARAMS = [
    pytest.param(
        p, impl, id=f"{suite.ALGORITHM}-{p.name}",
        marks=[pytest.mark.xfail(reason=KNOWN_GAPS[suite.ALGORITHM, p.name], strict=True)]
        if (suite.ALGORITHM, p.name) in KNOWN_GAPS else [],
    )
    for suite, impl in KERNELS
    for p in suite.PROPERTIES
    if p.applies_to(impl) and p.name not in OWN_BLOCK
]  # fmt: skip


def test_the_adapters_cover_the_chunked_properties():
    names = {p.values[0].name for p in PARAMS}
    assert {"chunked_equals_the_oracle", "chunked_gradients_equal_the_oracle", "chunked_rejects_bad_inputs"} <= names
    assert "chunked_strong_decay_over_a_long_block" in names and "chunked_tiny_gates_stay_exact" in names


@pytest.mark.parametrize("prop, impl", PARAMS)
def test_suite(prop, impl):
    few = settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )  # fmt: skip
    with using(few):
        prop.check(impl)
