"""Independent float64 oracles: each output written as its defining sum, one position at a time.

These share no code with ``reference`` (or with anything they check): no masks, no chunking, no
matrix re-association. They are slow and only meant for the small shapes of the property tests.
The gradients of ``L = Σ o ⊙ do`` are written the same way, as the derivative of each defining sum.
"""

from __future__ import annotations

import numpy as np


def softmax_attention(q, k, v, *, causal=True, scale=None):
    """``o_i = Σ_j softmax_j(scale q_i·k_j) v_j`` over visible ``j`` (causal: ``j ≤ i + Tk - Tq``)."""
    B, H, Tq, K = q.shape
    Tk = k.shape[2]
    scale = K ** -0.5 if scale is None else scale
    o = np.empty((B, H, Tq, v.shape[-1]))
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                last = i + Tk - Tq if causal else Tk - 1
                logits = np.array([scale * np.dot(q[b, h, i], k[b, h, j]) for j in range(last + 1)])
                w = np.exp(logits - logits.max())
                o[b, h, i] = (w[:, None] * v[b, h, : last + 1]).sum(0) / w.sum()
    return o


def decayed_linear_attention(q, k, v, decay=None, *, scale=1.0, initial_state=None, causal=True):
    """``o_t = Σ_{s≤t} λ^(t-s) (scale q_t·k_s) v_s + λ^(t+1) scale q_t S_0``; final state alike.

    ``decay=None`` is plain linear attention (λ = 1). ``causal=False`` sums over every ``s``
    (no decay allowed then).
    """
    B, H, T, K = q.shape
    V = v.shape[-1]
    lam = np.ones(H) if decay is None else np.asarray(decay, dtype=np.float64)
    o = np.zeros((B, H, T, V))
    final = np.zeros((B, H, K, V))
    for b in range(B):
        for h in range(H):
            for t in range(T):
                sources = range(t + 1) if causal else range(T)
                for s in sources:
                    o[b, h, t] += lam[h] ** (t - s) * scale * np.dot(q[b, h, t], k[b, h, s]) * v[b, h, s]
                if initial_state is not None:
                    o[b, h, t] += lam[h] ** (t + 1) * scale * q[b, h, t] @ initial_state[b, h]
            for s in range(T):
                final[b, h] += lam[h] ** (T - 1 - s) * np.outer(k[b, h, s], v[b, h, s])
            if initial_state is not None:
                final[b, h] += lam[h] ** T * initial_state[b, h]
    return o, final


def gated_linear_attention(q, k, v, log_alpha, *, scale=1.0, initial_state=None):
    """GLA as its defining sum: ``o_t = Σ_{s≤t} Σ_k scale q_tk k_sk Π_{r=s+1..t} α_rk v_s``.

    Plus ``Σ_k scale q_tk Π_{r=1..t} α_rk S_0[k, :]`` with an initial state; the final state is
    ``Σ_s Diag(Π_{r=s+1..T} α_r) k_sᵀ v_s + Diag(Π_{r=1..T} α_r) S_0``. Each product of gates is
    ``exp`` of a fresh sum of ``log α`` over exactly its range (no cumulative sums shared).
    """
    B, H, T, K = q.shape
    V = v.shape[-1]
    o = np.zeros((B, H, T, V))
    final = np.zeros((B, H, K, V))
    for b in range(B):
        for h in range(H):
            a = log_alpha[b, h]
            for t in range(T):
                for s in range(t + 1):
                    decay = np.exp(a[s + 1 : t + 1].sum(axis=0))  # [K]: Π_{r=s+1..t} α_r
                    o[b, h, t] += scale * np.sum(q[b, h, t] * k[b, h, s] * decay) * v[b, h, s]
                if initial_state is not None:
                    decay = np.exp(a[: t + 1].sum(axis=0))
                    o[b, h, t] += scale * (q[b, h, t] * decay) @ initial_state[b, h]
            for s in range(T):
                decay = np.exp(a[s + 1 :].sum(axis=0))
                final[b, h] += np.outer(k[b, h, s] * decay, v[b, h, s])
            if initial_state is not None:
                final[b, h] += np.exp(a.sum(axis=0))[:, None] * initial_state[b, h]
    return o, final


def softmax_attention_grads(q, k, v, do, *, causal=True, scale=None):
    """``(dq, dk, dv)`` of ``L = Σ o ⊙ do`` for ``softmax_attention``, one query row at a time.

    With ``p_j`` the row's weights and ``g_j = do_i · v_j``: ``dv_j += p_j do_i``,
    ``ds_j = p_j (g_j − Σ_j' p_j' g_j')``, ``dq_i = scale Σ_j ds_j k_j``, ``dk_j += scale ds_j q_i``.
    """
    B, H, Tq, K = q.shape
    Tk = k.shape[2]
    scale = K ** -0.5 if scale is None else scale
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                last = i + Tk - Tq if causal else Tk - 1
                logits = np.array([scale * np.dot(q[b, h, i], k[b, h, j]) for j in range(last + 1)])
                w = np.exp(logits - logits.max())
                p = w / w.sum()
                g = np.array([np.dot(do[b, h, i], v[b, h, j]) for j in range(last + 1)])
                ds = p * (g - np.dot(p, g))
                for j in range(last + 1):
                    dv[b, h, j] += p[j] * do[b, h, i]
                    dq[b, h, i] += scale * ds[j] * k[b, h, j]
                    dk[b, h, j] += scale * ds[j] * q[b, h, i]
    return dq, dk, dv


def decayed_linear_attention_grads(q, k, v, decay, do, *, scale=1.0):
    """``(dq, dk, dv)`` of ``L = Σ o ⊙ do`` for causal ``decayed_linear_attention`` (no initial state).

    Each pair ``s ≤ t`` contributes ``c = λ^(t-s) scale`` times: ``(do_t·v_s) k_s`` to ``dq_t``,
    ``(do_t·v_s) q_t`` to ``dk_s`` and ``(q_t·k_s) do_t`` to ``dv_s``.
    """
    B, H, T, K = q.shape
    lam = np.ones(H) if decay is None else np.asarray(decay, dtype=np.float64)
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                for s in range(t + 1):
                    c = lam[h] ** (t - s) * scale
                    g = np.dot(do[b, h, t], v[b, h, s])
                    dq[b, h, t] += c * g * k[b, h, s]
                    dk[b, h, s] += c * g * q[b, h, t]
                    dv[b, h, s] += c * np.dot(q[b, h, t], k[b, h, s]) * do[b, h, t]
    return dq, dk, dv


def gated_linear_attention_grads(q, k, v, log_alpha, do, *, scale=1.0):
    """``(dq, dk, dv, dlog_alpha)`` of ``L = Σ o ⊙ do`` for ``gated_linear_attention`` (no initial state).

    Each pair ``s ≤ t`` and channel ``k`` contributes ``c = scale q_tk k_sk Π_{r=s+1..t} α_rk`` times
    ``g = do_t·v_s``; ``log α_rk`` for every ``r`` in ``s+1..t`` receives ``c g`` (the derivative of
    ``exp`` of a sum with respect to each of its terms).
    """
    B, H, T, K = q.shape
    dq, dk, dv, da = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape), np.zeros(log_alpha.shape)
    for b in range(B):
        for h in range(H):
            a = log_alpha[b, h]
            for t in range(T):
                for s in range(t + 1):
                    decay = np.exp(a[s + 1 : t + 1].sum(axis=0))  # [K]
                    g = np.dot(do[b, h, t], v[b, h, s])
                    dq[b, h, t] += scale * k[b, h, s] * decay * g
                    dk[b, h, s] += scale * q[b, h, t] * decay * g
                    dv[b, h, s] += scale * np.sum(q[b, h, t] * k[b, h, s] * decay) * do[b, h, t]
                    da[b, h, s + 1 : t + 1] += scale * q[b, h, t] * k[b, h, s] * decay * g
    return dq, dk, dv, da


def gla_gate(x, w1, w2, b, *, tau=16.0):
    """``log α[b, h, t, k] = log σ(z) / τ`` with ``z = Σ_d Σ_r x[b,t,d] w1[d,r] w2[r,h,k] + b[h,k]``.

    ``log σ(z)`` is ``−log(1 + e^{−z})``, taken as ``z − log(1 + e^{z})`` for negative ``z`` so
    neither form overflows. ``w2: [r, H, K]``, ``b: [H, K]``.
    """
    B, T, d = x.shape
    r, H, K = w2.shape
    out = np.empty((B, H, T, K))
    for bi in range(B):
        for h in range(H):
            for t in range(T):
                for c in range(K):
                    z = b[h, c] + sum(x[bi, t, i] * w1[i, j] * w2[j, h, c] for i in range(d) for j in range(r))
                    log_sigma = -np.log1p(np.exp(-z)) if z >= 0 else z - np.log1p(np.exp(z))
                    out[bi, h, t, c] = log_sigma / tau
    return out
