"""kernels.gla against reference.gla: outputs, final state and every gradient (q, k, v, log_alpha, S_0).

On a CPU these run in Triton's interpreter (``tl.dot`` exact) on small shapes; the ``gpu`` tests run
the same comparison on a CUDA GPU at large shapes and in bf16.

Tolerances (relative Frobenius error against float64 autograd of ``reference.gla.chunked`` fed the
same rounded inputs):

==========================  ============  ==================================================
where                       dtype         tolerance
==========================  ============  ==================================================
interpreter (CPU)           fp32          1e-4 everything (observed ≤ 2e-6)
interpreter (CPU)           fp16          5e-3 everything (observed ≤ 1e-3; ``d log_alpha``
                                          is the largest: ``q·dq − k·dk`` cancels)
GPU                         fp32          1e-4 (three-pass tf32 products: ``input_precision="tf32x3"``)
GPU                         fp16          5e-3
GPU                         bf16          3e-2; ``d log_alpha`` 5e-2 (8-bit mantissas; states and
                                          the intra matrix rounded to bf16 as product operands)
==========================  ============  ==================================================
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import gla as ref
from tests.conftest import HAS_GPU, PROFILE
from tests.compile_check import compile_in_subprocess
from tests.interpreter_bounds import bounds_checked
from tests.strategies import rel_err

triton = pytest.importorskip("triton", reason="Triton is installed on Linux only (pyproject.toml)")
from kernels import _triton, gla  # noqa: E402  (after conftest has set TRITON_INTERPRET)

DEVICE = "cuda" if HAS_GPU else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
TOL_DLOG_ALPHA = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 5e-2}
EXAMPLES = {"dev": 4, "ci": 8, "thorough": 60}[PROFILE]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def compare(B, H, T, K, V, *, dtype, config=None, min_gate=1e-3, with_initial=False, with_final_grad=False,
            scale=0.5, device=DEVICE, seed=0, gate_dtype=None):  # fmt: skip
    """Run kernel and float64 reference on the same random inputs; return relative errors."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, d, generator=g) for d in (K, K, V))
    # gates: half ordinary (α near 1), half down to min_gate per step
    la = torch.rand(B, H, T, K, generator=g) * np.log(min_gate)
    la = torch.where(torch.rand(B, H, T, K, generator=g) < 0.5, la, torch.rand(B, H, T, K, generator=g) * -0.1)
    s0 = torch.randn(B, H, K, V, generator=g) if with_initial else None
    do = torch.randn(B, H, T, V, generator=g)
    ds = torch.randn(B, H, K, V, generator=g) if with_final_grad else None

    leaves = [x.to(device, dtype).requires_grad_() for x in (q, k, v)]
    leaves.append(la.to(device, gate_dtype or dtype).requires_grad_())
    s0_k = s0.clone().to(device).requires_grad_() if with_initial else None
    o, s = gla.attention(*leaves, scale=scale, initial_state=s0_k, output_final_state=True, config=config)
    assert o.dtype == dtype and s.dtype == torch.float32
    loss = (o.double() * do.to(device).double()).sum()
    if with_final_grad:
        loss = loss + (s.double() * ds.to(device).double()).sum()
    loss.backward()

    # The reference sees the same (rounded) inputs, in float64.
    r_leaves = [x.detach().double().requires_grad_() for x in leaves]
    s0_r = s0.to(device).double().detach().requires_grad_() if with_initial else None
    o_r, s_r = ref.chunked(*r_leaves, scale=scale, initial_state=s0_r, chunk_size=64, sub_chunk=16)
    loss_r = (o_r * do.to(device).double()).sum()
    if with_final_grad:
        loss_r = loss_r + (s_r * ds.to(device).double()).sum()
    loss_r.backward()

    errs = {"o": rel_err(o, o_r), "final_state": rel_err(s, s_r)}
    for name, a, b in zip(("dq", "dk", "dv", "dlog_alpha"), leaves, r_leaves):
        errs[name] = rel_err(a.grad, b.grad)
    if with_initial:
        errs["d_initial_state"] = rel_err(s0_k.grad, s0_r.grad)
    return errs


def assert_close(errs, dtype):
    tol = {name: TOL_DLOG_ALPHA[dtype] if name == "dlog_alpha" else TOL[dtype] for name in errs}
    bad = {name: e for name, e in errs.items() if not e < tol[name]}
    assert not bad, f"relative errors above tolerance for {dtype}: {bad} (all: {errs})"


@st.composite
def small_problems(draw):
    chunk = draw(st.sampled_from([16, 32]))
    block = draw(st.sampled_from([16, 32]))  # tiles narrower than K, V exercise the tile loops
    return dict(
        B=draw(st.integers(1, 2)),
        H=draw(st.integers(1, 2)),
        T=draw(st.integers(1, 3 * chunk + 5)),
        K=draw(st.integers(1, 40)),
        V=draw(st.integers(1, 40)),
        config=gla.Config(chunk_size=chunk, state_block_k=block, state_block_v=block, block_k=block, block_v=block,
                          bwd_block_k=block),
        with_initial=draw(st.booleans()),
        with_final_grad=draw(st.booleans()),
        scale=draw(st.sampled_from([1.0, 0.3])),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=EXAMPLES)
@given(problem=small_problems())
def test_kernel_fp32_matches_reference(problem):
    assert_close(compare(**problem, dtype=torch.float32), torch.float32)


@settings(max_examples=max(2, EXAMPLES // 2))
@given(problem=small_problems())
def test_kernel_fp16_matches_reference(problem):
    assert_close(compare(**problem, dtype=torch.float16), torch.float16)


def test_default_config_odd_length_and_gates_in_their_own_dtype():
    """The default config (C = 64) on a length no chunk divides; fp16 q, k, v with fp32 gates."""
    assert_close(compare(1, 2, 150, 24, 20, dtype=torch.float32, with_initial=True, with_final_grad=True), torch.float32)
    errs = compare(1, 1, 70, 16, 16, dtype=torch.float16, gate_dtype=torch.float32, with_final_grad=True)
    assert_close(errs, torch.float16)


def test_tiny_gates_over_long_chunks_stay_finite():
    """α down to 1e-3 per step over 128-token chunks: b spans −880 inside one chunk, e^{880} = inf."""
    cfg = gla.Config(chunk_size=128)
    errs = compare(1, 1, 150, 16, 16, dtype=torch.float32, config=cfg, min_gate=1e-3, with_initial=True,
                   with_final_grad=True)  # fmt: skip
    assert_close(errs, torch.float32)


def test_kernel_without_final_state_outputs_only_o_and_final_state_alone_has_gradients():
    q = torch.randn(1, 2, 20, 8, device=DEVICE)
    la = -torch.rand(1, 2, 20, 8, device=DEVICE)
    o = gla.attention(q, q, q, la)
    assert isinstance(o, torch.Tensor) and o.shape == (1, 2, 20, 8) and torch.isfinite(o).all()
    # a loss on the final state only: the backward gets no gradient for o
    leaves = [x.clone().requires_grad_() for x in (q, q, q, la)]
    _, s = gla.attention(*leaves, output_final_state=True)
    s.sum().backward()
    r_leaves = [x.detach().double().requires_grad_() for x in leaves]
    ref.recurrent(*r_leaves)[1].sum().backward()
    assert r_leaves[0].grad is None and torch.equal(leaves[0].grad, torch.zeros_like(q))  # S_T ignores q
    for a, b in zip(leaves[1:], r_leaves[1:]):
        assert rel_err(a.grad, b.grad) < 1e-4


def _args():
    return dict(
        q=torch.zeros(1, 2, 4, 3),
        k=torch.zeros(1, 2, 4, 3),
        v=torch.zeros(1, 2, 4, 5),
        log_alpha=torch.zeros(1, 2, 4, 3),
    )


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(q=torch.zeros(1, 2, 4, 3, dtype=torch.float64)), TypeError, "q must be float32, float16 or bfloat16"),
        (dict(log_alpha=torch.zeros(1, 2, 4, 3, dtype=torch.int32)), TypeError, "log_alpha must be float32"),
        (dict(v=torch.zeros(1, 2, 4, 5, dtype=torch.float16)), TypeError, "q, k and v must share one dtype"),
        (dict(k=torch.zeros(1, 2, 5, 3)), ValueError, "k must have the shape of q"),
        (dict(v=torch.zeros(1, 3, 4, 3)), ValueError, "v must have batch, heads and length"),
        (dict(log_alpha=torch.zeros(1, 2, 4, 2)), ValueError, "log_alpha must have the shape of q"),
        (dict(q=torch.zeros(2, 4, 3)), ValueError, "q must have 4 dimensions"),
        (dict(q=torch.zeros(1, 2, 4, 3, device="meta")), ValueError, "q is on meta"),
        (dict(log_alpha=[[0.0]]), TypeError, "log_alpha must be a torch tensor"),
        (dict(initial_state=torch.zeros(1, 2, 3, 4)), ValueError, "initial_state must have shape"),
        (dict(initial_state=torch.zeros(1, 2, 3, 5, dtype=torch.int64)), TypeError, "initial_state must be a floating"),
        (dict(scale=float("nan")), ValueError, "scale must be finite"),
        (dict(scale="1"), TypeError, "scale must be a real number"),
        (dict(output_final_state=1), TypeError, "output_final_state must be True or False"),
        (dict(config=dict(chunk_size=64)), TypeError, "config must be a kernels.gla.Config"),
        (dict(config=gla.Config(chunk_size=48)), ValueError, "chunk_size must be 16, 32, 64 or 128"),
        (dict(config=gla.Config(block_v=24)), ValueError, "block_v must be a power of two"),
        (
            dict(q=torch.zeros(1, 2, 4, 300), k=torch.zeros(1, 2, 4, 300), log_alpha=torch.zeros(1, 2, 4, 300)),
            ValueError,
            "head widths must lie in 1..256",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(kwargs, exc, words):
    args = _args()
    args.update(kwargs)
    tensors = []
    for name in ("q", "k", "v", "log_alpha"):
        x = args.pop(name)
        tensors.append(x.to(DEVICE) if isinstance(x, torch.Tensor) and x.device.type != "meta" else x)
    if "initial_state" in args:
        args["initial_state"] = args["initial_state"].to(DEVICE)
    with pytest.raises(exc, match=words):
        gla.attention(*tensors, **args)


_COMPILE_FOR_H100 = """
import json, torch
from kernels import gla, tools
for tag, dtype, K, V, config in [
    ("bench", torch.bfloat16, 128, 128, gla.DEFAULT_CONFIG),  # the benchmark's path
    ("narrow", torch.float32, 20, 12, gla.Config(chunk_size=16)),  # narrow heads padded to 16, fp32 (tf32x3)
]:
    for name, info in tools.compile_gla(dtype, K, V, config).items():
        print(json.dumps({"tag": tag, "kernel": name, **info}))
"""


def test_kernels_compile_for_the_h100():
    """The interpreter accepts what the GPU compiler may reject (tl.dot shapes, layouts, shared memory).

    Compile every kernel, with the exact arguments a real call passes, down to an sm_90 cubin with
    the ptxas that Triton's wheel ships — no GPU needed (a process without TRITON_INTERPRET). On the
    benchmark's path (bf16, K = V = 128, the default config) no kernel may spill registers to local
    memory — except the dQ/dK kernel's few bytes (≤ 64: its 64-wide key tiles spill 32–40 bytes and
    measured faster than the spill-free 32-wide ones, perf log entry 4) — and every kernel's shared
    memory must fit an H100 block (227 KiB).
    """
    reports = compile_in_subprocess(_COMPILE_FOR_H100)
    kernels = {"_fwd_states_kernel", "_fwd_output_kernel", "_bwd_dstates_kernel", "_bwd_dv_kernel", "_bwd_kernel"}
    for tag in ("bench", "narrow"):
        assert {r["kernel"] for r in reports if r["tag"] == tag} == kernels, reports
    for r in reports:
        assert r["shared_bytes"] <= 227 * 1024, r
        if r["tag"] == "bench" and "stack_bytes" in r:
            allowed = 64 if r["kernel"] == "_bwd_kernel" else 0
            assert r["stack_bytes"] <= allowed, f"register spills on the benchmark's path: {r}"


# ------------------------------------------------------------------------------------------ GPU


# (shape, dtype): each pair compiles its own kernels (dtype, head widths), so the list is short and
# covers what differs: the benchmark's widths in bf16, an odd length with unequal widths in fp16, the
# widest heads, and narrow heads (tiles padded to 16) in fp32 (tf32x3 products) — and K ≠ V in bf16,
# where an earlier version of the backward met a Triton 3.6 miscompile (an illegal address).
GPU_CASES = [
    (dict(B=2, H=4, T=4096, K=128, V=128), torch.bfloat16),
    (dict(B=1, H=2, T=1000, K=128, V=64), torch.bfloat16),
    (dict(B=1, H=3, T=3001, K=64, V=96), torch.float16),
    (dict(B=1, H=2, T=777, K=256, V=256), torch.bfloat16),
    (dict(B=1, H=2, T=100, K=20, V=12), torch.float32),
    (dict(B=1, H=3, T=1001, K=64, V=96), torch.float32),
]


def _case_id(case):
    shape, dtype = case
    return "x".join(str(v) for v in shape.values()) + "-" + str(dtype).removeprefix("torch.")


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=_case_id)
def test_gpu_large_shapes(case):
    """config=None: the default, with state tiles sized to the GPU (small B·H here: 16 × 64)."""
    shape, dtype = case
    errs = compare(**shape, dtype=dtype, with_initial=True, with_final_grad=True, scale=shape["K"] ** -0.5)
    assert_close(errs, dtype)


@pytest.mark.gpu
def test_gpu_chunks_of_128_bf16():
    """C = 128: seven halving levels, twice the rows per program."""
    shape = dict(B=1, H=3, T=3001, K=64, V=96)
    errs = compare(**shape, dtype=torch.bfloat16, config=gla.Config(chunk_size=128), with_initial=True,
                   with_final_grad=True, scale=shape["K"] ** -0.5)  # fmt: skip
    assert_close(errs, torch.bfloat16)


@pytest.mark.skipif(HAS_GPU, reason="the interpreter's bf16 path")
def test_bf16_in_the_interpreter_is_computed_in_fp32():
    """The interpreter's bf16 arithmetic is broken; the kernel must not return its garbage."""
    errs = compare(1, 2, 40, 16, 16, dtype=torch.bfloat16, with_initial=True, with_final_grad=True)
    assert_close(errs, torch.bfloat16)


def test_every_output_element_is_written():
    """Outputs, final state and all gradients are right when the kernels' buffers start as NaN."""
    with _triton.poisoned_outputs():
        errs = compare(2, 2, 70, 20, 12, dtype=torch.float32, config=gla.Config(chunk_size=16), with_initial=True,
                       with_final_grad=True)  # fmt: skip
    assert_close(errs, torch.float32)


@pytest.mark.skipif(HAS_GPU, reason="checks the interpreter's loads and stores")
@pytest.mark.parametrize(
    "shape, config",
    [
        (dict(B=1, H=2, T=100, K=20, V=12), gla.Config(chunk_size=16)),  # narrow heads padded to 16
        (dict(B=1, H=1, T=130, K=128, V=64), None),  # K > V, a ragged last chunk
        (dict(B=1, H=1, T=70, K=48, V=256), gla.Config(chunk_size=128)),  # one chunk longer than T
    ],
    ids=["narrow", "K>V", "C=128"],
)
def test_every_load_and_store_stays_inside_its_tensors(shape, config):
    """No kernel addresses memory outside the tensors it is given (``tests/interpreter_bounds.py``):
    on a GPU such an access faults or silently reads a neighbour's memory."""
    with bounds_checked():
        errs = compare(**shape, dtype=torch.float32, config=config, with_initial=True, with_final_grad=True)
    assert_close(errs, torch.float32)


@pytest.mark.gpu
def test_gpu_outputs_are_fully_written():
    """The same NaN-poisoned allocation on the GPU, at a large shape."""
    with _triton.poisoned_outputs():
        errs = compare(1, 2, 1000, 64, 64, dtype=torch.bfloat16, with_initial=True, with_final_grad=True)
    assert_close(errs, torch.bfloat16)
