r"""Lightning Attention-2: linear attention with a scalar decay per head (arXiv 2401.04658; ``docs/lightning.md``).

Shapes (head-first): ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]``, ``o: [B, H, T, V]``, the state
``S: [B, H, K, V]`` and ``decay: [H]`` with every ``λ`` in ``(0, 1]``. ``scale`` multiplies ``q``.

The recurrence is ``S_t = λ S_{t-1} + k_tᵀ v_t``, ``o_t = q_t S_t``: old tokens fade by ``λ`` per
step, so ``o_t = Σ_{s ≤ t} λ^(t-s) (q_t · k_s) v_s``. The forms:

* ``recurrent`` — the recurrence, one token at a time.
* ``parallel`` — ``O = ((Q Kᵀ) ⊙ D) V`` with the lower-triangular decay mask ``D_ts = λ^(t-s)``.
* ``chunked`` — Algorithm 1 of the paper: inside a block the parallel form (*intra*), across
  blocks the carried state (*inter*). The state never needs a cumulative sum over the whole
  sequence, the step that keeps plain linear attention from being causal *and* fast.
* ``chunked_backward`` — Algorithm 2: the gradients by the same tiling, one forward sweep for
  ``dQ`` and one reverse sweep for ``dK`` and ``dV``.

Powers of ``λ`` are always formed with a non-negative exponent (``λ^(B-j)``, never ``λ^B · λ^-j``),
so nothing overflows for strong decays or long blocks. The causal mask is applied with ``where``, never by
multiplying (``0 · NaN = NaN`` would let a poisoned later token into earlier rows), and every form
computes in at least float32 (``reference._arrays.working_dtype``) whatever the inputs' dtype.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from reference._arrays import (
    check_positive_int,
    check_qkv,
    check_scale,
    check_state,
    chunk_bounds,
    device_of,
    is_torch,
    namespace,
    same_library,
    transpose,
    upcast,
)

__all__ = [
    "decay_mask",
    "tnl_decay",
    "recurrent",
    "parallel",
    "chunked",
    "chunked_backward",
]


# --------------------------------------------------------------------------------------------
# Decay rates
# --------------------------------------------------------------------------------------------


def _alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi's per-head slopes: ``2^(-8h/H)`` for ``h = 1..H`` when ``H`` is a power of two.

    Otherwise the slopes of the nearest lower power of two ``P`` are followed by every other slope
    of ``2P`` (the interleaving rule of the ALiBi paper), so every head still gets a distinct rate.
    """

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    if num_heads & (num_heads - 1) == 0:
        return power_of_two(num_heads)
    lower = 2 ** int(math.floor(math.log2(num_heads)))
    return power_of_two(lower) + power_of_two(2 * lower)[0::2][: num_heads - lower]


def tnl_decay(num_heads: int, layer_idx: int = 0, num_layers: int = 1, *, rule: str = "tnl"):
    r"""Per-head decay rates ``λ_h`` as used by TransNormerLLM / Lightning Attention-2.

    Args:
        num_heads: ``H``.
        layer_idx: ``l`` in ``0..L-1``.
        num_layers: ``L``.
        rule: ``"tnl"`` (default, the official code): ALiBi slopes ``s_h = 2^(-8h/H)``, scaled per
            layer by ``1 - l/(L-1) + 1e-5`` (no scaling when ``L = 1``), ``λ_h = exp(-s_h)``.
            ``"fla"``: fla's ``chunk_lightning_attn`` rule, linear in the head index,
            ``log λ_h = -(8/H)(1 - l/L) · h`` for ``h = 0..H-1`` (head 0 does not decay).

    Returns:
        NumPy float64 array ``[H]`` with entries in ``(0, 1]``.
    """
    num_heads = check_positive_int("num_heads", num_heads)
    num_layers = check_positive_int("num_layers", num_layers)
    if isinstance(layer_idx, bool) or not isinstance(layer_idx, numbers.Integral):
        raise TypeError(f"layer_idx must be an integer, got {layer_idx!r}")
    if not 0 <= layer_idx < num_layers:
        raise ValueError(f"layer_idx must lie in 0..num_layers-1 = 0..{num_layers - 1}, got {layer_idx}")
    if rule == "tnl":
        slopes = np.asarray(_alibi_slopes(num_heads), dtype=np.float64)
        if num_layers > 1:
            slopes = slopes * (1.0 - layer_idx / (num_layers - 1) + 1e-5)
        return np.exp(-slopes)
    if rule == "fla":
        heads = np.arange(num_heads, dtype=np.float64)
        return np.exp(-(8.0 / num_heads) * (1.0 - layer_idx / num_layers) * heads)
    raise ValueError(f"rule must be 'tnl' or 'fla', got {rule!r}")


def _precise(xp, like):
    """The dtype decay powers are formed in: float64 (float32 on a device without float64).

    Rounding λ to a 16-bit input dtype first would change the function: 0.999 is 1.0 in bfloat16,
    and the error compounds in λ^(t-s). Powers are formed precisely and rounded once, as factors.
    """
    if is_torch(like) and like.device.type == "mps":
        return xp.float32
    return xp.float64


def _check_decay(xp, decay, H: int, like):
    """Return ``log λ`` as ``[H]`` in ``like``'s namespace and device, in float64 (see ``_precise``).

    ``decay`` may be a sequence, a NumPy array (converted, so ``tnl_decay``'s output works with
    torch inputs) or an array of ``like``'s own library (kept, so it may carry gradients).
    """
    if isinstance(decay, (list, tuple)) or isinstance(decay, np.ndarray) and not isinstance(like, np.ndarray):
        try:
            values = np.asarray(decay, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"decay must hold real numbers, one per head (shape [H] = [{H}]), got {decay!r}") from err
        decay = xp.asarray(values, device=device_of(like))
    elif not hasattr(decay, "shape"):
        raise TypeError(f"decay must be an array of shape [H] = [{H}], got {type(decay).__name__}")
    elif not same_library(decay, like):
        raise TypeError("decay must be a sequence, a NumPy array or an array of the same library as q")
    if decay.ndim != 1 or decay.shape[0] != H:
        raise ValueError(f"decay must have shape [H] = [{H}], got {tuple(decay.shape)}")
    if not xp.isdtype(decay.dtype, "real floating"):
        raise TypeError(f"decay must have a real floating dtype, got {decay.dtype}")
    if not bool(xp.all((decay > 0) & (decay <= 1))):
        raise ValueError("decay must lie in (0, 1] for every head")
    if device_of(decay) != device_of(like):  # e.g. rates kept on the host for GPU inputs
        decay = xp.asarray(decay, device=device_of(like))
    return xp.log(xp.astype(decay, _precise(xp, like)))


def _powers(xp, log_decay, exponents, dtype):
    """``λ_h ** e`` for each head and exponent: ``[H, len(e), 1]`` in ``dtype``, ready to scale rows."""
    exponents = xp.astype(exponents, log_decay.dtype)
    return xp.astype(xp.exp(log_decay[:, None, None] * exponents[None, :, None]), dtype)


def _block_mask(xp, log_decay, n: int, device, dtype):
    """``[H, n, n]`` in ``dtype`` with ``λ^(t-s)`` on and below the diagonal and 0 above it."""
    rows = xp.arange(n, device=device)[:, None]
    cols = xp.arange(n, device=device)[None, :]
    # Clamp before exp: above the diagonal t-s < 0 and λ^(t-s) could overflow even though it is
    # masked away, and an inf there would poison autograd (0 · inf = NaN).
    distance = xp.astype(xp.clip(rows - cols, min=0), log_decay.dtype)
    mask = xp.where(rows >= cols, xp.exp(log_decay[:, None, None] * distance[None, ...]), 0.0)
    return xp.astype(mask, dtype)


def _masked(xp, scores, mask, n: int, device):
    """``scores ⊙ mask`` on and below the diagonal, exactly 0 above it.

    Selected with ``where``, never by multiplying with the mask's zeros: ``0 · NaN = NaN``, so a
    NaN or inf in a later token's ``q`` or ``k`` would otherwise reach every earlier row.
    """
    rows = xp.arange(n, device=device)[:, None]
    cols = xp.arange(n, device=device)[None, :]
    return xp.where(rows >= cols, scores * mask, xp.zeros_like(scores))


def decay_mask(decay, T: int):
    r"""The decay mask ``D: [H, T, T]``, ``D_ts = λ^(t-s)`` for ``t ≥ s`` and 0 above the diagonal.

    Lower-triangular with ones on the diagonal (an upper-triangular mask is
    anti-causal: ``docs/errata.md``, erratum 1).

    Args:
        decay: ``[H]`` rates in ``(0, 1]`` (NumPy, torch, or a sequence, which gives NumPy float64).
        T: sequence length.
    """
    T = check_positive_int("T", T)
    if isinstance(decay, (list, tuple)):
        try:
            decay = np.asarray(decay, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"decay must hold real numbers, one per head, got {decay!r}") from err
    if not hasattr(decay, "shape"):
        raise TypeError(f"decay must be an array of shape [H] or a sequence, got {type(decay).__name__}")
    xp = namespace(decay)
    if decay.ndim != 1:
        raise ValueError(f"decay must have shape [H], got {tuple(decay.shape)}")
    log_decay = _check_decay(xp, decay, decay.shape[0], like=decay)
    return _block_mask(xp, log_decay, T, device_of(decay), decay.dtype)


# --------------------------------------------------------------------------------------------
# Forms
# --------------------------------------------------------------------------------------------


def recurrent(q, k, v, decay, *, scale: float = 1.0, initial_state=None):
    r"""``S_t = λ S_{t-1} + k_tᵀ v_t``, ``o_t = q_t S_t`` one token at a time.

    Args:
        q: ``[B, H, T, K]``; k: ``[B, H, T, K]``; v: ``[B, H, T, V]``; decay: ``[H]`` in (0, 1].
        scale: multiplies ``q``.
        initial_state: ``[B, H, K, V]`` (zeros if ``None``).

    Returns:
        ``(o: [B, H, T, V], S_T: [B, H, K, V])``.
    """
    xp, B, H, T, _, K, V = check_qkv(q, k, v)
    scale = check_scale("scale", scale)
    out_dtype = q.dtype
    log_decay = _check_decay(xp, decay, H, like=q)
    state = check_state(xp, "initial_state", initial_state, B, H, K, V, like=q)
    q, k, v, state = upcast(xp, q, k, v, state)
    lam = xp.astype(xp.exp(log_decay), q.dtype)[:, None, None]  # [H, 1, 1], at least float32
    outputs = []
    for t in range(T):
        state = lam * state + k[..., t, :, None] * v[..., t, None, :]
        outputs.append((q[..., t : t + 1, :] * scale) @ state)
    return xp.astype(xp.concat(outputs, axis=-2), out_dtype), xp.astype(state, out_dtype)


def parallel(q, k, v, decay, *, scale: float = 1.0):
    r"""``O = ((Q Kᵀ) ⊙ D) V`` with ``D_ts = λ^(t-s)`` for ``t ≥ s`` (lower-triangular).

    Args:
        q: ``[B, H, T, K]``; k: ``[B, H, T, K]``; v: ``[B, H, T, V]``; decay: ``[H]`` in (0, 1].
        scale: multiplies ``q``.

    Returns:
        ``o: [B, H, T, V]``.
    """
    xp, _, H, T, _, _, _ = check_qkv(q, k, v)
    scale = check_scale("scale", scale)
    log_decay = _check_decay(xp, decay, H, like=q)
    out_dtype = q.dtype
    q, k, v = upcast(xp, q, k, v)
    scores = (q * scale) @ transpose(xp, k)  # [B, H, T, T]
    mask = _block_mask(xp, log_decay, T, device_of(q), q.dtype)
    return xp.astype(_masked(xp, scores, mask, T, device_of(q)) @ v, out_dtype)


def _block_factors(xp, log_decay, n: int, device, dtype):
    """Per-block decay factors for a block of ``n`` tokens (local index ``j = 1..n``).

    Returns ``(q_decay, k_decay, block_decay, mask)``:
    ``q_decay = Λ = diag(λ^j)`` and ``k_decay = λ^n Λ⁻¹ = diag(λ^(n-j))`` as ``[H, n, 1]`` row
    scales, ``block_decay = λ^n`` as ``[H, 1, 1]``, and the ``[H, n, n]`` intra-block mask ``D``.
    """
    j = xp.astype(xp.arange(1, n + 1, device=device), log_decay.dtype)
    q_decay = _powers(xp, log_decay, j, dtype)
    k_decay = _powers(xp, log_decay, n - j, dtype)
    block_decay = xp.astype(xp.exp(log_decay * n), dtype)[:, None, None]
    return q_decay, k_decay, block_decay, _block_mask(xp, log_decay, n, device, dtype)


def chunked(q, k, v, decay, *, scale: float = 1.0, chunk_size: int = 64, initial_state=None):
    r"""Algorithm 1 (forward): intra-block parallel form plus inter-block state.

    For block ``i`` of ``n`` tokens (``n = chunk_size`` except perhaps the last), with
    ``Λ = diag(λ¹..λⁿ)``, ``D`` the ``n × n`` decay mask and ``KV`` the state after the previous
    block::

        O_intra = [(Q_i K_iᵀ) ⊙ D] V_i
        O_inter = Λ Q_i KV                  # the PREVIOUS state
        KV      = λⁿ KV + (λⁿ Λ⁻¹ K_i)ᵀ V_i   # row j of K_i scaled by λ^(n-j)

    Args:
        q: ``[B, H, T, K]``; k: ``[B, H, T, K]``; v: ``[B, H, T, V]``; decay: ``[H]`` in (0, 1].
        scale: multiplies ``q``.
        chunk_size: block length (any positive integer; ``≥ T`` gives one block).
        initial_state: ``[B, H, K, V]`` (zeros if ``None``).

    Returns:
        ``(o: [B, H, T, V], KV after the last block: [B, H, K, V])``.
    """
    xp, B, H, T, _, K, V = check_qkv(q, k, v)
    scale = check_scale("scale", scale)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    log_decay = _check_decay(xp, decay, H, like=q)
    kv = check_state(xp, "initial_state", initial_state, B, H, K, V, like=q)
    out_dtype = q.dtype
    q, k, v, kv = upcast(xp, q, k, v, kv)
    q = q * scale
    dev = device_of(q)
    outputs = []
    for start, stop in chunk_bounds(T, chunk_size):
        q_i, k_i, v_i = q[..., start:stop, :], k[..., start:stop, :], v[..., start:stop, :]
        n = stop - start
        q_decay, k_decay, block_decay, mask = _block_factors(xp, log_decay, n, dev, q.dtype)
        o_intra = _masked(xp, q_i @ transpose(xp, k_i), mask, n, dev) @ v_i
        o_inter = (q_decay * q_i) @ kv
        outputs.append(o_intra + o_inter)
        kv = block_decay * kv + transpose(xp, k_decay * k_i) @ v_i
    return xp.astype(xp.concat(outputs, axis=-2), out_dtype), xp.astype(kv, out_dtype)


def chunked_backward(
    q,
    k,
    v,
    decay,
    do,
    *,
    scale: float = 1.0,
    chunk_size: int = 64,
    initial_state=None,
    d_final_state=None,
    return_initial_state_grad: bool = False,
):
    r"""Algorithm 2 (backward): ``dQ, dK, dV`` of ``chunked`` by the same tiling, no autograd.

    Forward sweep over blocks (``KV`` = state before block i)::

        dQ_intra = [(dO_i V_iᵀ) ⊙ D] K_i         dQ_inter = Λ dO_i KVᵀ
        KV       = λⁿ KV + (λⁿ Λ⁻¹ K_i)ᵀ V_i

    Reverse sweep (``dKV`` = gradient w.r.t. the state after block i, 0 at the end unless
    ``d_final_state`` is given)::

        dK_intra = [(dO_i V_iᵀ) ⊙ D]ᵀ Q_i         dK_inter = (λⁿ Λ⁻¹ V_i) dKVᵀ
        dV_intra = [(Q_i K_iᵀ) ⊙ D]ᵀ dO_i         dV_inter = (λⁿ Λ⁻¹ K_i) dKV
        dKV      = λⁿ dKV + (Λ Q_i)ᵀ dO_i

    Args:
        q, k, v, decay, scale, chunk_size, initial_state: as for ``chunked``.
        do: ``[B, H, T, V]`` gradient of the loss w.r.t. ``o``.
        d_final_state: ``[B, H, K, V]`` gradient w.r.t. the returned final state (zeros if ``None``).
        return_initial_state_grad: also return the gradient w.r.t. ``initial_state``.

    Returns:
        ``(dq, dk, dv)`` shaped like ``q, k, v`` (and ``d_initial_state: [B, H, K, V]`` last if asked).
    """
    xp, B, H, T, _, K, V = check_qkv(q, k, v)
    if not same_library(do, q):
        raise TypeError(f"do must be an array of the same library as q, k, v, got {type(do).__name__}")
    if tuple(do.shape) != (B, H, T, V):
        raise ValueError(f"do must have shape [B, H, T, V] = {(B, H, T, V)}, got {tuple(do.shape)}")
    if do.dtype != q.dtype:
        raise TypeError(f"do must have the dtype of q, k, v ({q.dtype}), got {do.dtype}")
    scale = check_scale("scale", scale)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if not isinstance(return_initial_state_grad, bool):
        raise TypeError(f"return_initial_state_grad must be True or False, got {return_initial_state_grad!r}")
    log_decay = _check_decay(xp, decay, H, like=q)
    kv = check_state(xp, "initial_state", initial_state, B, H, K, V, like=q)
    dkv = check_state(xp, "d_final_state", d_final_state, B, H, K, V, like=q)
    out_dtype = q.dtype
    q, k, v, do, kv, dkv = upcast(xp, q, k, v, do, kv, dkv)
    q = q * scale  # the forward used scale·q; the chain rule gives dq = scale · d(scale·q)
    dev = device_of(q)
    blocks = chunk_bounds(T, chunk_size)
    factors = [_block_factors(xp, log_decay, stop - start, dev, q.dtype) for start, stop in blocks]

    dq_blocks = []
    for (start, stop), (q_decay, k_decay, block_decay, mask) in zip(blocks, factors):
        k_i, v_i, do_i = k[..., start:stop, :], v[..., start:stop, :], do[..., start:stop, :]
        n = stop - start
        dq_intra = _masked(xp, do_i @ transpose(xp, v_i), mask, n, dev) @ k_i
        dq_inter = (q_decay * do_i) @ transpose(xp, kv)
        dq_blocks.append((dq_intra + dq_inter) * scale)
        kv = block_decay * kv + transpose(xp, k_decay * k_i) @ v_i

    dk_blocks, dv_blocks = [], []
    for (start, stop), (q_decay, k_decay, block_decay, mask) in zip(reversed(blocks), reversed(factors)):
        q_i, k_i, v_i, do_i = (x[..., start:stop, :] for x in (q, k, v, do))
        n = stop - start
        dk_intra = transpose(xp, _masked(xp, do_i @ transpose(xp, v_i), mask, n, dev)) @ q_i
        dk_inter = (k_decay * v_i) @ transpose(xp, dkv)
        dv_intra = transpose(xp, _masked(xp, q_i @ transpose(xp, k_i), mask, n, dev)) @ do_i
        dv_inter = (k_decay * k_i) @ dkv
        dk_blocks.append(dk_intra + dk_inter)
        dv_blocks.append(dv_intra + dv_inter)
        dkv = block_decay * dkv + transpose(xp, q_decay * q_i) @ do_i

    dq = xp.astype(xp.concat(dq_blocks, axis=-2), out_dtype)
    dk = xp.astype(xp.concat(dk_blocks[::-1], axis=-2), out_dtype)
    dv = xp.astype(xp.concat(dv_blocks[::-1], axis=-2), out_dtype)
    if return_initial_state_grad:
        return dq, dk, dv, xp.astype(dkv, out_dtype)
    return dq, dk, dv

