"""A correct Lightning Attention-2 written the way a student would, from the math alone (NumPy).

The grader's control: it imports nothing from this package, and ``tests/test_grader.py`` requires
``python -m reference.testing lightning tests/student_lightning.py`` to pass on it, so the suite
does not merely recognise the reference's own code. The math (``docs/lightning.md``): per head a
rate ``λ ∈ (0, 1]``, ``S_t = λ S_{t-1} + k_tᵀ v_t`` and ``o_t = scale · q_t S_t``.
"""

import numpy as np


def _check(q, k, v, decay, initial_state=None, chunk_size=None):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise ValueError(f"{name} must be a 4-d array [B, H, T, D], got {getattr(x, 'shape', type(x))}")
    B, H, T, K = q.shape
    if k.shape != (B, H, T, K):
        raise ValueError(f"k must have the shape of q {q.shape}, got {k.shape}")
    if v.shape[:3] != (B, H, T):
        raise ValueError(f"v must be [B, H, T, V] with B, H, T = {(B, H, T)}, got {v.shape}")
    decay = np.asarray(decay, dtype=np.float64)
    if decay.shape != (H,) or not np.all((decay > 0) & (decay <= 1)):
        raise ValueError(f"decay must be {H} rates in (0, 1], got {decay}")
    if initial_state is not None and initial_state.shape != (B, H, K, v.shape[3]):
        raise ValueError(f"initial_state must be [B, H, K, V] = {(B, H, K, v.shape[3])}, got {initial_state.shape}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    return decay


def decay_mask(decay, T):
    """``D[h, t, s] = λ_h^(t-s)`` on and below the diagonal, 0 above."""
    decay = np.asarray(decay, dtype=np.float64)
    gap = np.arange(T)[:, None] - np.arange(T)[None, :]
    return np.where(gap >= 0, decay[:, None, None] ** np.maximum(gap, 0), 0.0)


def recurrent(q, k, v, decay, *, scale=1.0, initial_state=None):
    lam = _check(q, k, v, decay, initial_state)
    B, H, T, K = q.shape
    S = np.zeros((B, H, K, v.shape[3])) if initial_state is None else initial_state.astype(np.float64)
    o = np.zeros((B, H, T, v.shape[3]))
    for t in range(T):
        S = lam[:, None, None] * S + np.einsum("bhk,bhv->bhkv", k[:, :, t], v[:, :, t])
        o[:, :, t] = scale * np.einsum("bhk,bhkv->bhv", q[:, :, t], S)
    return o, S


def _causal(scores, lam):
    """``scores ⊙ D``, selecting 0 above the diagonal (multiplying by 0 would keep a NaN there)."""
    n = scores.shape[-1]
    below = np.arange(n)[:, None] >= np.arange(n)[None, :]
    return np.where(below, scores * decay_mask(lam, n), 0.0)


def parallel(q, k, v, decay, *, scale=1.0):
    lam = _check(q, k, v, decay)
    scores = scale * np.einsum("bhtk,bhsk->bhts", q, k)
    return np.einsum("bhts,bhsv->bhtv", _causal(scores, lam), v)


def chunked(q, k, v, decay, *, scale=1.0, chunk_size=64, initial_state=None):
    """Per chunk: intra = ((Q Kᵀ) ⊙ D) V, inter = λ^j Q S (S from before the chunk), then
    S ← λⁿ S + Σ_j λ^(n-j) k_jᵀ v_j."""
    lam = _check(q, k, v, decay, initial_state, chunk_size)
    B, H, T, K = q.shape
    S = np.zeros((B, H, K, v.shape[3])) if initial_state is None else initial_state.astype(np.float64)
    o = np.zeros((B, H, T, v.shape[3]))
    for a in range(0, T, chunk_size):
        b = min(a + chunk_size, T)
        n = b - a
        j = np.arange(1, n + 1)
        qc, kc, vc = q[:, :, a:b] * scale, k[:, :, a:b], v[:, :, a:b]
        intra = np.einsum("bhts,bhsv->bhtv", _causal(np.einsum("bhtk,bhsk->bhts", qc, kc), lam), vc)
        inter = np.einsum("htx,bhtk,bhkv->bhtv", lam[:, None, None] ** j[None, :, None], qc, S)
        o[:, :, a:b] = intra + inter
        S = (lam**n)[:, None, None] * S + np.einsum("hj,bhjk,bhjv->bhkv", lam[:, None] ** (n - j)[None, :], kc, vc)
    return o, S


def chunked_backward(q, k, v, decay, do, *, scale=1.0, chunk_size=64):
    """Gradients of Σ o ⊙ do by the same chunks: dQ in a forward sweep, dK and dV in a reverse one."""
    lam = _check(q, k, v, decay, None, chunk_size)
    B, H, T, K = q.shape
    V = v.shape[3]
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    bounds = [(a, min(a + chunk_size, T)) for a in range(0, T, chunk_size)]
    S = np.zeros((B, H, K, V))
    for a, b in bounds:
        n = b - a
        j = np.arange(1, n + 1)
        D = decay_mask(lam, n)
        kc, vc, doc = k[:, :, a:b], v[:, :, a:b], do[:, :, a:b]
        dP = np.einsum("bhtv,bhsv->bhts", doc, vc) * D
        dq[:, :, a:b] = scale * (
            np.einsum("bhts,bhsk->bhtk", dP, kc)
            + np.einsum("ht,bhtv,bhkv->bhtk", lam[:, None] ** j[None, :], doc, S)
        )
        S = (lam**n)[:, None, None] * S + np.einsum("hj,bhjk,bhjv->bhkv", lam[:, None] ** (n - j)[None, :], kc, vc)
    dS = np.zeros((B, H, K, V))  # gradient w.r.t. the state after the current chunk
    for a, b in reversed(bounds):
        n = b - a
        j = np.arange(1, n + 1)
        D = decay_mask(lam, n)
        qc, kc, vc, doc = q[:, :, a:b] * scale, k[:, :, a:b], v[:, :, a:b], do[:, :, a:b]
        dP = np.einsum("bhtv,bhsv->bhts", doc, vc) * D
        P = np.einsum("bhtk,bhsk->bhts", qc, kc) * D
        w = lam[:, None] ** (n - j)[None, :]  # [H, n]: key j reaches the chunk's end decayed by λ^(n-j)
        dk[:, :, a:b] = np.einsum("bhts,bhtk->bhsk", dP, qc) + np.einsum("hs,bhsv,bhkv->bhsk", w, vc, dS)
        dv[:, :, a:b] = np.einsum("bhts,bhtv->bhsv", P, doc) + np.einsum("hs,bhsk,bhkv->bhsv", w, kc, dS)
        dS = (lam**n)[:, None, None] * dS + np.einsum("ht,bhtk,bhtv->bhkv", lam[:, None] ** j[None, :], qc, doc)
    return dq, dk, dv
