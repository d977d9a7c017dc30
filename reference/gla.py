r"""Gated Linear Attention (GLA, arXiv 2312.06635; ``docs/gla.md``).

Shapes (head-first): ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]``, ``o: [B, H, T, V]``, the state
``S: [B, H, K, V]`` and the log-space gates ``log_alpha: [B, H, T, K]`` with every entry ``≤ 0``
(``-inf`` is a full reset of that key channel: ``α = 0``).
``scale`` multiplies ``q`` (default 1.0, the paper's math; the GLA layer uses ``K ** -0.5``).

The recurrence is ``S_t = Diag(α_t) S_{t-1} + k_tᵀ v_t``, ``o_t = q_t S_t``: each of the ``K`` key
rows of the state forgets at its own, data-dependent rate ``α_tk ∈ (0, 1]``. With
``b_t = Σ_{r ≤ t} log α_r`` (a cumulative sum, so ``b`` never increases along the sequence)
unrolling gives

    o_t = Σ_{s ≤ t} Σ_k q_tk k_sk exp(b_tk − b_sk) v_s.

The forms:

* ``recurrent`` — the recurrence, one token at a time.
* ``parallel`` — the sum above as a ``T × T`` matrix, with every exponent ``b_tk − b_sk ≤ 0``
  formed as a difference (never ``exp(b_t) · exp(−b_s)``, which overflows).
* ``chunked`` — FlashLinearAttention: inside a chunk the parallel form, across chunks the carried
  state; the intra-chunk matrix uses *secondary chunking* (sub-chunks of 16): off-diagonal
  sub-blocks are matrix products after rescaling by the cumulative gate at the first position of the
  query sub-chunk, diagonal sub-blocks are computed element by element in log space. Both
  FlashLinearAttention variants: non-materialised (the state carried chunk to chunk) and
  materialised (all chunk states first, then every chunk's output independently).
* ``chunked_backward`` — the gradients by the same tiling, ``d log_alpha`` included, without
  autograd: the algorithm the Triton kernel (``kernels.gla``) implements.
* ``gate`` — the paper's low-rank gate ``log α = logsigmoid(x W₁ W₂ + b) / τ``.
* ``GLALayer`` — a small torch layer (projections, gate, Swish output gate, per-head norm).

``parallel_factorised`` is the naive form ``((Q ⊙ e^b)(K ⊙ e^{−b})ᵀ ⊙ M) V``, kept only to show
that it overflows: do not use it for anything else.

No function here ever exponentiates a positive number, or forms an exponent as the difference of
two cumulative sums (see "Sums of gates"); masks are applied with ``where``, never by multiplying
(``0 · NaN = NaN`` would let a poisoned later token into earlier rows). Every form computes in at
least float32 and rounds its results to the input dtype once.
"""

from __future__ import annotations

import math
import numbers

from torch import nn

from reference._arrays import (
    causal_mask,
    check_floating,
    check_kv,
    check_positive_int,
    check_qkv,
    check_rank,
    check_scale,
    check_state,
    chunk_bounds,
    device_of,
    namespace,
    same_library,
    transpose,
    upcast,
)

__all__ = [
    "gate",
    "recurrent",
    "parallel",
    "parallel_factorised",
    "chunked",
    "chunk_states",
    "chunked_backward",
    "GLALayer",
]


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_log_alpha(xp, log_alpha, B: int, H: int, T: int, K: int, like):
    """``log_alpha`` must be an array like ``q`` of shape ``[B, H, T, K]`` with entries ``≤ 0`` (``-inf`` allowed)."""
    if not same_library(log_alpha, like):
        raise TypeError(
            f"log_alpha must be an array of the same library as q, k and v, got {type(log_alpha).__name__}"
        )
    check_rank("log_alpha", log_alpha, 4, "[B, H, T, K]")
    if tuple(log_alpha.shape) != (B, H, T, K):
        raise ValueError(f"log_alpha must have shape [B, H, T, K] = {(B, H, T, K)}, got {tuple(log_alpha.shape)}")
    check_floating(xp, "log_alpha", log_alpha)
    if log_alpha.dtype != like.dtype:
        raise TypeError(f"log_alpha must have the dtype of q, k, v ({like.dtype}), got {log_alpha.dtype}")
    if not bool(xp.all(log_alpha <= 0)):  # also false for NaN
        raise ValueError(
            "log_alpha must be ≤ 0 and not NaN everywhere (gates α = exp(log_alpha) lie in [0, 1]; "
            "-inf is a full reset)"
        )
    return log_alpha


def _check_inputs(q, k, v, log_alpha, scale):
    xp, B, H, T, _, K, V = check_qkv(q, k, v)
    scale = check_scale("scale", scale)
    _check_log_alpha(xp, log_alpha, B, H, T, K, like=q)
    return xp, B, H, T, K, V, scale


def _check_sub_chunk(sub_chunk) -> int:
    """Any positive sub-chunk size works: sub-chunks tile each chunk from its start, the last shorter."""
    return check_positive_int("sub_chunk", sub_chunk)


# --------------------------------------------------------------------------------------------
# Sums of gates
# --------------------------------------------------------------------------------------------
#
# Every exponent is a sum of gates over a range of steps, ``Σ_{s < r ≤ t} log α_r``, and is
# formed as such a sum, never as the difference ``b_t − b_s`` of two cumulative sums: one gate of
# -1e20 makes every later ``b`` equal -1e20 in floating point, and the difference of two of them
# 0 instead of the gates between them (cancellation). Sums of numbers ``≤ 0`` lose nothing beyond
# rounding, and ``-inf`` (a reset: ``α = 0``) only ever meets finite numbers or ``-inf`` in a sum,
# never ``-inf − (-inf)``. Gates are summed in at least float32 (``reference._arrays.working_dtype``).


def _zero_rows(xp, a, keep):
    """``a`` with the rows where ``keep`` (a ``[n]`` boolean) is false replaced by exact zeros."""
    return xp.where(xp.reshape(keep, (a.shape[-2], 1)), a, xp.zeros_like(a))


def _segment_sums(xp, a):
    r"""``[..., n, n, K]``: entry ``[j, s]`` is ``Σ_{s < r ≤ j} a_r`` for ``s ≤ j`` (0 on the diagonal).

    Entries above the diagonal are meaningless (the caller masks them with ``where``). Each entry is
    a cumulative sum that *starts* after ``s``: the gates from ``r = s + 1`` on, and nothing before.
    """
    n = a.shape[-2]
    dev = device_of(a)
    r = xp.arange(n, device=dev)
    after = xp.reshape(r[:, None] > r[None, :], (n, n, 1))  # [r, s]: r > s
    terms = xp.where(after, a[..., :, None, :], xp.zeros_like(a[..., :, None, :]))  # [..., r, s, K]
    return xp.cumulative_sum(terms, axis=-3)  # [..., j, s, K]


def _sums_after_first(xp, a):
    """``[..., n, K]``: row ``j`` is ``Σ_{0 < r ≤ j} a_r`` (row 0 is 0): the gates since the first row."""
    n = a.shape[-2]
    return xp.cumulative_sum(_zero_rows(xp, a, xp.arange(n, device=device_of(a)) > 0), axis=-2)


def _sums_to_end(xp, a):
    """``[..., n, K]``: row ``j`` is ``Σ_{j < r < n} a_r`` (the last row is 0): the gates after row ``j``."""
    n = a.shape[-2]
    shifted = xp.roll(_zero_rows(xp, a, xp.arange(n, device=device_of(a)) > 0), -1, axis=-2)  # row j: a_{j+1}
    return xp.flip(xp.cumulative_sum(xp.flip(shifted, axis=-2), axis=-2), axis=-2)


# --------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------


def _logsigmoid(xp, z):
    """``log σ(z) = min(z, 0) − log(1 + e^{−|z|})``: finite for every finite ``z``, no overflow."""
    return xp.minimum(z, xp.zeros_like(z)) - xp.log1p(xp.exp(-xp.abs(z)))


def gate(x, w1, w2, b, *, tau: float = 16.0):
    r"""The GLA gate: ``log α = logsigmoid(x W₁ W₂ + b) / τ`` (paper §4.4), per head and key channel.

    This is ``α = σ(x W₁ W₂ + b)^(1/τ)`` in log space. Note ``σ(z)^(1/16) ≠ σ(z/16)``: at ``z = 0``
    the first is ``0.5^(1/16) ≈ 0.958`` (the gate starts close to 1, remembering), the second 0.5.

    Args:
        x: the layer input ``[B, T, d]`` (one gate per token, computed before the heads split).
        w1: ``[d, r]`` (no bias; ``r = 16`` in the paper).
        w2: ``[r, H, K]`` (or ``[r, K]`` for a single head): the second, per-head projection.
        b: ``[H, K]`` (or ``[K]``): the bias of the second projection.
        tau: the temperature ``τ > 0`` (16 in the paper): larger ``τ`` keeps gates closer to 1.

    Returns:
        ``log_alpha: [B, H, T, K]`` (``H = 1`` when ``w2`` is ``[r, K]``), every entry ``≤ 0``.
    """
    xp = namespace(x, w1, w2, b)
    check_rank("x", x, 3, "[B, T, d]")
    check_rank("w1", w1, 2, "[d, r]")
    for name, arr in (("x", x), ("w1", w1), ("w2", w2), ("b", b)):
        check_floating(xp, name, arr)
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite positive number, got {tau!r}")
    B, T, d = x.shape
    if w1.shape[0] != d:
        raise ValueError(f"w1 must have shape [d, r] with d = {d} (the width of x), got {tuple(w1.shape)}")
    r = w1.shape[1]
    if w2.ndim == 2:
        w2 = xp.reshape(w2, (w2.shape[0], 1, w2.shape[1]))
        if b.ndim != 1:
            raise ValueError(f"b must have shape [K] when w2 is [r, K], got {tuple(b.shape)}")
        b = xp.reshape(b, (1, b.shape[0]))
    if w2.ndim != 3 or w2.shape[0] != r:
        raise ValueError(f"w2 must have shape [r, H, K] (or [r, K]) with r = {r}, got {tuple(w2.shape)}")
    _, H, K = w2.shape
    if tuple(b.shape) != (H, K):
        raise ValueError(f"b must have shape [H, K] = {(H, K)} like w2, got {tuple(b.shape)}")
    if not (x.dtype == w1.dtype == w2.dtype == b.dtype):
        raise TypeError(f"x, w1, w2 and b must share one dtype, got {x.dtype}, {w1.dtype}, {w2.dtype}, {b.dtype}")
    z = (x @ w1) @ xp.reshape(w2, (r, H * K)) + xp.reshape(b, (H * K,))  # [B, T, H·K]
    z = xp.permute_dims(xp.reshape(z, (B, T, H, K)), (0, 2, 1, 3))  # [B, H, T, K]
    return _logsigmoid(xp, z) / float(tau)


# --------------------------------------------------------------------------------------------
# Recurrent and parallel forms
# --------------------------------------------------------------------------------------------


def recurrent(q, k, v, log_alpha, *, scale: float = 1.0, initial_state=None):
    r"""``S_t = Diag(α_t) S_{t-1} + k_tᵀ v_t``, ``o_t = q_t S_t`` one token at a time (paper Eq. 3).

    The gate multiplies the *key rows* of the ``K × V`` state: row ``k`` of ``S`` is scaled by
    ``α_tk = exp(log_alpha[..., t, k])``.

    Args:
        q: ``[B, H, T, K]``; k: ``[B, H, T, K]``; v: ``[B, H, T, V]``.
        log_alpha: ``[B, H, T, K]``, ``≤ 0`` (``-inf``: a reset, the state forgets everything).
        scale: multiplies ``q``.
        initial_state: ``[B, H, K, V]`` (zeros if ``None``).

    Returns:
        ``(o: [B, H, T, V], S_T: [B, H, K, V])``.
    """
    xp, B, H, T, K, V, scale = _check_inputs(q, k, v, log_alpha, scale)
    state = check_state(xp, "initial_state", initial_state, B, H, K, V, like=q)
    out_dtype = q.dtype
    q, k, v, log_alpha, state = upcast(xp, q, k, v, log_alpha, state)
    outputs = []
    for t in range(T):
        alpha_t = xp.exp(log_alpha[..., t, :])  # [B, H, K]; 0 for a reset (log α = -inf)
        state = alpha_t[..., :, None] * state + k[..., t, :, None] * v[..., t, None, :]
        outputs.append((q[..., t : t + 1, :] * scale) @ state)
    return xp.astype(xp.concat(outputs, axis=-2), out_dtype), xp.astype(state, out_dtype)


def _decay_tensor(xp, a, mask):
    """``exp(Σ_{s < r ≤ j} a_r)`` as ``[..., n, n, K]`` where ``mask[j, s]``, else 0.

    The exponents are segment sums (``_segment_sums``): ``≤ 0``, exact for every size of gate, and
    ``-inf`` across a reset. Masked-out pairs get exponent 0 before the exponential and 0 after it,
    so autograd never meets ``0 · inf``.
    """
    mask3 = mask[:, :, None]
    seg = _segment_sums(xp, a)
    decay = xp.exp(xp.where(mask3, seg, xp.zeros_like(seg)))
    return xp.where(mask3, decay, xp.zeros_like(decay))


def _gated_scores(xp, q, k, a, mask):
    """``P_js = Σ_k q_jk k_sk exp(Σ_{s < r ≤ j} a_rk)`` where ``mask``, else exactly 0, element by element.

    The mask is applied with ``where`` after the sum, not only through the decay's zeros: a NaN
    or inf in a later key would make ``0 · NaN = NaN`` and reach every earlier row.
    """
    P = xp.sum(q[..., :, None, :] * k[..., None, :, :] * _decay_tensor(xp, a, mask), axis=-1)
    return xp.where(mask, P, xp.zeros_like(P))


def parallel(q, k, v, log_alpha, *, scale: float = 1.0):
    r"""All tokens at once: ``O = P V`` with ``P_ts = Σ_k q_tk k_sk exp(b_tk − b_sk)`` for ``s ≤ t``.

    Each exponent ``b_tk − b_sk = Σ_{s < r ≤ t} log α_rk ≤ 0`` is formed as that sum of gates
    (``_segment_sums``), not as a difference of cumulative sums, so nothing overflows and nothing
    cancels however small the gates, and a reset (``-inf``) gives exactly 0 across it. Memory
    ``O(T²·K)``: for teaching and testing, not for long sequences.

    Args:
        q: ``[B, H, T, K]``; k: ``[B, H, T, K]``; v: ``[B, H, T, V]``; log_alpha: ``[B, H, T, K]``.
        scale: multiplies ``q``.

    Returns:
        ``o: [B, H, T, V]``.
    """
    xp, _, _, T, _, _, scale = _check_inputs(q, k, v, log_alpha, scale)
    out_dtype = q.dtype
    q, k, v, log_alpha = upcast(xp, q, k, v, log_alpha)
    mask = causal_mask(xp, T, T, device_of(q))
    return xp.astype(_gated_scores(xp, q * scale, k, log_alpha, mask) @ v, out_dtype)


def parallel_factorised(q, k, v, log_alpha, *, scale: float = 1.0):
    r"""The *unsafe* factorisation ``O = (((Q ⊙ e^b)(K ⊙ e^{−b})ᵀ) ⊙ M) V`` — for demonstration only.

    Mathematically equal to ``parallel``, and a single matrix product, but ``e^{−b}`` grows without
    bound: with gates ``α ≈ 0.9`` it overflows float32 (``e^{88}``) after about 900 tokens, and then
    ``inf · 0 = NaN`` spreads through the output. Secondary chunking (``chunked``) is the fix.
    """
    xp, _, _, T, _, _, scale = _check_inputs(q, k, v, log_alpha, scale)
    b = xp.cumulative_sum(log_alpha, axis=-2)
    scores = (q * scale * xp.exp(b)) @ transpose(xp, k * xp.exp(-b))
    mask = causal_mask(xp, T, T, device_of(q))
    return xp.where(mask, scores, xp.zeros_like(scores)) @ v


# --------------------------------------------------------------------------------------------
# Chunked form: the pieces of one chunk
# --------------------------------------------------------------------------------------------


def _to_first_row(xp, a, ws: int, we: int, us: int):
    """``Σ_{s < r ≤ us} a_r`` for every key ``s`` of the sub-chunk ``ws..we-1`` (``we ≤ us``): ``[..., we-ws, K]``."""
    return _sums_to_end(xp, a[..., ws : us + 1, :])[..., : we - ws, :]


def _intra_scores(xp, q, k, a, sub_chunk: int):
    r"""The intra-chunk matrix ``P: [..., n, n]`` of one chunk by secondary chunking.

    ``q, k, a: [..., n, K]`` with ``a`` the chunk's gates and ``b`` their cumulative sum from the
    chunk start (every ``b`` difference below is formed as a sum of gates). Sub-chunk ``u``
    (queries) against an earlier sub-chunk ``w`` (keys) is a matrix product after rescaling by
    ``b_n``, the cumulative gate at the first position of ``u``::

        P_uw = (Q_u ⊙ exp(b_u − b_n)) (K_w ⊙ exp(b_n − b_w))ᵀ      both exponents ≤ 0

    (``b`` never increases, and every query of ``u`` comes at or after ``n``, every key of ``w``
    before it). A diagonal sub-block ``P_uu`` is computed element by element in log space and masked
    with ``where``; blocks above the diagonal are zeros, never products (a NaN in a later key or
    query stays out of every earlier row).
    """
    n = q.shape[-2]
    dev = device_of(q)
    bounds = chunk_bounds(n, sub_chunk)
    rows = []
    for u, (us, ue) in enumerate(bounds):
        q_u, k_u, a_u = q[..., us:ue, :], k[..., us:ue, :], a[..., us:ue, :]
        q_hat = q_u * xp.exp(_sums_after_first(xp, a_u))  # e^{b_j − b_n}
        blocks = []
        for w, (ws, we) in enumerate(bounds):
            if w < u:
                k_hat = k[..., ws:we, :] * xp.exp(_to_first_row(xp, a, ws, we, us))  # e^{b_n − b_s}
                blocks.append(q_hat @ transpose(xp, k_hat))
            elif w == u:
                blocks.append(_gated_scores(xp, q_u, k_u, a_u, causal_mask(xp, ue - us, ue - us, dev)))
            else:
                blocks.append(xp.zeros((*q.shape[:-2], ue - us, we - ws), dtype=q.dtype, device=dev))
        rows.append(xp.concat(blocks, axis=-1))
    return xp.concat(rows, axis=-2)


def _chunk_output(xp, q, k, v, a, state, sub_chunk: int):
    """``O_i = P V + (Q ⊙ e^b) S_prev``: intra by secondary chunking, inter from the state before."""
    return _intra_scores(xp, q, k, a, sub_chunk) @ v + (q * xp.exp(xp.cumulative_sum(a, axis=-2))) @ state


def _chunk_update(xp, state, k, v, a):
    """``S_new = Diag(γ) S_prev + (K ⊙ exp(b_C − b))ᵀ V`` with ``γ = exp(b_C)``, ``b_C`` the sum of the chunk's gates."""
    b_last = xp.sum(a, axis=-2)[..., None, :]  # [..., 1, K]
    return transpose(xp, xp.exp(b_last)) * state + transpose(xp, k * xp.exp(_sums_to_end(xp, a))) @ v


def _chunks(xp, T: int, chunk_size: int, log_alpha):
    """``[(start, stop, a), ...]`` with ``a`` the gates of each chunk."""
    return [(start, stop, log_alpha[..., start:stop, :]) for start, stop in chunk_bounds(T, chunk_size)]


def chunk_states(k, v, log_alpha, *, chunk_size: int = 64, initial_state=None):
    r"""Every chunk boundary's state: ``S_[0] = S_0, S_[i+1] = Diag(γ_i) S_[i] + (K_i ⊙ e^{b_C − b})ᵀ V_i``.

    The first pass of the *materialised* variant (and what the Triton kernel writes to memory).

    Args:
        k: ``[B, H, T, K]``; v: ``[B, H, T, V]``; log_alpha: ``[B, H, T, K]``.
        chunk_size: chunk length ``C``.
        initial_state: ``[B, H, K, V]`` (zeros if ``None``).

    Returns:
        ``[B, H, n + 1, K, V]`` with ``n = ceil(T / C)``: entry ``i`` is the state before chunk ``i``,
        entry ``n`` the final state.
    """
    xp, B, H, T, K, V = check_kv(k, v)
    _check_log_alpha(xp, log_alpha, B, H, T, K, like=k)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    state = check_state(xp, "initial_state", initial_state, B, H, K, V, like=k)
    out_dtype = k.dtype
    k, v, log_alpha, state = upcast(xp, k, v, log_alpha, state)
    states = [state]
    for start, stop, a in _chunks(xp, T, chunk_size, log_alpha):
        state = _chunk_update(xp, state, k[..., start:stop, :], v[..., start:stop, :], a)
        states.append(state)
    return xp.astype(xp.stack(states, axis=2), out_dtype)


def chunked(
    q,
    k,
    v,
    log_alpha,
    *,
    scale: float = 1.0,
    chunk_size: int = 64,
    sub_chunk: int = 16,
    initial_state=None,
    materialize: bool = False,
):
    r"""FlashLinearAttention (paper Algorithm 1 and §4.2-4.3): chunks with secondary chunking.

    Per chunk of ``n`` tokens (``n = chunk_size`` except perhaps the last), ``b`` the cumulative gate
    from the chunk start, ``b_C`` its last row and ``S_prev`` the state before the chunk::

        O       = P V + (Q ⊙ e^b) S_prev         P_js = Σ_k q_jk k_sk e^{b_jk − b_sk}, s ≤ j
        S_new   = Diag(e^{b_C}) S_prev + (K ⊙ e^{b_C − b})ᵀ V

    ``P`` is built by secondary chunking (see ``_intra_scores``): sub-chunks of ``sub_chunk`` tokens
    tile each chunk from its start (any positive size works; a size that does not divide the chunk
    leaves a shorter last sub-chunk, and ``sub_chunk ≥ chunk_size`` computes the whole chunk element
    by element). No exponent is ever positive.

    ``materialize=False`` (*non-materialised*): one pass, the state carried chunk to chunk —
    the chunks are sequential. ``materialize=True`` (*materialised*): first every chunk's starting
    state (``chunk_states``, a cheap sequential pass over ``K × V`` states), then every chunk's output
    on its own — on a GPU the second pass runs all chunks in parallel. The results are identical.

    Args:
        q: ``[B, H, T, K]``; k: ``[B, H, T, K]``; v: ``[B, H, T, V]``; log_alpha: ``[B, H, T, K]``.
        scale: multiplies ``q``.
        chunk_size: chunk length ``C`` (``≥ T`` gives one chunk).
        sub_chunk: secondary chunk length (16 in the paper).
        initial_state: ``[B, H, K, V]`` (zeros if ``None``).
        materialize: the materialised variant (all chunk states first).

    Returns:
        ``(o: [B, H, T, V], S_T: [B, H, K, V])``.
    """
    xp, B, H, T, K, V, scale = _check_inputs(q, k, v, log_alpha, scale)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    sub_chunk = _check_sub_chunk(sub_chunk)
    if not isinstance(materialize, bool):
        raise TypeError(f"materialize must be True or False, got {materialize!r}")
    state = check_state(xp, "initial_state", initial_state, B, H, K, V, like=q)
    out_dtype = q.dtype
    q, k, v, log_alpha, state = upcast(xp, q, k, v, log_alpha, state)
    q = q * scale
    chunks = _chunks(xp, T, chunk_size, log_alpha)

    if not materialize:
        outputs = []
        for start, stop, a in chunks:
            q_i, k_i, v_i = q[..., start:stop, :], k[..., start:stop, :], v[..., start:stop, :]
            outputs.append(_chunk_output(xp, q_i, k_i, v_i, a, state, sub_chunk))
            state = _chunk_update(xp, state, k_i, v_i, a)
        return xp.astype(xp.concat(outputs, axis=-2), out_dtype), xp.astype(state, out_dtype)

    # Pass 1 (sequential, K×V work only): the state before every chunk.
    states = [state]
    for start, stop, a in chunks:
        states.append(_chunk_update(xp, states[-1], k[..., start:stop, :], v[..., start:stop, :], a))
    # Pass 2 (independent per chunk: parallel on a GPU).
    outputs = [
        _chunk_output(xp, q[..., start:stop, :], k[..., start:stop, :], v[..., start:stop, :], a, states[i], sub_chunk)
        for i, (start, stop, a) in enumerate(chunks)
    ]
    return xp.astype(xp.concat(outputs, axis=-2), out_dtype), xp.astype(states[-1], out_dtype)


# --------------------------------------------------------------------------------------------
# Chunked backward (what the kernel does)
# --------------------------------------------------------------------------------------------


def _intra_grads(xp, q, k, a, dP, sub_chunk: int):
    r"""``dQ, dK`` of the intra-chunk term through ``P`` (given ``dP = (dO Vᵀ) ⊙ M``), secondary chunking.

    For a query sub-chunk ``u`` after a key sub-chunk ``w`` (rescaled by ``b_n``, the first row of
    ``u``, as in the forward)::

        dQ_u += (dP_uw (K_w ⊙ e^{b_n − b_w})) ⊙ e^{b_u − b_n}
        dK_w += (dP_uwᵀ (Q_u ⊙ e^{b_u − b_n})) ⊙ e^{b_n − b_w}

    and the diagonal sub-blocks element by element: ``dq_jk = Σ_s dP_js k_sk e^{b_jk − b_sk}``,
    ``dk_sk = Σ_j dP_js q_jk e^{b_jk − b_sk}``.
    """
    n = q.shape[-2]
    dev = device_of(q)
    bounds = chunk_bounds(n, sub_chunk)
    dq = [xp.zeros_like(q[..., us:ue, :]) for us, ue in bounds]
    dk = [xp.zeros_like(k[..., us:ue, :]) for us, ue in bounds]
    for u, (us, ue) in enumerate(bounds):
        q_u, k_u, a_u = q[..., us:ue, :], k[..., us:ue, :], a[..., us:ue, :]
        q_scale = xp.exp(_sums_after_first(xp, a_u))
        for w, (ws, we) in enumerate(bounds[:u]):
            k_scale = xp.exp(_to_first_row(xp, a, ws, we, us))
            dP_uw = dP[..., us:ue, ws:we]
            dq[u] = dq[u] + (dP_uw @ (k[..., ws:we, :] * k_scale)) * q_scale
            dk[w] = dk[w] + (transpose(xp, dP_uw) @ (q_u * q_scale)) * k_scale
        decay = _decay_tensor(xp, a_u, causal_mask(xp, ue - us, ue - us, dev))  # [..., c, c, K]
        dP_uu = dP[..., us:ue, us:ue]
        dq[u] = dq[u] + xp.sum(dP_uu[..., :, :, None] * k_u[..., None, :, :] * decay, axis=-2)
        dk[u] = dk[u] + xp.sum(dP_uu[..., :, :, None] * q_u[..., :, None, :] * decay, axis=-3)
    return xp.concat(dq, axis=-2), xp.concat(dk, axis=-2)


def _reverse_cumsum(xp, x, axis: int):
    return xp.flip(xp.cumulative_sum(xp.flip(x, axis=axis), axis=axis), axis=axis)


def chunked_backward(
    q,
    k,
    v,
    log_alpha,
    do,
    *,
    scale: float = 1.0,
    chunk_size: int = 64,
    sub_chunk: int = 16,
    initial_state=None,
    d_final_state=None,
    return_initial_state_grad: bool = False,
):
    r"""``dq, dk, dv, d log_alpha`` of ``chunked`` by the same tiling — no autograd.

    1. States ``S_[i]`` before every chunk (``chunk_states``).
    2. Reverse scan for the gradient w.r.t. the state *after* chunk ``i``, ``dS_[i+1]``
       (``dS_[n]`` = ``d_final_state`` or 0)::

           dS_[i] = Diag(e^{b_C}) dS_[i+1] + (Q_i ⊙ e^b)ᵀ dO_i

    3. Per chunk, independently (``P`` as in the forward, ``dP = (dO Vᵀ) ⊙ M``)::

           dV = Pᵀ dO + (K ⊙ e^{b_C − b}) dS_[i+1]
           dQ = intra(dP, K) + e^b ⊙ (dO S_[i]ᵀ)
           dK = intra(dPᵀ, Q) + e^{b_C − b} ⊙ (V dS_[i+1]ᵀ)

    4. The gate: every ``b_j`` of a chunk enters only as ``Q ⊙ e^{b}`` and ``K ⊙ e^{−b}``
       (relative to the chunk start) and through ``b_C`` in the state update, so
       ``∂L/∂b_j = q_j ⊙ dq_j − k_j ⊙ dk_j`` plus, on the chunk's last row,
       ``Σ_v S_[i+1] ⊙ dS_[i+1]``. Since ``b_j = Σ_{r ≤ j} log α_r`` within the chunk,
       ``d log α_t = Σ_{j ≥ t in the chunk} ∂L/∂b_j``: a *chunk-local* reverse cumulative sum (no
       cancellation over the whole sequence).

    Args:
        q, k, v, log_alpha, scale, chunk_size, sub_chunk, initial_state: as for ``chunked``.
        do: ``[B, H, T, V]`` gradient of the loss w.r.t. ``o``.
        d_final_state: ``[B, H, K, V]`` gradient w.r.t. the returned final state (zeros if ``None``).
        return_initial_state_grad: also return the gradient w.r.t. ``initial_state``.

    Returns:
        ``(dq, dk, dv, dlog_alpha)`` shaped like the inputs (and ``d_initial_state`` last if asked).
    """
    xp, B, H, T, K, V, scale = _check_inputs(q, k, v, log_alpha, scale)
    if not same_library(do, q) or tuple(do.shape) != (B, H, T, V):
        raise ValueError(f"do must be an array like v with shape [B, H, T, V] = {(B, H, T, V)}, got {tuple(do.shape)}")
    if do.dtype != q.dtype:
        raise TypeError(f"do must have the dtype of q, k, v ({q.dtype}), got {do.dtype}")
    chunk_size = check_positive_int("chunk_size", chunk_size)
    sub_chunk = _check_sub_chunk(sub_chunk)
    if not isinstance(return_initial_state_grad, bool):
        raise TypeError(f"return_initial_state_grad must be True or False, got {return_initial_state_grad!r}")
    state = check_state(xp, "initial_state", initial_state, B, H, K, V, like=q)
    dstate = check_state(xp, "d_final_state", d_final_state, B, H, K, V, like=q)
    out_dtype = q.dtype
    q, k, v, log_alpha, do, state, dstate = upcast(xp, q, k, v, log_alpha, do, state, dstate)
    q = q * scale
    chunks = _chunks(xp, T, chunk_size, log_alpha)

    states = [state]  # S_[i], the state before chunk i (S_[n] the final state)
    for start, stop, a in chunks:
        states.append(_chunk_update(xp, states[-1], k[..., start:stop, :], v[..., start:stop, :], a))

    dstates = [None] * len(chunks)  # dS_[i+1], the gradient w.r.t. the state after chunk i
    for i in reversed(range(len(chunks))):
        start, stop, a = chunks[i]
        dstates[i] = dstate
        q_i, do_i = q[..., start:stop, :], do[..., start:stop, :]
        b_last = xp.sum(a, axis=-2)[..., None, :]
        dstate = transpose(xp, xp.exp(b_last)) * dstate + transpose(xp, q_i * xp.exp(xp.cumulative_sum(a, axis=-2))) @ do_i

    dq, dk, dv, da = [], [], [], []
    for i, (start, stop, a) in enumerate(chunks):
        q_i, k_i, v_i, do_i = (x[..., start:stop, :] for x in (q, k, v, do))
        n = stop - start
        to_end = xp.exp(_sums_to_end(xp, a))  # e^{b_C − b}
        P = _intra_scores(xp, q_i, k_i, a, sub_chunk)
        mask = causal_mask(xp, n, n, device_of(q))
        dP = xp.where(mask, do_i @ transpose(xp, v_i), xp.zeros_like(P))
        dv_i = transpose(xp, P) @ do_i + (k_i * to_end) @ dstates[i]
        dq_intra, dk_intra = _intra_grads(xp, q_i, k_i, a, dP, sub_chunk)
        dq_i = dq_intra + xp.exp(xp.cumulative_sum(a, axis=-2)) * (do_i @ transpose(xp, states[i]))
        dk_i = dk_intra + to_end * (v_i @ transpose(xp, dstates[i]))
        db = q_i * dq_i - k_i * dk_i
        last_row = xp.sum(states[i + 1] * dstates[i], axis=-1)[..., None, :]  # [B, H, 1, K]
        is_last = xp.reshape(xp.arange(n, device=device_of(q)) == n - 1, (n, 1))
        db = db + xp.where(is_last, last_row, xp.zeros_like(last_row))
        dq.append(dq_i * scale)
        dk.append(dk_i)
        dv.append(dv_i)
        da.append(_reverse_cumsum(xp, db, axis=-2))
    grads = tuple(xp.astype(xp.concat(g, axis=-2), out_dtype) for g in (dq, dk, dv, da))
    return (*grads, xp.astype(dstate, out_dtype)) if return_initial_state_grad else grads


# --------------------------------------------------------------------------------------------
# A small GLA layer (torch)
# --------------------------------------------------------------------------------------------


class GLALayer(nn.Module):
    r"""A GLA token mixer (paper §4.4): ``y = (Swish(x W_r + b_r) ⊙ LN_head(o)) W_O``.

    ``o`` is gated linear attention over ``H`` heads of the projections ``q = x W_Q``,
    ``k = x W_K`` (total width ``K = d/2``) and ``v = x W_V`` (width ``V = d``), with the gate
    ``log α = logsigmoid(x W₁ W₂ + b) / τ`` (``W₁: d × r``, ``r = 16``). ``LN_head`` normalises each
    head's output separately; ``scale = K_head^(-1/2)``.

    Args:
        d_model: ``d``, a multiple of ``2 · num_heads``.
        num_heads: ``H``.
        gate_rank: ``r`` (16).
        tau: ``τ`` (16).
        use_gate: ``False`` gives the no-gate baseline (``log α = 0``: plain linear attention
            with the same projections, output gate and norm).
        attention: the attention function ``f(q, k, v, log_alpha, *, scale) -> o`` or
            ``-> (o, state)``; defaults to ``reference.gla.chunked`` (differentiable torch).
            ``kernels.gla.attention`` fits too.

    Input ``x: [B, T, d]``; output ``[B, T, d]``.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        gate_rank: int = 16,
        tau: float = 16.0,
        use_gate: bool = True,
        attention=None,
    ):
        super().__init__()
        d_model = check_positive_int("d_model", d_model)
        num_heads = check_positive_int("num_heads", num_heads)
        if d_model % (2 * num_heads):
            raise ValueError(f"d_model must be a multiple of 2 · num_heads = {2 * num_heads}, got {d_model}")
        self.d_model, self.num_heads, self.tau, self.use_gate = d_model, num_heads, float(tau), bool(use_gate)
        self.key_dim, self.value_dim = d_model // 2, d_model
        self.head_k, self.head_v = self.key_dim // num_heads, self.value_dim // num_heads
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.gate_down = nn.Linear(d_model, gate_rank, bias=False)  # W₁
        self.gate_up = nn.Linear(gate_rank, self.key_dim, bias=True)  # W₂, b
        self.r_proj = nn.Linear(d_model, self.value_dim, bias=True)  # output gate W_r, b_r
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)  # W_O
        self.norm = nn.LayerNorm(self.head_v)
        self.attention = attention

    def log_alpha(self, x):
        """The gate ``[B, H, T, K_head]`` for input ``x: [B, T, d]`` (zeros without a gate)."""
        B, T, _ = x.shape
        if not self.use_gate:
            return x.new_zeros(B, self.num_heads, T, self.head_k)
        w2 = self.gate_up.weight.T.reshape(-1, self.num_heads, self.head_k)
        b = self.gate_up.bias.reshape(self.num_heads, self.head_k)
        return gate(x, self.gate_down.weight.T, w2, b, tau=self.tau)

    def forward(self, x):
        B, T, _ = x.shape

        def heads(t, width):
            return t.reshape(B, T, self.num_heads, width).transpose(1, 2)

        q = heads(self.q_proj(x), self.head_k)
        k = heads(self.k_proj(x), self.head_k)
        v = heads(self.v_proj(x), self.head_v)
        fn = self.attention or chunked
        out = fn(q, k, v, self.log_alpha(x), scale=self.head_k**-0.5)
        o = out[0] if isinstance(out, tuple) else out
        o = self.norm(o).transpose(1, 2).reshape(B, T, self.value_dim)
        return self.o_proj(nn.functional.silu(self.r_proj(x)) * o)
