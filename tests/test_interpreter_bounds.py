"""The interpreter's memory checker catches what it is meant to catch (and nothing else)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import HAS_GPU
from tests.interpreter_bounds import OutOfBounds, bounds_checked

triton = pytest.importorskip("triton", reason="Triton is installed on Linux only (pyproject.toml)")
tl = pytest.importorskip("triton.language")

pytestmark = pytest.mark.skipif(HAS_GPU, reason="checks Triton's interpreter, which a GPU machine does not use")


@triton.jit
def _copy_kernel(x_ptr, y_ptr, n, SHIFT: tl.constexpr, STORE_SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs + STORE_SHIFT, tl.load(x_ptr + offs + SHIFT, mask=mask), mask=mask)


def _run(shift=0, store_shift=0, n=16):
    x, y = torch.arange(32.0), torch.zeros(16)
    _copy_kernel[(1,)](x[:16], y, n, SHIFT=shift, STORE_SHIFT=store_shift, BLOCK=16)
    return y


def test_in_bounds_accesses_pass_and_compute():
    with bounds_checked():
        assert torch.equal(_run(), torch.arange(16.0))


@pytest.mark.parametrize("shift, store_shift, what", [(1, 0, "load"), (0, 1, "store"), (-1, 0, "load")])
def test_one_element_past_either_end_is_caught(shift, store_shift, what):
    # x is a view of the first 16 of 32 elements: reading element 16 is inside the storage,
    # but outside the tensor the kernel was given — the checker goes by the view.
    with bounds_checked(), pytest.raises(Exception) as caught:
        _run(shift, store_shift)
    err = caught.value if isinstance(caught.value, OutOfBounds) else caught.value.__cause__
    assert isinstance(err, OutOfBounds) and f"_copy_kernel: {what} of 1 element(s)" in str(err)


def test_masked_out_addresses_are_not_accesses():
    with bounds_checked():
        _run(shift=1, n=15)  # the last lane would be out of bounds, but it is masked off


def test_the_checker_is_removed_afterwards():
    with bounds_checked():
        pass
    _run(shift=1)  # reads one element of x's storage beyond the view: unchecked again
