"""Running a contract function on gloo ranks: each rank its contiguous chunk, forward and backward.

A property hands ``run_on_ranks`` where the function is defined (``where_defined``: a module name,
or a ``.py`` path that every rank loads again, as the grader loads it) and the whole-sequence
arrays; rank ``r`` of a ``simdist.shared_pool`` runs ``fn(q_r, k_r, v_r, **options)`` on its chunk,
backpropagates ``Σ o_r ⊙ do_r`` and returns ``o_r`` and its chunk's ``dq, dk, dv``.
``compare_chunks`` then names the first rank, and the first quantity, that differs from one device.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from reference.testing.checks import assert_close
from reference.testing.strategies import chunk_lengths

_LOADED: dict = {}  # per rank process: modules loaded by path, keyed by (path, modification time)


@st.composite
def rank_lengths(draw) -> tuple[int, ...]:
    """2 or 3 ranks' chunk lengths: unequal, single tokens included."""
    W = draw(st.integers(2, 3))
    T = draw(st.integers(W, 3 * W + 4))
    return tuple(draw(chunk_lengths(T, W)))


def problem(case):
    """The whole sequence's ``q, k, v`` and output gradient ``do`` of a rank case (a tuple with
    ``seed, B, H, K, V, lengths``), drawn from its seed."""
    rng = np.random.default_rng(case.seed)
    T = sum(case.lengths)
    q, k, v = (rng.standard_normal((case.B, case.H, T, d)) for d in (case.K, case.K, case.V))
    return q, k, v, rng.standard_normal((case.B, case.H, T, case.V))


def where_defined(impl, name: str):
    """``("module", module, fn)`` or ``("file", path, fn)``: how a rank loads ``impl.<name>``."""
    import importlib.util
    import sys

    fn = getattr(impl, name)
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is None:
        raise AssertionError(f"{name} must be defined in a module the ranks can load (a .py file or an importable module)")
    if not module.__name__.startswith("_graded_") and importlib.util.find_spec(module.__name__) is not None:
        return ("module", module.__name__, fn.__name__)
    return ("file", module.__file__, fn.__name__)


def _rank_run(rank, world_size, where, q, k, v, do, lengths, options):
    """One rank: load the function, run its chunk forward and backward, return ``[o, dq, dk, dv]``."""
    import importlib
    import os

    import torch

    kind, name, fn_name = where
    if kind == "module":
        module = importlib.import_module(name)
    else:
        key = (name, os.path.getmtime(name))
        if key not in _LOADED:
            from reference.testing.grader import load_target

            _LOADED[key] = load_target(name)
        module = _LOADED[key]
    start = sum(lengths[:rank])
    chunk = slice(start, start + lengths[rank])
    q, k, v = (torch.from_numpy(x[:, :, chunk].copy()).requires_grad_() for x in (q, k, v))
    o = getattr(module, fn_name)(q, k, v, **options)
    if isinstance(o, torch.Tensor) and o.requires_grad:  # else the gradients are reported missing, after o
        (o * torch.from_numpy(do[:, :, chunk].copy())).sum().backward()
    return [x.detach().clone() if x is not None else None for x in (o, q.grad, k.grad, v.grad)]


def run_on_ranks(where, q, k, v, do, lengths, options: dict) -> list:
    """``[[o_r, dq_r, dk_r, dv_r] for every rank r]`` from ``len(lengths)`` gloo ranks."""
    import simdist

    return simdist.shared_pool(len(lengths), timeout=120).run(_rank_run, where, q, k, v, do, list(lengths), options)


def compare_chunks(per_rank, want, lengths, *, tol, what, case) -> None:
    """Each rank's ``o, dq, dk, dv`` against its rows of the one-device ``want`` (outputs first)."""
    edges = np.cumsum((0, *lengths))
    for i, name in enumerate(("o", "dq", "dk", "dv")):
        for r in range(len(lengths)):
            got = per_rank[r][i]
            if got is None:
                raise AssertionError(f"{what}: rank {r}'s {name} is missing (no gradient reached its chunk)")
            assert_close(got, want[i][:, :, edges[r] : edges[r + 1]], tol=tol, name=f"{name} of rank {r}'s chunk", what=what, case=case)
