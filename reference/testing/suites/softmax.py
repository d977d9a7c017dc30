"""Properties of softmax attention (``reference.softmax_attention``'s contract; ``docs/softmax_attention.md``).

Contract functions::

    naive(q, k, v, *, causal=True, scale=None) -> o                          # scale None: K ** -0.5
    tiled(q, k, v, *, causal=True, scale=None, block_q=64, block_k=64) -> o  # FlashAttention-2 tiling
    attention(q, k, v, *, causal=True, scale=None, group=None) -> o          # one rank's chunk, on
        # 2 or 3 gloo ranks (torch, differentiable), as simdist.lasp2h.attention and simdist.ring.attention

Causal masking is aligned to the end of the keys (query ``i`` sees keys ``j ≤ i + Tk − Tq``).
"""

from __future__ import annotations

import numpy as np
from typing import NamedTuple

from hypothesis import example, given
from hypothesis import strategies as st

from reference.testing import oracles
from reference.testing.checks import assert_close, assert_rejects, inputs, tolerance
from reference.testing.strategies import Case, seeds, softmax_cases, to_numpy
from reference.testing.suites import _ranks
from reference.testing.suites._base import Property, configured, registrar

ALGORITHM = "softmax"
CONTRACT = ("naive", "tiled", "attention")
PROPERTIES: list[Property] = []
prop = registrar(PROPERTIES)
TOL = 1e-9

# More keys than queries (a decoding chunk), odd block sizes, the default scale with K = 4.
EXAMPLE = Case(B=1, H=2, T=5, K=4, V=3, seed=0, chunk_size=2, scale=None, Tk=7, block_k=3)


def _call(impl, form, case, q, k, v):
    kwargs = {"causal": case.causal, "scale": case.scale}
    if form == "tiled":
        kwargs.update(block_q=case.chunk_size, block_k=case.block_k or case.chunk_size)
    return getattr(impl, form)(q, k, v, **kwargs)


def _oracle_property(form):
    def check(impl):
        tol = tolerance(impl, TOL)

        @configured
        @example(case=EXAMPLE)
        @given(case=softmax_cases())
        def run(case):
            a = case.arrays()
            want = oracles.softmax_attention(a["q"], a["k"], a["v"], causal=case.causal, scale=case.scale)
            got = _call(impl, form, case, *inputs(impl, a["q"], a["k"], a["v"]))
            assert_close(got, want, tol=tol, what=f"{form} vs the float64 oracle", case=case)

        run()

    check.__doc__ = f"``{form}`` equals the float64 defining sum (causal or not, Tk ≥ Tq, default and explicit scales)."
    prop(form, name=f"{form}_equals_the_oracle")(check)


def _gradient_property(form):
    def check(impl):
        import torch

        tol = tolerance(impl, TOL)

        @configured
        @example(case=EXAMPLE)
        @given(case=softmax_cases(max_T=12))
        def run(case):
            a = case.arrays()
            q, k, v = inputs(impl, a["q"], a["k"], a["v"], requires_grad=True)
            (_call(impl, form, case, q, k, v) * torch.from_numpy(a["do"])).sum().backward()
            want = oracles.softmax_attention_grads(a["q"], a["k"], a["v"], a["do"], causal=case.causal, scale=case.scale)
            for name, leaf, w in zip(("dq", "dk", "dv"), (q, k, v), want):
                got = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
                assert_close(got, w, tol=tol, what=f"autograd through {form} vs the oracle's derivative", name=name, case=case)

        run()

    check.__doc__ = f"Autograd through ``{form}`` equals the derivative of the defining sum (torch)."
    prop(form, name=f"{form}_gradients_equal_the_oracle", backends=("torch",))(check)


for _form in ("naive", "tiled"):
    _oracle_property(_form)


@prop("tiled", "naive")
def tiled_equals_naive(impl):
    """``tiled`` equals ``naive`` on the same inputs, for any block sizes."""
    tol = tolerance(impl, TOL)

    @configured
    @example(case=EXAMPLE)
    @given(case=softmax_cases(max_T=40))
    def run(case):
        a = case.arrays()
        args = inputs(impl, a["q"], a["k"], a["v"])
        want = to_numpy(_call(impl, "naive", case, *args))
        assert_close(_call(impl, "tiled", case, *args), want, tol=tol, what="tiled vs naive", case=case)

    run()


for _form in ("naive", "tiled"):
    _gradient_property(_form)


def _large_logits(form):
    def check(impl):
        rng = np.random.default_rng(0)
        q, k = rng.standard_normal((2, 1, 1, 9, 4)) * 100  # logits of order 1e4: exp() overflows unless shifted
        v = rng.standard_normal((1, 1, 9, 3))
        want = oracles.softmax_attention(q, k, v)
        case = Case(B=1, H=1, T=9, K=4, V=3, seed=0, chunk_size=2, scale=None, block_k=2)
        got = _call(impl, form, case, *inputs(impl, q, k, v))
        assert_close(got, want, tol=tolerance(impl, TOL), what=f"{form} with logits of ±1e4 vs the float64 oracle")

    check.__doc__ = f"``{form}`` with logits of ±1e4 stays finite and exact (the row maximum is subtracted)."
    prop(form, name=f"{form}_large_logits_stay_finite")(check)


def _bad_inputs(form):
    def check(impl):
        rng = np.random.default_rng(0)
        q, k, v = rng.standard_normal((3, 1, 2, 5, 4))
        bad = [
            ("q", (q[0], k, v), {}),
            ("k", (q, k[..., :3], v), {}),
            ("v", (q, k, v[:, :1]), {}),
        ]
        if form == "tiled":
            bad.append(("block_q", (q, k, v), {"block_q": 0}))
        for argument, arrays, kwargs in bad:
            args = inputs(impl, *arrays)
            shapes = ", ".join(f"{n}: {tuple(x.shape)}" for n, x in zip("qkv", arrays))
            assert_rejects(
                lambda: getattr(impl, form)(*args, **kwargs), argument=argument,
                what=f"{form} with a bad {argument} ({shapes}{', ' if kwargs else ''}{', '.join(f'{n}={x}' for n, x in kwargs.items())})",
            )  # fmt: skip

    check.__doc__ = (
        f"``{form}`` rejects bad shapes with a ValueError or TypeError naming the argument (q of rank 3, "
        "k of another width, v of another batch" + (", block_q 0" if form == "tiled" else "") + ")."
    )
    prop(form, name=f"{form}_rejects_bad_inputs")(check)


for _form in ("naive", "tiled"):
    _large_logits(_form)
    _bad_inputs(_form)


# --------------------------------------------------------------------------------------------
# Sequence parallel: one rank's chunk on gloo ranks (LASP-2H's softmax layers, Ring Attention)
# --------------------------------------------------------------------------------------------


class RankCase(NamedTuple):
    """``W`` ranks, rank ``r`` holding ``lengths[r]`` tokens; arrays from ``seed``."""

    seed: int
    B: int
    H: int
    K: int
    V: int
    lengths: tuple[int, ...]
    causal: bool
    scale: float | None


@st.composite
def rank_cases(draw):
    """2 or 3 ranks, unequal chunks (single tokens included), causal or not, default scale or 0.7."""
    return RankCase(draw(seeds()), draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4)),
                    draw(st.integers(1, 4)), draw(_ranks.rank_lengths()), draw(st.booleans()),
                    draw(st.sampled_from([None, 0.7])))  # fmt: skip


@prop("attention", backends=("torch",))
def attention_on_ranks_equals_one_device(impl):
    """On 2 or 3 gloo ranks, each with its contiguous chunk (unequal lengths), the outputs and the
    gradients of q, k, v put together equal the float64 oracle's on the whole sequence."""
    tol = tolerance(impl, TOL)
    where = _ranks.where_defined(impl, "attention")

    @configured
    @example(case=RankCase(seed=0, B=1, H=2, K=4, V=3, lengths=(3, 1, 2), causal=True, scale=None))
    @given(case=rank_cases())
    def run(case):
        q, k, v, do = _ranks.problem(case)
        per_rank = _ranks.run_on_ranks(where, q, k, v, do, case.lengths, {"causal": case.causal, "scale": case.scale})
        want = (
            oracles.softmax_attention(q, k, v, causal=case.causal, scale=case.scale),
            *oracles.softmax_attention_grads(q, k, v, do, causal=case.causal, scale=case.scale),
        )
        what = f"attention on {len(case.lengths)} gloo ranks vs one device (the float64 oracle)"
        _ranks.compare_chunks(per_rank, want, case.lengths, tol=tol, what=what, case=case)

    run()
