"""Independent float64 oracles: each output written as its defining sum, one position at a time.

These share no code with ``reference``: no masks, no chunking, no matrix re-association. They are
slow and only meant for the small shapes of the property tests.
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
