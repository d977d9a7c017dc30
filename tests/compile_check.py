"""Compiling the kernels for the H100 without a GPU, for the kernel test modules.

The interpreter accepts what the GPU compiler may reject (``tl.dot`` shapes, layouts, shared
memory), so each kernel test module also compiles its kernels, with the arguments a real call
passes, to an sm_90 cubin through ``kernels.tools`` and the ptxas of Triton's wheel. That needs a
process without ``TRITON_INTERPRET=1`` (which the tests' own process has on a CPU machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

ROOT = Path(__file__).resolve().parents[1]


def compile_in_subprocess(code: str) -> list[dict]:
    """Run ``code`` (which prints one JSON object per line) in a process without the interpreter;
    the objects. Skips where a GPU is here (the gpu tests compile and run the kernels for real) or
    where Triton's build has no NVIDIA backend."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the gpu tests compile and run the kernels for real")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton build has no NVIDIA backend (no ptxas)")
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, f"compiling for sm_90 failed:\n{done.stderr[-4000:]}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
