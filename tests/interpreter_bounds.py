"""A memory checker for Triton's interpreter: every load and store must stay inside a tensor argument.

On a GPU an out-of-bounds address faults (``illegal memory access``) or, worse, reads a neighbour's
memory silently; Triton's interpreter reads and writes raw host addresses and notices neither. Inside
``bounds_checked()``, each kernel launch records the byte ranges of its tensor arguments, and every
masked-in address of every ``tl.load`` / ``tl.store`` must fall, whole element included, inside one
of them — otherwise ``OutOfBounds`` names the kernel, the operation and the first bad addresses.

It checks what the source asks for; accesses the GPU compiler adds by itself (software-pipelined
prefetches) are outside its reach — ``compute-sanitizer`` on a GPU covers those.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch


class OutOfBounds(AssertionError):
    """A kernel addressed memory outside every tensor it was given."""


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """``[first byte, one past the last byte)`` of a tensor view."""
    start = t.data_ptr()
    if t.numel() == 0:
        return start, start
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return start, start + (last + 1) * t.element_size()


@contextmanager
def bounds_checked():
    """Check every interpreted ``tl.load``/``tl.store`` against the launch's tensor arguments."""
    from triton.runtime import interpreter as interp

    state = {"kernel": None, "lo": np.zeros(0, np.uint64), "hi": np.zeros(0, np.uint64)}
    executor = interp.GridExecutor
    builder = interp.InterpreterBuilder
    original = (executor._init_args_hst, builder.create_masked_load, builder.create_masked_store)

    def init_args(self, args_dev, kwargs):
        args_hst, kwargs_hst = original[0](self, args_dev, kwargs)
        spans = sorted(_extent(a) for a in (*args_hst, *kwargs_hst.values()) if isinstance(a, torch.Tensor))
        state["kernel"] = getattr(self.fn, "__name__", str(self.fn))
        state["lo"] = np.array([s for s, _ in spans], dtype=np.uint64)
        state["hi"] = np.array([e for _, e in spans], dtype=np.uint64)
        return args_hst, kwargs_hst

    def check(ptrs, mask, what):
        width = ptrs.get_element_ty().primitive_bitwidth // 8
        addresses = np.broadcast_to(ptrs.data, np.broadcast_shapes(ptrs.data.shape, mask.data.shape))
        addresses = addresses[np.broadcast_to(mask.data, addresses.shape)].astype(np.uint64).ravel()
        if addresses.size == 0:
            return
        lo, hi = state["lo"], state["hi"]
        # the last span starting at or before each address; spans may nest or overlap (views)
        idx = np.searchsorted(lo, addresses, side="right") - 1
        inside = idx >= 0
        inside[inside] = addresses[inside] + np.uint64(width) <= np.maximum.accumulate(hi)[idx[inside]]
        if not inside.all():
            bad = addresses[~inside][:4]
            raise OutOfBounds(
                f"{state['kernel']}: {what} of {int((~inside).sum())} element(s) outside every tensor argument, "
                f"e.g. at {[hex(int(a)) for a in bad]} (arguments span {[(hex(int(a)), hex(int(b))) for a, b in zip(lo, hi)]})"
            )

    def load(self, ptrs, mask, other, cache_policy, is_volatile):
        check(ptrs, mask, "load")
        return original[1](self, ptrs, mask, other, cache_policy, is_volatile)

    def store(self, ptrs, value, mask, cache_policy):
        check(ptrs, mask, "store")
        return original[2](self, ptrs, value, mask, cache_policy)

    executor._init_args_hst, builder.create_masked_load, builder.create_masked_store = init_args, load, store
    try:
        yield
    finally:
        executor._init_args_hst, builder.create_masked_load, builder.create_masked_store = original
