"""Shared plumbing for the reference implementations: array namespaces and input checks.

Every reference form is written once against the array API standard. ``namespace(...)`` returns
the module that plays the role of ``numpy``/``torch`` for the inputs it is given (NumPy arrays give
``array_api_compat.numpy``, torch tensors give ``array_api_compat.torch``), so the same readable
function returns NumPy arrays for NumPy input and differentiable torch tensors for torch input.

The checks raise ``ValueError`` (bad shape or value) or ``TypeError`` (bad type or dtype), and
each message names the argument, what it got and what it needs.
"""

from __future__ import annotations

import math
import numbers

import array_api_compat


def namespace(*arrays):
    """The array namespace shared by ``arrays`` (``None`` entries are ignored).

    Raises ``TypeError`` for objects that are not arrays, or for a mix of libraries (NumPy with
    torch), naming the offending positions.
    """
    present = [a for a in arrays if a is not None]
    for a in present:
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(f"expected a NumPy array or a torch tensor, got {type(a).__name__}")
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError as err:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in present})
        raise TypeError(f"all arrays must come from one library, got a mix of {kinds}") from err


def device_of(x):
    """The device ``x`` lives on, in the form its namespace's creation functions accept."""
    return array_api_compat.device(x)


def is_torch(x) -> bool:
    return array_api_compat.is_torch_array(x)


def same_library(x, like) -> bool:
    """Whether ``x`` is an array of the same library as ``like`` (torch subclasses count as torch)."""
    if not array_api_compat.is_array_api_obj(x):
        return False
    return array_api_compat.is_torch_array(x) == array_api_compat.is_torch_array(like) and (
        array_api_compat.is_numpy_array(x) == array_api_compat.is_numpy_array(like)
    )


def check_floating(xp, name: str, x) -> None:
    """``x`` must have a real floating dtype (integers would silently truncate the softmax)."""
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got {x.dtype}")


def check_rank(name: str, x, rank: int, layout: str) -> None:
    if x.ndim != rank:
        raise ValueError(f"{name} must have {rank} dimensions {layout}, got shape {tuple(x.shape)}")


def check_qkv(q, k, v, *, same_length: bool = True):
    """Validate head-first ``q, k: [B, H, T, K]`` and ``v: [B, H, T, V]``.

    Returns ``(xp, B, H, Tq, Tk, K, V)``. With ``same_length`` the queries and keys must share ``T``
    (every linear-attention form); softmax attention may pass ``same_length=False``.
    """
    xp = namespace(q, k, v)
    for name, x, layout in (("q", q, "[B, H, T, K]"), ("k", k, "[B, H, T, K]"), ("v", v, "[B, H, T, V]")):
        check_rank(name, x, 4, layout)
        check_floating(xp, name, x)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    B, H, Tq, K = q.shape
    if tuple(k.shape[:2]) != (B, H):
        raise ValueError(f"k must have batch and heads {(B, H)} like q, got {tuple(k.shape[:2])}")
    if tuple(v.shape[:2]) != (B, H):
        raise ValueError(f"v must have batch and heads {(B, H)} like q, got {tuple(v.shape[:2])}")
    if k.shape[3] != K:
        raise ValueError(f"q and k must share the key width K, got q: {K} and k: {k.shape[3]}")
    Tk = k.shape[2]
    if v.shape[2] != Tk:
        raise ValueError(f"k and v must share the sequence length, got k: {Tk} and v: {v.shape[2]}")
    if same_length and Tq != Tk:
        raise ValueError(f"q and k must share the sequence length T, got q: {Tq} and k: {Tk}")
    if Tq < 1 or Tk < 1:
        raise ValueError(f"sequence lengths must be at least 1, got q: {Tq} and k: {Tk}")
    if K < 1 or v.shape[3] < 1:
        raise ValueError(f"head widths must be at least 1, got K={K} and V={v.shape[3]}")
    if is_torch(q) and not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device} and {v.device}")
    return xp, B, H, Tq, Tk, K, v.shape[3]


def check_kv(k, v):
    """Validate head-first ``k: [B, H, T, K]`` and ``v: [B, H, T, V]`` without queries (states of a
    chunked pass). Returns ``(xp, B, H, T, K, V)``."""
    xp = namespace(k, v)
    for name, x, layout in (("k", k, "[B, H, T, K]"), ("v", v, "[B, H, T, V]")):
        check_rank(name, x, 4, layout)
        check_floating(xp, name, x)
    if k.dtype != v.dtype:
        raise TypeError(f"k and v must share one dtype, got {k.dtype} and {v.dtype}")
    B, H, T, K = k.shape
    if tuple(v.shape[:3]) != (B, H, T):
        raise ValueError(f"v must have batch, heads and length {(B, H, T)} like k, got {tuple(v.shape[:3])}")
    if T < 1 or K < 1 or v.shape[3] < 1:
        raise ValueError(f"length and head widths must be at least 1, got T={T}, K={K} and V={v.shape[3]}")
    if is_torch(k) and k.device != v.device:
        raise ValueError(f"k and v must be on one device, got {k.device} and {v.device}")
    return xp, B, H, T, K, v.shape[3]


def check_state(xp, name: str, state, B: int, H: int, K: int, V: int, like):
    """An optional ``[B, H, K, V]`` state; ``None`` becomes zeros of ``like``'s dtype and device."""
    if state is None:
        return xp.zeros((B, H, K, V), dtype=like.dtype, device=device_of(like))
    if not same_library(state, like):
        raise TypeError(f"{name} must come from the same library as q, k and v, got {type(state).__name__}")
    check_rank(name, state, 4, "[B, H, K, V]")
    if tuple(state.shape) != (B, H, K, V):
        raise ValueError(f"{name} must have shape [B, H, K, V] = {(B, H, K, V)}, got {tuple(state.shape)}")
    if state.dtype != like.dtype:
        raise TypeError(f"{name} must have the dtype of q, k, v ({like.dtype}), got {state.dtype}")
    return state


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def check_scale(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def chunk_bounds(T: int, chunk_size: int):
    """``[(start, stop), ...]`` covering ``0..T``; every chunk has ``chunk_size`` rows but the last."""
    return [(s, min(s + chunk_size, T)) for s in range(0, T, chunk_size)]


def causal_mask(xp, Tq: int, Tk: int, device, *, offset: int = 0):
    """Boolean ``[Tq, Tk]``: query row ``i`` (at absolute position ``i + offset``) sees keys ``j ≤ i + offset``.

    The diagonal is included: a token attends to itself.
    """
    rows = xp.arange(Tq, device=device)[:, None] + offset
    cols = xp.arange(Tk, device=device)[None, :]
    return rows >= cols


def transpose(xp, x):
    """Swap the last two axes."""
    return xp.matrix_transpose(x)


def working_dtype(xp, dtype):
    """The dtype a form computes in: ``dtype``, or float32 for a 16-bit input dtype.

    A decay or gate rounded to a 16-bit dtype is a different one (0.999 is 1.0 in bfloat16, which
    then compounds as ``λ^(t-s)``), a state summed in 16 bits loses its small terms, and a 16-bit
    softmax its tail. Every form therefore works in at least float32 and rounds its results to the
    input dtype once, at the end.
    """
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def upcast(xp, *arrays):
    """``arrays`` (``None`` passes through) in ``working_dtype`` of the first one's dtype."""
    work = working_dtype(xp, arrays[0].dtype)
    return tuple(a if a is None or a.dtype == work else xp.astype(a, work) for a in arrays)
