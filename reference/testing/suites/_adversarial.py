"""Adversarial properties of the linear family: poisoned tokens and reset gates, written once.

``register(prop, fam)`` adds, for one algorithm of ``_family``:

* ``<form>_poisoned_q_or_k_changes_no_earlier_row`` — a NaN, ``inf`` or ``-inf`` in token ``t``'s
  ``q`` or ``k`` leaves every output row before ``t`` *bit for bit* unchanged (a causal mask applied
  by multiplying, ``0 · NaN = NaN``, lets the future into the past);
* ``<form>_poisoned_v_changes_no_earlier_chunk`` — a poisoned ``v_t`` leaves every row before
  ``t`` unchanged in ``recurrent``, and every row before ``t``'s chunk in ``chunked``: inside a
  chunk ``P V`` multiplies ``v_t`` by the zeros above the diagonal, which only skipping that product
  would avoid (``parallel`` makes one chunk of the whole sequence, so nothing is asked of it).

``register_resets(prop, fam)`` (GLA) adds ``<form>_reset_gates_are_exact``: ``log α = -inf`` (a
full reset) at random steps and channels, and finite gates as large as ``-1e20``, against the
float64 oracle, which forms each product of gates from a fresh sum over exactly its range.

The checks are also exported (``check_poison``, ``poison_limit``) for implementations the suites'
float64 calls do not fit (a kernel with a fixed chunk size, in float32).
"""

from __future__ import annotations

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from reference.testing.checks import assert_close, inputs, tolerance
from reference.testing.strategies import Case, to_numpy
from reference.testing.suites._base import configured

POISONS = (float("nan"), float("inf"), float("-inf"))


def poison_limit(name: str, t: int, form: str, chunk_size: int) -> int:
    """How many leading rows must stay bit-for-bit unchanged when token ``t``'s ``name`` is poisoned."""
    if name == "v" and form == "chunked":
        return (t // chunk_size) * chunk_size  # the rows before t's chunk
    return t


def _output(result, form: str):
    if form == "parallel":
        return result
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise AssertionError(f"{form} should return (o, final_state), got {type(result).__name__}")
    return result[0]


def check_poison(run, arrays: dict, name: str, t: int, value: float, limit: int, what: str) -> None:
    """``run(arrays) -> o`` on clean and poisoned ``arrays``: rows ``0..limit-1`` of ``o`` must be identical.

    ``arrays[name][..., t, :]`` is set to ``value`` in the poisoned copy (every batch, head and channel).
    """
    clean = np.asarray(to_numpy(run(arrays)))
    bad = dict(arrays)
    bad[name] = arrays[name].copy()
    bad[name][..., t, :] = value
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf are the point here
        poisoned = np.asarray(to_numpy(run(bad)))
    if clean.shape != poisoned.shape:
        raise AssertionError(f"{what}: output shapes differ, {clean.shape} clean vs {poisoned.shape} poisoned")
    if not np.all(np.isfinite(clean)):
        raise AssertionError(f"{what}: the output on clean inputs is not finite")
    before, after = clean[..., :limit, :], poisoned[..., :limit, :]
    same = (before == after) | (np.isnan(before) & np.isnan(after))
    if not np.all(same):
        rows = sorted({int(r) for r in np.nonzero(~same)[-2]})
        raise AssertionError(
            f"{what}: {name}[..., {t}, :] = {value} changed output rows {rows[:8]}"
            f"{' …' if len(rows) > 8 else ''} (rows before {limit} must be bit-for-bit unchanged); "
            f"e.g. {before[~same][0]!r} became {after[~same][0]!r}. A causal mask applied by "
            "multiplying (0 · NaN = NaN) instead of selecting with where lets a later token into earlier rows."
        )


def _caller(fam, impl, form: str, case: Case):
    from reference.testing.suites._family import call

    def run(arrays):
        return _output(call(fam, impl, form, case, arrays), form)

    return run


@st.composite
def _poison_draws(draw, fam, min_T: int = 2):
    case = draw(fam.cases(max_T=24, min_T=min_T))
    t = draw(st.integers(0, case.T - 1))
    value = draw(st.sampled_from(POISONS))
    return case, t, value


def _qk_property(prop, fam, form: str) -> None:
    def check(impl):
        @configured
        @example(draws=(fam.example, fam.example.T - 1, float("nan")), name="k")
        @given(draws=_poison_draws(fam), name=st.sampled_from(["q", "k"]))
        def run(draws, name):
            case, t, value = draws
            limit = poison_limit(name, t, form, case.chunk_size)
            check_poison(_caller(fam, impl, form, case), case.arrays(), name, t, value, limit, f"{form} on {case!r}")

        run()

    check.__doc__ = (
        f"``{form}``: a NaN or ±inf in token t's q or k leaves every output row before t bit-for-bit "
        "unchanged (masks applied with where, never by multiplying)."
    )
    prop(form, name=f"{form}_poisoned_q_or_k_changes_no_earlier_row")(check)


def _v_property(prop, fam, form: str) -> None:
    def check(impl):
        @configured
        @example(draws=(fam.example, fam.example.T - 1, float("nan")))
        @given(draws=_poison_draws(fam))
        def run(draws):
            case, t, value = draws
            limit = poison_limit("v", t, form, case.chunk_size)
            check_poison(_caller(fam, impl, form, case), case.arrays(), "v", t, value, limit, f"{form} on {case!r}")

        run()

    where = "before t's chunk" if form == "chunked" else "before t"
    check.__doc__ = f"``{form}``: a NaN or ±inf in token t's v leaves every output row {where} bit-for-bit unchanged."
    prop(form, name=f"{form}_poisoned_v_changes_no_earlier_{'chunk' if form == 'chunked' else 'row'}")(check)


def register(prop, fam) -> None:
    """Add the poison properties of ``fam`` through the suite's registrar ``prop``."""
    for form in ("recurrent", "parallel", "chunked"):
        _qk_property(prop, fam, form)
    for form in ("recurrent", "chunked"):
        _v_property(prop, fam, form)


# --------------------------------------------------------------------------------------------
# Reset gates (GLA)
# --------------------------------------------------------------------------------------------


def reset_gates(rng, shape, *, resets: float = 0.15, huge: float = 0.05) -> np.ndarray:
    """Gates ``log α ∈ [log 0.05, 0]`` with ``-inf`` (resets) and ``-1e20`` (finite, huge) at random entries."""
    a = rng.uniform(np.log(0.05), 0.0, size=shape)
    draw = rng.random(shape)
    a[draw < resets] = -np.inf
    a[(draw >= resets) & (draw < resets + huge)] = -1e20
    # Whole steps reset too (every channel at once: a document boundary).
    steps = rng.random(shape[:-2] + (shape[-2],)) < resets / 2
    a[steps] = -np.inf
    return a


def _reset_property(prop, fam, form: str) -> None:
    from reference.testing import oracles

    def check(impl):
        tol = tolerance(impl, 1e-9)

        @configured
        @example(case=fam.example)
        @given(case=fam.cases(max_T=33))
        def run(case):
            a = case.arrays()
            a["log_alpha"] = reset_gates(np.random.default_rng(case.seed + 1), a["log_alpha"].shape)
            s0 = a["initial_state"]
            want_o, want_s = oracles.gated_linear_attention(
                a["q"], a["k"], a["v"], a["log_alpha"], scale=case.scale, initial_state=s0 if form != "parallel" else None
            )
            from reference.testing.suites._family import call

            got = call(fam, impl, form, case, a, with_state=form != "parallel")
            what = f"{form} with resets (log α = -inf) and gates of -1e20 at random steps vs the float64 oracle"
            assert_close(_output(got, form), want_o, tol=tol, what=what, name="o", case=case)
            if form != "parallel":
                assert_close(got[1], want_s, tol=tol, what=what, name="final state", case=case)

        run()

    check.__doc__ = (
        f"``{form}`` with ``log α = -inf`` (a reset) and ``-1e20`` at random steps equals the float64 oracle: "
        "gate sums are formed over their range, never as a difference of cumulative sums."
    )
    prop(form, name=f"{form}_reset_gates_are_exact")(check)


def _reset_backward_property(prop, fam) -> None:
    from reference.testing import oracles

    def check(impl):
        tol = tolerance(impl, 1e-9)

        @configured
        @example(case=fam.example)
        @given(case=fam.cases(max_T=20, initial_state=False))
        def run(case):
            a = case.arrays()
            a["log_alpha"] = reset_gates(np.random.default_rng(case.seed + 1), a["log_alpha"].shape)
            want = oracles.gated_linear_attention_grads(a["q"], a["k"], a["v"], a["log_alpha"], a["do"], scale=case.scale)
            q, k, v, x, do = inputs(impl, a["q"], a["k"], a["v"], a["log_alpha"], a["do"])
            grads = impl.chunked_backward(q, k, v, x, do, scale=case.scale, chunk_size=case.chunk_size)
            for name, g, w in zip(fam.grad_names, grads, want):
                assert_close(g, w, tol=tol, what="chunked_backward with resets (log α = -inf) vs the oracle's derivative", name=name, case=case)

        run()

    check.__doc__ = "The manual backward with resets (``log α = -inf``) and ``-1e20`` gates equals the oracle's derivative."
    prop("chunked_backward", name="chunked_backward_reset_gates_are_exact")(check)


def register_resets(prop, fam) -> None:
    """Add the reset-gate properties (GLA) through the suite's registrar ``prop``."""
    for form in ("recurrent", "parallel", "chunked"):
        _reset_property(prop, fam, form)
    _reset_backward_property(prop, fam)
