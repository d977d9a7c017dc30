"""The properties linear attention, Lightning Attention-2 and GLA share, written once.

The three algorithms have the same forms (``recurrent`` and ``chunked`` return ``(o, final_state)``,
``parallel`` returns ``o``) and differ only in one extra positional argument (nothing, ``decay: [H]``
or ``log_alpha: [B, H, T, K]``) and in their float64 oracle. ``register`` adds, for one algorithm:

* ``<form>_equals_the_oracle`` — each form against the defining sum (initial states, scales, chunk
  sizes from 1 to beyond ``T``);
* ``chunked_equals_recurrent``, ``parallel_equals_recurrent`` — forms against each other, longer
  sequences;
* ``chunked_handles_a_short_last_chunk`` — ``T = n·C + r`` with ``0 < r < C``;
* ``<form>_gradients_equal_the_oracle`` (torch) — autograd through each form against the
  derivative of the defining sum;
* ``chunked_backward_equals_the_oracle`` and ``chunked_backward_equals_autograd`` — the manual
  backward, where the algorithm has one;
* ``<form>_rejects_bad_inputs`` — ``ValueError``/``TypeError`` naming the argument.

Every Hypothesis property tries ``Family.example`` first: a strong decay (or small gates), an odd
length cut into several chunks with a short last one, an initial state, ``scale ≠ 1`` and ``K = V``.
Most mistakes show on it, so a wrong implementation fails on the first example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from reference.testing.checks import assert_close, assert_rejects, inputs, tolerance
from reference.testing.strategies import Case
from reference.testing.suites._base import configured

FORMS = ("recurrent", "parallel", "chunked")
TOL = 1e-9  # float64 throughout: only rounding separates a correct form from the oracle


@dataclass(frozen=True)
class Family:
    """How one algorithm of the family is called and what it should return.

    ``extra``: the name of the extra positional argument after ``q, k, v`` (``None``: none).
    ``oracle(arrays, case, with_state) -> (o, S)`` and ``oracle_grads(arrays, case) -> grads`` are
    the float64 references; ``cases(**kw)`` draws ``Case`` objects; ``grad_names`` name the
    gradients (``d<extra>`` last where the extra argument is differentiated).
    """

    extra: str | None
    oracle: Callable
    oracle_grads: Callable
    cases: Callable
    example: Case
    grad_names: tuple[str, ...] = ("dq", "dk", "dv")
    regime: str = ""  # what the draws stress beyond sizes and chunks, for the properties' descriptions


def _returns_pair(result, form: str):
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise AssertionError(f"{form} should return (o, final_state), got {type(result).__name__}")
    return result


def call(fam: Family, impl, form: str, case: Case, a: dict, *, with_state: bool = True, requires_grad: bool = False):
    """``impl.<form>(q, k, v[, extra], scale=..., chunk_size=..., initial_state=...)`` on ``a``.

    With ``requires_grad`` (torch) returns ``(result, leaves)``: ``q, k, v`` and a gate that
    receives a gradient (``log_alpha``; a decay does not).
    """
    q, k, v = inputs(impl, a["q"], a["k"], a["v"], requires_grad=requires_grad)
    leaves = [q, k, v]
    args = [q, k, v]
    if fam.extra is not None:
        (x,) = inputs(impl, a[fam.extra], requires_grad=requires_grad and fam.extra == "log_alpha")
        args.append(x)
        if fam.extra == "log_alpha":
            leaves.append(x)
    kwargs = {"scale": case.scale}
    if form in ("chunked", "chunked_backward"):
        kwargs["chunk_size"] = case.chunk_size
    if form != "parallel" and with_state and a["initial_state"] is not None:
        kwargs["initial_state"] = inputs(impl, a["initial_state"])[0]
    result = getattr(impl, form)(*args, **kwargs)
    return (result, leaves) if requires_grad else result


def register(prop, fam: Family) -> None:
    """Add the shared properties of ``fam`` through the suite's registrar ``prop``."""
    for form in FORMS:
        _oracle_property(prop, fam, form)
    for form in ("chunked", "parallel"):
        _pair_property(prop, fam, form)
    _short_last_chunk(prop, fam)
    for form in FORMS:
        _gradient_property(prop, fam, form)
    if fam.grad_names and fam.extra is not None:
        _backward_properties(prop, fam)
    for form in FORMS:
        _bad_inputs_property(prop, fam, form)


def _compare(fam, form, got, want, case, tol, what):
    if form == "parallel":
        assert_close(got, want[0], tol=tol, what=what, name="o", case=case)
        return
    o, s = _returns_pair(got, form)
    assert_close(o, want[0], tol=tol, what=what, name="o", case=case)
    assert_close(s, want[1], tol=tol, what=what, name="final state", case=case)


def _oracle_property(prop, fam: Family, form: str) -> None:
    def check(impl):
        tol = tolerance(impl, TOL)

        @configured
        @example(case=fam.example)
        @given(case=fam.cases())
        def run(case):
            a = case.arrays()
            with_state = form != "parallel"
            got = call(fam, impl, form, case, a, with_state=with_state)
            _compare(fam, form, got, fam.oracle(a, case, with_state), case, tol, f"{form} vs the float64 oracle")

        run()

    check.__doc__ = (
        f"``{form}`` equals the float64 defining sum (outputs"
        + ("" if form == "parallel" else ", final states, initial states")
        + ("; chunk sizes 1 to beyond T, odd lengths" if form == "chunked" else "; sequences from 1 token")
        + (f"; {fam.regime}" if fam.regime else "")
        + ")."
    )
    prop(form, name=f"{form}_equals_the_oracle")(check)


def _pair_property(prop, fam: Family, form: str) -> None:
    def check(impl):
        tol = tolerance(impl, TOL)

        @configured
        @example(case=fam.example)
        @given(case=fam.cases(max_T=64))
        def run(case):
            a = case.arrays()
            with_state = form != "parallel"
            want = call(fam, impl, "recurrent", case, a, with_state=with_state)
            want = _returns_pair(want, "recurrent")
            got = call(fam, impl, form, case, a, with_state=with_state)
            _compare(fam, form, got, [np.asarray(_np(w)) for w in want], case, tol, f"{form} vs recurrent")

        run()

    check.__doc__ = f"``{form}`` equals ``recurrent`` on the same inputs (sequences up to 64 tokens)."
    prop(form, "recurrent", name=f"{form}_equals_recurrent")(check)


def _np(x):
    from reference.testing.strategies import to_numpy

    return to_numpy(x)


@st.composite
def _short_last(draw, fam: Family):
    base = draw(fam.cases(max_T=8))
    C = draw(st.integers(2, 8))
    n = draw(st.integers(1, 4))
    r = draw(st.integers(1, C - 1))
    fields = {**base.__dict__, "T": n * C + r, "chunk_size": C}
    return Case(**fields)


def _short_last_chunk(prop, fam: Family) -> None:
    def check(impl):
        tol = tolerance(impl, TOL)

        @configured
        @example(case=fam.example)
        @given(case=_short_last(fam))
        def run(case):
            a = case.arrays()
            got = call(fam, impl, "chunked", case, a)
            what = f"chunked with T = {case.T} = {case.T // case.chunk_size}·{case.chunk_size} + {case.T % case.chunk_size} vs the float64 oracle"
            _compare(fam, "chunked", got, fam.oracle(a, case, True), case, tol, what)

        run()

    check.__doc__ = "``chunked`` with a short last chunk (``T = n·C + r``, ``0 < r < C``) equals the oracle."
    prop("chunked", name="chunked_handles_a_short_last_chunk")(check)


def _autograd(result_o, leaves, do):
    import torch

    (result_o * torch.from_numpy(do)).sum().backward()
    return [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]


def _gradient_property(prop, fam: Family, form: str) -> None:
    def check(impl):
        tol = tolerance(impl, TOL)

        @configured
        @example(case=fam.example)
        @given(case=fam.cases(max_T=16, initial_state=False))
        def run(case):
            a = case.arrays()
            result, leaves = call(fam, impl, form, case, a, with_state=False, requires_grad=True)
            o = result if form == "parallel" else _returns_pair(result, form)[0]
            grads = _autograd(o, leaves, a["do"])
            want = fam.oracle_grads(a, case)
            for name, g, w in zip(fam.grad_names, grads, want):
                assert_close(g, w, tol=tol, what=f"autograd through {form} vs the oracle's derivative", name=name, case=case)

        run()

    check.__doc__ = f"Autograd through ``{form}`` equals the derivative of the defining sum (torch)."
    prop(form, name=f"{form}_gradients_equal_the_oracle", backends=("torch",))(check)


def _backward_properties(prop, fam: Family) -> None:
    def against_oracle(impl):
        tol = tolerance(impl, TOL)

        @configured
        @example(case=fam.example)
        @given(case=fam.cases(max_T=24, initial_state=False))
        def run(case):
            a = case.arrays()
            q, k, v, x, do = inputs(impl, a["q"], a["k"], a["v"], a[fam.extra], a["do"])
            grads = impl.chunked_backward(q, k, v, x, do, scale=case.scale, chunk_size=case.chunk_size)
            want = fam.oracle_grads(a, case)
            if len(grads) < len(want):
                raise AssertionError(f"chunked_backward should return {', '.join(fam.grad_names)}; got {len(grads)} arrays")
            for name, g, w in zip(fam.grad_names, grads, want):
                assert_close(g, w, tol=tol, what="chunked_backward vs the oracle's derivative", name=name, case=case)

        run()

    against_oracle.__doc__ = (
        f"The manual backward ``chunked_backward`` returns ({', '.join(fam.grad_names)}) equal to the "
        "derivative of the defining sum."
    )
    prop("chunked_backward", name="chunked_backward_equals_the_oracle")(against_oracle)

    def against_autograd(impl):
        tol = tolerance(impl, TOL)

        @configured
        @example(case=fam.example)
        @given(case=fam.cases(max_T=32, initial_state=False))
        def run(case):
            a = case.arrays()
            result, leaves = call(fam, impl, "chunked", case, a, with_state=False, requires_grad=True)
            auto = _autograd(_returns_pair(result, "chunked")[0], leaves, a["do"])
            q, k, v, x, do = inputs(impl, a["q"], a["k"], a["v"], a[fam.extra], a["do"])
            grads = impl.chunked_backward(q, k, v, x, do, scale=case.scale, chunk_size=case.chunk_size)
            for name, g, w in zip(fam.grad_names, grads, auto):
                assert_close(g, _np(w), tol=tol, what="chunked_backward vs autograd through chunked", name=name, case=case)

        run()

    against_autograd.__doc__ = "The manual backward equals autograd through ``chunked`` (torch)."
    prop("chunked_backward", "chunked", name="chunked_backward_equals_autograd", backends=("torch",))(against_autograd)


def _bad_inputs_property(prop, fam: Family, form: str) -> None:
    def check(impl):
        B, H, T, K, V = 1, 2, 5, 3, 4
        rng = np.random.default_rng(0)
        good = {
            "q": rng.standard_normal((B, H, T, K)),
            "k": rng.standard_normal((B, H, T, K)),
            "v": rng.standard_normal((B, H, T, V)),
            "decay": np.array([0.5, 0.9]),
            "log_alpha": -rng.uniform(0.0, 1.0, (B, H, T, K)),
            "initial_state": rng.standard_normal((B, H, K, V)),
        }
        bad = [
            ("q", dict(q=good["q"][0])),
            ("k", dict(k=rng.standard_normal((B, H, T, K + 1)))),
            ("v", dict(v=rng.standard_normal((B + 1, H, T, V)))),
        ]
        if fam.extra == "decay":
            bad += [("decay", dict(decay=np.array([0.5, 0.9, 0.9]))), ("decay", dict(decay=np.array([0.5, 1.5])))]
        if fam.extra == "log_alpha":
            bad += [
                ("log_alpha", dict(log_alpha=np.abs(good["log_alpha"]) + 0.1)),
                ("log_alpha", dict(log_alpha=good["log_alpha"][..., :-1])),
            ]
        options = {}
        if form == "chunked":
            bad.append(("chunk_size", dict(chunk_size=0)))
            options["chunk_size"] = 2
        if form != "parallel":
            bad.append(("initial_state", dict(initial_state=rng.standard_normal((B, H, K + 1, V)))))

        for argument, change in bad:
            arrays = {**good, **{n: x for n, x in change.items() if n != "chunk_size"}}
            names = ["q", "k", "v"] + ([fam.extra] if fam.extra else [])
            args = list(inputs(impl, *(arrays[n] for n in names)))
            kwargs = dict(options)
            if "chunk_size" in change:
                kwargs["chunk_size"] = change["chunk_size"]
            if form != "parallel":
                kwargs["initial_state"] = inputs(impl, arrays["initial_state"])[0]
            assert_rejects(
                lambda: getattr(impl, form)(*args, **kwargs),
                argument=argument,
                what=f"{form} with a bad {argument} ({_describe(change)})",
            )

    check.__doc__ = (
        f"``{form}`` rejects bad shapes and values with a ValueError or TypeError naming the argument "
        "(q of rank 3, k or v of the wrong size"
        + {"decay": ", decay of the wrong length or above 1", "log_alpha": ", log_alpha above 0 or of the wrong shape"}.get(fam.extra, "")
        + (", chunk_size 0" if form == "chunked" else "")
        + (", initial_state of the wrong shape" if form != "parallel" else "")
        + ")."
    )
    prop(form, name=f"{form}_rejects_bad_inputs")(check)


def _describe(change: dict) -> str:
    parts = []
    for name, x in change.items():
        if isinstance(x, np.ndarray) and x.ndim == 1 and x.size <= 4:
            parts.append(f"{name}={x.tolist()}")
        elif isinstance(x, np.ndarray):
            parts.append(f"{name} of shape {x.shape}")
        else:
            parts.append(f"{name}={x!r}")
    return ", ".join(parts)
