r"""Linear attention without decay, in its three forms (``docs/linear_attention.md``).

Shapes (head-first): ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]``, ``o: [B, H, T, V]`` and the state
``S: [B, H, K, V]``. ``scale`` multiplies ``q`` (default 1.0, the papers' math).

Drop the softmax from attention and the output of token ``t`` becomes
``o_t = Σ_{s ≤ t} (q_t · k_s) v_s = q_t (Σ_{s ≤ t} k_sᵀ v_s) = q_t S_t``: a ``K × V`` running sum
replaces the growing key-value cache. The same function can be computed three ways:

* ``recurrent`` — ``S_t = S_{t-1} + k_tᵀ v_t``, ``o_t = q_t S_t``: O(T·K·V) work, T sequential steps.
* ``parallel`` — ``O = ((Q Kᵀ) ⊙ M) V`` with ``M`` lower-triangular ones (diagonal included):
  O(T²·(K+V)) work, no sequential steps. Non-causal: ``O = Q (Kᵀ V)``.
* ``chunked`` — split T into chunks of ``C``; inside a chunk use the parallel form, between chunks
  carry the state: ``O_i = ((Q_i K_iᵀ) ⊙ M) V_i + Q_i S_[i]``, ``S_[i+1] = S_[i] + K_iᵀ V_i`` where
  ``S_[i]`` is the state after chunks ``0..i-1`` (exclusive). O(T·C·(K+V) + T·K·V) work in
  ``ceil(T/C)`` sequential steps of matrix products — what makes it fast on matrix units.

The causal mask is applied with ``where``, never by multiplying with a 0/1 matrix (``0 · NaN = NaN``
would let a NaN or inf in a later token's ``q`` or ``k`` into every earlier row), and every form
computes in at least float32 (a state summed in bfloat16 loses the small terms), rounding its
results to the input dtype once.
"""

from __future__ import annotations

from reference._arrays import (
    causal_mask,
    check_positive_int,
    check_qkv,
    check_scale,
    check_state,
    chunk_bounds,
    device_of,
    transpose,
    upcast,
)

__all__ = ["recurrent", "parallel", "chunked"]


def recurrent(q, k, v, *, scale: float = 1.0, initial_state=None):
    r"""Token-by-token recurrence ``S_t = S_{t-1} + k_tᵀ v_t``, ``o_t = q_t S_t``.

    Args:
        q: ``[B, H, T, K]``; k: ``[B, H, T, K]``; v: ``[B, H, T, V]``.
        scale: multiplies ``q``.
        initial_state: ``[B, H, K, V]`` state before the first token (zeros if ``None``).

    Returns:
        ``(o, S)``: ``o: [B, H, T, V]`` and the final state ``S_T: [B, H, K, V]``.
    """
    xp, B, H, T, _, K, V = check_qkv(q, k, v)
    scale = check_scale("scale", scale)
    state = check_state(xp, "initial_state", initial_state, B, H, K, V, like=q)
    out_dtype = q.dtype
    q, k, v, state = upcast(xp, q, k, v, state)
    outputs = []
    for t in range(T):
        k_t, v_t = k[..., t, :], v[..., t, :]  # [B, H, K], [B, H, V]
        state = state + k_t[..., :, None] * v_t[..., None, :]  # outer product k_tᵀ v_t
        q_t = q[..., t : t + 1, :] * scale  # [B, H, 1, K]
        outputs.append(q_t @ state)  # [B, H, 1, V]
    return xp.astype(xp.concat(outputs, axis=-2), out_dtype), xp.astype(state, out_dtype)


def parallel(q, k, v, *, scale: float = 1.0, causal: bool = True):
    r"""All tokens at once: ``O = ((Q Kᵀ) ⊙ M) V`` (causal) or ``O = Q (Kᵀ V)`` (bidirectional).

    Args:
        q: ``[B, H, T, K]``; k: ``[B, H, T, K]``; v: ``[B, H, T, V]``.
        scale: multiplies ``q``.
        causal: lower-triangular mask with the diagonal; ``False`` lets every token see all tokens.

    Returns:
        ``o: [B, H, T, V]``.
    """
    xp, _, _, T, _, _, _ = check_qkv(q, k, v)
    scale = check_scale("scale", scale)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    out_dtype = q.dtype
    q, k, v = upcast(xp, q, k, v)
    q = q * scale
    if not causal:
        # Without a mask the product can be re-associated: K×V first costs O(T·K·V), not O(T²).
        return xp.astype(q @ (transpose(xp, k) @ v), out_dtype)
    scores = q @ transpose(xp, k)  # [B, H, T, T]
    scores = xp.where(causal_mask(xp, T, T, device_of(q)), scores, xp.zeros_like(scores))
    return xp.astype(scores @ v, out_dtype)


def chunked(q, k, v, *, scale: float = 1.0, chunk_size: int = 64, initial_state=None):
    r"""Chunkwise form: parallel inside each chunk, a carried state between chunks (§1).

    Args:
        q: ``[B, H, T, K]``; k: ``[B, H, T, K]``; v: ``[B, H, T, V]``.
        scale: multiplies ``q``.
        chunk_size: tokens per chunk ``C`` (any positive integer; the last chunk may be shorter,
            and ``C ≥ T`` is one chunk: the parallel form plus the initial state).
        initial_state: ``[B, H, K, V]`` state before the first token (zeros if ``None``).

    Returns:
        ``(o, S)``: ``o: [B, H, T, V]`` and the state after the last token ``[B, H, K, V]``.
    """
    xp, B, H, T, _, K, V = check_qkv(q, k, v)
    scale = check_scale("scale", scale)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    state = check_state(xp, "initial_state", initial_state, B, H, K, V, like=q)
    out_dtype = q.dtype
    q, k, v, state = upcast(xp, q, k, v, state)
    q = q * scale
    outputs = []
    for start, stop in chunk_bounds(T, chunk_size):
        q_i, k_i, v_i = q[..., start:stop, :], k[..., start:stop, :], v[..., start:stop, :]
        n = stop - start
        scores = q_i @ transpose(xp, k_i)  # [B, H, n, n]
        scores = xp.where(causal_mask(xp, n, n, device_of(q)), scores, xp.zeros_like(scores))
        intra = scores @ v_i  # tokens of this chunk seen by this chunk
        inter = q_i @ state  # all earlier chunks, through the exclusive state S_[i]
        outputs.append(intra + inter)
        state = state + transpose(xp, k_i) @ v_i
    return xp.astype(xp.concat(outputs, axis=-2), out_dtype), xp.astype(state, out_dtype)
