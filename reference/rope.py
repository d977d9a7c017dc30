r"""Rotary position embedding (RoPE, arXiv 2104.09864; ``docs/tiny_lm.md``).

Shapes: ``x: [..., T, D]`` with ``D`` even, ``positions: [T]`` integers (a NumPy array, a torch
tensor, a range or a list). NumPy in, NumPy out; torch in, differentiable torch out.

RoPE splits the ``D`` channels of a query or key into ``D/2`` pairs and turns pair ``i`` of the
vector at position ``m`` by the angle ``m θ_i``, ``θ_i = base^(-2i/D)``::

    (a, b) ↦ (a cos mθ_i − b sin mθ_i,  b cos mθ_i + a sin mθ_i)

A rotation keeps lengths, and two rotations compose by adding angles, so the score of a rotated
query at ``m`` and a rotated key at ``n`` is ``q · R(n − m) k``: it depends on the positions only
through ``m − n``. That is all RoPE is for.

Which channels form a pair is a convention, and the two in use disagree:

* ``layout="half"`` (rotate-half; Llama's Hugging Face code, GPT-NeoX): pair ``i`` is channels
  ``(i, i + D/2)``.
* ``layout="interleaved"`` (the paper; Meta's original Llama code, GPT-J): pair ``i`` is channels
  ``(2i, 2i + 1)``.

The two are the same function after a fixed permutation of the channels (``layout_permutation``).
Weights trained with one layout must be permuted (the q and k projection rows) before use with
the other: loading checkpoints across the two conventions without it is a classic silent bug.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from reference._arrays import check_floating, device_of, is_torch, namespace

__all__ = [
    "apply",
    "frequencies",
    "angles",
    "layout_permutation",
    "to_interleaved",
    "to_half",
    "LAYOUTS",
]

LAYOUTS = ("half", "interleaved")


def _check_dim(D) -> int:
    if isinstance(D, bool) or not isinstance(D, numbers.Integral):
        raise TypeError(f"D must be a positive even integer, got {D!r}")
    if D <= 0 or D % 2:
        raise ValueError(f"D (the channel count) must be a positive even integer, got {D}")
    return int(D)


def _check_base(base) -> float:
    if isinstance(base, bool) or not isinstance(base, numbers.Real) or not math.isfinite(base) or base <= 1:
        raise ValueError(f"base must be a finite number greater than 1, got {base!r}")
    return float(base)


def frequencies(D: int, *, base: float = 10000.0) -> np.ndarray:
    r"""``θ_i = base^(-2i/D)`` for ``i = 0..D/2-1``: NumPy float64 ``[D/2]``, from 1 down to about ``1/base``."""
    D = _check_dim(D)
    base = _check_base(base)
    return base ** (-np.arange(0, D, 2, dtype=np.float64) / D)


def _positions_numpy(positions) -> np.ndarray:
    """``positions`` as a NumPy int64 ``[T]`` (a torch tensor is moved to the host; it carries no gradient)."""
    if is_torch(positions):
        positions = positions.detach().cpu().numpy()
    positions = np.asarray(positions)
    if positions.ndim != 1:
        raise ValueError(f"positions must have shape [T], got {positions.shape}")
    if positions.size and not np.issubdtype(positions.dtype, np.integer):
        raise TypeError(f"positions must be integers, got dtype {positions.dtype}")
    return positions.astype(np.int64)


def angles(positions, D: int, *, base: float = 10000.0) -> np.ndarray:
    r"""``m θ_i`` for every position ``m`` and pair ``i``: NumPy float64 ``[T, D/2]``.

    Formed in float64 from the integer positions, so a long sequence does not lose the low bits of
    ``m θ_i`` before the cosine (in float32 an angle near 4096 keeps only about 3 decimals).
    """
    return _positions_numpy(positions)[:, None].astype(np.float64) * frequencies(D, base=base)[None, :]


def layout_permutation(D: int) -> np.ndarray:
    r"""Where each rotate-half channel lands in the interleaved layout: ``perm[c] = (2c mod D) + ⌊2c/D⌋``.

    Channel ``c < D/2`` (the first member of pair ``c``) goes to ``2c``; channel ``c + D/2`` (its
    partner) goes to ``2c + 1``. So with ``y[..., perm] = x`` (that is ``y = x[..., inverse]``,
    ``inverse = np.argsort(perm)``, ``inverse[j] = ⌊j/2⌋ + (j mod 2)·D/2``)::

        apply(to_interleaved(x), p, layout="interleaved") == to_interleaved(apply(x, p, layout="half"))

    Returns:
        NumPy int64 ``[D]``.
    """
    D = _check_dim(D)
    c = np.arange(D, dtype=np.int64)
    return (2 * c) % D + (2 * c) // D


def _inverse_permutation(D: int) -> np.ndarray:
    j = np.arange(D, dtype=np.int64)
    return j // 2 + (j % 2) * (D // 2)


def _take_channels(x, index: np.ndarray):
    xp = namespace(x)
    return xp.take(x, xp.asarray(index, device=device_of(x)), axis=x.ndim - 1)


def to_interleaved(x):
    """Reorder the last axis of ``x: [..., D]`` from the rotate-half layout to the interleaved one."""
    return _take_channels(x, _inverse_permutation(_check_dim(x.shape[-1])))


def to_half(x):
    """Reorder the last axis of ``x: [..., D]`` from the interleaved layout to the rotate-half one."""
    return _take_channels(x, layout_permutation(_check_dim(x.shape[-1])))


def apply(x, positions, *, base: float = 10000.0, layout: str = "half"):
    r"""Rotate every channel pair of ``x`` at position ``m`` by ``m θ_i`` (arXiv 2104.09864, Eq. 34).

    Args:
        x: ``[..., T, D]`` queries or keys (``D`` even), e.g. ``[B, H, T, D]``.
        positions: ``[T]`` integer positions of the rows of ``x`` (absolute: a decoding step at
            position 37 passes ``[37]``).
        base: ``θ_i = base^(-2i/D)``; 10000 in the paper and Llama 2 (500000 in Llama 3).
        layout: ``"half"`` pairs channels ``(i, i + D/2)``; ``"interleaved"`` pairs ``(2i, 2i + 1)``.

    Returns:
        ``x`` rotated, same shape and dtype (NumPy in, NumPy out; torch in, differentiable torch out).
    """
    xp = namespace(x)
    check_floating(xp, "x", x)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions [..., T, D], got shape {tuple(x.shape)}")
    T, D = x.shape[-2], x.shape[-1]
    D = _check_dim(D)
    theta = angles(positions, D, base=base)  # [T, D/2] float64
    if theta.shape[0] != T:
        raise ValueError(f"positions must have one entry per row of x (T = {T}), got {theta.shape[0]}")
    cos = xp.astype(xp.asarray(np.cos(theta), device=device_of(x)), x.dtype)
    sin = xp.astype(xp.asarray(np.sin(theta), device=device_of(x)), x.dtype)
    if layout == "half":
        a, b = x[..., : D // 2], x[..., D // 2 :]
        return xp.concat([a * cos - b * sin, b * cos + a * sin], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    rotated = xp.stack([a * cos - b * sin, b * cos + a * sin], axis=-1)  # [..., T, D/2, 2]
    return xp.reshape(rotated, tuple(x.shape))
