"""kernels.seer against float64 oracles: the gate's ground truth, and block pooling; ``gate_topk``
against ``reference.seer``'s gate and selection.

On a CPU these run in Triton's interpreter on small shapes; the ``gpu`` tests run large shapes.
Oracles: ``dense_ground_truth`` below (the causal probabilities materialised in float64, max-pooled
in 2-D, rows renormalised), ``reference.testing.oracles_seer`` (loops) and ``reference.seer``.
Tolerances (relative Frobenius error): fp32 1e-4 (observed ≤ 3e-7), fp16 5e-3 (inputs rounded to
fp16 for the oracle), bf16 on the GPU 2e-2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.testing.strategies import rel_err
from tests.conftest import HAS_GPU, PROFILE
from tests.interpreter_bounds import bounds_checked

pytest.importorskip("triton", reason="Triton is installed on Linux only (pyproject.toml)")
from kernels import _triton, seer  # noqa: E402  (after conftest has set TRITON_INTERPRET)
from tests.compile_check import compile_in_subprocess  # noqa: E402
from tests.test_block_sparse_kernel import COMPILE_HELPER  # noqa: E402

DEVICE = "cuda" if HAS_GPU else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}
EXAMPLES = {"dev": 4, "ci": 6, "thorough": 60}[PROFILE]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dense_ground_truth(q, k, block, scale=None):
    """float64: ``P`` causal softmax, ``max`` over each (query block, key block), rows divided by their sum."""
    q, k = q.detach().cpu().double(), k.detach().cpu().double()
    B, H, T, K = q.shape
    k = k.repeat_interleave(H // k.shape[1], 1)
    scale = K**-0.5 if scale is None else scale
    t = torch.arange(T)
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(t[None, :] > t[:, None], float("-inf"))
    P = s.softmax(-1)
    n = -(-T // block)
    pad = n * block - T
    pooled = torch.nn.functional.pad(P, (0, pad, 0, pad)).view(B, H, n, block, n, block).amax((3, 5))
    return pooled / pooled.sum(-1, keepdim=True)


def qk(B, H, Hkv, T, K, *, dtype, seed, magnitude=1.0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, K, generator=g) * magnitude
    k = torch.randn(B, Hkv, T, K, generator=g) * magnitude
    return q.to(device, dtype), k.to(device, dtype)


@st.composite
def problems(draw):
    block = draw(st.sampled_from([16, 32]))
    Hkv = draw(st.integers(1, 2))
    return dict(
        B=draw(st.integers(1, 2)),
        H=Hkv * draw(st.integers(1, 2)),
        Hkv=Hkv,
        T=draw(st.integers(1, 3 * block + 5)),
        K=draw(st.integers(1, 40)),
        block=block,
        scale=draw(st.sampled_from([None, 0.3])),
        magnitude=draw(st.sampled_from([1.0, 3.0])),
        seed=draw(st.integers(0, 2**16)),
        config=seer.Config(block_rows=draw(st.sampled_from([1, 2, 4]))),
    )


def compare(B, H, Hkv, T, K, *, block, dtype, seed=0, scale=None, magnitude=1.0, config=None):
    q, k = qk(B, H, Hkv, T, K, dtype=dtype, seed=seed, magnitude=magnitude)
    got = seer.ground_truth(q, k, block=block, scale=scale, config=config)
    n = -(-T // block)
    assert got.dtype == torch.float32 and got.shape == (B, H, n, n)
    assert (got.cpu().triu(1) == 0).all(), "zeros above the diagonal"
    return rel_err(got, dense_ground_truth(q, k, block, scale))


@settings(max_examples=EXAMPLES)
@given(problem=problems())
def test_ground_truth_fp32_matches_the_dense_oracle(problem):
    assert compare(**problem, dtype=torch.float32) < TOL[torch.float32]


@settings(max_examples=max(2, EXAMPLES // 2))
@given(problem=problems())
def test_ground_truth_fp16_matches_the_dense_oracle(problem):
    assert compare(**problem, dtype=torch.float16) < TOL[torch.float16]


@pytest.mark.parametrize(
    "shape, block, rows",
    [
        (dict(B=1, H=4, Hkv=2, T=150, K=64), 64, 1),
        (dict(B=1, H=4, Hkv=2, T=150, K=64), 64, 2),
        (dict(B=2, H=2, Hkv=1, T=77, K=24), 16, 1),
        (dict(B=2, H=6, Hkv=2, T=77, K=24), 16, 8),
        (dict(B=1, H=2, Hkv=2, T=100, K=48), 32, 2),
        (dict(B=1, H=2, Hkv=1, T=97, K=16), 32, 4),
    ],
    ids=["gqa-64", "gqa-64-two-rows", "16", "gqa-16-eight-rows", "32-two-rows", "32-four-rows-past-the-end"],
)
def test_ground_truth_shapes_gqa_blocks_and_tiles(shape, block, rows):
    """Odd T (the last partial block), GQA, and query tiles of several block-rows, the last tile
    reaching past the last block-row (97 tokens are 4 blocks of 32: a 4-row tile from row 0)."""
    cfg = seer.Config(block_rows=rows)
    assert compare(**shape, block=block, dtype=torch.float32, seed=5, magnitude=2.0, config=cfg) < TOL[torch.float32]


def test_wide_fp32_heads_fit_with_one_block_row_per_program():
    """fp32, K = 256, blocks of 64: the default's two block-rows per program would plan 256 KiB of
    shared memory. Asked for explicitly, that is refused (the error naming ``block_rows``); by
    default the call falls back to one block-row, which fits, and is exact."""
    q, k = qk(1, 2, 1, 70, 256, dtype=torch.float32, seed=2)
    with pytest.raises(ValueError, match=r"shared memory.*Config\(block_rows=1\)"):
        seer.ground_truth(q, k, block=64, config=seer.Config(block_rows=2))
    assert compare(1, 2, 1, 70, 256, block=64, dtype=torch.float32, seed=2) < TOL[torch.float32]
    cfg = seer.Config(block_rows=1)
    assert compare(1, 2, 1, 70, 256, block=64, dtype=torch.float32, seed=2, config=cfg) < TOL[torch.float32]


def test_ground_truth_agrees_with_the_reference_and_the_loop_oracle():
    from reference import seer as ref
    from reference.testing import oracles_seer

    q, k = qk(1, 4, 2, 40, 6, dtype=torch.float32, seed=3, magnitude=2.0)
    got = seer.ground_truth(q, k, block=16, scale=0.7)
    assert rel_err(got, ref.ground_truth(q.cpu().double(), k.cpu().double(), block=16, scale=0.7)) < 1e-5
    assert rel_err(got, oracles_seer.ground_truth(q.cpu().numpy(), k.cpu().numpy(), block=16, scale=0.7)) < 1e-5


def test_ground_truth_rows_sum_to_one_with_peaked_logits():
    """Logits of ±hundreds (nearly one-hot rows): finite, rows sum to 1."""
    q, k = qk(1, 2, 1, 70, 16, dtype=torch.float32, seed=1, magnitude=8.0)
    got = seer.ground_truth(q, k, block=16)
    assert torch.isfinite(got).all() and torch.allclose(got.sum(-1), torch.ones(1, 2, 5, device=DEVICE), atol=1e-5)
    assert rel_err(got, dense_ground_truth(q, k, 16)) < 1e-4


@pytest.mark.skipif(HAS_GPU, reason="the interpreter's bf16 path")
def test_ground_truth_bf16_in_the_interpreter_is_computed_in_fp32():
    assert compare(1, 2, 1, 40, 16, block=16, dtype=torch.bfloat16, seed=2) < TOL[torch.bfloat16]


def test_every_output_element_is_written():
    with _triton.poisoned_outputs():
        assert compare(2, 2, 1, 70, 20, block=16, dtype=torch.float32, seed=4) < TOL[torch.float32]
        cfg = seer.Config(block_rows=4)
        assert compare(1, 2, 1, 70, 20, block=16, dtype=torch.float32, seed=4, config=cfg) < TOL[torch.float32]
        x = torch.randn(2, 3, 50, 20, device=DEVICE)
        y = seer.pool_features(x, block=16)
    assert torch.isfinite(y).all()


@pytest.mark.skipif(HAS_GPU, reason="checks the interpreter's loads and stores")
def test_every_load_and_store_stays_inside_its_tensors():
    with bounds_checked():
        assert compare(1, 2, 1, 45, 20, block=16, dtype=torch.float32, seed=7) < TOL[torch.float32]
        cfg = seer.Config(block_rows=2)
        assert compare(1, 2, 1, 45, 20, block=16, dtype=torch.float32, seed=7, config=cfg) < TOL[torch.float32]
        x = torch.randn(1, 2, 45, 20, device=DEVICE)
        seer.pool_features(x, block=32, kinds=("avg", "min"))


def test_refuses_inputs_that_require_a_gradient():
    q, k = qk(1, 1, 1, 20, 8, dtype=torch.float32, seed=0)
    with pytest.raises(ValueError, match="no backward pass"):
        seer.ground_truth(q.requires_grad_(), k, block=16)


# ------------------------------------------------------------------------------------------ pooling


@pytest.mark.parametrize("block", [16, 32, 64, 24])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pool_matches_the_loop_oracle_and_the_reference(block, dtype):
    """Every kind, the last partial block over its real tokens; ``pool_features`` side by side.
    (A block that is not a power of two in 16..128 goes through torch: same results.)"""
    from reference import seer as ref
    from reference.testing import oracles_seer

    g = torch.Generator().manual_seed(block)
    x = (torch.randn(2, 3, 77, 20, generator=g) * 3).to(DEVICE, dtype)
    x64 = x.cpu().double()
    for kind in ("avg", "max", "min"):
        got = seer.pool(x, block=block, kind=kind)
        assert got.dtype == dtype and got.shape == (2, 3, -(-77 // block), 20)
        want = oracles_seer.pool(x64.numpy(), block=block, kind=kind)
        assert rel_err(got, want) < (1e-6 if dtype == torch.float32 else 1e-3), kind
        assert rel_err(got, ref.pool(x64, block=block, kind=kind)) < (1e-6 if dtype == torch.float32 else 1e-3)
    feats = seer.pool_features(x, block=block)  # the gate's key features: [max, min, avg]
    want = torch.cat([seer.pool(x, block=block, kind=kd) for kd in ("max", "min", "avg")], dim=-1)
    assert torch.equal(feats, want)


@pytest.mark.parametrize("per_program", [2, 4])
def test_pool_several_blocks_per_program(per_program):
    """Programs of several consecutive blocks (the last program reaching past the last block)
    pool what one block per program pools."""
    x = torch.randn(2, 3, 77, 20, device=DEVICE)  # 5 blocks of 16
    with _triton.poisoned_outputs():
        got = seer._pool(x, 16, ("max", "min", "avg"), per_program=per_program)
    assert torch.equal(got, seer._pool(x, 16, ("max", "min", "avg")))
    assert rel_err(got, torch.cat([seer._torch_pool(x, 16, kd) for kd in ("max", "min", "avg")], -1)) < 1e-6


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(kind="mean"), ValueError, "kind must be one of"),
        (dict(block=0), ValueError, "block must be a positive int"),
        (dict(x=torch.zeros(2, 5, 4)), ValueError, "x must have 4 dimensions"),
        (dict(x=torch.zeros(1, 1, 5, 4, dtype=torch.int32)), TypeError, "x must be float32"),
    ],
)
def test_pool_bad_input_raises_a_clear_error(kwargs, exc, words):
    args = dict(x=torch.zeros(1, 1, 5, 4), block=16, kind="avg")
    args.update(kwargs)
    x = args.pop("x").to(DEVICE)
    with pytest.raises(exc, match=words):
        seer.pool(x, **args)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(k=torch.zeros(1, 3, 20, 8)), ValueError, "Hkv dividing H"),
        (dict(block=100), ValueError, "block must be one of"),
        (dict(q=torch.zeros(1, 2, 20, 256), k=torch.zeros(1, 1, 20, 256), block=128), ValueError, "shared memory"),
        (dict(scale="x"), TypeError, "scale must be a real number"),
        (dict(config=seer.DEFAULT_CONFIG.__dict__), TypeError, "config must be a kernels.seer.Config"),
        (dict(config=seer.Config(block_rows=3)), ValueError, "block_rows must be 1, 2, 4 or 8"),
        (dict(config=seer.Config(block_rows=2.0)), ValueError, "block_rows must be 1, 2, 4 or 8"),
        (dict(config=seer.Config(block_rows=2), block=128), ValueError, "block_rows · block ≤ 128"),
    ],
)
def test_ground_truth_bad_input_raises_a_clear_error(kwargs, exc, words):
    args = dict(q=torch.zeros(1, 2, 20, 8), k=torch.zeros(1, 1, 20, 8), block=16)
    args.update(kwargs)
    q, k = args.pop("q").to(DEVICE), args.pop("k").to(DEVICE)
    with pytest.raises(exc, match=words):
        seer.ground_truth(q, k, **args)


# ------------------------------------------------------------------------------------------ the gate


def gate_case(B, H, Hkv, T, D, dg, block, *, seed, device=DEVICE):
    """Pre-RoPE q, k and a reference ``AttnGate``; its projected (unrotated) gate queries and keys."""
    from reference import seer as ref

    g = torch.Generator().manual_seed(seed)
    q_pre, k_pre = torch.randn(B, H, T, D, generator=g), torch.randn(B, Hkv, T, D, generator=g)
    gate = ref.AttnGate(H, Hkv, D, gate_dim=dg, block=block, seed=seed)
    with torch.no_grad():
        q_pool, k_pool = gate.pooled(q_pre, k_pre)
        qg, kg = q_pool @ gate.q_proj, k_pool @ gate.k_proj[None]
    return gate, q_pre, k_pre, q_pool, k_pool, qg.to(device), kg.to(device)


@pytest.mark.parametrize(
    "shape, density",
    [
        (dict(B=1, H=4, Hkv=2, T=150, D=8, dg=16, block=16), 0.3),
        (dict(B=2, H=2, Hkv=1, T=77, D=6, dg=12, block=8), 0.5),
        (dict(B=1, H=2, Hkv=2, T=300, D=8, dg=32, block=8), 0.1),
        (dict(B=1, H=1, Hkv=1, T=5, D=4, dg=4, block=16), 1.0),
    ],
    ids=["gqa", "odd-T-dg12", "38-rows", "one-block"],
)
def test_gate_topk_equals_the_reference_gate_and_selection(shape, density):
    """``gate_topk`` = ``select_topk(gate_scores(RoPE(q̃), RoPE(k̃)))`` of ``reference.seer``:
    the probabilities to 1e-5, the mask exactly, the achieved density the rule's."""
    from reference import seer as ref

    gate, *_, q_pool, k_pool, qg, kg = gate_case(**shape, seed=3)
    with torch.no_grad():
        want = gate.from_pooled(q_pool, k_pool, log=False)
    with _triton.poisoned_outputs():
        mask, probs = seer.gate_topk(qg, kg, density=density, block=shape["block"], return_probs=True)
    assert mask.dtype == torch.bool and probs.dtype == torch.float32
    assert rel_err(probs, want) < 1e-5
    assert torch.equal(mask.cpu(), ref.select_topk(want, density=density))
    n = want.shape[-1]
    assert int(mask.sum()) == shape["B"] * shape["H"] * sum(ref.blocks_per_row(n, density))


def test_gate_topk_in_fp16_equals_the_reference_on_the_rounded_rotations():
    """fp16 gate queries and keys: the reference's gate on its own fp16 RoPE outputs (scores in
    float64); the kernel rotates in fp32, rounds to fp16 and accumulates its products in fp32."""
    from reference import rope
    from reference import seer as ref

    *_, qg, kg = gate_case(1, 4, 2, 150, 8, 16, 16, seed=3)
    qh, kh = qg.half(), kg.half()
    starts = np.arange(qh.shape[2]) * 16
    want = ref.gate_scores(rope.apply(qh.cpu(), starts).double(), rope.apply(kh.cpu(), starts).double())
    mask, probs = seer.gate_topk(qh, kh, density=0.3, block=16, return_probs=True)
    assert rel_err(probs, want) < 1e-3
    assert torch.equal(mask.cpu(), ref.select_topk(want, density=0.3))


def test_gate_topk_breaks_ties_toward_the_lower_block():
    """Zero gate queries make every causal block equally probable: the lowest blocks are kept,
    as ``reference.seer.select_topk``'s stable ranking keeps them."""
    from reference import seer as ref

    *_, qg, kg = gate_case(1, 2, 1, 200, 8, 16, 8, seed=1)
    mask = seer.gate_topk(torch.zeros_like(qg), kg, density=0.3, block=8)
    assert torch.equal(mask.cpu(), ref.select_topk(ref.gate_scores(torch.zeros_like(qg).cpu(), kg.cpu()), density=0.3))
    i = 20  # row 20 keeps round(0.3 · 21) = 6: blocks 0..4 and its diagonal
    assert mask[0, 0, i].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 20]


@pytest.mark.skipif(HAS_GPU, reason="checks the interpreter's loads and stores")
def test_gate_topk_loads_and_stores_stay_inside_its_tensors():
    *_, qg, kg = gate_case(1, 2, 1, 45, 8, 16, 8, seed=2)
    with bounds_checked():
        seer.gate_topk(qg, kg, density=0.5, block=8)


def test_the_benchmarks_gate_selects_what_the_reference_selects():
    """``kernels.bench.block_sparse.gate_mask`` (the timed pipeline: our pooling, the projections,
    ``gate_topk``) and its torch-ops baseline against ``AttnGate`` → ``select_topk``."""
    from kernels.bench import block_sparse as bench
    from reference import seer as ref

    gate, q_pre, k_pre, *_ = gate_case(1, 4, 2, 100, 8, 16, 16, seed=4)
    with torch.no_grad():
        want = ref.select_topk(gate(q_pre, k_pre, log=False), density=0.3)
        wq, wk = gate.q_proj.detach(), gate.k_proj.detach()
        got = bench.gate_mask(q_pre.to(DEVICE), k_pre.to(DEVICE), wq.to(DEVICE), wk.to(DEVICE), block=16, density=0.3)
        base, _ = bench._TorchGate(7, 16, 16, 0.3, "cpu", torch.float32)(q_pre, k_pre, wq, wk)
    assert torch.equal(got.cpu(), want)
    assert torch.equal(base, want)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(k=torch.zeros(1, 3, 4, 8)), ValueError, "Hkv dividing H"),
        (dict(q=torch.zeros(1, 2, 4, 7), k=torch.zeros(1, 1, 4, 7)), ValueError, "even d_g"),
        (dict(density=0.0), ValueError, "density must be a real number in"),
        (dict(block=0), ValueError, "block must be a positive int"),
        (dict(rope_base=1.0), ValueError, "rope_base must be a real number > 1"),
        (dict(return_probs="yes"), TypeError, "return_probs must be True or False"),
        (dict(q=torch.zeros(2, 4, 8)), ValueError, "q_gate must have 4 dimensions"),
        (dict(k=torch.zeros(1, 1, 4, 8, dtype=torch.float16)), TypeError, "q_gate and k_gate must share one dtype"),
    ],
)
def test_gate_topk_bad_input_raises_a_clear_error(kwargs, exc, words):
    args = dict(q=torch.zeros(1, 2, 4, 8), k=torch.zeros(1, 1, 4, 8), density=0.5, block=16)
    args.update(kwargs)
    q, k = args.pop("q").to(DEVICE), args.pop("k").to(DEVICE)
    with pytest.raises(exc, match=words):
        seer.gate_topk(q, k, **args)


_COMPILE_FOR_H100 = COMPILE_HELPER + """
from kernels import seer

for dtype, K, block, cfg in [(torch.bfloat16, 128, 64, seer.config_for(64)), (torch.bfloat16, 128, 128, seer.config_for(128)),
                             (torch.float16, 64, 16, seer.config_for(16)),
                             (torch.bfloat16, 128, 64, seer.Config(block_rows=2, num_warps=8, num_stages=2))]:
    T = 32768 + 5
    with _triton.recorded_launches() as launches:
        seer._ground_truth(meta(1, 8, T, K, dtype=dtype), meta(1, 2, T, K, dtype=dtype), block, 0.1, cfg)
        seer._pool(meta(1, 2, T, K, dtype=dtype), block, ("max", "min", "avg"), per_program=cfg.block_rows)
    for name, info in compile_recorded(launches).items():
        print(json.dumps({"dtype": str(dtype), "block": block, "rows": cfg.block_rows, "kernel": name, **info}))
# the gate at 8k, 32k and 128k tokens in blocks of 64 as the benchmark times it (mask only), and
# with its probabilities at 32k
for n, probs in ((128, False), (512, False), (2048, False), (512, True)):
    with _triton.recorded_launches() as launches:
        seer._gate_topk(meta(1, 32, n, 128, dtype=torch.bfloat16), meta(1, 8, n, 128, dtype=torch.bfloat16),
                        0.1, 64, 128**-0.5, 10000.0, probs)
    for name, info in compile_recorded(launches).items():
        print(json.dumps({"dtype": "torch.bfloat16", "block": 64, "n": n, "probs": probs, "kernel": name, **info}))
"""


def test_kernels_compile_for_the_h100():
    """The ground-truth, gate and pooling kernels compiled for sm_90 as a real call launches them: shared
    memory fits, no register spills, warpgroup MMAs on the bf16 path."""
    reports = compile_in_subprocess(_COMPILE_FOR_H100)
    assert len(reports) == 16, reports
    for r in reports:
        assert r["shared_bytes"] <= 227 * 1024, r
        if "stack_bytes" in r:
            assert r["stack_bytes"] == 0, f"register spills: {r}"
        if r["kernel"] == "_ground_truth_kernel" and r["block"] >= 64 and "sass" in r:
            assert r["sass"]["HGMMA"] > 0, r


# ------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize(
    "shape, block, dtype, rows",
    [
        (dict(B=1, H=8, Hkv=2, T=4096 + 33, K=128), 64, torch.bfloat16, 1),
        (dict(B=1, H=8, Hkv=2, T=4096 + 33, K=128), 64, torch.bfloat16, 2),
        (dict(B=1, H=4, Hkv=4, T=4096, K=128), 128, torch.bfloat16, 1),
        (dict(B=2, H=2, Hkv=1, T=1500, K=64), 32, torch.float16, 4),
        (dict(B=1, H=2, Hkv=2, T=700, K=20), 16, torch.float32, 1),
    ],
    ids=["64-bf16", "64-bf16-two-rows", "128-bf16", "32-fp16-four-rows", "16-fp32"],
)
def test_gpu_ground_truth_large_shapes(shape, block, dtype, rows):
    with _triton.poisoned_outputs():
        q, k = qk(**shape, dtype=dtype, seed=1, magnitude=1.5)
        got = seer.ground_truth(q, k, block=block, config=seer.Config(block_rows=rows, num_warps=4 * rows if block == 64 else 4))
    want = dense_ground_truth(q, k, block)
    assert rel_err(got, want) < TOL[dtype], rel_err(got, want)


@pytest.mark.gpu
def test_gpu_pool_features_large():
    x = torch.randn(1, 8, 8192 + 17, 128, device=DEVICE, dtype=torch.bfloat16)
    with _triton.poisoned_outputs():
        got = seer.pool_features(x, block=64)
    want = torch.cat([seer._torch_pool(x, 64, kd) for kd in ("max", "min", "avg")], dim=-1)
    assert rel_err(got, want.float()) < 1e-2


@pytest.mark.gpu
def test_gpu_gate_topk_against_the_reference():
    """257 block-rows (odd), GQA, fp32 on the GPU (three-pass tf32 logits) against the reference on
    the CPU: probabilities to 1e-4; masks equal but for near-ties of the k-th probability."""
    from reference import seer as ref

    gate, *_, q_pool, k_pool, qg, kg = gate_case(1, 4, 2, 4096 + 17, 32, 64, 16, seed=6)
    with torch.no_grad():
        want = gate.from_pooled(q_pool, k_pool, log=False)
    with _triton.poisoned_outputs():
        mask, probs = seer.gate_topk(qg, kg, density=0.1, block=16, return_probs=True)
    assert rel_err(probs, want) < 1e-4
    assert int((mask.cpu() != ref.select_topk(want, density=0.1)).sum()) <= 4
