"""Double Sparsity's properties (``docs/double_sparsity.md``), against any implementation of its contract.

``impl`` is any object with some of these functions as attributes (``reference.double_sparsity``, a
kernel wrapper, a student's module); each property runs only where its ``needs`` are present::

    decode(q, k_cache, v_cache, channels, *, top_k, scale=None) -> o [B, H, Dv]
    channel_outliers(q, k, *, kind) -> [H, D];  heavy_channels(stats, r, *, num_kv_heads=None) -> [Hkv, r]
    permute_channels(channels, D, *, to="interleaved");  gather_labels(k, channels) -> [B, Hkv, S, r]
    label_scores(q, labels, channels) -> [B, H, S];  decode_with_labels(q, k_cache, v_cache, labels, channels, *, top_k)
    quantise(labels, *, bits) -> (codes, scales);  dequantise(codes, scales);  LabelCache(channels, *, bits)
    causal_decode(q, k, v, channels, *, top_k, scale=None) -> [B, H, T, Dv]
    attention_overrides(channels_per_layer, *, top_k) -> {layer: fn(q, k, v, *, q_pre, k_pre, layer)}
    calibrate(captures, *, kind, r);  label_sparsity(r, head_dim, *, bits);  channels_for;  token_budget

The functions receive float64 NumPy arrays and may return NumPy arrays or torch tensors. Outputs are
compared with the float64 oracles of ``reference/testing/oracles_double_sparsity.py`` to a relative
``1e-9``; an implementation that computes in lower precision sets ``impl.TOLERANCE``. Selections
are compared as sets, read off the output itself: with one-hot values ``v_cache[j] = e_j`` the
output of a head is its attention weights, non-zero exactly on the tokens it kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from hypothesis import assume, example, given
from hypothesis import strategies as st

from reference.testing import oracles_double_sparsity as oracle
from reference.testing.suites._base import Property, backend_of, configured, registrar

PROPERTIES: list[Property] = []
prop = registrar(PROPERTIES)

#: Relative tolerance against the float64 oracles unless ``impl.TOLERANCE`` says otherwise.
TOLERANCE = 1e-9


# --------------------------------------------------------------------------------------------
# Helpers: drawing problems, calling the implementation, comparing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One decoding step: ``q [B, H, D]``, caches ``[B, Hkv, S, D | Dv]``, ``channels [Hkv, r]``."""

    B: int
    H: int
    Hkv: int
    S: int
    D: int
    Dv: int
    r: int
    top_k: int


@st.composite
def steps(draw, *, max_S=33, max_D=8, even_D=False, full_r=False, short=None):
    """Sizes with GQA (``H = g · Hkv``), odd and single-token caches, budgets below and above ``S``.

    ``short=True`` draws ``S ≤ top_k``, ``short=False`` draws ``S > top_k``.
    """
    Hkv = draw(st.integers(1, 2))
    g = draw(st.sampled_from([1, 2, 3]))
    D = draw(st.integers(1, max_D // 2)) * 2 if even_D else draw(st.integers(1, max_D))
    r = D if full_r else draw(st.integers(1, D))
    if short is None:
        S = draw(st.integers(1, max_S))
        top_k = draw(st.integers(1, S + 3))
    elif short:
        S = draw(st.integers(1, max_S))
        top_k = draw(st.integers(S, S + 4))
    else:
        S = draw(st.integers(2, max_S))
        top_k = draw(st.integers(1, S - 1))
    return Step(B=draw(st.integers(1, 2)), H=Hkv * g, Hkv=Hkv, S=S, D=D, Dv=draw(st.integers(1, 5)), r=r, top_k=top_k)


def _rng(seed):
    return np.random.default_rng(seed)


def arrays(d: Step, seed: int, *, scale: float = 1.0):
    """``(q, k_cache, v_cache, channels)``: standard normals, and ``r`` distinct channels per kv head in shuffled order."""
    rng = _rng(seed)
    q = rng.standard_normal((d.B, d.H, d.D)) * scale
    k = rng.standard_normal((d.B, d.Hkv, d.S, d.D)) * scale
    v = rng.standard_normal((d.B, d.Hkv, d.S, d.Dv))
    channels = np.stack([rng.permutation(d.D)[: d.r] for _ in range(d.Hkv)]).astype(np.int64)
    return q, k, v, channels


def one_hot_values(d: Step):
    """``v_cache[b, kv, j] = e_j`` (``Dv = S``): each head's output is its attention weights."""
    return np.broadcast_to(np.eye(d.S), (d.B, d.Hkv, d.S, d.S)).copy()


def numpy_of(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()
        return x.numpy()
    return np.asarray(x)


def feed(impl, x):
    """``x`` (arrays, or lists, tuples and dicts of them) in ``impl``'s library; dtypes kept."""
    if isinstance(x, np.ndarray):
        if backend_of(impl) == "torch":
            import torch

            return torch.from_numpy(np.ascontiguousarray(x))
        return x
    if isinstance(x, (list, tuple)):
        return type(x)(feed(impl, a) for a in x)
    if isinstance(x, dict):
        return {key: feed(impl, a) for key, a in x.items()}
    return x


def call(impl, name, *args, **kwargs):
    """``impl.name(*args, **kwargs)`` with the arrays fed in ``impl``'s library.

    An exception becomes an AssertionError that says which call raised (``NotImplementedError``
    passes through: the grader reports the property as not implemented).
    """
    try:
        return getattr(impl, name)(*feed(impl, args), **feed(impl, kwargs))
    except NotImplementedError:
        raise
    except Exception as err:  # noqa: BLE001  (any failure of the implementation is the finding)
        shapes = [tuple(np.shape(a)) if hasattr(a, "shape") else a for a in args]
        raise AssertionError(f"{name}{tuple(shapes)} with {kwargs} raised {type(err).__name__}: {err}") from err


def tolerance(impl) -> float:
    tol = getattr(impl, "TOLERANCE", None)
    return TOLERANCE if tol is None else float(tol)


def assert_close(actual, expected, tol, *, what):
    actual = numpy_of(actual).astype(np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values in the result"
    denom = np.linalg.norm(expected)
    err = np.linalg.norm(actual - expected) / (denom if denom > 0 else 1.0)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g} (shape {expected.shape})"


def kept_sets(o, d: Step):
    """The token sets a one-hot-valued output reveals: ``{(b, h): {j : o[b, h, j] > 0}}``."""
    o = numpy_of(o)
    return {(b, h): set(np.flatnonzero(o[b, h] > 0).tolist()) for b in range(d.B) for h in range(d.H)}


def separated(scores, top_k, margin):
    """True when every head's ``top_k``-th and next label scores differ by more than ``margin``."""
    for row in scores.reshape(-1, scores.shape[-1]):
        if len(row) <= top_k:
            continue
        ordered = np.sort(row)[::-1]
        if ordered[top_k - 1] - ordered[top_k] <= margin * (1 + abs(ordered[top_k])):
            return False
    return True


# --------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------


@prop("decode")
def decode_equals_the_oracle(impl):
    """decode equals the float64 oracle: GQA, odd and single-token caches, budgets above and below S."""

    @configured
    @given(d=steps(), seed=st.integers(0, 2**32 - 1), scale=st.one_of(st.none(), st.floats(0.1, 2.0)))
    @example(d=Step(B=1, H=4, Hkv=2, S=9, D=4, Dv=2, r=2, top_k=3), seed=1, scale=None)  # GQA, r < D, S > k
    @example(d=Step(B=1, H=2, Hkv=1, S=5, D=3, Dv=2, r=1, top_k=6), seed=2, scale=None)  # S <= k
    def run(d, seed, scale):
        q, k, v, channels = arrays(d, seed)
        expected, _, approx = oracle.decode(q, k, v, channels, d.top_k, scale)
        tol = tolerance(impl)
        assume(separated(approx, d.top_k, max(tol, 1e-12)))  # a near-tie may go either way in rounding
        o = call(impl, "decode", q, k, v, channels, top_k=d.top_k, scale=scale)
        assert_close(o, expected, tol, what=f"decode vs oracle ({d})")

    run()


@prop("decode")
def all_channels_and_full_budget_are_dense(impl):
    """With r = D (every channel) and top_k = S, decode is dense softmax decoding."""

    @configured
    @given(d=steps(full_r=True), seed=st.integers(0, 2**32 - 1))
    def run(d, seed):
        q, k, v, channels = arrays(d, seed)
        o = call(impl, "decode", q, k, v, channels, top_k=d.S)
        assert_close(o, oracle.dense_decode(q, k, v), tolerance(impl), what=f"r = D, top_k = S vs dense ({d})")

    run()


@prop("decode")
def short_context_is_dense(impl):
    """With S <= top_k every token is kept, whatever the channels: dense softmax decoding."""

    @configured
    @given(d=steps(short=True), seed=st.integers(0, 2**32 - 1))
    @example(d=Step(B=1, H=2, Hkv=1, S=5, D=3, Dv=2, r=1, top_k=5), seed=0)  # S == k
    def run(d, seed):
        q, k, v, channels = arrays(d, seed)
        o = call(impl, "decode", q, k, v, channels, top_k=d.top_k)
        assert_close(o, oracle.dense_decode(q, k, v), tolerance(impl), what=f"S <= top_k vs dense ({d})")

    run()


@prop("decode")
def gqa_equals_repeated_kv_heads(impl):
    """Grouped kv heads equal the same heads repeated once per query head (channels repeated too)."""

    @configured
    @given(d=steps(), seed=st.integers(0, 2**32 - 1))
    @example(d=Step(B=1, H=4, Hkv=2, S=9, D=4, Dv=2, r=2, top_k=3), seed=1)
    def run(d, seed):
        q, k, v, channels = arrays(d, seed)
        g = d.H // d.Hkv
        o = call(impl, "decode", q, k, v, channels, top_k=d.top_k)
        rep = call(
            impl, "decode", q, np.repeat(k, g, axis=1), np.repeat(v, g, axis=1), np.repeat(channels, g, axis=0),
            top_k=d.top_k,
        )
        assert_close(o, numpy_of(rep), tolerance(impl), what=f"GQA vs repeated kv heads ({d})")

    run()


@prop("decode")
def selected_set_equals_the_oracle_top_k(impl):
    """The tokens decode attends to are exactly the oracle's top-k by label score (all of them if S <= top_k)."""

    @configured
    @given(d=steps(), seed=st.integers(0, 2**32 - 1))
    @example(d=Step(B=1, H=2, Hkv=1, S=6, D=3, Dv=1, r=1, top_k=6), seed=0)  # S == k: every token
    def run(d, seed):
        q, k, _, channels = arrays(d, seed)
        v = one_hot_values(d)
        _, expected, approx = oracle.decode(q, k, v, channels, d.top_k)
        assume(separated(approx, d.top_k, max(tolerance(impl), 1e-12)))
        got = kept_sets(call(impl, "decode", q, k, v, channels, top_k=d.top_k), d)
        for key, want in expected.items():
            assert got[key] == want, (
                f"(b, h) = {key}: kept {sorted(got[key])}, the oracle's top-{d.top_k} is {sorted(want)} ({d})"
            )

    run()


@prop("decode")
def ties_go_to_the_lowest_index(impl):
    """Among equal label scores the lower token index is kept first (integer data: exact ties)."""

    @configured
    @given(d=steps(short=False, max_D=4), seed=st.integers(0, 2**32 - 1))
    @example(d=Step(B=1, H=2, Hkv=1, S=12, D=2, Dv=1, r=1, top_k=3), seed=0)
    def run(d, seed):
        rng = _rng(seed)
        q = rng.integers(-1, 2, (d.B, d.H, d.D)).astype(np.float64)
        k = rng.integers(-1, 2, (d.B, d.Hkv, d.S, d.D)).astype(np.float64)
        channels = np.stack([rng.permutation(d.D)[: d.r] for _ in range(d.Hkv)]).astype(np.int64)
        v = one_hot_values(d)
        _, expected, _ = oracle.decode(q, k, v, channels, d.top_k, 0.5)
        got = kept_sets(call(impl, "decode", q, k, v, channels, top_k=d.top_k, scale=0.5), d)
        for key, want in expected.items():
            assert got[key] == want, (
                f"(b, h) = {key}: kept {sorted(got[key])}, lowest-index-first top-{d.top_k} is {sorted(want)} ({d})"
            )

    run()


@prop("decode")
def bad_inputs_name_their_argument(impl):
    """Bad shapes, channels, budgets and scales raise ValueError or TypeError naming the argument."""
    d = Step(B=1, H=4, Hkv=2, S=7, D=6, Dv=3, r=2, top_k=3)
    q, k, v, channels = arrays(d, 0)
    cases = [
        ("q", dict(q=q[0])),
        ("k_cache", dict(k=np.zeros((1, 3, 7, 6)))),
        ("k_cache", dict(k=np.zeros((1, 2, 7, 5)))),
        ("v_cache", dict(v=np.zeros((1, 2, 6, 3)))),
        ("channels", dict(channels=np.array([[0, 6], [1, 2]]))),
        ("channels", dict(channels=np.array([[0, -1], [1, 2]]))),
        ("channels", dict(channels=np.array([[0, 1, 2]]))),
        ("channels", dict(channels=np.array([[0.0, 1.0], [1.0, 2.0]]))),
        ("channels", dict(channels=np.array([[1, 1], [1, 2]]))),
        ("top_k", dict(top_k=0)),
        ("top_k", dict(top_k=1.5)),
        ("scale", dict(scale=float("nan"))),
    ]
    for name, change in cases:
        args = dict(q=q, k=k, v=v, channels=channels, top_k=d.top_k, scale=None) | change
        try:
            q_, k_, v_, c_ = feed(impl, (args["q"], args["k"], args["v"], args["channels"]))
            impl.decode(q_, k_, v_, c_, top_k=args["top_k"], scale=args["scale"])
        except (ValueError, TypeError) as err:
            assert name in str(err), f"bad {name} ({change}) raised {type(err).__name__} without naming it: {err}"
        else:
            raise AssertionError(f"bad {name} ({change}) was accepted")


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


@prop("gather_labels", "label_scores")
def label_scores_equal_exact_scores_on_the_heavy_channels(impl):
    """q[C] · labels equals Σ_{c ∈ C} q_c k_c; with every channel it is the exact logit q · k."""

    @configured
    @given(d=steps(), seed=st.integers(0, 2**32 - 1))
    def run(d, seed):
        q, k, _, channels = arrays(d, seed)
        labels = numpy_of(call(impl, "gather_labels", k, channels))
        expected = np.stack([k[:, kh][..., channels[kh]] for kh in range(d.Hkv)], axis=1)
        assert_close(labels, expected, 0.0, what="gather_labels vs k[..., C]")
        scores = call(impl, "label_scores", q, labels, channels)
        assert_close(scores, oracle.label_scores(q, k, channels), tolerance(impl), what=f"label_scores ({d})")
        every = np.stack([np.arange(d.D)] * d.Hkv)
        full = call(impl, "label_scores", q, numpy_of(call(impl, "gather_labels", k, every)), every)
        g = d.H // d.Hkv
        logits = np.einsum("bhd,bhsd->bhs", q, np.repeat(k, g, axis=1))
        assert_close(full, logits, tolerance(impl), what="label scores with every channel vs q · k")

    run()


@prop("decode", "decode_with_labels", "gather_labels")
def decode_with_exact_labels_equals_decode(impl):
    """decode_with_labels over gather_labels(k_cache) is decode."""

    @configured
    @given(d=steps(), seed=st.integers(0, 2**32 - 1))
    def run(d, seed):
        q, k, v, channels = arrays(d, seed)
        labels = numpy_of(call(impl, "gather_labels", k, channels))
        a = call(impl, "decode_with_labels", q, k, v, labels, channels, top_k=d.top_k)
        b = call(impl, "decode", q, k, v, channels, top_k=d.top_k)
        assert_close(a, numpy_of(b), tolerance(impl), what=f"decode_with_labels vs decode ({d})")

    run()


@prop("quantise", "dequantise")
def quantised_labels_are_within_half_a_step(impl):
    """Per-token absmax codes: |codes| <= 2^(bits-1) - 1, scales as the oracle's, error <= scale / 2."""

    @configured
    @given(d=steps(), seed=st.integers(0, 2**32 - 1), bits=st.sampled_from([8, 4]), zero_token=st.booleans())
    @example(d=Step(B=1, H=2, Hkv=1, S=7, D=4, Dv=1, r=3, top_k=2), seed=0, bits=4, zero_token=True)
    def run(d, seed, bits, zero_token):
        _, k, _, channels = arrays(d, seed, scale=3.0)
        labels = np.stack([k[:, kh][..., channels[kh]] for kh in range(d.Hkv)], axis=1)
        if zero_token:
            labels[:, :, 0] = 0.0  # an all-zero token must quantise exactly, without 0/0
        codes, scales = call(impl, "quantise", labels, bits=bits)
        codes, scales = numpy_of(codes), numpy_of(scales)
        want_codes, want_scales = oracle.quantise(labels, bits)
        assert np.all(np.abs(codes) <= 2 ** (bits - 1) - 1), f"{bits}-bit codes out of range: {codes.min()}..{codes.max()}"
        assert_close(scales, want_scales, 1e-12, what=f"{bits}-bit per-token scales")
        back = numpy_of(call(impl, "dequantise", codes, scales))
        slack = 1e-12 * (1 + np.abs(labels))
        assert np.all(np.abs(back - labels) <= scales / 2 + slack), (
            f"{bits}-bit dequantised labels err by up to {np.max(np.abs(back - labels) - scales / 2):.3g} beyond scale/2"
        )
        # codes are round(x / scale); they may differ from the oracle's only on a rounding boundary
        ratio = labels / np.where(want_scales > 0, want_scales, 1.0)
        boundary = np.abs(np.abs(ratio - np.floor(ratio)) - 0.5) < 1e-9
        wrong = (codes != want_codes) & ~boundary
        assert not np.any(wrong), f"{bits}-bit codes are not round(labels / scale) at {np.argwhere(wrong)[:3].tolist()}"

    run()


@prop("quantise", "dequantise", "decode_with_labels")
def quantised_labels_change_the_selection_only_within_the_error(impl):
    """A token kept with quantised labels in place of one of the exact top-k has exact label score within ε_i + ε_j.

    ``ε_j = ‖q[C]‖₁ · s_j / 2`` bounds the error of token ``j``'s quantised label score (``s_j`` its
    scale), so exact scores ``ŝ_j ≥ ŝ_i`` can swap only when ``ŝ_j − ŝ_i ≤ ε_i + ε_j``.
    """

    @configured
    @given(d=steps(short=False), seed=st.integers(0, 2**32 - 1), bits=st.sampled_from([8, 4]))
    def run(d, seed, bits):
        q, k, _, channels = arrays(d, seed)
        v = one_hot_values(d)
        labels = np.stack([k[:, kh][..., channels[kh]] for kh in range(d.Hkv)], axis=1)
        codes, scales = call(impl, "quantise", labels, bits=bits)
        deq = numpy_of(call(impl, "dequantise", codes, scales))
        got = kept_sets(call(impl, "decode_with_labels", q, k, v, deq, channels, top_k=d.top_k), d)
        _, exact_sets, exact = oracle.decode(q, k, v, channels, d.top_k)
        eps = oracle.error_bound(q, oracle.quantise(labels, bits)[1], channels)
        for (b, h), want in exact_sets.items():
            assert len(got[(b, h)]) == len(want), f"(b, h) = {(b, h)}: kept {len(got[(b, h)])} tokens, not {len(want)}"
            for i in got[(b, h)] - want:
                for j in want - got[(b, h)]:
                    gap = exact[b, h, j] - exact[b, h, i]
                    bound = eps[b, h, i] + eps[b, h, j]
                    assert gap <= bound + 1e-12 * (1 + abs(exact[b, h, j])), (
                        f"{bits}-bit labels kept token {i} over {j} although their exact label scores differ by "
                        f"{gap:.4g} > ε_i + ε_j = {bound:.4g} ((b, h) = {(b, h)}, {d})"
                    )

    run()


@prop("LabelCache", "gather_labels")
def label_cache_appends_like_gathering_at_once(impl):
    """Appending keys in any chunks gives the labels (or codes) of gathering and quantising them at once."""

    @configured
    @given(d=steps(), seed=st.integers(0, 2**32 - 1), bits=st.sampled_from([None, 8, 4]), data=st.data())
    def run(d, seed, bits, data):
        _, k, _, channels = arrays(d, seed)
        cuts = sorted(data.draw(st.sets(st.integers(1, d.S - 1), max_size=4))) if d.S > 1 else []
        cache = call(impl, "LabelCache", channels, bits=bits)
        for a, b in zip([0, *cuts], [*cuts, d.S]):
            cache.append(feed(impl, k[:, :, a:b]))
        assert cache.length == d.S, f"the cache holds {cache.length} tokens after appending {d.S}"
        exact = numpy_of(call(impl, "gather_labels", k, channels))
        got = numpy_of(cache.labels())
        if bits is None:
            assert_close(got, exact, 0.0, what="unquantised label cache vs gather_labels")
        else:
            codes, scales = oracle.quantise(exact, bits)
            assert_close(got, codes * scales, 1e-12, what=f"{bits}-bit label cache vs quantising at once (cuts {cuts})")

    run()


# --------------------------------------------------------------------------------------------
# Calibration and RoPE
# --------------------------------------------------------------------------------------------


@st.composite
def sequences(draw, *, even_D=True, max_T=12):
    Hkv = draw(st.integers(1, 2))
    g = draw(st.sampled_from([1, 2, 3]))
    D = draw(st.integers(1, 4)) * 2 if even_D else draw(st.integers(1, 8))
    return draw(st.integers(1, 2)), Hkv * g, Hkv, draw(st.integers(1, max_T)), D


@prop("channel_outliers")
def channel_outliers_equal_the_oracle(impl):
    """The q-, k- and qk-outlier statistics equal the oracle's means over batch and tokens (GQA)."""

    @configured
    @given(shape=sequences(even_D=False), seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["q", "k", "qk"]))
    def run(shape, seed, kind):
        B, H, Hkv, T, D = shape
        rng = _rng(seed)
        q, k = rng.standard_normal((B, H, T, D)), rng.standard_normal((B, Hkv, T, D))
        got = call(impl, "channel_outliers", q, k, kind=kind)
        assert_close(got, oracle.channel_outliers(q, k, kind), tolerance(impl), what=f"{kind}-outlier statistic")

    run()


@prop("heavy_channels")
def heavy_channels_equal_the_oracle(impl):
    """Top r channels per kv head by the group's summed statistic; ties to the lower channel; ascending."""

    @configured
    @given(shape=sequences(even_D=False), seed=st.integers(0, 2**32 - 1), ties=st.booleans(), r=st.integers(1, 8))
    @example(shape=(1, 4, 2, 3, 6), seed=0, ties=False, r=2)  # two query heads per kv head
    def run(shape, seed, ties, r):
        _, H, Hkv, _, D = shape
        r = min(r, D)
        stats = _rng(seed).random((H, D))
        if ties:
            stats = np.round(stats * 2) / 2  # few distinct values: many exact ties
        got = numpy_of(call(impl, "heavy_channels", stats, r, num_kv_heads=Hkv))
        want = oracle.heavy_channels(stats, r, Hkv)
        assert got.shape == want.shape and np.array_equal(got, want), (
            f"heavy channels {got.tolist()}, expected {want.tolist()} (stats {stats.round(3).tolist()}, r={r})"
        )

    run()


@prop("channel_outliers", "heavy_channels", "permute_channels", "decode")
def heavy_channels_follow_the_rope_layout(impl):
    """The same heads written in the interleaved layout have the permuted heavy channels and decode the same."""

    @configured
    @given(shape=sequences(), seed=st.integers(0, 2**32 - 1), data=st.data())
    def run(shape, seed, data):
        B, H, Hkv, T, D = shape
        r = data.draw(st.integers(1, D))
        rng = _rng(seed)
        q, k, v = rng.standard_normal((B, H, T, D)), rng.standard_normal((B, Hkv, T, D)), rng.standard_normal((B, Hkv, T, 3))
        half = numpy_of(call(impl, "heavy_channels", call(impl, "channel_outliers", q, k, kind="qk"), r, num_kv_heads=Hkv))
        qi, ki = oracle.half_to_interleaved(q), oracle.half_to_interleaved(k)
        inter = numpy_of(call(impl, "heavy_channels", call(impl, "channel_outliers", qi, ki, kind="qk"), r, num_kv_heads=Hkv))
        moved = numpy_of(call(impl, "permute_channels", half, D, to="interleaved"))
        want = np.array([[2 * c if c < D // 2 else 2 * (c - D // 2) + 1 for c in row] for row in half])
        assert np.array_equal(moved, want), f"permute_channels({half.tolist()}, {D}) = {moved.tolist()}, expected {want.tolist()}"
        assert np.array_equal(np.sort(moved, axis=1), inter), (
            f"heavy channels in the interleaved layout {inter.tolist()} are not the permuted {np.sort(moved, axis=1).tolist()}"
        )
        back = numpy_of(call(impl, "permute_channels", moved, D, to="half"))
        assert np.array_equal(back, half), f"permute_channels to='half' does not undo to='interleaved': {back.tolist()}"
        top_k = data.draw(st.integers(1, T))
        a = call(impl, "decode", q[:, :, -1], k, v, half, top_k=top_k)
        b = call(impl, "decode", qi[:, :, -1], ki, v, moved, top_k=top_k)
        assert_close(b, numpy_of(a), tolerance(impl), what="decode in the interleaved layout vs rotate-half")

    run()


@prop("calibrate")
def calibration_reads_each_statistic_on_its_side_of_rope(impl):
    """calibrate takes the q- and k-outlier statistics before RoPE and the qk-outlier statistic after it."""

    @configured
    @given(shape=sequences(), seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["q", "k", "qk"]), r=st.integers(1, 8))
    @example(shape=(1, 2, 1, 5, 4), seed=0, kind="qk", r=2)
    def run(shape, seed, kind, r):
        B, H, Hkv, T, D = shape
        r = min(r, D)
        rng = _rng(seed)
        layers = []
        for _ in range(2):
            q_pre, k_pre = rng.standard_normal((B, H, T, D)), rng.standard_normal((B, Hkv, T, D))
            # the post-RoPE tensors differ from the pre-RoPE ones by more than a rotation here, so reading
            # the wrong side of RoPE changes the statistics whatever the positions
            layers.append(dict(q_pre=q_pre, k_pre=k_pre, q=rng.standard_normal(q_pre.shape), k=rng.standard_normal(k_pre.shape),
                               v=rng.standard_normal(k_pre.shape)))  # fmt: skip
        got = call(impl, "calibrate", layers, kind=kind, r=r)
        for layer, cap in enumerate(layers):
            side = "_pre" if kind in ("q", "k") else ""
            stats = oracle.channel_outliers(cap["q" + side], cap["k" + side], kind)
            want = oracle.heavy_channels(stats, r, Hkv)
            assert np.array_equal(numpy_of(got[layer]), want), (
                f"layer {layer}, kind {kind!r}: calibrated {numpy_of(got[layer]).tolist()}, expected {want.tolist()} "
                f"(from the {'pre' if side else 'post'}-RoPE q and k)"
            )

    run()


@prop("attention_overrides")
def labels_come_from_post_rope_keys(impl):
    """Erratum 9: the model's attention override ranks tokens by post-RoPE labels, not pre-RoPE ones.

    With every channel as a label the selection must be the top-k of the real (post-RoPE) logits;
    labels of pre-RoPE keys rank by ``q_pre · k_pre``, which ignores the positions.
    """

    @configured
    @given(shape=sequences(max_T=14), seed=st.integers(0, 2**32 - 1), top_k=st.integers(1, 11), every=st.booleans())
    @example(shape=(1, 2, 1, 12, 4), seed=0, top_k=3, every=True)
    def run(shape, seed, top_k, every):
        B, H, Hkv, T, D = shape
        assume(T >= 4)
        top_k = min(top_k, T - 3)
        r = D if every else max(1, D // 2)
        rng = _rng(seed)
        q_pre, k_pre = rng.standard_normal((B, H, T, D)), rng.standard_normal((B, Hkv, T, D))
        v = rng.standard_normal((B, Hkv, T, 3))
        q, k = oracle.rope_half(q_pre, base=10.0), oracle.rope_half(k_pre, base=10.0)  # fast angles: positions matter
        channels = np.stack([np.sort(rng.permutation(D)[:r]) for _ in range(Hkv)]).astype(np.int64)
        fn = call(impl, "attention_overrides", [channels], top_k=top_k)[0]
        try:
            o = fn(*feed(impl, (q, k, v)), q_pre=feed(impl, q_pre), k_pre=feed(impl, k_pre), layer=0)
        except NotImplementedError:
            raise
        except Exception as err:  # noqa: BLE001
            raise AssertionError(f"the layer-0 override raised {type(err).__name__}: {err}") from err
        assert_close(o, oracle.causal_decode(q, k, v, channels, top_k), tolerance(impl),
                     what=f"override vs decoding every row over its post-RoPE prefix (T={T}, top_k={top_k}, r={r})")  # fmt: skip

    run()


@prop("causal_decode")
def causal_decode_equals_decoding_row_by_row(impl):
    """Row t of causal_decode is one decoding step over keys 0..t (dense while t < top_k)."""

    @configured
    @given(shape=sequences(even_D=False, max_T=14), seed=st.integers(0, 2**32 - 1), data=st.data())
    def run(shape, seed, data):
        B, H, Hkv, T, D = shape
        r, top_k = data.draw(st.integers(1, D)), data.draw(st.integers(1, T + 2))
        rng = _rng(seed)
        q, k, v = rng.standard_normal((B, H, T, D)), rng.standard_normal((B, Hkv, T, D)), rng.standard_normal((B, Hkv, T, 3))
        channels = np.stack([rng.permutation(D)[:r] for _ in range(Hkv)]).astype(np.int64)
        o = call(impl, "causal_decode", q, k, v, channels, top_k=top_k)
        assert_close(o, oracle.causal_decode(q, k, v, channels, top_k), tolerance(impl),
                     what=f"causal_decode vs row-by-row oracle (T={T}, top_k={top_k}, r={r})")  # fmt: skip

    run()


# --------------------------------------------------------------------------------------------
# Sparsity accounting (erratum 9)
# --------------------------------------------------------------------------------------------


@prop("label_sparsity", "channels_for", "token_budget")
def sparsity_counts_label_bits(impl):
    """Label sparsity is r·bits / (16·D) (bits, not channels); channels_for inverts it; k = ceil(S·sparsity)."""

    @configured
    @given(D=st.integers(1, 256), bits=st.sampled_from([16, 8, 4]), r=st.integers(1, 256), S=st.integers(1, 10_000),
           ratio=st.sampled_from([Fraction(1, 4), Fraction(1, 8), Fraction(1, 16)]))  # fmt: skip
    @example(D=32, bits=4, r=8, S=100, ratio=Fraction(1, 16))
    def run(D, bits, r, S, ratio):
        r = min(r, D)
        got = call(impl, "label_sparsity", r, D, bits=bits)
        want = oracle.label_sparsity(r, D, bits)
        assert Fraction(got).limit_denominator(1 << 20) == want, f"label_sparsity({r}, {D}, bits={bits}) = {got}, expected {want}"
        assert call(impl, "channels_for", want, D, bits=bits) == r, f"channels_for({want}, {D}, bits={bits}) != {r}"
        k = call(impl, "token_budget", S, ratio)
        assert k == max(1, math.ceil(S * ratio)), f"token_budget({S}, {ratio}) = {k}, expected ceil(S·{ratio})"

    run()
