"""``python -m kernels`` (the kernels' tour, beside ``python -m reference``) runs and every kernel agrees."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="Triton is installed on Linux only (pyproject.toml)")


def test_kernel_tour_prints_every_kernel_and_succeeds():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "kernels"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "Lightning Attention-2" in done.stdout and "Gated Linear Attention" in done.stdout
    assert "worst error" in done.stdout


def test_the_reference_imports_nothing_above_it():
    """``reference`` and its tour import neither ``kernels`` nor ``simdist``."""
    code = ("import sys, reference, reference.__main__ as tour; tour._rows(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kernels', 'simdist', 'triton')))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
