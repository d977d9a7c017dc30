"""Properties of sequence-parallel linear attention: LASP-2's prefix scan, and a scheme on gloo ranks
(``docs/sequence_parallel.md``).

Contract functions::

    prefix_scan(states, lengths, decay=None) -> prefixes       # one process
        # states: [W, B, H, K, V], chunk r's own decayed state M_r = (λ^C Λ⁻¹ K_r)ᵀ V_r
        # lengths: W chunk lengths C_r; decay: [H] rates in (0, 1] or None (λ = 1)
        # prefixes: [W, B, H, K, V], P_0 = 0, P_r = λ^{C_{r-1}} P_{r-1} + M_{r-1}
    attention(q, k, v, *, decay=None, causal=True, scale=1.0, group=None) -> o   # on every rank
        # this rank's contiguous chunk in, its rows of the one-device output out (torch,
        # differentiable), as simdist.lasp1.attention and simdist.lasp2.attention

``attention`` runs on 2 or 3 gloo ranks (``simdist.shared_pool``); every rank loads the module that
defines it again, so it must live in a ``.py`` file or an importable module.

``P_r`` is the state of every token *before* chunk ``r`` (exclusive): chunk ``r``'s own tokens are
already in its intra-chunk term, so an inclusive prefix counts them twice (``docs/errata.md``,
erratum 2). The oracle: the float64 defining sum's final state over chunks ``0..r-1``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from reference.testing import oracles
from reference.testing.checks import assert_close, assert_rejects, inputs, tolerance
from reference.testing.strategies import chunk_lengths, decays, seeds, to_numpy
from reference.testing.suites import _ranks
from reference.testing.suites._base import Property, configured, registrar

ALGORITHM = "lasp"
CONTRACT = ("prefix_scan", "attention")
PROPERTIES: list[Property] = []
prop = registrar(PROPERTIES)
TOL = 1e-9


class ScanCase(NamedTuple):
    """A sequence of ``sum(lengths)`` tokens cut into ``W = len(lengths)`` chunks; arrays from ``seed``."""

    seed: int
    B: int
    H: int
    K: int
    V: int
    lengths: tuple[int, ...]
    decay: tuple[float, ...] | None


@st.composite
def scan_cases(draw):
    """W = 1..5 chunks of unequal lengths, decays down to 0.3 or none."""
    W = draw(st.integers(1, 5))
    H = draw(st.integers(1, 3))
    T = draw(st.integers(W, 4 * W + 3))
    decay = draw(st.one_of(st.none(), decays(H).map(lambda x: tuple(float(r) for r in x))))
    return ScanCase(draw(seeds()), draw(st.integers(1, 2)), H, draw(st.integers(1, 4)), draw(st.integers(1, 4)),
                    tuple(draw(chunk_lengths(T, W))), decay)  # fmt: skip


# Three chunks (3, 1 and 2 tokens), a strong decay on one head.
EXAMPLE = ScanCase(seed=0, B=1, H=2, K=2, V=3, lengths=(3, 1, 2), decay=(0.5, 0.9))


def _problem(case):
    seed, B, H, K, V, lengths, decay = case
    rng = np.random.default_rng(seed)
    T = sum(lengths)
    q, k, v = rng.standard_normal((B, H, T, K)), rng.standard_normal((B, H, T, K)), rng.standard_normal((B, H, T, V))
    edges = np.cumsum((0, *lengths))
    chunks = [(int(a), int(b)) for a, b in zip(edges, edges[1:])]
    lam = None if decay is None else np.asarray(decay)
    # M_r: chunk r's own state at its end (the defining sum over chunk r alone).
    M = np.stack([oracles.decayed_linear_attention(q[..., a:b, :], k[..., a:b, :], v[..., a:b, :], lam)[1] for a, b in chunks])
    return q, k, v, lam, chunks, M


def _describe(case):
    seed, B, H, K, V, lengths, decay = case
    return f"W={len(lengths)}, lengths={list(lengths)}, decay={None if decay is None else list(decay)}, B={B}, H={H}, K={K}, V={V}, seed={seed}"


def _scan(impl, M, lengths, lam):
    states, *rest = inputs(impl, M, *(() if lam is None else (lam,)))
    out = impl.prefix_scan(states, list(lengths), rest[0] if rest else None)
    if isinstance(out, (list, tuple)):  # one prefix per chunk is accepted too
        out = np.stack([to_numpy(x) for x in out])
    return out


@prop("prefix_scan")
def prefix_scan_is_the_state_of_the_earlier_chunks(impl):
    """``prefix_scan(...)[r]`` equals the state after every token of chunks ``0..r-1`` (0 for chunk 0)."""
    tol = tolerance(impl, TOL)

    @configured
    @example(case=EXAMPLE)
    @given(case=scan_cases())
    def run(case):
        q, k, v, lam, chunks, M = _problem(case)
        got = _scan(impl, M, case[5], lam)
        want = np.zeros_like(M)
        for r, (a, _) in enumerate(chunks):
            if a > 0:
                want[r] = oracles.decayed_linear_attention(q[..., :a, :], k[..., :a, :], v[..., :a, :], lam)[1]
        what = f"prefix_scan vs the state of the tokens before each chunk ({_describe(case)})"
        if tuple(getattr(got, "shape", ())) != want.shape:
            assert_close(got, want, tol=tol, what=what, name="the prefixes")
        # Chunk by chunk, so the report names the first wrong one (an inclusive scan fails at chunk 0).
        got = np.asarray(to_numpy(got))
        for r in range(len(chunks)):
            assert_close(got[r], want[r], tol=tol, what=what, name=f"chunk {r}'s prefix P_{r}")

    run()


@prop("prefix_scan")
def prefix_scan_assembles_the_one_device_output(impl):
    """LASP-2's output from the prefixes, ``O_r = O_intra,r + Λ Q_r P_r`` chunk by chunk, equals the whole sequence's."""
    tol = tolerance(impl, TOL)

    @configured
    @example(case=EXAMPLE)
    @given(case=scan_cases())
    def run(case):
        q, k, v, lam, chunks, M = _problem(case)
        P = np.asarray(to_numpy(_scan(impl, M, case[5], lam)), dtype=np.float64)
        want, _ = oracles.decayed_linear_attention(q, k, v, lam)
        for r, (a, b) in enumerate(chunks):
            o_r, _ = oracles.decayed_linear_attention(q[..., a:b, :], k[..., a:b, :], v[..., a:b, :], lam, initial_state=P[r])
            assert_close(o_r, want[..., a:b, :], tol=tol, what=f"chunk {r}'s output from its prefix vs one device ({_describe(case)})", name=f"O_{r}")

    run()


@prop("prefix_scan")
def prefix_scan_rejects_bad_inputs(impl):
    """``prefix_scan`` rejects lengths that do not match the states and decays of the wrong length or above 1."""
    M = np.random.default_rng(0).standard_normal((3, 1, 2, 2, 2))
    cases = [
        ("lengths", M, [2, 2], np.array([0.5, 0.9])),
        ("lengths", M, [2, 0, 2], np.array([0.5, 0.9])),
        ("decay", M, [2, 1, 2], np.array([0.5, 0.9, 0.9])),
        ("decay", M, [2, 1, 2], np.array([0.5, 1.5])),
    ]
    for argument, states, lengths, decay in cases:
        args = inputs(impl, states, decay)
        assert_rejects(
            lambda: impl.prefix_scan(args[0], lengths, args[1]), argument=argument,
            what=f"prefix_scan with states of shape {states.shape}, lengths={lengths}, decay={decay.tolist()}",
        )  # fmt: skip


# --------------------------------------------------------------------------------------------
# A scheme on gloo ranks
# --------------------------------------------------------------------------------------------


class RankCase(NamedTuple):
    """``W`` ranks, rank ``r`` holding ``lengths[r]`` tokens; arrays from ``seed``."""

    seed: int
    B: int
    H: int
    K: int
    V: int
    lengths: tuple[int, ...]
    decay: tuple[float, ...] | None
    scale: float


@st.composite
def rank_cases(draw):
    """2 or 3 ranks, unequal chunks (single tokens included), decays down to 0.3 or none."""
    H = draw(st.integers(1, 2))
    decay = draw(st.one_of(st.none(), decays(H).map(lambda x: tuple(float(r) for r in x))))
    return RankCase(draw(seeds()), draw(st.integers(1, 2)), H, draw(st.integers(1, 4)), draw(st.integers(1, 4)),
                    draw(_ranks.rank_lengths()), decay, draw(st.sampled_from([1.0, 0.5])))  # fmt: skip


RANK_EXAMPLE = RankCase(seed=0, B=1, H=2, K=2, V=3, lengths=(3, 1, 2), decay=(0.5, 0.9), scale=0.5)


@prop("attention", backends=("torch",))
def attention_on_ranks_equals_one_device(impl):
    """On 2 or 3 gloo ranks, each with its contiguous chunk (unequal lengths), the outputs and the
    gradients of q, k, v put together equal the float64 oracle's on the whole sequence."""
    tol = tolerance(impl, TOL)
    where = _ranks.where_defined(impl, "attention")

    @configured
    @example(case=RANK_EXAMPLE)
    @given(case=rank_cases())
    def run(case):
        q, k, v, do = _ranks.problem(case)
        options = {"decay": case.decay, "causal": True, "scale": case.scale}
        per_rank = _ranks.run_on_ranks(where, q, k, v, do, case.lengths, options)
        want_o, _ = oracles.decayed_linear_attention(q, k, v, case.decay, scale=case.scale)
        want = (want_o, *oracles.decayed_linear_attention_grads(q, k, v, case.decay, do, scale=case.scale))
        what = f"attention on {len(case.lengths)} gloo ranks vs one device (the float64 oracle)"
        _ranks.compare_chunks(per_rank, want, case.lengths, tol=tol, what=what, case=case)

    run()
