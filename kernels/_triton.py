"""What every kernel module shares: where kernels may run, and checks of their torch inputs."""

from __future__ import annotations

import os

import torch

#: True when Triton's CPU interpreter is on (``TRITON_INTERPRET=1`` set before the first import).
INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: Input dtypes the kernels accept; they accumulate in float32 whatever comes in.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_device(name: str, x: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors under the interpreter."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(x).__name__}")
    if x.device.type == "cuda":
        return
    if x.device.type == "cpu" and INTERPRETER:
        return
    raise ValueError(
        f"{name} is on {x.device}: the kernels need CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 "
        "set before kernels is imported"
    )


def check_dtype(name: str, x: torch.Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def check_attention_tensors(q, k, v, *extra) -> None:
    """``q, k, v``: 4-D tensors of one supported dtype where the kernels run; ``extra`` are further
    ``(name, tensor)`` inputs that must be on the same device (their dtype and shape are the
    caller's to check). Shapes beyond the rank are the caller's too (grouped kv heads or not)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_device(name, x)
        check_dtype(name, x)
        if x.ndim != 4:
            raise ValueError(f"{name} must have 4 dimensions [B, H, T, D], got shape {tuple(x.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    devices = [x.device for x in (q, k, v)] + [x.device for _, x in extra]
    if len(set(devices)) != 1:
        names = ", ".join(["q", "k", "v"] + [name for name, _ in extra])
        raise ValueError(f"{names} must be on one device, got {', '.join(map(str, devices))}")


def check_qkv(q, k, v, *extra) -> tuple[int, int, int, int, int]:
    """Check head-first ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]`` for a kernel; ``(B, H, T, K, V)``.

    ``extra`` are further ``(name, tensor)`` inputs (gates, say) held to the same rules as ``q``.
    """
    for name, x in extra:
        check_device(name, x)
        check_dtype(name, x)
        if x.ndim != 4:
            raise ValueError(f"{name} must have 4 dimensions [B, H, T, D], got shape {tuple(x.shape)}")
    check_attention_tensors(q, k, v, *extra)
    B, H, T, K = q.shape
    V = v.shape[-1]
    if tuple(k.shape) != (B, H, T, K):
        raise ValueError(f"k must have the shape of q {(B, H, T, K)}, got {tuple(k.shape)}")
    if tuple(v.shape[:3]) != (B, H, T):
        raise ValueError(f"v must have batch, heads and length {(B, H, T)} like q, got {tuple(v.shape[:3])}")
    if T < 1:
        raise ValueError(f"the sequence length must be at least 1, got T={T}")
    if not (1 <= K <= 256 and 1 <= V <= 256):
        raise ValueError(f"head widths must lie in 1..256, got K={K} and V={V}")
    return B, H, T, K, V


# --------------------------------------------------------------------------------------------
# The entry checks and the allocation point every kernel module shares (see the package docstring).
# --------------------------------------------------------------------------------------------

_POISON_OUTPUTS = False


def empty(*shape: int, device, dtype: torch.dtype) -> torch.Tensor:
    """Every buffer a kernel writes is allocated here, uninitialised: the kernels claim to write
    every element. Inside ``poisoned_outputs()`` the buffers come NaN-filled instead, so a test
    proves the claim (a forgotten store shows up as NaN)."""
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(*shape, device=device, dtype=dtype)


class poisoned_outputs:
    """Context manager for tests: every ``empty`` buffer is NaN-filled while it is active."""

    def __enter__(self):
        global _POISON_OUTPUTS
        self._before, _POISON_OUTPUTS = _POISON_OUTPUTS, True
        return self

    def __exit__(self, *exc):
        global _POISON_OUTPUTS
        _POISON_OUTPUTS = self._before
        return False


def check_scale(scale, *, default: float | None = None) -> float:
    """``scale`` as a finite Python float (``None`` means ``default`` where one is given)."""
    import math
    import numbers

    if scale is None and default is not None:
        return float(default)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def check_flag(name: str, value) -> bool:
    """Options that are booleans must be booleans (``"no"`` is truthy, so it is refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def interpreter_upcasts(dtype: torch.dtype) -> bool:
    """True where the kernel must run in fp32 and round back: Triton's CPU interpreter computes
    bf16 wrongly, so bf16 inputs are upcast there (on a GPU, never)."""
    return INTERPRETER and dtype == torch.bfloat16


def check_config(config, cls: type):
    """``config`` must be the module's own frozen ``Config`` (``None`` is handled by the caller)."""
    if not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__module__}.{cls.__qualname__}, got {type(config).__name__}")
    return config


def check_chunk_size(name: str, value) -> int:
    """Chunk sizes are 16, 32, 64 or 128 tokens: ``tl.dot`` tiles of at least 16, at most 128 rows."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in (16, 32, 64, 128):
        raise ValueError(f"{name} must be 16, 32, 64 or 128, got {value!r}")
    return value


def check_initial_state(initial_state, shape: tuple, device: torch.device):
    """``None``, or a floating tensor of ``shape`` (``[B, H, K, V]``) on the device of ``q``.

    Any float dtype is accepted (the kernels carry states in fp32); returned unchanged.
    """
    if initial_state is None:
        return None
    check_device("initial_state", initial_state)
    if tuple(initial_state.shape) != tuple(shape):
        raise ValueError(f"initial_state must have shape [B, H, K, V] = {tuple(shape)}, got {tuple(initial_state.shape)}")
    if initial_state.device != device:
        raise ValueError(f"initial_state must be on {device}, got {initial_state.device}")
    if not initial_state.is_floating_point():
        raise TypeError(f"initial_state must be a floating tensor, got {initial_state.dtype}")
    return initial_state


# --------------------------------------------------------------------------------------------
# Launches: every kernel module launches through ``launch``, so that compile tooling
# (``kernels.tools``) can record the exact launches a call makes without running them.
# --------------------------------------------------------------------------------------------

_RECORDER: list | None = None


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` — or, inside ``recorded_launches()``, its arguments recorded."""
    if _RECORDER is not None:
        _RECORDER.append((kernel, args, kwargs))
    else:
        kernel[grid](*args, **kwargs)


class recorded_launches:
    """Context manager: launches are appended to the list it yields instead of being run."""

    def __enter__(self) -> list:
        global _RECORDER
        self._before, _RECORDER = _RECORDER, []
        return _RECORDER

    def __exit__(self, *exc):
        global _RECORDER
        _RECORDER = self._before
        return False
