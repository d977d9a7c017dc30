r"""Each rank's local work, in one place: which implementation runs, and the small state algebra.

A rank's chunk ``r`` (``C`` tokens, local index ``j = 1..C``, ``Λ = diag(λ^j)``) contributes three
pieces to every linear-attention scheme (ALGORITHMS.md §5–6):

* ``intra(q, k, v)`` — causal Lightning attention *inside* the chunk with a zero initial state,
  ``[(Q Kᵀ) ⊙ D] V``. The expensive part, and the part that overlaps communication. On CUDA it is
  ``kernels.lightning.attention`` when that kernel is importable, else a vectorised torch chunked
  form; on the CPU it is ``reference.lightning.chunked`` (float64 in the tests). Differentiable.
* ``chunk_state(k, v)`` — the chunk's own decayed state ``M = (λ^C Λ⁻¹ K)ᵀ V`` (row ``j`` of ``K``
  scaled by ``λ^(C-j)``): what the chunk adds to every later chunk's state.
* ``inter(q, P)`` — what the earlier chunks add to this chunk's output through the incoming state
  ``P``: ``Λ Q P`` (times ``scale``).

With them, the chunk's full output is ``intra + inter(q, P)`` and its outgoing state is
``λ^C P + M`` — exactly ``reference.lightning.chunked`` on the chunk with ``initial_state = P``
(``local_forward``), but split so that ``intra`` and ``M`` can be computed while ``P`` is still
travelling. The backward pieces are the transposes, written out (``grad_inter_q``, ``grad_state_in``,
``grad_chunk_state``) so the algorithms' hand-written backward passes read like the paper.

States are kept in float32 when the inputs are half precision (float64 stays float64).
"""

from __future__ import annotations

import functools
import inspect

import torch

__all__ = [
    "state_dtype",
    "log_decay",
    "Factors",
    "factors",
    "intra",
    "chunk_state",
    "inter",
    "grad_inter_q",
    "grad_state_in",
    "grad_chunk_state",
    "local_forward",
    "softmax",
    "implementation",
]


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """States and their gradients: float32 for 16-bit inputs, the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def log_decay(decay, H: int, device) -> torch.Tensor | None:
    """``log λ`` as float64 ``[H]`` on ``device``, or ``None`` for no decay (λ = 1)."""
    if decay is None:
        return None
    return torch.as_tensor(decay, dtype=torch.float64).to(device).log()


class Factors:
    """The decay factors of one chunk of ``C`` tokens (``None`` entries mean "no decay")."""

    def __init__(self, log_lam: torch.Tensor | None, C: int, dtype: torch.dtype):
        self.C = C
        if log_lam is None:
            self.q = self.k = self.block = None
            return
        j = torch.arange(1, C + 1, device=log_lam.device, dtype=torch.float64)
        self.q = torch.exp(log_lam[:, None] * j).to(dtype)[:, :, None]  # Λ = λ^j        [H, C, 1]
        self.k = torch.exp(log_lam[:, None] * (C - j)).to(dtype)[:, :, None]  # λ^(C-j)  [H, C, 1]
        self.block = torch.exp(log_lam * C).to(dtype)[:, None, None]  # λ^C             [H, 1, 1]


def factors(log_lam, C: int, dtype) -> Factors:
    return Factors(log_lam, C, dtype)


def _scaled(x: torch.Tensor, f: torch.Tensor | None) -> torch.Tensor:
    return x if f is None else x * f


def chunk_state(k: torch.Tensor, v: torch.Tensor, f: Factors) -> torch.Tensor:
    """``M = (λ^C Λ⁻¹ K)ᵀ V``: ``[B, H, K, V]`` in the state dtype."""
    sd = state_dtype(k.dtype)
    return _scaled(k.to(sd), f.k).transpose(-1, -2) @ v.to(sd)


def inter(q: torch.Tensor, P: torch.Tensor, f: Factors, scale: float) -> torch.Tensor:
    """``scale · Λ Q P``: ``[B, H, C, V]`` in ``q``'s dtype."""
    return (_scaled(q.to(P.dtype), f.q) @ P * scale).to(q.dtype)


def grad_inter_q(do: torch.Tensor, P: torch.Tensor, f: Factors, scale: float) -> torch.Tensor:
    """``∂(inter)/∂Q`` applied to ``dO``: ``scale · Λ dO Pᵀ`` (``q``'s shape, ``do``'s dtype)."""
    return (_scaled(do.to(P.dtype) @ P.transpose(-1, -2), f.q) * scale).to(do.dtype)


def grad_state_in(q: torch.Tensor, do: torch.Tensor, f: Factors, scale: float) -> torch.Tensor:
    """``∂(inter)/∂P`` applied to ``dO``: ``scale · (Λ Q)ᵀ dO`` — LASP-2's ``dM_r``. ``[B, H, K, V]``."""
    sd = state_dtype(q.dtype)
    return _scaled(q.to(sd), f.q).transpose(-1, -2) @ do.to(sd) * scale


def grad_chunk_state(k: torch.Tensor, v: torch.Tensor, G: torch.Tensor, f: Factors):
    """``∂M/∂K, ∂M/∂V`` applied to ``G`` (the gradient w.r.t. ``M``): ``(λ^(C-j) V) Gᵀ`` and ``(λ^(C-j) K) G``."""
    dk = _scaled(v.to(G.dtype) @ G.transpose(-1, -2), f.k)
    dv = _scaled(k.to(G.dtype) @ G, f.k)
    return dk.to(k.dtype), dv.to(v.dtype)


# --------------------------------------------------------------------------------------------
# The intra-chunk attention: kernel, vectorised torch, or the reference
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _kernel():
    """``kernels.lightning.attention`` if it can be imported and called as documented, else ``None``."""
    try:
        from kernels import lightning as kl

        fn = kl.attention
        inspect.signature(fn).bind(None, None, None, None, scale=1.0)
        return fn
    except Exception:
        return None


def implementation(device: torch.device | str) -> str:
    """Which code computes ``intra`` on ``device`` (recorded by the benchmark)."""
    if torch.device(device).type == "cuda":
        return "kernels.lightning.attention" if _kernel() is not None else "simdist.local torch chunked (fallback)"
    return "reference.lightning.chunked"


def _torch_chunked(q, k, v, log_lam, scale: float, block: int = 128) -> torch.Tensor:
    """Causal Lightning attention, vectorised over blocks (the CUDA fallback when no kernel exists).

    Blocks of ``block`` tokens: the intra-block products run as one batched matmul, the inter-block
    state as an exclusive scan over blocks in float32. The tail shorter than a block goes through
    the reference form with the carried state.
    """
    from reference import lightning as ref

    B, H, T, K = q.shape
    V = v.shape[-1]
    n = T // block
    sd = state_dtype(q.dtype)
    outs = []
    state = torch.zeros(B, H, K, V, dtype=sd, device=q.device)
    if n:
        f = Factors(log_lam, block, sd)
        qb = q[:, :, : n * block].reshape(B, H, n, block, K).to(sd) * scale
        kb = k[:, :, : n * block].reshape(B, H, n, block, K).to(sd)
        vb = v[:, :, : n * block].reshape(B, H, n, block, V).to(sd)
        rows = torch.arange(block, device=q.device)
        dist = (rows[:, None] - rows[None, :]).clamp(min=0).to(torch.float64)
        if log_lam is None:
            mask = (rows[:, None] >= rows[None, :]).to(sd)[None, None]
        else:
            mask = torch.where(rows[:, None] >= rows[None, :], torch.exp(log_lam[:, None, None] * dist), 0.0).to(sd)
            mask = mask[None, :, None]  # [1, H, 1, c, c]
        o = ((qb @ kb.transpose(-1, -2)) * mask) @ vb  # [B, H, n, c, V]
        kdec = kb if f.k is None else kb * f.k[None, :, None]
        M = kdec.transpose(-1, -2) @ vb  # [B, H, n, K, V]
        prefix = []
        for i in range(n):  # exclusive scan: P_i = λ^c P_{i-1} + M_{i-1}
            prefix.append(state)
            state = (state if f.block is None else f.block * state) + M[:, :, i]
        P = torch.stack(prefix, dim=2)
        qdec = qb if f.q is None else qb * f.q[None, :, None]
        o = o + qdec @ P
        outs.append(o.reshape(B, H, n * block, V).to(q.dtype))
    if n * block < T:
        decay = None if log_lam is None else log_lam.exp()
        if decay is None:
            decay = torch.ones(H, dtype=torch.float64, device=q.device)
        tail, _ = ref.chunked(
            q[:, :, n * block :].to(sd), k[:, :, n * block :].to(sd), v[:, :, n * block :].to(sd),
            decay.to(sd), scale=scale, chunk_size=block, initial_state=state,
        )
        outs.append(tail.to(q.dtype))
    return torch.cat(outs, dim=2)


def intra(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_lam, scale: float, *, use_kernel: bool | None = None) -> torch.Tensor:
    """Causal Lightning attention of the chunk alone (zero initial state), differentiable in q, k, v.

    ``use_kernel``: ``None`` (default) uses ``kernels.lightning`` on CUDA when it is importable;
    ``True`` forces it (on the CPU that needs ``TRITON_INTERPRET=1``); ``False`` never uses it.
    """
    H = q.shape[1]
    if use_kernel is None:
        use_kernel = q.device.type == "cuda" and _kernel() is not None
    if use_kernel:
        kernel = _kernel()
        if kernel is None:
            raise RuntimeError("kernels.lightning.attention cannot be imported")
        decay = torch.ones(H, device=q.device, dtype=torch.float32) if log_lam is None else log_lam.exp().float()
        return kernel(q, k, v, decay, scale=scale)
    if q.device.type == "cuda":
        return _torch_chunked(q, k, v, log_lam, scale)
    from reference import lightning as ref

    decay = torch.ones(H, dtype=q.dtype) if log_lam is None else log_lam.exp().to(q.dtype)
    o, _ = ref.chunked(q, k, v, decay, scale=scale, chunk_size=64)
    return o


def local_forward(q, k, v, decay, scale: float = 1.0, initial_state=None):
    """``(o, final_state)`` of causal Lightning attention on one chunk with ``initial_state``.

    The composition the schemes use: ``o = intra + Λ Q P · scale``, ``final = λ^C P + M``.
    Equal to ``reference.lightning.chunked(q, k, v, decay, scale=scale, initial_state=P)``.
    """
    C, H = q.shape[2], q.shape[1]
    lam = log_decay(decay, H, q.device)
    f = factors(lam, C, state_dtype(q.dtype))
    o = intra(q, k, v, lam, scale)
    M = chunk_state(k, v, f)
    if initial_state is None:
        return o, M
    P = initial_state.to(M.dtype)
    return o + inter(q, P, f, scale), _scaled(P, f.block) + M


# --------------------------------------------------------------------------------------------
# Softmax attention of a chunk of queries over a longer run of keys (LASP-2H)
# --------------------------------------------------------------------------------------------


def softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float, use_sdpa: bool | None = None) -> torch.Tensor:
    """Softmax attention with the causal mask aligned to the *end* of the keys.

    Query row ``i`` of ``Tq`` sits at key position ``i + Tk - Tq``: a chunk of queries that follows
    every earlier chunk's keys. With ``use_sdpa`` (the default on CUDA): SDPA with
    ``causal_lower_right`` (flash or memory-efficient kernels, no mask materialised; plain
    ``is_causal`` would align to the top left and be wrong for ``Tq < Tk``). Otherwise (the default
    on the CPU): ``reference.softmax_attention.naive``.
    """
    if use_sdpa is None:
        use_sdpa = q.device.type == "cuda"
    if use_sdpa:
        import torch.nn.functional as F

        Tq, Tk = q.shape[2], k.shape[2]
        if not causal:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        if Tq == Tk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        from torch.nn.attention.bias import causal_lower_right

        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(Tq, Tk), scale=scale)
    from reference import softmax_attention as ref

    return ref.naive(q, k, v, causal=causal, scale=scale)
