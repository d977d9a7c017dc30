"""Hypothesis strategies shared by every suite (and by coursework that points them at its own code).

Arrays are drawn as a seed and filled by NumPy's generator: far faster than drawing each element,
and a failing example still replays exactly from the printed seed. Shapes, chunk sizes, decays and
gates are drawn by Hypothesis so it can shrink them toward the smallest failing case.

Everything returns float64 NumPy arrays; ``to_backend`` turns them into torch tensors when a test
is parametrised over both libraries.

The property suites draw whole problems as ``Case`` objects (``cases``): sizes, a seed, chunk size,
scale, decays or gate strength. A ``Case`` prints as one readable line and rebuilds its arrays from
the seed, so a shrunk counterexample names everything needed to replay it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from hypothesis import strategies as st

BACKENDS = ("numpy", "torch")


@dataclass(frozen=True)
class Dims:
    """Sizes of one attention problem: ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]``."""

    B: int
    H: int
    T: int
    K: int
    V: int


@st.composite
def dims(draw, *, max_B=2, max_H=3, min_T=1, max_T=40, max_K=8, max_V=8) -> Dims:
    """Problem sizes; ``T`` includes 1 and lengths that no chunk size divides."""
    return Dims(
        B=draw(st.integers(1, max_B)),
        H=draw(st.integers(1, max_H)),
        T=draw(st.integers(min_T, max_T)),
        K=draw(st.integers(1, max_K)),
        V=draw(st.integers(1, max_V)),
    )


def seeds():
    return st.integers(0, 2**32 - 1)


def normal(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    """Standard normal float64 array from ``seed``."""
    return np.random.default_rng(seed).standard_normal(shape) * scale


@st.composite
def qkv(draw, d: Dims, *, Tk: int | None = None):
    """``(q, k, v)`` float64 arrays for sizes ``d`` (keys of length ``Tk`` if given)."""
    seed = draw(seeds())
    Tk = d.T if Tk is None else Tk
    return (
        normal(seed, d.B, d.H, d.T, d.K),
        normal(seed + 1, d.B, d.H, Tk, d.K),
        normal(seed + 2, d.B, d.H, Tk, d.V),
    )


@st.composite
def states(draw, d: Dims):
    """An initial state ``[B, H, K, V]``, sometimes ``None``."""
    if draw(st.booleans()):
        return None
    return normal(draw(seeds()), d.B, d.H, d.K, d.V)


def chunk_sizes(T: int):
    """Chunk sizes from 1 to beyond ``T`` (one chunk), favouring the awkward ones."""
    return st.one_of(st.integers(1, max(1, T + 3)), st.sampled_from([1, 2, 3, 16, 64]))


def decays(H: int, *, min_decay: float = 0.3):
    """Per-head rates ``λ ∈ [min_decay, 1]``, strong decays and exactly 1 (no decay) included."""
    rate = st.one_of(st.floats(min_decay, 1.0), st.sampled_from([min_decay, 0.5, 1.0]))
    return st.lists(rate, min_size=H, max_size=H).map(lambda xs: np.asarray(xs, dtype=np.float64))


@st.composite
def log_gates(draw, d: Dims, *, min_gate: float = 1e-3):
    """Log-space gates ``log α: [B, H, T, K] ≤ 0`` with per-step ``α`` down to ``min_gate``.

    Half the draws mix ordinary gates near 1 with tiny ones, so both regimes meet in one case.
    """
    seed = draw(seeds())
    rng = np.random.default_rng(seed)
    lo = np.log(min_gate)
    gates = rng.uniform(lo, 0.0, size=(d.B, d.H, d.T, d.K))
    if draw(st.booleans()):
        gates = np.where(rng.random(gates.shape) < 0.5, gates, rng.uniform(-0.1, 0.0, size=gates.shape))
    return gates


def to_backend(backend: str, *arrays, requires_grad: bool = False):
    """The arrays as NumPy (unchanged) or as torch tensors (optionally requiring grad); ``None`` stays."""
    if backend == "numpy":
        return arrays
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
        else:
            t = torch.from_numpy(np.ascontiguousarray(a))
            out.append(t.requires_grad_(requires_grad) if requires_grad else t)
    return tuple(out)


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.double()  # NumPy has no bfloat16
        return x.numpy()
    return np.asarray(x)


def rel_err(actual, expected) -> float:
    """``‖actual − expected‖ / ‖expected‖`` (absolute when the expected value is all zeros)."""
    actual, expected = to_numpy(actual).astype(np.float64), to_numpy(expected).astype(np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    assert np.all(np.isfinite(actual)), "non-finite values in the result"
    denom = np.linalg.norm(expected)
    diff = np.linalg.norm(actual - expected)
    return float(diff / denom) if denom > 0 else float(diff)


# --------------------------------------------------------------------------------------------
# Sequence parallelism (simdist): how a sequence is cut into one chunk per rank
# --------------------------------------------------------------------------------------------


@st.composite
def chunk_lengths(draw, T: int, W: int):
    """``W`` positive chunk lengths summing to ``T`` (needs ``T ≥ W``): even splits and lopsided ones.

    Half the draws split as evenly as possible; the others cut at random points, so single-token
    chunks and one long chunk next to short ones both occur.
    """
    if T < W:
        raise ValueError(f"chunk_lengths needs T >= W, got T={T}, W={W}")
    if W == 1 or draw(st.booleans()):
        return [T // W + (1 if r < T % W else 0) for r in range(W)]
    cuts = sorted(draw(st.lists(st.integers(1, T - 1), min_size=W - 1, max_size=W - 1, unique=True)))
    edges = [0, *cuts, T]
    return [b - a for a, b in zip(edges, edges[1:])]


# --------------------------------------------------------------------------------------------
# Gated Linear Attention: secondary chunk sizes
# --------------------------------------------------------------------------------------------


def sub_chunk_sizes(chunk: int):
    """Secondary chunk sizes for a chunk of ``chunk`` tokens: divisors, non-divisors, 1, and ``≥ chunk``.

    Any positive size is valid: sub-chunks tile each chunk from its start and the last one is shorter.
    """
    return st.one_of(st.integers(1, chunk + 2), st.sampled_from([1, 16, max(1, chunk // 2), chunk]))


# --------------------------------------------------------------------------------------------
# Whole problems, as the property suites draw them
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One attention problem: sizes, the seed of its arrays and the options of the call.

    ``q, k: [B, H, T, K]`` (keys of length ``Tk`` when given), ``v: [B, H, T, V]``. ``decay`` is one
    ``λ`` per head (Lightning); ``min_gate > 0`` asks for log-space gates whose per-step ``α`` reach
    down to it (GLA). ``chunk_size`` is also softmax's ``block_q``.
    """

    B: int
    H: int
    T: int
    K: int
    V: int
    seed: int
    chunk_size: int = 64
    scale: float | None = 1.0
    decay: tuple[float, ...] | None = None
    min_gate: float | None = None
    initial_state: bool = False
    Tk: int | None = None
    block_k: int | None = None
    causal: bool = True

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("B", "H", "T", "K", "V", "seed") or value != f.default:
                shown.append(f"{f.name}={value!r}")
        return f"Case({', '.join(shown)})"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis prints examples with this: one line
        printer.text(repr(self))

    @property
    def keys(self) -> int:
        return self.T if self.Tk is None else self.Tk

    def arrays(self) -> dict:
        """``q, k, v, do`` (and ``initial_state``, ``log_alpha``, ``decay``) as float64 NumPy arrays."""
        rng = np.random.default_rng(self.seed)
        Tk = self.keys
        out = {
            "q": rng.standard_normal((self.B, self.H, self.T, self.K)),
            "k": rng.standard_normal((self.B, self.H, Tk, self.K)),
            "v": rng.standard_normal((self.B, self.H, Tk, self.V)),
            "do": rng.standard_normal((self.B, self.H, self.T, self.V)),
            "initial_state": rng.standard_normal((self.B, self.H, self.K, self.V)) if self.initial_state else None,
            "decay": None if self.decay is None else np.asarray(self.decay, dtype=np.float64),
            "log_alpha": None,
        }
        if self.min_gate is not None:
            shape = (self.B, self.H, self.T, self.K)
            gates = rng.uniform(np.log(self.min_gate), 0.0, size=shape)
            # Half the positions near 1, so tiny and ordinary gates meet in one case.
            out["log_alpha"] = np.where(rng.random(shape) < 0.5, gates, rng.uniform(-0.1, 0.0, size=shape))
        return out


@st.composite
def cases(
    draw,
    *,
    max_B: int = 2,
    max_H: int = 3,
    min_T: int = 1,
    max_T: int = 40,
    max_K: int = 8,
    max_V: int = 8,
    scales=(1.0, 0.5),
    decay: bool = False,
    min_decay: float = 0.3,
    gates: bool = False,
    min_gate: float = 1e-3,
    initial_state: bool = True,
) -> Case:
    """A ``Case`` for the linear family: a chunk size from 1 to beyond ``T``, optional decays or gates.

    ``initial_state=True`` lets the draw include one; ``scales`` are sampled (``None`` in it means
    the function's default).
    """
    d = draw(dims(max_B=max_B, max_H=max_H, min_T=min_T, max_T=max_T, max_K=max_K, max_V=max_V))
    rates = tuple(float(x) for x in draw(decays(d.H, min_decay=min_decay))) if decay else None
    return Case(
        B=d.B, H=d.H, T=d.T, K=d.K, V=d.V,
        seed=draw(seeds()),
        chunk_size=draw(chunk_sizes(d.T)),
        scale=draw(st.sampled_from(list(scales))),
        decay=rates,
        min_gate=draw(st.sampled_from([min_gate, 0.1, 0.9])) if gates else None,
        initial_state=draw(st.booleans()) if initial_state else False,
    )  # fmt: skip


@st.composite
def softmax_cases(draw, *, max_T: int = 24) -> Case:
    """A ``Case`` for softmax attention: causal or not, ``Tk ≥ T`` when causal, any block sizes."""
    d = draw(dims(max_T=max_T))
    causal = draw(st.booleans())
    Tk = draw(st.integers(d.T, d.T + 6)) if causal else draw(st.integers(1, max_T + 6))
    return Case(
        B=d.B, H=d.H, T=d.T, K=d.K, V=d.V,
        seed=draw(seeds()),
        chunk_size=draw(st.integers(1, d.T + 3)),
        block_k=draw(st.integers(1, Tk + 3)),
        scale=draw(st.one_of(st.none(), st.floats(0.1, 2.0))),
        Tk=None if Tk == d.T else Tk,
        causal=causal,
    )  # fmt: skip
