"""kernels.lightning against reference.lightning: outputs and gradients (q, k, v, initial state).

On a CPU these run in Triton's interpreter (``tl.dot`` exact) on small shapes; the ``gpu`` tests run
the same comparison on a CUDA GPU at large shapes and in bf16.

Tolerances (relative Frobenius error against a float64 reference):

==========================  ============  ==============================================
where                       dtype         tolerance
==========================  ============  ==============================================
interpreter (CPU)           fp32          1e-4   (observed ~1e-7)
interpreter (CPU)           fp16          5e-3   (inputs rounded to fp16: ~3e-4 observed)
GPU                         fp32          1e-4   (IEEE fp32 products, no tf32)
GPU                         fp16          5e-3
GPU                         bf16          3e-2   (8-bit mantissa inputs, state rounded to bf16
                                                 as a product operand)
==========================  ============  ==============================================
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import lightning as ref
from tests.conftest import HAS_GPU, PROFILE
from tests.compile_check import compile_in_subprocess
from tests.interpreter_bounds import bounds_checked
from tests.strategies import decays, rel_err

pytest.importorskip("triton", reason="Triton is installed on Linux only (pyproject.toml)")
from kernels import _triton, lightning  # noqa: E402  (after conftest has set TRITON_INTERPRET)

DEVICE = "cuda" if HAS_GPU else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
EXAMPLES = {"dev": 5, "ci": 10, "thorough": 60}[PROFILE]


def compare(B, H, T, K, V, decay, *, dtype, chunk_size=64, segment_size=None, with_initial=False,
            with_final_grad=False, scale=0.5, device=DEVICE, seed=0, config=None):  # fmt: skip
    """Run kernel and float64 reference on the same random inputs; return relative errors."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, d, generator=g) for d in (K, K, V))
    s0 = torch.randn(B, H, K, V, generator=g) if with_initial else None
    do = torch.randn(B, H, T, V, generator=g)
    ds = torch.randn(B, H, K, V, generator=g) if with_final_grad else None

    leaves = [x.to(device, dtype).requires_grad_() for x in (q, k, v)]
    s0_k = s0.clone().to(device).requires_grad_() if with_initial else None
    o, s = lightning.attention(*leaves, decay, scale=scale, initial_state=s0_k, output_final_state=True,
                               chunk_size=chunk_size, segment_size=segment_size, config=config)  # fmt: skip
    loss = (o.double() * do.to(device).double()).sum()
    if with_final_grad:
        loss = loss + (s.double() * ds.to(device).double()).sum()
    loss.backward()

    # The reference sees the same (rounded) inputs, in float64.
    r_leaves = [x.detach().double().requires_grad_() for x in leaves]
    s0_r = s0.to(device).double().detach().requires_grad_() if with_initial else None
    o_r, s_r = ref.chunked(*r_leaves, np.asarray(decay, dtype=np.float64), scale=scale, initial_state=s0_r, chunk_size=16)
    loss_r = (o_r * do.to(device).double()).sum()
    if with_final_grad:
        loss_r = loss_r + (s_r * ds.to(device).double()).sum()
    loss_r.backward()

    errs = {"o": rel_err(o, o_r), "final_state": rel_err(s, s_r)}
    for name, a, b in zip(("dq", "dk", "dv"), leaves, r_leaves):
        errs[name] = rel_err(a.grad, b.grad)
    if with_initial:
        errs["d_initial_state"] = rel_err(s0_k.grad, s0_r.grad)
    return errs


def assert_close(errs, dtype):
    bad = {k: v for k, v in errs.items() if not v < TOL[dtype]}
    assert not bad, f"relative errors above {TOL[dtype]:g} for {dtype}: {bad} (all: {errs})"


@st.composite
def small_problems(draw):
    H = draw(st.integers(1, 3))
    chunk = draw(st.sampled_from([16, 32]))
    T = draw(st.integers(1, 3 * chunk + 5))
    segment = draw(st.one_of(st.none(), st.sampled_from([chunk, 2 * chunk])))
    return dict(
        B=draw(st.integers(1, 2)),
        H=H,
        T=T,
        K=draw(st.integers(1, 24)),
        V=draw(st.integers(1, 40)),
        decay=draw(decays(H, min_decay=0.3)),
        chunk_size=chunk,
        segment_size=segment,
        with_initial=draw(st.booleans()),
        with_final_grad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=EXAMPLES)
@given(problem=small_problems())
def test_kernel_fp32_matches_reference(problem):
    assert_close(compare(**problem, dtype=torch.float32), torch.float32)


@settings(max_examples=max(2, EXAMPLES // 2))
@given(problem=small_problems())
def test_kernel_with_the_other_dkdv_path_matches_reference(problem):
    """The backward has two reverse paths (one fused dK/dV pass, or two chunk-scan walks): test both."""
    other = lightning.Config(fused_dkdv=not lightning.DEFAULT_CONFIG.fused_dkdv)
    assert_close(compare(**problem, dtype=torch.float32, config=other), torch.float32)


@settings(max_examples=max(2, EXAMPLES // 2))
@given(problem=small_problems())
def test_kernel_fp16_matches_reference(problem):
    assert_close(compare(**problem, dtype=torch.float16), torch.float16)


def test_numpy_scalar_scale_is_accepted():
    q = torch.randn(1, 2, 20, 8, device=DEVICE)
    a = lightning.attention(q, q, q, [0.5, 0.9], scale=np.float32(0.5))
    b = lightning.attention(q, q, q, [0.5, 0.9], scale=0.5)
    assert torch.equal(a, b)


def test_kernel_without_state_outputs_only_o():
    q = torch.randn(1, 2, 20, 8, device=DEVICE)
    o = lightning.attention(q, q, q, [0.5, 0.9])
    assert isinstance(o, torch.Tensor) and o.shape == (1, 2, 20, 8)
    assert torch.isfinite(o).all()


def test_strong_decay_and_long_blocks_stay_finite():
    """λ = 0.05 over 128-token blocks: λ^(n-j) would overflow if formed as λ^n / λ^j."""
    errs = compare(1, 2, 150, 8, 8, [0.05, 0.3], dtype=torch.float32, chunk_size=128, with_initial=True,
                   with_final_grad=True)  # fmt: skip
    assert_close(errs, torch.float32)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(q=torch.zeros(1, 2, 4, 3, dtype=torch.float64)), TypeError, "q must be float32, float16 or bfloat16"),
        (dict(k=torch.zeros(1, 2, 5, 3)), ValueError, "k must have the shape of q"),
        (dict(v=torch.zeros(1, 3, 4, 3)), ValueError, "v must have batch, heads and length"),
        (dict(q=torch.zeros(2, 4, 3)), ValueError, "q must have 4 dimensions"),
        (dict(decay=[0.5]), ValueError, r"decay must have shape \[H\]"),
        (dict(decay=[0.5, 1.2]), ValueError, r"decay must lie in \(0, 1\]"),
        (dict(chunk_size=48), ValueError, "chunk_size must be 16, 32, 64 or 128"),
        (dict(segment_size=40), ValueError, "segment_size must be a positive multiple"),
        (dict(initial_state=torch.zeros(1, 2, 3, 4)), ValueError, "initial_state must have shape"),
        (dict(scale=float("nan")), ValueError, "scale must be finite"),
        (dict(scale="1"), TypeError, "scale must be a real number"),
        (dict(chunk_size=64.0), ValueError, "chunk_size must be 16, 32, 64 or 128"),
        (dict(decay=None), TypeError, "decay must be a sequence or array"),
        (dict(decay="ab"), TypeError, "decay must be a sequence or array"),
        (dict(q=torch.zeros(1, 2, 4, 300), k=torch.zeros(1, 2, 4, 300)), ValueError, "head widths must lie in 1..256"),
        (dict(config={"num_warps": 4}), TypeError, "config must be a kernels.lightning.Config"),
        (dict(output_final_state="yes"), TypeError, "output_final_state must be True or False"),
        (dict(initial_state=torch.zeros(1, 2, 3, 3, dtype=torch.int32)), TypeError, "initial_state must be a floating"),
    ],
)
def test_bad_input_raises_a_clear_error(kwargs, exc, words):
    args = dict(q=torch.zeros(1, 2, 4, 3), k=torch.zeros(1, 2, 4, 3), v=torch.zeros(1, 2, 4, 3), decay=[0.5, 0.9])
    args.update(kwargs)
    q, k, v, decay = (args.pop(n) for n in ("q", "k", "v", "decay"))
    q, k, v = (x.to(DEVICE) for x in (q, k, v))
    if "initial_state" in args:
        args["initial_state"] = args["initial_state"].to(DEVICE)
    with pytest.raises(exc, match=words):
        lightning.attention(q, k, v, decay, **args)


# ------------------------------------------------------------------------------------------ GPU


# Each case compiles its own kernel variants (dtype, widths, segment flags): a few seconds apiece on
# a fresh machine, so the matrix covers each axis without taking its full product.
GPU_CASES = [
    # (shape, dtype, segment_size)
    (dict(B=2, H=4, T=4096, K=128, V=128), torch.bfloat16, None),  # the benchmark's head width
    (dict(B=2, H=4, T=4096, K=128, V=128), torch.float16, None),
    (dict(B=2, H=4, T=4096, K=128, V=128), torch.float32, None),
    (dict(B=2, H=4, T=4096, K=128, V=128), torch.bfloat16, 512),  # forced segments
    (dict(B=2, H=4, T=4096, K=128, V=128), torch.float32, 512),
    (dict(B=1, H=3, T=3001, K=64, V=96), torch.bfloat16, None),  # odd length, unequal widths
    (dict(B=1, H=2, T=777, K=256, V=256), torch.bfloat16, 256),  # the widest heads
    (dict(B=1, H=2, T=100, K=20, V=12), torch.float32, None),  # narrow heads (tiles padded to 16)
]


@pytest.mark.gpu
@pytest.mark.parametrize("shape, dtype, segment_size", GPU_CASES,
                         ids=["x".join(map(str, s.values())) + f"-{str(d)[6:]}-seg{g}" for s, d, g in GPU_CASES])  # fmt: skip
def test_gpu_large_shapes(shape, dtype, segment_size):
    decay = ref.tnl_decay(shape["H"]) if shape["H"] > 2 else [0.3, 0.99]
    errs = compare(**shape, decay=decay, dtype=dtype, segment_size=segment_size, with_initial=True,
                   with_final_grad=True, scale=shape["K"] ** -0.5)  # fmt: skip
    assert_close(errs, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, segment_size", [(torch.bfloat16, None), (torch.float32, 512)], ids=["bf16", "fp32-seg512"])
def test_gpu_other_dkdv_path(dtype, segment_size):
    """Whichever reverse path is not the default is still right on the GPU."""
    other = lightning.Config(fused_dkdv=not lightning.DEFAULT_CONFIG.fused_dkdv)
    errs = compare(2, 4, 3001, 128, 128, ref.tnl_decay(4), dtype=dtype, segment_size=segment_size,
                   with_initial=True, with_final_grad=True, scale=128**-0.5, config=other)  # fmt: skip
    assert_close(errs, dtype)


@pytest.mark.parametrize("segment_size", [None, 32, 64])
@pytest.mark.parametrize("fused", [False, True], ids=["two-walks", "fused-dkdv"])
def test_every_output_element_is_written(segment_size, fused):
    """Outputs, final state and all gradients are finite and right when buffers start as NaN."""
    with _triton.poisoned_outputs():
        errs = compare(2, 2, 100, 20, 12, [0.5, 0.9], dtype=torch.float32, chunk_size=16, segment_size=segment_size,
                       with_initial=True, with_final_grad=True, config=lightning.Config(fused_dkdv=fused))  # fmt: skip
    assert_close(errs, torch.float32)


@pytest.mark.skipif(HAS_GPU, reason="checks the interpreter's loads and stores")
@pytest.mark.parametrize("segment_size", [None, 32])
@pytest.mark.parametrize("fused", [False, True], ids=["two-walks", "fused-dkdv"])
def test_every_load_and_store_stays_inside_its_tensors(segment_size, fused):
    """No kernel addresses memory outside the tensors it is given (``tests/interpreter_bounds.py``):
    on a GPU such an access faults or silently reads a neighbour's memory. K > V, a ragged last block."""
    with bounds_checked():
        errs = compare(1, 2, 100, 40, 24, [0.5, 0.9], dtype=torch.float32, chunk_size=16, segment_size=segment_size,
                       with_initial=True, with_final_grad=True, config=lightning.Config(fused_dkdv=fused))  # fmt: skip
    assert_close(errs, torch.float32)


@pytest.mark.skipif(HAS_GPU, reason="the interpreter's bf16 path")
def test_bf16_in_the_interpreter_is_computed_in_fp32():
    """The interpreter's bf16 arithmetic is broken; the kernel must not return its garbage."""
    errs = compare(1, 2, 40, 16, 16, [0.5, 0.9], dtype=torch.bfloat16, chunk_size=16, with_initial=True,
                   with_final_grad=True)  # fmt: skip
    assert_close(errs, torch.bfloat16)


@pytest.mark.gpu
def test_gpu_every_output_element_is_written():
    """The same NaN-poisoned allocation on the GPU, at a large shape with segments."""
    with _triton.poisoned_outputs():
        errs = compare(2, 4, 3001, 128, 128, ref.tnl_decay(4), dtype=torch.bfloat16, segment_size=512,
                       with_initial=True, with_final_grad=True, scale=128**-0.5)  # fmt: skip
    assert_close(errs, torch.bfloat16)


def test_kernels_compile_for_the_h100():
    """Every Lightning kernel, with the arguments a real call passes, compiles to an sm_90 cubin with
    the ptxas of Triton's wheel (``kernels.tools``; no GPU needed) and fits an H100 block's shared memory."""
    code = ("import json; from kernels import tools, lightning\n"
            "print(json.dumps(tools.compile_lightning(config=lightning.Config(fused_dkdv=True))))")  # fmt: skip
    (reports,) = compile_in_subprocess(code)
    assert set(reports) == {"_segment_state_kernel", "_segment_scan_kernel", "_chunk_scan_kernel", "_dkdv_kernel"}
    for name, info in reports.items():
        assert info["shared_bytes"] <= 227 * 1024, (name, info)
