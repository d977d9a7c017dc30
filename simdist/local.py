r"""Each rank's local work on the *split* path, and the small state algebra every path shares.

A rank's chunk ``r`` (``C`` tokens, local index ``j = 1..C``, ``Λ = diag(λ^j)``) contributes three
pieces to every linear-attention scheme (``docs/sequence_parallel.md``):

* ``intra(q, k, v, rates, scale)`` — causal Lightning attention *inside* the chunk with a zero
  initial state, ``[(Q Kᵀ) ⊙ D] V``. The expensive part, and the part that overlaps communication.
  On the CPU it is ``reference.lightning.chunked`` (float64 in the tests); on CUDA a vectorised
  torch chunked form. Differentiable.
* ``chunk_state(k, v, f)`` — the chunk's own decayed state ``M = (λ^C Λ⁻¹ K)ᵀ V`` (row ``j`` of
  ``K`` scaled by ``λ^(C-j)``): what the chunk adds to every later chunk's state.
* ``inter(q, P, f, scale)`` — what the earlier chunks add to this chunk's output through the
  incoming state ``P``: ``scale · Λ Q P``.

With them, the chunk's full output is ``intra + inter`` and its outgoing state is
``advance(P, M) = λ^C P + M`` — exactly ``reference.lightning.chunked`` on the chunk with
``initial_state = P`` (``local_forward``), but split so that ``intra`` and ``M`` can be computed
while ``P`` is still travelling. The backward pieces are the transposes, written out so the
schemes' hand-written backward passes read like the paper: ``grad_inter_q`` (``scale · Λ dO Pᵀ``),
``grad_incoming`` (``scale · (ΛQ)ᵀ dO``, the gradient w.r.t. ``P``: LASP-2's ``dM_r``) and
``grad_chunk_state`` (``dK, dV`` from the gradient w.r.t. ``M``).

This is the path of the paper and of the CPU ranks. On CUDA with fp32/fp16/bf16 inputs the schemes
take the *kernel* path instead, ``simdist.kernel_path``, which computes the same quantities (under
the same names) around one call of ``kernels.lightning.attention``.

**One vocabulary for decay.** Decay rates travel as ``rates``: a host tuple of ``H`` floats, or
``None`` when there is no decay (every ``λ = 1``). Every tensor made from them is formed in float64
on the host, cast once and cached per device and dtype: ``block_decay`` (``λ^C``) and ``factors``
(``λ^j`` and ``λ^(C-j)`` for ``j = 1..C``). So no path has a host–device synchronisation for its decay.
States are kept in float32 when the inputs are half precision (float64 stays float64).
"""

from __future__ import annotations

import functools

import torch

from simdist import accounting

__all__ = [
    "state_dtype",
    "rates",
    "block_decay",
    "Factors",
    "factors",
    "advance",
    "gram",
    "gram_operands",
    "intra",
    "intra_forward",
    "intra_backward",
    "inter",
    "chunk_state",
    "grad_inter_q",
    "grad_incoming",
    "grad_chunk_state",
    "local_forward",
    "softmax",
]


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """States and their gradients: float32 for 16-bit inputs, the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def rates(decay) -> tuple | None:
    """The decay rates as a host tuple of floats, or ``None`` when there is no decay (every ``λ = 1``).

    ``decay``: ``None``, or ``[H]`` rates (the float64 CPU tensor ``simdist._layout.handshake``
    returns, any tensor, a sequence or a NumPy array).
    """
    if decay is None:
        return None
    if isinstance(decay, torch.Tensor):
        decay = decay.detach().to("cpu", torch.float64)
    values = tuple(float(x) for x in torch.as_tensor(decay, dtype=torch.float64).reshape(-1).tolist())
    return None if all(x == 1.0 for x in values) else values


@functools.lru_cache(maxsize=256)
def _block_decay(rates_: tuple, C: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.tensor([lam**C for lam in rates_], dtype=torch.float64)[:, None, None].to(device, dtype)


def block_decay(rates_, C: int, dtype: torch.dtype, device) -> torch.Tensor | None:
    """``λ^C``: a cached ``[H, 1, 1]`` tensor of ``dtype`` on ``device`` (``None`` without decay)."""
    if rates_ is None:
        return None
    if not isinstance(rates_, tuple):
        raise TypeError(f"rates must be a tuple of floats (simdist.local.rates) or None, got {type(rates_).__name__}")
    return _block_decay(rates_, int(C), dtype, str(device))


class Factors:
    """The decay factors of one chunk of ``C`` tokens, ``[H, C, 1]`` each (``None``: no decay).

    ``q``: ``λ^j`` (``Λ``, weighs rows that read the incoming state); ``k``: ``λ^(C-j)`` (weighs rows
    that write the outgoing state); ``block``: ``λ^C`` (``[H, 1, 1]``, carries a state over the chunk).
    """

    def __init__(self, rates_, C: int, dtype: torch.dtype, device):
        self.C = C
        if rates_ is None:
            self.q = self.k = self.block = None
            return
        log_lam = torch.tensor(rates_, dtype=torch.float64).log()[:, None]
        j = torch.arange(1, C + 1, dtype=torch.float64)
        # exponents ≥ 0 only: strong decays underflow to 0, never overflow
        self.q = torch.exp(log_lam * j)[:, :, None].to(device, dtype)
        self.k = torch.exp(log_lam * (C - j))[:, :, None].to(device, dtype)
        self.block = block_decay(rates_, C, dtype, device)


@functools.lru_cache(maxsize=128)
def _factors(rates_, C: int, dtype: torch.dtype, device: str) -> Factors:
    return Factors(rates_, C, dtype, device)


def factors(rates_, C: int, dtype: torch.dtype, device) -> Factors:
    """The cached ``Factors`` of a chunk of ``C`` tokens for ``rates_`` in ``dtype`` on ``device``."""
    return _factors(rates_, int(C), dtype, str(device))


@functools.lru_cache(maxsize=None)
def _fp32_out_bmm(device: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.bmm(..., out_dtype=torch.float32)`` works here for ``dtype`` operands (CUDA, torch ≥ 2.8)."""
    try:  # the layouts ``gram`` passes: a transposed first operand, a contiguous second
        a = torch.zeros(2, 64, 16, device=device, dtype=dtype)
        return torch.bmm(a.transpose(1, 2), a, out_dtype=torch.float32).dtype == torch.float32
    except Exception:
        return False


#: Independent products ``gram`` aims for (about two per multiprocessor of an H100/H200).
GRAM_PRODUCTS = 256


def gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ_t a_tᵀ b_t`` (``Aᵀ B`` per batch and head): ``a [B, H, L, K]``, ``b [B, H, L, V]`` →
    ``[B, H, K, V]`` in ``state_dtype`` (16-bit operands multiplied on tensor cores, accumulated and
    returned in fp32; fp32 and fp64 stay as they are).

    A reduction over thousands of tokens into a few ``K × V`` outputs would keep only ``B·H`` thread
    blocks busy, so ``L`` is cut into ``n`` slices (a power of two, ``B·H·n ≈ GRAM_PRODUCTS``, slices of
    at least 64 tokens): ``B·H·n`` products in one ``bmm``, then an fp32 sum over ``n``.
    """
    B, H, L, K = a.shape
    V = b.shape[-1]
    n = 1
    while 2 * n * B * H <= GRAM_PRODUCTS and L % (2 * n) == 0 and L // (2 * n) >= 64:
        n *= 2
    # views for whole chunks and weighted copies (B·H stays mergeable); a partial slice of a raw input
    # is copied here, which ``horizon`` allows only when it is at most half the chunk
    a3 = a.reshape(B * H * n, L // n, K).transpose(1, 2)
    b3 = b.reshape(B * H * n, L // n, V)
    if a.dtype in (torch.float16, torch.bfloat16):
        if a.device.type == "cuda" and _fp32_out_bmm(str(a.device), a.dtype):
            out = torch.bmm(a3, b3, out_dtype=torch.float32)
        else:
            out = torch.bmm(a3.float(), b3.float())
    else:
        out = torch.bmm(a3, b3)
    out = out.view(B, H, n, K, V)
    return out[:, :, 0] if n == 1 else out.sum(dim=2)


def gram_operands(device, dtype: torch.dtype) -> str:
    """How ``gram`` multiplies ``dtype`` operands on ``device``: ``"fp32-out bmm"`` or ``"bmm"``."""
    device = torch.device(device)
    fp32_out = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and _fp32_out_bmm(str(device), dtype)
    return "fp32-out bmm" if fp32_out else "bmm"


def _scaled(x: torch.Tensor, f: torch.Tensor | None) -> torch.Tensor:
    return x if f is None else x * f


def advance(P: torch.Tensor, M: torch.Tensor, rates_, C: int) -> torch.Tensor:
    """``λ^C P + M``: a state carried over a chunk of ``C`` tokens whose own state is ``M`` (in ``P``'s dtype)."""
    decay = block_decay(rates_, C, P.dtype, P.device)
    return P + M if decay is None else torch.addcmul(M, decay, P)


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


def grad_incoming(q: torch.Tensor, do: torch.Tensor, f: Factors, scale: float) -> torch.Tensor:
    """``∂(inter)/∂P`` applied to ``dO``: ``scale · (Λ Q)ᵀ dO`` — LASP-2's ``dM_r``. ``[B, H, K, V]``."""
    sd = state_dtype(q.dtype)
    return _scaled(q.to(sd), f.q).transpose(-1, -2) @ do.to(sd) * scale


def grad_chunk_state(k: torch.Tensor, v: torch.Tensor, G: torch.Tensor, f: Factors):
    """``∂M/∂K, ∂M/∂V`` applied to ``G`` (the gradient w.r.t. ``M``): ``(λ^(C-j) V) Gᵀ`` and ``(λ^(C-j) K) G``."""
    dk = _scaled(v.to(G.dtype) @ G.transpose(-1, -2), f.k)
    dv = _scaled(k.to(G.dtype) @ G, f.k)
    return dk.to(k.dtype), dv.to(v.dtype)


# --------------------------------------------------------------------------------------------
# The intra-chunk attention: vectorised torch on CUDA, the reference on the CPU
# --------------------------------------------------------------------------------------------


def _torch_chunked(q, k, v, rates_, scale: float, block: int = 128) -> torch.Tensor:
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
        f = factors(rates_, block, sd, q.device)
        qb = q[:, :, : n * block].reshape(B, H, n, block, K).to(sd) * scale
        kb = k[:, :, : n * block].reshape(B, H, n, block, K).to(sd)
        vb = v[:, :, : n * block].reshape(B, H, n, block, V).to(sd)
        rows = torch.arange(block, device=q.device)
        dist = (rows[:, None] - rows[None, :]).clamp(min=0).to(torch.float64)
        if rates_ is None:
            mask = (rows[:, None] >= rows[None, :]).to(sd)[None, None]
        else:
            log_lam = torch.tensor(rates_, dtype=torch.float64, device=q.device).log()
            mask = torch.where(rows[:, None] >= rows[None, :], torch.exp(log_lam[:, None, None] * dist), 0.0).to(sd)
            mask = mask[None, :, None]  # [1, H, 1, c, c]
        causal = rows[:, None] >= rows[None, :]  # selected with where: 0 · NaN would let a later token in
        o = torch.where(causal, (qb @ kb.transpose(-1, -2)) * mask, 0.0) @ vb  # [B, H, n, c, V]
        kdec = kb if f.k is None else kb * f.k[None, :, None]
        M = kdec.transpose(-1, -2) @ vb  # [B, H, n, K, V]
        prefix = []
        for i in range(n):  # exclusive scan: P_i = λ^c P_{i-1} + M_{i-1}
            prefix.append(state)
            state = advance(state, M[:, :, i], rates_, block)
        P = torch.stack(prefix, dim=2)
        qdec = qb if f.q is None else qb * f.q[None, :, None]
        o = o + qdec @ P
        outs.append(o.reshape(B, H, n * block, V).to(q.dtype))
    if n * block < T:
        decay = torch.tensor(rates_ or (1.0,) * H, dtype=torch.float64, device=q.device)
        tail, _ = ref.chunked(
            q[:, :, n * block :].to(sd), k[:, :, n * block :].to(sd), v[:, :, n * block :].to(sd),
            decay.to(sd), scale=scale, chunk_size=block, initial_state=state,
        )
        outs.append(tail.to(q.dtype))
    return torch.cat(outs, dim=2)


def intra(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rates_, scale: float) -> torch.Tensor:
    """Causal Lightning attention of the chunk alone (zero initial state), differentiable in q, k, v.

    On CUDA the vectorised torch form (``_torch_chunked``), elsewhere ``reference.lightning.chunked``.
    (The kernel path runs ``kernels.lightning`` instead: ``simdist.kernel_path``.)
    """
    if q.device.type == "cuda":
        return _torch_chunked(q, k, v, rates_, scale)
    from reference import lightning as ref

    decay = torch.tensor(rates_ or (1.0,) * q.shape[1], dtype=q.dtype)
    o, _ = ref.chunked(q, k, v, decay, scale=scale, chunk_size=64)
    return o


def intra_forward(q, k, v, rates_, scale: float):
    """``intra`` under autograd inside a scheme's hand-written forward: ``(o_intra, graph)``, the output
    detached and the graph that ``intra_backward`` differentiates later (``kernel_path.forward``'s twin)."""
    with accounting.span("compute", "intra"), torch.enable_grad():
        qd, kd, vd = (x.detach().requires_grad_() for x in (q, k, v))
        o = intra(qd, kd, vd, rates_, scale)
    return o.detach(), (qd, kd, vd, o)


def intra_backward(graph, do: torch.Tensor, P: torch.Tensor, f: Factors, scale: float):
    """``(dq, dk, dv)`` of ``intra`` (by autograd of ``intra_forward``'s graph) plus ``inter``'s
    ``dq``, ``scale · Λ dO Pᵀ``; the state terms of ``dk, dv`` are the scheme's (``grad_chunk_state``)."""
    qd, kd, vd, o = graph
    with accounting.span("compute", "intra backward"):
        dq, dk, dv = torch.autograd.grad(o, (qd, kd, vd), do)
        return dq + grad_inter_q(do, P, f, scale), dk, dv


def local_forward(q, k, v, decay, scale: float = 1.0, initial_state=None):
    """``(o, final_state)`` of causal Lightning attention on one chunk with ``initial_state``.

    The composition the schemes use: ``o = intra + scale · Λ Q P``, ``final = λ^C P + M``.
    Equal to ``reference.lightning.chunked(q, k, v, decay, scale=scale, initial_state=P)``.
    """
    rates_ = rates(decay)
    f = factors(rates_, q.shape[2], state_dtype(q.dtype), q.device)
    o = intra(q, k, v, rates_, scale)
    M = chunk_state(k, v, f)
    if initial_state is None:
        return o, M
    P = initial_state.to(M.dtype)
    return o + inter(q, P, f, scale), advance(P, M, rates_, q.shape[2])


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
