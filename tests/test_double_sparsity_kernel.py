"""kernels.double_sparsity (and the offloaded decoder) against reference.double_sparsity.

On a CPU these run in Triton's interpreter on small shapes; the ``gpu`` tests run at S = 32k in
fp16 and bf16 against a float32 torch computation over the same selected tokens.

Tolerances (relative Frobenius error against float64 ``reference.double_sparsity`` fed the same
rounded inputs):

==================  =======  =====================================================================
where               dtype    tolerance
==================  =======  =====================================================================
interpreter (CPU)   fp32     1e-4 (observed ≤ 3e-7)
interpreter (CPU)   fp16     5e-3 (the output is rounded to fp16; products accumulate in fp32)
interpreter (CPU)   bf16     3e-2 (computed in fp32 there, rounded to bf16)
GPU, same tokens    fp16     2e-3; bf16 1e-2 (against fp32 torch attention over our indices)
==================  =======  =====================================================================

The selection itself is compared as a set: random data has no near-ties at these sizes, and
integer data makes exact ties, which go to the lower token index as in the reference.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

from reference import double_sparsity as ref
from reference.testing.suites import double_sparsity as suite
from reference.testing.suites._base import using
from tests.conftest import HAS_GPU, PROFILE
from tests.compile_check import compile_in_subprocess
from tests.interpreter_bounds import bounds_checked

pytest.importorskip("triton", reason="Triton is installed on Linux only (pyproject.toml)")
from kernels import _triton  # noqa: E402  (after conftest has set TRITON_INTERPRET)
from kernels import double_sparsity as ds  # noqa: E402
from kernels import double_sparsity_offload as off  # noqa: E402

DEVICE = "cuda" if HAS_GPU else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
SUITE_EXAMPLES = {"dev": 4, "ci": 5, "thorough": 40}[PROFILE]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rel_err(actual, expected) -> float:
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(a).all(), "non-finite values in the result"
    return float((a - e).norm() / e.norm().clamp_min(1e-300))


def problem(B, H, Hkv, S, D, r, *, Dv=None, dtype=torch.float32, seed=0, integer=False):
    """``(q, k_cache, v_cache, channels)`` on DEVICE, in ``dtype``; channels distinct per kv head."""
    g = torch.Generator().manual_seed(seed)
    if integer:  # small integers: exact label scores, many exact ties
        q = torch.randint(-1, 2, (B, H, D), generator=g).float()
        k = torch.randint(-1, 2, (B, Hkv, S, D), generator=g).float()
    else:
        q, k = torch.randn(B, H, D, generator=g), torch.randn(B, Hkv, S, D, generator=g)
    v = torch.randn(B, Hkv, S, Dv or D, generator=g)
    channels = torch.stack([torch.randperm(D, generator=g)[:r] for _ in range(Hkv)])
    return (*(x.to(DEVICE, dtype) for x in (q, k, v)), channels)


def reference_decode(q, k, v, channels, top_k, scale=None):
    return ref.decode(q.double().cpu(), k.double().cpu(), v.double().cpu(), channels.cpu(), top_k=top_k, scale=scale)


# ------------------------------------------------------------------------ decode against the reference

CASES = [
    dict(B=1, H=2, Hkv=2, S=100, D=16, r=4, top_k=13),  # MHA
    dict(B=2, H=4, Hkv=2, S=77, D=32, r=3, top_k=12),  # GQA, odd S, two sequences
    dict(B=1, H=6, Hkv=2, S=41, D=20, r=1, top_k=5, Dv=12),  # groups of 3, one channel, D ≠ Dv, not powers of 2
    dict(B=1, H=2, Hkv=1, S=30, D=16, r=16, top_k=29),  # every channel (exact scores), top_k = S - 1
    dict(B=1, H=2, Hkv=2, S=1100, D=16, r=8, top_k=1),  # one token, several scoring tiles
    dict(B=1, H=4, Hkv=2, S=9, D=16, r=2, top_k=9),  # S = top_k: dense
    dict(B=2, H=2, Hkv=1, S=5, D=8, r=2, top_k=64),  # S < top_k: dense
]


def _case_id(c):
    return "-".join(f"{k}{v}" for k, v in c.items())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_decode_matches_reference(case, dtype):
    case = dict(case)
    top_k, Dv = case.pop("top_k"), case.pop("Dv", None)
    q, k, v, ch = problem(**case, Dv=Dv, dtype=dtype)
    o = ds.decode(q, k, v, ch, top_k=top_k, scale=0.3)
    assert o.dtype == dtype and o.shape == (case["B"], case["H"], Dv or case["D"])
    assert rel_err(o, reference_decode(q, k, v, ch, top_k, 0.3)) < TOL[dtype]


PREFETCH = ds.Config(attn_prefetch=True, attn_block=16, splits=3, radix_block=32)


@pytest.mark.parametrize("top_k", [100, 150], ids=["sparse", "dense"])
def test_prefetching_attention_and_small_radix_blocks_give_the_same_decode(top_k):
    """The attention loop that gathers the next tile before computing this one (three splits of
    three 16-row tiles, the last split ending mid-tile; the dense case) and one-tile radix passes
    of 32 tokens."""
    q, k, v, ch = problem(2, 4, 2, 150, 16, 3, Dv=24)
    o = ds.decode(q, k, v, ch, top_k=top_k, scale=0.3, config=PREFETCH)
    assert ds._splits(8, top_k, PREFETCH, q.device) == ((3, 48) if top_k == 100 else (3, 64))
    assert rel_err(o, reference_decode(q, k, v, ch, top_k, 0.3)) < 1e-4


def test_default_scale_is_one_over_sqrt_d():
    q, k, v, ch = problem(1, 2, 2, 50, 16, 4)
    assert rel_err(ds.decode(q, k, v, ch, top_k=7), reference_decode(q, k, v, ch, 7)) < 1e-4


class _KernelDecode:
    """The kernel as the property suite sees an implementation: float64 in, fp32 computed."""

    BACKEND = "torch"
    TOLERANCE = 1e-4

    @staticmethod
    def decode(q, k_cache, v_cache, channels, *, top_k, scale=None):
        f = lambda x: x.to(DEVICE, torch.float32) if isinstance(x, torch.Tensor) and x.is_floating_point() else x  # noqa: E731
        return ds.decode(f(q), f(k_cache), f(v_cache), channels, top_k=top_k, scale=scale).double().cpu()


SUITE = [p for p in suite.PROPERTIES if p.applies_to(_KernelDecode)]


@pytest.mark.parametrize("prop", SUITE, ids=[p.name for p in SUITE])
def test_the_double_sparsity_suite_holds_for_the_kernel(prop):
    """The reference suite's decode properties (oracle, dense limits, GQA, the selected set, ties to
    the lower index, argument errors), run on the kernel with a few examples each."""
    from hypothesis import HealthCheck

    chosen = settings(max_examples=SUITE_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])  # fmt: skip
    with using(chosen):
        prop.check(_KernelDecode)


# ------------------------------------------------------------------------ selection


def test_select_returns_the_reference_top_k_in_token_order():
    q, k, _, ch = problem(2, 4, 2, 300, 16, 4)
    idx = ds.select(q, ds.build_labels(k, ch), ch, top_k=37)
    assert idx.dtype == torch.int32 and idx.shape == (2, 4, 37)
    assert bool((idx[..., 1:] > idx[..., :-1]).all()), "indices must come in increasing token order"
    scores = ref.label_scores(q.double().cpu(), ref.gather_labels(k.double().cpu(), ch), ch)
    want = ref.top_k_indices(scores, 37).sort(dim=-1).values
    assert torch.equal(idx.cpu().long(), want)


def test_ties_go_to_the_lower_index_with_negative_and_zero_scores():
    q, k, _, ch = problem(1, 2, 2, 200, 4, 2, integer=True)  # scores in {-2, …, 2}: hundreds of ties
    idx = ds.select(q, ds.build_labels(k, ch), ch, top_k=50)
    scores = ref.label_scores(q.double().cpu(), ref.gather_labels(k.double().cpu(), ch), ch)
    want = ref.top_k_indices(scores, 50).sort(dim=-1).values
    assert torch.equal(idx.cpu().long(), want)


@pytest.mark.parametrize(
    "config",
    [
        ds.Config(score_block=16, score_tiles=2, radix_block=16, select_block=16, atomic_from_pass=1),  # all atomic
        ds.Config(score_block=32, score_tiles=1, radix_block=64, select_block=32, atomic_from_pass=4),  # histograms
        # fp32 keys in five digits (a 3-bit first one), radix programs of three 16-token tiles
        ds.Config(score_block=16, score_tiles=2, radix_block=16, radix_tiles=3, select_block=16, digits=(3, 5, 8, 8, 8)),
    ],
    ids=["atomic", "histogram", "five-digits-three-tiles"],
)
@pytest.mark.parametrize("integer", [False, True], ids=["random", "ties"])
def test_selection_is_the_same_for_every_launch_setting(config, integer):
    """Small tiles: ties straddle blocks, and every way of counting a digit gives the same set."""
    q, k, _, ch = problem(1, 2, 2, 230, 8, 3, integer=integer, seed=4)
    idx = ds.select(q, ds.build_labels(k, ch), ch, top_k=61, config=config)
    scores = ref.label_scores(q.double().cpu(), ref.gather_labels(k.double().cpu(), ch), ch)
    assert torch.equal(idx.cpu().long(), ref.top_k_indices(scores, 61).sort(dim=-1).values)


@pytest.mark.parametrize("score_dtype", ["float32", "float16"])
def test_counting_blocks_are_capped_where_two_running_counts_share_an_int32(score_dtype):
    """``select_block`` above 2**14 is capped: with 39,995 equal scores in a 65,536-token block the
    count of keys = τ, shifted up by 16 bits, would pass the int32 sign bit."""
    S, top_k = 40000, 39000
    lab = torch.zeros(1, 1, S, 1)
    lab[0, 0, -5:] = 1.0  # five scores above the tie, at the end
    cfg = ds.Config(select_block=1 << 16, score_dtype=score_dtype)
    idx = ds.select(torch.ones(1, 1, 1, device=DEVICE), lab.to(DEVICE), torch.tensor([[0]]), top_k=top_k, config=cfg)
    assert torch.equal(idx.view(-1).cpu().long(), torch.cat([torch.arange(top_k - 5), torch.arange(S - 5, S)]))


def test_torch_topk_selection_gives_the_same_set_without_ties():
    q, k, _, ch = problem(1, 2, 2, 150, 16, 4)
    lab = ds.build_labels(k, ch)
    a = ds.select(q, lab, ch, top_k=12)
    b = ds.select(q, lab, ch, top_k=12, config=ds.Config(select="torch"))
    assert torch.equal(a.cpu(), b.cpu().sort(dim=-1).values)


def test_select_needs_more_tokens_than_top_k():
    q, k, _, ch = problem(1, 2, 2, 10, 16, 2)
    with pytest.raises(ValueError, match="top_k"):
        ds.select(q, ds.build_labels(k, ch), ch, top_k=10)


# ------------------------------------------------------------------------ label caches


@pytest.mark.parametrize("bits", [8, 16])
def test_low_bit_labels_match_the_reference_on_the_same_labels(bits):
    """int8 (per-token fp16 scale) and fp16 labels: the reference fed the very labels we stored."""
    q, k, v, ch = problem(1, 4, 2, 120, 32, 16 if bits == 8 else 8)
    lab = ds.build_labels(k, ch, bits=bits)
    assert lab.values.dtype == (torch.int8 if bits == 8 else torch.float16)
    assert lab.nbytes() == 120 * 2 * (16 if bits == 8 else 16) + (120 * 2 * 2 if bits == 8 else 0)
    dequant = lab.values.double() * (lab.scale.double()[..., None] if bits == 8 else 1.0)
    o = ds.decode_with_labels(q, k, v, lab, ch, top_k=17)
    want = ref.decode_with_labels(q.double().cpu(), k.double().cpu(), v.double().cpu(), dequant.cpu(), ch, top_k=17)
    assert rel_err(o, want) < 1e-4


def test_int8_labels_are_within_half_a_step():
    _, k, _, ch = problem(2, 2, 2, 64, 16, 8)
    lab = ds.build_labels(k, ch, bits=8)
    exact = ref.gather_labels(k.double().cpu(), ch)
    step = lab.scale.double().cpu()[..., None]
    assert bool(((lab.values.double().cpu() * step - exact).abs() <= step / 2 + 1e-3 * step).all())


@pytest.mark.parametrize("bits", [None, 8])
def test_appending_labels_equals_building_them_at_once(bits):
    _, k, _, ch = problem(1, 2, 2, 40, 16, 4)
    lab = ds.build_labels(k[:, :, :30], ch, bits=bits)
    lab = ds.append_labels(lab, k[:, :, 30:], ch)
    whole = ds.build_labels(k, ch, bits=bits)
    assert torch.equal(lab.values, whole.values)
    assert (lab.scale is None and whole.scale is None) or torch.equal(lab.scale, whole.scale)


# ------------------------------------------------------------------------ attention over given rows


def test_sparse_attention_over_given_rows_is_exact_softmax_there():
    q, k, v, _ = problem(2, 4, 2, 90, 16, 1, Dv=24)
    g = torch.Generator().manual_seed(3)
    idx = torch.stack([torch.randperm(90, generator=g)[:33] for _ in range(8)]).view(2, 4, 33).to(DEVICE)
    o = ds.sparse_attention(q, k, v, idx, scale=0.5)
    kv = torch.arange(4) // 2
    want = torch.empty(2, 4, 24, dtype=torch.float64)
    for b in range(2):
        for h in range(4):
            rows = idx[b, h].long().cpu()
            p = torch.softmax(0.5 * k[b, kv[h], rows].double().cpu() @ q[b, h].double().cpu(), 0)
            want[b, h] = p @ v[b, kv[h], rows].double().cpu()
    assert rel_err(o, want) < 1e-5


# ------------------------------------------------------------------------ every element written, in bounds


def test_every_output_element_is_written():
    """Scores, indices, partial results and outputs come from the one allocation point: poisoned
    (NaN; an index's NaN bits are far outside any cache), the results are still exact."""
    q, k, v, ch = problem(2, 4, 2, 150, 16, 4)
    with _triton.poisoned_outputs():
        idx = ds.select(q, ds.build_labels(k, ch), ch, top_k=40)
        o_sparse = ds.decode(q, k, v, ch, top_k=40)
        o_dense = ds.decode(q, k, v, ch, top_k=150)
    assert bool(((idx >= 0) & (idx < 150)).all())
    assert rel_err(o_sparse, reference_decode(q, k, v, ch, 40)) < 1e-4
    assert rel_err(o_dense, reference_decode(q, k, v, ch, 150)) < 1e-4


@pytest.mark.skipif(HAS_GPU, reason="checks the interpreter's loads and stores")
def test_every_load_and_store_stays_inside_its_tensors():
    """No kernel addresses memory outside the tensors it is given (``tests/interpreter_bounds.py``)."""
    q, k, v, ch = problem(1, 6, 2, 70, 20, 3, Dv=12)
    with bounds_checked():
        o = ds.decode(q, k, v, ch, top_k=11)
        lab = ds.build_labels(k, ch, bits=8)
        o8 = ds.decode_with_labels(q, k, v, lab, ch, top_k=11)
        o_prefetch = ds.decode(q, k, v, ch, top_k=11, config=PREFETCH)
        o_dense = ds.decode(q, k, v, ch, top_k=70, config=PREFETCH)
        idx = ds.select(q, lab, ch, top_k=11)
        idx16 = ds.select(q, lab, ch, top_k=11, config=FP16_KEYS)
    assert rel_err(o, reference_decode(q, k, v, ch, 11)) < 1e-4
    assert bool(((idx16 >= 0) & (idx16 < 70)).all())
    assert rel_err(o_prefetch, o) < 1e-5 and rel_err(o_dense, reference_decode(q, k, v, ch, 70)) < 1e-4
    assert torch.isfinite(o8).all() and idx.shape == (1, 6, 11)
    q, k, v, ch = problem(1, 4, 2, 50, 16, 2)
    idx = ds.select(q, ds.build_labels(k, ch), ch, top_k=9)
    with bounds_checked():
        k_sel, v_sel = ds.gather_rows(idx.view(4, 9), k, v, 4)
    assert torch.equal(k_sel[0, 3], k[0, 1, idx[0, 3].long()])


@pytest.mark.skipif(HAS_GPU, reason="the interpreter's bf16 path")
def test_bf16_in_the_interpreter_is_computed_in_fp32():
    q, k, v, ch = problem(1, 2, 2, 60, 16, 4, dtype=torch.bfloat16)
    o = ds.decode(q, k, v, ch, top_k=9)
    assert o.dtype == torch.bfloat16
    assert rel_err(o, reference_decode(q, k, v, ch, 9)) < TOL[torch.bfloat16]


_COMPILE_FOR_H100 = """
import json
from kernels import tools
for name, info in tools.compile_double_sparsity().items():
    print(json.dumps({"launch": name, **info}))
"""


def test_kernels_compile_for_the_h100():
    """Every launch of the benchmark's path (int8 and fp16 labels, the radix passes, sparse and dense
    attention, the offload gather), compiled to an sm_90 cubin without a GPU: no register spills,
    shared memory within an H100 block."""
    reports = compile_in_subprocess(_COMPILE_FOR_H100)
    kernels = {r["launch"].split(" #")[0] for r in reports}
    assert kernels == {"_score_kernel", "_radix_kernel", "_count_kernel", "_write_kernel", "_attn_kernel",
                       "_merge_kernel", "_gather_rows_kernel"}, reports  # fmt: skip
    for r in reports:
        assert r["shared_bytes"] <= 227 * 1024, r
        assert r.get("stack_bytes", 0) == 0, f"register spills: {r}"


# ------------------------------------------------------------------------ argument errors


@pytest.mark.parametrize(
    "change, exc, words",
    [
        (dict(q=torch.zeros(2, 16)), ValueError, "q must have 3 dimensions"),
        (dict(k=torch.zeros(1, 3, 10, 16)), ValueError, "k_cache"),
        (dict(v=torch.zeros(1, 2, 9, 16)), ValueError, "v_cache"),
        (dict(q=torch.zeros(1, 4, 16, dtype=torch.float64)), TypeError, "q must be float32"),
        (dict(channels=torch.tensor([[0, 16], [1, 2]])), ValueError, "channels must lie in"),
        (dict(channels=torch.tensor([[1, 1], [1, 2]])), ValueError, "channels must not repeat"),
        (dict(channels=torch.tensor([[0.0, 1.0], [1.0, 2.0]])), TypeError, "channels must hold integer"),
        (dict(top_k=0), ValueError, "top_k"),
        (dict(top_k=2.5), TypeError, "top_k"),
        (dict(scale=float("inf")), ValueError, "scale"),
        (dict(config="fast"), TypeError, "config must be a kernels.double_sparsity.Config"),
        (dict(config=ds.Config(select="sort")), ValueError, "config.select"),
        (dict(config=ds.Config(score_dtype="bfloat16")), ValueError, "config.score_dtype"),
        (dict(config=ds.Config(score_dtype="float16", digits=(8, 8, 8, 8))), ValueError, "summing to 16"),
        (dict(config=ds.Config(digits=(16, 16))), ValueError, "config.digits"),
        (dict(config=ds.Config(atomic_from_pass=0)), ValueError, "config.atomic_from_pass"),
        (dict(config=ds.Config(radix_block=1000)), ValueError, "config.radix_block"),
        (dict(config=ds.Config(radix_tiles=0)), ValueError, "config.radix_tiles"),
        (dict(config=ds.Config(radix_tiles=True)), ValueError, "config.radix_tiles"),
        (dict(config=ds.Config(attn_prefetch="yes")), TypeError, "config.attn_prefetch must be True or False"),
    ],
)
def test_bad_input_raises_a_clear_error(change, exc, words):
    args = dict(q=torch.zeros(1, 4, 16), k=torch.zeros(1, 2, 10, 16), v=torch.zeros(1, 2, 10, 16),
                channels=torch.tensor([[0, 1], [2, 3]]), top_k=3, scale=None, config=None) | change  # fmt: skip
    tensors = [args.pop(n).to(DEVICE) for n in ("q", "k", "v")]
    with pytest.raises(exc, match=words):
        ds.decode(*tensors, args.pop("channels"), **args)


# ------------------------------------------------------------------------ offloading (the algorithm, on the CPU)


def _layers(L, B, H, Hkv, S, D, r, *, bits=None, seed=0, dtype=torch.float32, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    k = [torch.randn(B, Hkv, S, D, generator=g).to(dtype) for _ in range(L)]
    v = [torch.randn(B, Hkv, S, D, generator=g).to(dtype) for _ in range(L)]
    ch = [torch.stack([torch.randperm(D, generator=g)[:r] for _ in range(Hkv)]) for _ in range(L)]
    labels = [ds.build_labels(k[i].to(device), ch[i], bits=bits) for i in range(L)]
    return k, v, [c.to(device) for c in ch], labels


@pytest.mark.skipif(HAS_GPU, reason="the CPU path of the offloaded decoder (the GPU test covers pinned memory)")
@pytest.mark.parametrize("bits", [None, 8])
def test_offloaded_step_equals_the_on_device_sparse_step(bits):
    """Fetching each layer's selected rows into a buffer, with the query of layer l + 1 predicted
    from layer l's input, gives exactly the step that reads the caches in place."""
    L, B, H, Hkv, S, D = 2, 1, 2, 1, 60, 16
    model = off.SyntheticDecoder.random(L, 32, H, D, seed=1)
    k, v, ch, labels = _layers(L, B, H, Hkv, S, D, 4, bits=bits)
    x = torch.randn(B, 32, generator=torch.Generator().manual_seed(2))
    want = off.sparse_step(model, x, k, v, labels, ch, top_k=12)
    got = off.OffloadedDecoder(model, k, v, labels, ch, top_k=12).step(x)
    assert torch.equal(got, want)
    # without the prediction, each layer is decode_with_labels with its own query
    own = off.sparse_step(model, x, k, v, labels, ch, top_k=12, lookahead=False)
    h = model.norm(0, x)
    o0 = ds.decode_with_labels(model.query(0, h), k[0], v[0], labels[0], ch[0], top_k=12)
    one = off.sparse_step(off.SyntheticDecoder(model.w_q[:1], model.w_o[:1], model.norm_w[:1], H, D), x, k[:1],
                          v[:1], labels[:1], ch[:1], top_k=12)  # fmt: skip
    assert torch.allclose(one, model.output(0, x, o0))
    assert not torch.equal(own, want)  # the prediction does change later layers' selections here


# ------------------------------------------------------------------------ fp16 score keys

FP16_KEYS = ds.Config(score_dtype="float16")


def dyadic_problem(B, H, Hkv, S, D, r, *, seed=0):
    """Queries and keys on a grid of 1/64 (and below 8 in size): every label score (a sum of at most
    16 products, multiples of 2**-12 below 2**10) is exact in fp32 whatever the order of the sum, so
    its fp16 rounding is known exactly — and fp16's 11 bits round many of them together."""
    g = torch.Generator().manual_seed(seed)
    q = torch.round(torch.randn(B, H, D, generator=g).clamp(-7, 7) * 64) / 64
    k = torch.round(torch.randn(B, Hkv, S, D, generator=g).clamp(-7, 7) * 64) / 64
    channels = torch.stack([torch.randperm(D, generator=g)[:r] for _ in range(Hkv)])
    return q.to(DEVICE), k.to(DEVICE), channels


def exact_scores(q, k, ch):
    return ref.label_scores(q.double().cpu(), ref.gather_labels(k.double().cpu(), ch), ch)


def top_k_set(scores, top_k):
    return ref.top_k_indices(scores, top_k).sort(dim=-1).values


@pytest.mark.parametrize(
    "config",
    [
        FP16_KEYS,  # digits (5, 5, 6), histograms
        ds.Config(score_dtype="float16", atomic_from_pass=2, radix_block=128, radix_tiles=3),  # last digit by atomics
        ds.Config(score_dtype="float16", digits=(8, 8), atomic_from_pass=1, score_block=64, radix_block=64,
                  select_block=32),  # fmt: skip
        ds.Config(score_dtype="float16", digits=(2, 7, 7), score_block=32, score_tiles=2, radix_block=256),
        ds.Config(score_dtype="float16", digits=(4, 4, 4, 4), select_block=32),
    ],
    ids=["default", "atomic-last", "two-bytes-atomic", "histograms", "four-digits"],
)
def test_fp16_keys_select_the_exact_top_k_of_the_rounded_scores(config):
    """The fp16-key selection is the exact top-k of the fp16-rounded scores (ties to the lower index),
    for every digit layout; it differs from the fp32 selection, and only at scores within fp16
    rounding of the k-th."""
    q, k, ch = dyadic_problem(1, 4, 2, 1024, 16, 8, seed=1)  # seed 1: rounding moves 19 tokens across the k-th
    top_k = 64
    lab = ds.build_labels(k, ch)
    got = ds.select(q, lab, ch, top_k=top_k, config=config).cpu().long()
    s = exact_scores(q, k, ch)  # exact in fp32 too
    s16 = s.float().half().double()
    assert torch.equal(got, top_k_set(s16, top_k))
    fp32 = ds.select(q, lab, ch, top_k=top_k).cpu().long()
    assert torch.equal(fp32, top_k_set(s, top_k))
    kth = s.sort(dim=-1, descending=True).values[..., top_k - 1 : top_k]
    ulp = torch.finfo(torch.float16).eps * kth.abs().float().half().double()  # fp16 spacing at the k-th
    differs = 0
    for row in range(4):
        a, b = set(got.view(4, -1)[row].tolist()), set(fp32.view(4, -1)[row].tolist())
        for t in a ^ b:
            differs += 1
            assert abs(float(s.view(4, -1)[row, t] - kth.view(4)[row])) <= float(ulp.view(4)[row]), (row, t)
    assert differs > 0, "the data should make fp16 rounding change the selection somewhere"


@pytest.mark.parametrize("score_dtype", ["float32", "float16"])
def test_signed_zeros_tie_and_go_to_the_lower_index(score_dtype):
    """Scores of +0.0 and -0.0 are equal scores: the k-th falls among them, the lower indices win."""
    S, top_k = 64, 20
    q = torch.tensor([[[1.0, 1.0]]])
    lab = torch.zeros(1, 1, S, 2)
    lab[0, 0, 1::2] = -0.0  # -0.0 · 1 + -0.0 · 1 = -0.0: every odd token scores -0.0
    lab[0, 0, 40:45] = 1.0  # five positive scores
    lab[0, 0, 50:53] = -1.0  # three negative ones
    idx = ds.select(q.to(DEVICE), lab.to(DEVICE), torch.tensor([[0, 1]]), top_k=top_k,
                    config=ds.Config(score_dtype=score_dtype)).cpu().long()  # fmt: skip
    want = torch.tensor(sorted([40, 41, 42, 43, 44] + list(range(15))))
    assert torch.equal(idx.view(-1), want)


@pytest.mark.parametrize("integer", [False, True], ids=["random", "ties"])
def test_decode_with_fp16_keys_is_exact_attention_over_its_selection(integer):
    q, k, v, ch = problem(2, 4, 2, 200, 16, 4, integer=integer, seed=3)
    lab = ds.build_labels(k, ch)
    o = ds.decode_with_labels(q, k, v, lab, ch, top_k=30, scale=0.4, config=FP16_KEYS)
    idx = ds.select(q, lab, ch, top_k=30, config=FP16_KEYS)
    assert torch.equal(idx.cpu().long(), top_k_set(exact_scores(q, k, ch).float().half().double(), 30))
    assert torch.equal(o, ds.sparse_attention(q, k, v, idx, scale=0.4))


# ------------------------------------------------------------------------ GPU

GPU_CASES = [
    (dict(B=2, H=8, Hkv=8, S=32768, D=128, r=8), torch.float16, 16, 2048),
    (dict(B=1, H=8, Hkv=2, S=32768, D=128, r=16), torch.bfloat16, 8, 2048),
    (dict(B=1, H=4, Hkv=4, S=32771, D=64, r=8), torch.bfloat16, None, 777),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c[1]}-{c[2]}bit" if isinstance(c, tuple) else str(c))
def test_gpu_long_context_against_torch_on_the_same_tokens(case):
    """S = 32k: the output against float32 torch attention over the indices ``select`` chose, and
    the selection against torch.topk of float32 label scores (equal up to near-ties)."""
    shape, dtype, bits, top_k = case
    q, k, v, ch = problem(**shape, dtype=dtype, seed=5)
    lab = ds.build_labels(k, ch, bits=bits)
    o = ds.decode_with_labels(q, k, v, lab, ch, top_k=top_k)
    idx = ds.select(q, lab, ch, top_k=top_k)
    B, H, Hkv, D = shape["B"], shape["H"], shape["Hkv"], shape["D"]
    kvh = torch.arange(H, device=DEVICE) // (H // Hkv)
    k_sel = k[:, kvh].gather(2, idx.long()[..., None].expand(-1, -1, -1, D)).float()
    v_sel = v[:, kvh].gather(2, idx.long()[..., None].expand(-1, -1, -1, D)).float()
    p = torch.softmax(torch.einsum("bhd,bhkd->bhk", q.float(), k_sel) * D**-0.5, -1)
    want = torch.einsum("bhk,bhkd->bhd", p, v_sel)
    assert rel_err(o, want) < (2e-3 if dtype == torch.float16 else 1e-2)
    values = lab.values.float() * (lab.scale.float()[..., None] if lab.scale is not None else 1.0)
    qc = q.float()[:, :, None, :].expand(B, H, 1, D).gather(3, ch.to(DEVICE).long()[kvh][None, :, None, :].expand(B, H, 1, -1))
    scores = torch.einsum("bhr,bhsr->bhs", qc[:, :, 0], values[:, kvh])
    kth = scores.topk(top_k, dim=-1).values[..., -1:]
    chosen = scores.gather(2, idx.long())
    assert bool((chosen >= kth - 1e-4 * kth.abs().clamp_min(1)).all()), "a selected token scores below the k-th"
    assert bool((idx[..., 1:] > idx[..., :-1]).all())


@pytest.mark.gpu
def test_gpu_outputs_are_fully_written_and_dense_matches_sdpa():
    q, k, v, ch = problem(1, 8, 8, 4096, 128, 8, dtype=torch.float16, seed=7)
    with _triton.poisoned_outputs():
        o = ds.decode(q, k, v, ch, top_k=256)
        dense = ds.decode(q, k, v, ch, top_k=4096)
    assert torch.isfinite(o).all()
    assert rel_err(o, reference_decode(q, k, v, ch, 256)) < 5e-3
    want = torch.nn.functional.scaled_dot_product_attention(q[:, :, None].float(), k.float(), v.float())[:, :, 0]
    assert rel_err(dense, want) < 2e-3


@pytest.mark.gpu
def test_gpu_offloaded_step_from_pinned_memory_equals_the_on_device_step():
    L, B, H, Hkv, S, D = 2, 1, 8, 4, 8192, 128
    model = off.SyntheticDecoder.random(L, 256, H, D, seed=1, device=DEVICE, dtype=torch.float16)
    k, v, ch, labels = _layers(L, B, H, Hkv, S, D, 16, bits=8, dtype=torch.float16)
    host_k, host_v = [x.pin_memory() for x in k], [x.pin_memory() for x in v]
    x = torch.randn(B, 256, device=DEVICE, dtype=torch.float16)
    want = off.sparse_step(model, x, [t.to(DEVICE) for t in k], [t.to(DEVICE) for t in v], labels, ch, top_k=512)
    dec = off.OffloadedDecoder(model, host_k, host_v, labels, ch, top_k=512)
    got = dec.step(x)
    got2, spans = dec.step(x, trace=True)
    torch.cuda.synchronize()
    assert torch.equal(got, want), f"fetch mode {dec.fetch_mode}"
    assert torch.equal(got2, want) and {lane for lane, *_ in spans} == {"compute stream", "select stream", "fetch stream"}


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [8, 16])
def test_gpu_fp16_keys_select_the_top_k_of_the_rounded_scores(bits):
    """S = 32k: the fp16-key selection against the top-k (ties to the lower index) of torch's fp32
    label scores rounded to fp16. The kernel sums in another order, so a score's fp32 value (and,
    rarely, its fp16 rounding) may differ by a unit: tokens may differ only at the k-th fp16 value."""
    B, H, S, D, top_k = 1, 8, 32768, 128, 2048
    q, k, v, ch = problem(B, H, H, S, D, 16 if bits == 8 else 8, dtype=torch.float16, seed=6)
    lab = ds.build_labels(k, ch, bits=bits)
    idx = ds.select(q, lab, ch, top_k=top_k, config=FP16_KEYS).long()
    assert bool((idx[..., 1:] > idx[..., :-1]).all())
    values = lab.values.float() * (lab.scale.float()[..., None] if lab.scale is not None else 1.0)
    qc = q.float().gather(2, ch.to(DEVICE).long()[None].expand(B, -1, -1))
    s16 = torch.einsum("bhr,bhsr->bhs", qc, values).half().float()
    order = torch.sort(-s16, dim=-1, stable=True).indices[..., :top_k].sort(dim=-1).values
    kth = s16.gather(2, order).min(dim=-1, keepdim=True).values
    ulp = torch.finfo(torch.float16).eps * kth.abs()
    mine, theirs = torch.zeros_like(s16, dtype=torch.bool), torch.zeros_like(s16, dtype=torch.bool)
    mine.scatter_(2, idx, True)
    theirs.scatter_(2, order, True)
    differ = mine ^ theirs
    assert bool(((s16 - kth).abs() <= ulp)[differ].all()), "a token away from the k-th fp16 score differs"
    assert int(differ.sum()) <= 2 * B * H * 8, int(differ.sum())
    o = ds.decode_with_labels(q, k, v, lab, ch, top_k=top_k, config=FP16_KEYS)
    assert torch.equal(o, ds.sparse_attention(q, k, v, idx.int()))

