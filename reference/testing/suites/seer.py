"""SeerAttention's properties (``docs/seer.md``): pooling, the ground truth, block selection, block-sparse attention.

Every check draws a ``SeerCase`` (grouped kv heads, lengths that no block size divides, blocks
longer than the sequence), computes the contract function of ``impl`` and compares it with the
float64 loop oracles of ``reference.testing.oracles_seer`` (which share no code with
``reference.seer``). ``impl`` needs the contract functions a property names; ``impl.BACKEND``
(``"numpy"`` by default, or ``"torch"``) says which arrays it is fed, ``impl.TOLERANCE`` overrides
the 1e-9 relative tolerance (a float32 kernel needs about 1e-5).

The functions (``CONTRACT``)::

    pool(x, *, block, kind) -> [B, H, n, D]                 kind: "avg" | "max" | "min"
    ground_truth(q, k, *, block, scale=None) -> [B, H, n, n]
    ground_truth_tiled(q, k, *, block, scale=None) -> [B, H, n, n]   (without the T × T probabilities)
    kl_loss(target, log_probs, *, reduction) -> scalar       reduction: "batchmean" | "sum"
    select_topk(scores, *, density) -> bool [B, H, n, n]
    select_threshold(probs, *, threshold) -> bool [B, H, n, n]
    block_sparse_attention(q, k, v, block_mask, *, block, scale=None) -> [B, H, T, V]

with ``q: [B, H, T, D]``, ``k, v: [B, Hkv, T, D | V]`` (``Hkv`` divides ``H``), ``n = ceil(T / block)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from reference.testing import oracles_seer as oracle
from reference.testing.checks import assert_close, assert_rejects, tolerance
from reference.testing.strategies import seeds, to_backend, to_numpy
from reference.testing.suites._base import Property, backend_of, configured, registrar

__all__ = ["CONTRACT", "PROPERTIES", "SeerCase", "seer_cases", "random_block_mask", "FIXED_CASES"]

#: The functions a SeerAttention implementation defines: the five of the package's contract, the
#: tiled ground truth a kernel computes, and the gate's loss.
CONTRACT = ("pool", "ground_truth", "ground_truth_tiled", "kl_loss", "select_topk", "select_threshold",
            "block_sparse_attention")  # fmt: skip
PROPERTIES: list[Property] = []
prop = registrar(PROPERTIES)

TOL = 1e-9


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeerCase:
    """One problem: ``q: [B, H, T, D]``, ``k: [B, Hkv, T, D]``, ``v: [B, Hkv, T, V]``, blocks of ``block``.

    ``magnitude`` multiplies q and k (large values make the softmax nearly one-hot and test that
    nothing overflows or turns into NaN).
    """

    B: int
    H: int
    Hkv: int
    T: int
    D: int
    V: int
    block: int
    seed: int
    scale: float | None = None
    magnitude: float = 1.0

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("scale", "magnitude") or value != f.default:
                shown.append(f"{f.name}={value!r}")
        return f"SeerCase({', '.join(shown)})"

    @property
    def n(self) -> int:
        return -(-self.T // self.block)

    def arrays(self):
        """``q, k, v`` as float64 NumPy arrays from ``seed``."""
        rng = np.random.default_rng(self.seed)
        q = rng.standard_normal((self.B, self.H, self.T, self.D)) * self.magnitude
        k = rng.standard_normal((self.B, self.Hkv, self.T, self.D)) * self.magnitude
        v = rng.standard_normal((self.B, self.Hkv, self.T, self.V))
        return q, k, v


@st.composite
def seer_cases(draw, *, max_T: int = 24, magnitudes=(1.0, 3.0)) -> SeerCase:
    """A ``SeerCase``: H in 1..4 with any ``Hkv`` dividing it, T in 1..max_T, block 1..T+3 or a usual size."""
    H = draw(st.integers(1, 4))
    Hkv = draw(st.sampled_from([d for d in range(1, H + 1) if H % d == 0]))
    T = draw(st.integers(1, max_T))
    return SeerCase(
        B=draw(st.integers(1, 2)), H=H, Hkv=Hkv, T=T,
        D=draw(st.integers(1, 6)), V=draw(st.integers(1, 4)),
        block=draw(st.one_of(st.integers(1, T + 3), st.sampled_from([2, 3, 4, 5, 8, 16]))),
        seed=draw(seeds()),
        scale=draw(st.sampled_from([None, 0.5, 1.5])),
        magnitude=draw(st.sampled_from(list(magnitudes))),
    )  # fmt: skip


#: Cases no draw is needed for: grouped heads, an odd length with a short last block, one token,
#: a block longer than the sequence, a block of one token.
FIXED_CASES = (
    SeerCase(B=2, H=4, Hkv=2, T=37, D=5, V=3, block=8, seed=11),
    SeerCase(B=1, H=6, Hkv=3, T=29, D=4, V=2, block=4, seed=12, scale=0.7),
    SeerCase(B=1, H=2, Hkv=1, T=1, D=3, V=2, block=4, seed=13),
    SeerCase(B=1, H=3, Hkv=3, T=10, D=2, V=2, block=16, seed=14),
    SeerCase(B=1, H=2, Hkv=2, T=9, D=3, V=3, block=1, seed=15, magnitude=4.0),
)


def random_block_mask(case: SeerCase, seed: int, *, keep: float = 0.5, diagonal: str = "always") -> np.ndarray:
    """A block-causal bool mask ``[B, H, n, n]`` keeping each causal block with probability ``keep``.

    ``diagonal="always"`` keeps every diagonal block; ``"sometimes"`` drops it in rows that keep an
    earlier block (a legal mask: every query still sees a key), so a walk cannot assume it.
    """
    rng = np.random.default_rng(seed)
    n = case.n
    mask = (rng.random((case.B, case.H, n, n)) < keep) & np.tril(np.ones((n, n), dtype=bool))
    if diagonal == "always":
        mask |= np.eye(n, dtype=bool)
    else:
        empty = ~mask.any(axis=-1)
        idx = np.arange(n)
        mask[..., idx, idx] |= empty
    return mask


def _inputs(impl, *arrays):
    return to_backend(backend_of(impl), *arrays)


# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------


@prop("pool")
def pool_matches_oracle(impl):
    """avg/max/min pooling over blocks equals the oracle; the last partial block pools its real tokens only."""

    @configured
    @given(case=seer_cases(), kind=st.sampled_from(["avg", "max", "min"]))
    def run(case, kind):
        q, _, _ = case.arrays()
        (q_,) = _inputs(impl, q)
        got = impl.pool(q_, block=case.block, kind=kind)
        want = oracle.pool(q, block=case.block, kind=kind)
        assert_close(got, want, tol=tolerance(impl, TOL), what=f"pool(kind={kind!r}) vs the oracle", name="pooled", case=case)

    run()


# --------------------------------------------------------------------------------------------
# The ground truth
# --------------------------------------------------------------------------------------------


@prop("ground_truth")
def ground_truth_matches_oracle(impl):
    """The ground truth is the 2-D max-pool of the causal probabilities, each block-row renormalised to 1, 0 above the diagonal."""

    @configured
    @given(case=seer_cases())
    def run(case):
        q, k, _ = case.arrays()
        got = impl.ground_truth(*_inputs(impl, q, k), block=case.block, scale=case.scale)
        want = oracle.ground_truth(q, k, block=case.block, scale=case.scale)
        assert_close(got, want, tol=tolerance(impl, TOL), what="ground_truth vs the oracle", name="GT", case=case)

    run()


@prop("ground_truth", "ground_truth_tiled")
def ground_truth_tiled_equals_materialised(impl):
    """The tiled ground truth (raw block maxima with the final m, l) equals the materialised one."""

    @configured
    @given(case=seer_cases())
    def run(case):
        q, k, _ = case.arrays()
        q_, k_ = _inputs(impl, q, k)
        dense = impl.ground_truth(q_, k_, block=case.block, scale=case.scale)
        tiled = impl.ground_truth_tiled(q_, k_, block=case.block, scale=case.scale)
        assert_close(tiled, to_numpy(dense), tol=tolerance(impl, TOL), what="ground_truth_tiled vs ground_truth",
                     name="GT", case=case)  # fmt: skip

    run()


@prop("ground_truth")
def ground_truth_gqa_equals_repeated_kv(impl):
    """With grouped kv heads the ground truth equals the one from kv heads repeated ``H // Hkv`` times."""

    @configured
    @given(case=seer_cases())
    def run(case):
        q, k, _ = case.arrays()
        repeated = np.repeat(k, case.H // case.Hkv, axis=1)
        grouped = impl.ground_truth(*_inputs(impl, q, k), block=case.block, scale=case.scale)
        full = impl.ground_truth(*_inputs(impl, q, repeated), block=case.block, scale=case.scale)
        assert_close(grouped, to_numpy(full), tol=tolerance(impl, TOL), what="ground_truth: Hkv heads vs repeated",
                     name="GT", case=case)  # fmt: skip

    run()


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


def _as_mask(got, shape, what):
    mask = to_numpy(got)
    if mask.dtype != np.bool_:
        raise AssertionError(f"{what}: the block mask must be boolean, got dtype {mask.dtype}")
    if mask.shape != tuple(shape):
        raise AssertionError(f"{what}: the block mask has shape {mask.shape}, expected {tuple(shape)}")
    return mask


def _check_block_causal_with_diagonal(mask, what, case):
    n = mask.shape[-1]
    above = np.argwhere(np.triu(mask, k=1))
    if above.size:
        raise AssertionError(f"{what}: keeps a block above the diagonal at [b, h, i, j] = {list(above[0])}; case {case!r}")
    missing = np.argwhere(~mask[..., np.arange(n), np.arange(n)])
    if missing.size:
        b, h, i = missing[0]
        raise AssertionError(
            f"{what}: drops the diagonal block of row i={i} (b={b}, h={h}): a row must keep it; case {case!r}"
        )


@st.composite
def score_maps(draw, *, max_n: int = 40):
    """``(shape, seed, ties)``: a block-score map ``[B, H, n, n]``; with ``ties`` its values repeat."""
    n = draw(st.integers(1, max_n))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), n), draw(seeds()), draw(st.booleans())


def _scores(shape, seed, ties):
    B, H, n = shape
    rng = np.random.default_rng(seed)
    s = rng.random((B, H, n, n))
    return np.round(s * 4) / 4 if ties else s


@prop("select_topk")
def select_topk_density_rule(impl):
    """Row i keeps min(i+1, max(1, round(ρ(i+1)))) blocks: its diagonal and the best-scoring others; the achieved density is ρ up to rounding."""

    @configured
    @given(data=score_maps(), density=st.one_of(st.sampled_from([1.0, 0.5, 0.3, 0.1]), st.floats(0.01, 1.0)))
    def run(data, density):
        shape, seed, ties = data
        scores = _scores(shape, seed, ties)
        B, H, n = shape
        case = f"scores {list(scores.shape)} (seed {seed}, ties {ties}), density {density}"
        what = "select_topk"
        mask = _as_mask(impl.select_topk(*_inputs(impl, scores), density=density), scores.shape, what)
        _check_block_causal_with_diagonal(mask, what, case)
        counts = oracle.topk_counts(n, density)
        for b in range(B):
            for h in range(H):
                for i in range(n):
                    kept = [j for j in range(i + 1) if mask[b, h, i, j]]
                    if len(kept) != counts[i]:
                        raise AssertionError(
                            f"{what}: row i={i} (b={b}, h={h}) of {i + 1} causal blocks keeps {len(kept)}, "
                            f"the rule min(i+1, max(1, round(ρ(i+1)))) gives {counts[i]}; {case}"
                        )
                    others = [j for j in range(i) if j not in kept]
                    chosen = [j for j in kept if j != i]
                    if chosen and others and min(scores[b, h, i, chosen]) < max(scores[b, h, i, others]):
                        raise AssertionError(
                            f"{what}: row i={i} (b={b}, h={h}) keeps blocks {chosen} over a higher-scoring one "
                            f"among {others}; {case}"
                        )
        # the achieved share of the causal triangle, against the bound the rule implies
        triangle = n * (n + 1) // 2
        achieved = sum(counts) / triangle
        got_share = sum(int(mask[b, h, i, j]) for b in range(B) for h in range(H) for i in range(n)
                        for j in range(i + 1)) / (B * H * triangle)  # fmt: skip
        slack = math.fsum(0.5 if density * (i + 1) >= 0.5 else 1 - density * (i + 1) for i in range(n)) / triangle
        if abs(got_share - achieved) > 1e-12 or abs(got_share - density) > slack + 1e-12:
            raise AssertionError(
                f"{what}: kept share of the causal triangle {got_share:.4f}, density {density}, "
                f"rounding allows ±{slack:.4f}; {case}"
            )

    run()
    # a long sequence: 32 blocks (512 tokens of 16) lands within 0.01 of the usual densities
    scores = _scores((1, 1, 32), 0, False)
    for density in (0.5, 0.3, 0.1):
        mask = _as_mask(impl.select_topk(*_inputs(impl, scores), density=density), scores.shape, "select_topk")
        share = mask[0, 0][np.tril(np.ones((32, 32), dtype=bool))].mean()
        if abs(share - density) > 0.01:
            raise AssertionError(f"select_topk: 32 blocks at density {density} keep {share:.4f} of the causal triangle")


@prop("select_threshold")
def select_threshold_keeps_diagonal(impl):
    """select_threshold keeps exactly the causal blocks scoring above the threshold, and every diagonal block."""

    @configured
    @given(data=score_maps(), threshold=st.one_of(st.sampled_from([0.0, 0.5, 2.0]), st.floats(0.0, 1.0)))
    def run(data, threshold):
        shape, seed, ties = data
        probs = _scores(shape, seed, ties)
        case = f"probs {list(probs.shape)} (seed {seed}, ties {ties}), threshold {threshold}"
        what = "select_threshold"
        mask = _as_mask(impl.select_threshold(*_inputs(impl, probs), threshold=threshold), probs.shape, what)
        _check_block_causal_with_diagonal(mask, what, case)
        for idx in np.ndindex(*probs.shape):
            i, j = idx[-2:]
            if j < i and mask[idx] != (probs[idx] > threshold):
                raise AssertionError(
                    f"{what}: block {list(idx)} with score {probs[idx]} is {'kept' if mask[idx] else 'dropped'} "
                    f"at threshold {threshold}; {case}"
                )

    run()


# --------------------------------------------------------------------------------------------
# Block-sparse attention
# --------------------------------------------------------------------------------------------


@prop("block_sparse_attention")
def block_sparse_density_one_equals_dense(impl):
    """Keeping every causal block gives dense causal softmax attention."""

    @configured
    @given(case=seer_cases())
    def run(case):
        q, k, v = case.arrays()
        n = case.n
        full = np.broadcast_to(np.tril(np.ones((n, n), dtype=bool)), (case.B, case.H, n, n)).copy()
        got = impl.block_sparse_attention(*_inputs(impl, q, k, v, full), block=case.block, scale=case.scale)
        want = oracle.causal_attention(q, k, v, scale=case.scale)
        assert_close(got, want, tol=tolerance(impl, TOL), what="block_sparse_attention with every block vs dense causal",
                     case=case)  # fmt: skip

    run()


@prop("block_sparse_attention")
def block_sparse_matches_oracle(impl):
    """Attention over the kept blocks (diagonal kept or not) equals the oracle's sum over exactly those keys."""

    @configured
    @given(case=seer_cases(), mask_seed=seeds(), keep=st.sampled_from([0.0, 0.3, 0.7]),
           diagonal=st.sampled_from(["always", "sometimes"]))  # fmt: skip
    def run(case, mask_seed, keep, diagonal):
        q, k, v = case.arrays()
        mask = random_block_mask(case, mask_seed, keep=keep, diagonal=diagonal)
        got = impl.block_sparse_attention(*_inputs(impl, q, k, v, mask), block=case.block, scale=case.scale)
        want = oracle.block_sparse_attention(q, k, v, mask, block=case.block, scale=case.scale)
        assert_close(got, want, tol=tolerance(impl, TOL), what=f"block_sparse_attention (mask seed {mask_seed}) vs the oracle",
                     case=case)  # fmt: skip

    run()


@prop("block_sparse_attention")
def block_sparse_gqa_equals_repeated_kv(impl):
    """With grouped kv heads the output equals the one from k, v repeated ``H // Hkv`` times."""

    @configured
    @given(case=seer_cases(), mask_seed=seeds())
    def run(case, mask_seed):
        q, k, v = case.arrays()
        mask = random_block_mask(case, mask_seed)
        g = case.H // case.Hkv
        grouped = impl.block_sparse_attention(*_inputs(impl, q, k, v, mask), block=case.block, scale=case.scale)
        full = impl.block_sparse_attention(*_inputs(impl, q, np.repeat(k, g, 1), np.repeat(v, g, 1), mask),
                                           block=case.block, scale=case.scale)  # fmt: skip
        assert_close(grouped, to_numpy(full), tol=tolerance(impl, TOL), what="block_sparse_attention: Hkv heads vs repeated",
                     case=case)  # fmt: skip

    run()


@prop("block_sparse_attention", "select_topk")
def rows_never_nan(impl):
    """At the lowest density and with logits of ±hundreds, every output row is finite; a row keeping no block is refused."""

    @configured
    @given(case=seer_cases(magnitudes=(10.0, 30.0)), density=st.sampled_from([0.01, 0.1, 1.0]))
    def run(case, density):
        q, k, v = case.arrays()
        rng = np.random.default_rng(case.seed + 1)
        mask = impl.select_topk(*_inputs(impl, rng.random((case.B, case.H, case.n, case.n))), density=density)
        got = impl.block_sparse_attention(*_inputs(impl, q, k, v), mask, block=case.block, scale=case.scale)
        want = oracle.block_sparse_attention(q, k, v, to_numpy(mask), block=case.block, scale=case.scale)
        assert_close(got, want, tol=tolerance(impl, TOL), what=f"block_sparse_attention at density {density}, large logits",
                     case=case)  # fmt: skip

    run()
    case = SeerCase(B=1, H=1, Hkv=1, T=8, D=2, V=2, block=4, seed=0)
    q, k, v = case.arrays()
    empty = np.zeros((1, 1, 2, 2), dtype=bool)
    empty[0, 0, 0, 0] = True  # row 1 keeps nothing: its softmax would be 0/0
    assert_rejects(lambda: impl.block_sparse_attention(*_inputs(impl, q, k, v, empty), block=4),
                   argument="block_mask", what="block_sparse_attention with an empty block-row")  # fmt: skip


# --------------------------------------------------------------------------------------------
# Poisoned tokens: causality bit for bit
# --------------------------------------------------------------------------------------------

POISONS = (float("nan"), float("inf"), float("-inf"))


@st.composite
def poisonings(draw, *, names=("q", "k", "v")):
    """``(case, name, t, value)``: one token's ``q``, ``k`` or ``v`` (every kv head) set to NaN or ±inf."""
    case = draw(seer_cases(magnitudes=(1.0,)))
    return case, draw(st.sampled_from(list(names))), draw(st.integers(0, case.T - 1)), draw(st.sampled_from(POISONS))


def _poison(arrays, name, t, value):
    out = [a.copy() for a in arrays]
    out["qkv".index(name)][:, :, t, :] = value
    return out


def _same_rows(clean, poisoned, limit, what, case, axis_len):
    clean, poisoned = to_numpy(clean), to_numpy(poisoned)
    index = (slice(None), slice(None), slice(0, limit))
    if not np.array_equal(clean[index], poisoned[index]):
        bad = np.argwhere(clean[index] != poisoned[index])[0]
        raise AssertionError(
            f"{what}: entry {list(bad)} of the first {limit} of {axis_len} rows changed "
            f"({clean[index][tuple(bad)]} -> {poisoned[index][tuple(bad)]}); case {case!r}"
        )


@prop("block_sparse_attention")
def block_sparse_poisoned_token_changes_no_earlier_row(impl):
    """A NaN or ±inf in token t's q or k leaves every row before t bit for bit unchanged; in its v, every row before t's block.

    The causal mask must be applied by selection (``where``), not by multiplying (``0 · NaN = NaN``);
    inside the diagonal block the product ``P V`` still meets ``v_t`` with a zero weight, so a
    poisoned value may reach the earlier rows of its own block only.
    """

    @configured
    @given(data=poisonings(), mask_seed=seeds())
    def run(data, mask_seed):
        case, name, t, value = data
        arrays = case.arrays()
        mask = random_block_mask(case, mask_seed, keep=0.5)
        clean = impl.block_sparse_attention(*_inputs(impl, *arrays, mask), block=case.block, scale=case.scale)
        with np.errstate(all="ignore"):  # the poisoned rows are meant to turn NaN
            bad = impl.block_sparse_attention(*_inputs(impl, *_poison(arrays, name, t, value), mask),
                                              block=case.block, scale=case.scale)  # fmt: skip
        limit = t if name != "v" else (t // case.block) * case.block
        _same_rows(clean, bad, limit, f"block_sparse_attention with {name}[t={t}] = {value}", case, case.T)

    run()


@prop("ground_truth")
def ground_truth_poisoned_token_changes_no_earlier_block_row(impl):
    """A NaN or ±inf in token t's q or k leaves the ground truth's block-rows before t's block bit for bit unchanged."""

    @configured
    @given(data=poisonings(names=("q", "k")))
    def run(data):
        case, name, t, value = data
        arrays = case.arrays()
        clean = impl.ground_truth(*_inputs(impl, *arrays[:2]), block=case.block, scale=case.scale)
        with np.errstate(all="ignore"):
            bad = impl.ground_truth(*_inputs(impl, *_poison(arrays, name, t, value)[:2]), block=case.block,
                                    scale=case.scale)  # fmt: skip
        _same_rows(clean, bad, t // case.block, f"ground_truth with {name}[t={t}] = {value}", case, case.n)

    run()


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------


@prop("kl_loss")
def kl_loss_is_the_kl(impl):
    """kl_loss is Σ_j t log(t/g) per block-row, averaged over the B·H·n rows ("batchmean") or summed ("sum")."""

    @configured
    @given(case=seer_cases(max_T=20))
    def run(case):
        q, k, _ = case.arrays()
        target = oracle.ground_truth(q, k, block=case.block)
        # a gate's probabilities: a block-causal softmax of random logits
        rng = np.random.default_rng(case.seed + 2)
        n = case.n
        causal = np.tril(np.ones((n, n), dtype=bool))
        logits = np.where(causal, rng.standard_normal(target.shape) * 2, -np.inf)
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
        rows = oracle.kl_per_row(target, np.exp(log_probs))
        t_, lp_ = _inputs(impl, target, log_probs)
        for reduction, want in (("batchmean", math.fsum(rows.ravel()) / rows.size), ("sum", math.fsum(rows.ravel()))):
            got = impl.kl_loss(t_, lp_, reduction=reduction)
            assert_close(np.reshape(to_numpy(got), ()), np.float64(want), tol=tolerance(impl, TOL),
                         what=f"kl_loss(reduction={reduction!r}) vs Σ t log(t/g)", name="KL", case=case)  # fmt: skip

    run()


# --------------------------------------------------------------------------------------------
# Fixed awkward cases, and bad input
# --------------------------------------------------------------------------------------------


@prop("pool", "ground_truth", "block_sparse_attention")
def fixed_cases_match_oracles(impl):
    """Grouped heads, odd lengths with a short last block, one token, a block longer than T: every function equals its oracle."""
    tol = tolerance(impl, TOL)
    for case in FIXED_CASES:
        q, k, v = case.arrays()
        q_, k_, v_ = _inputs(impl, q, k, v)
        for kind in ("avg", "max", "min"):
            assert_close(impl.pool(k_, block=case.block, kind=kind), oracle.pool(k, block=case.block, kind=kind),
                         tol=tol, what=f"pool(kind={kind!r}) vs the oracle", name="pooled", case=case)  # fmt: skip
        assert_close(impl.ground_truth(q_, k_, block=case.block, scale=case.scale),
                     oracle.ground_truth(q, k, block=case.block, scale=case.scale),
                     tol=tol, what="ground_truth vs the oracle", name="GT", case=case)  # fmt: skip
        mask = random_block_mask(case, case.seed, keep=0.4, diagonal="sometimes")
        (mask_,) = _inputs(impl, mask)
        assert_close(impl.block_sparse_attention(q_, k_, v_, mask_, block=case.block, scale=case.scale),
                     oracle.block_sparse_attention(q, k, v, mask, block=case.block, scale=case.scale),
                     tol=tol, what="block_sparse_attention vs the oracle", case=case)  # fmt: skip


@prop("pool", "ground_truth", "select_topk", "select_threshold", "block_sparse_attention")
def rejects_bad_input(impl):
    """Bad input raises ValueError or TypeError naming the argument."""
    case = SeerCase(B=1, H=4, Hkv=2, T=10, D=4, V=3, block=4, seed=0)
    q, k, v = case.arrays()
    q_, k_, v_ = _inputs(impl, q, k, v)
    (scores,) = _inputs(impl, np.random.default_rng(0).random((1, 4, 3, 3)))
    (mask,) = _inputs(impl, np.broadcast_to(np.tril(np.ones((3, 3), dtype=bool)), (1, 4, 3, 3)).copy())
    (k3,) = _inputs(impl, np.zeros((1, 3, 10, 4)))
    (wrong_mask,) = _inputs(impl, np.ones((1, 4, 2, 2), dtype=bool))
    (upper,) = _inputs(impl, np.ones((1, 4, 3, 3), dtype=bool))
    checks = [
        (lambda: impl.pool(q_, block=4, kind="median"), "kind", "pool with kind='median'"),
        (lambda: impl.pool(q_, block=0), "block", "pool with block=0"),
        (lambda: impl.ground_truth(q_, k3, block=4), "k", "ground_truth with 3 kv heads for 4 query heads"),
        (lambda: impl.select_topk(scores, density=0.0), "density", "select_topk with density 0"),
        (lambda: impl.select_topk(scores, density=1.5), "density", "select_topk with density 1.5"),
        (lambda: impl.select_threshold(scores, threshold=float("nan")), "threshold", "select_threshold with a NaN threshold"),
        (lambda: impl.block_sparse_attention(q_, k_, v_, wrong_mask, block=4), "block_mask", "a block mask of the wrong shape"),
        (lambda: impl.block_sparse_attention(q_, k_, v_, upper, block=4), "block_mask", "a block mask above the diagonal"),
        (lambda: impl.block_sparse_attention(q_, k_, v_, mask, block=4.0), "block", "block=4.0"),
    ]
    for call, argument, what in checks:
        assert_rejects(call, argument=argument, what=what)
