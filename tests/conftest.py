"""Test configuration shared by every suite: Hypothesis profiles, the GPU marker, the interpreter.

Profiles (choose with ``HYPOTHESIS_PROFILE=<name>``; ``CI`` set in the environment picks ``ci``):

* ``dev`` — quick local runs: few examples, random each time.
* ``ci`` — what CI runs: derandomised (the same examples every run), no deadline.
* ``thorough`` — many examples, and the tests marked ``thorough`` (W = 8 ranks, larger shapes).

Kernels run in Triton's interpreter on a machine without a CUDA GPU: ``TRITON_INTERPRET=1`` must be
set before ``kernels`` is first imported, so it is set here, before any test module loads.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=12, **_common)
settings.register_profile("ci", max_examples=25, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=300, **_common)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
settings.load_profile(PROFILE)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (these are the large-shape and bf16 kernel tests)")
    skip_thorough = pytest.mark.skip(reason="runs only with HYPOTHESIS_PROFILE=thorough")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)
        if "thorough" in item.keywords and PROFILE != "thorough":
            item.add_marker(skip_thorough)


def pytest_report_header(config):
    return f"hypothesis profile: {PROFILE}; GPU: {torch.cuda.get_device_name() if HAS_GPU else 'none (Triton interpreter)'}"


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: with tiny tensors, intra-op threads only add synchronisation
    (10-20x slower on 2 cores). Modules that want it: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
