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
