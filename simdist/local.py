r"""Each rank's local work, in one place: which implementation runs, and the small state algebra.

A rank's chunk ``r`` (``C`` tokens, local index ``j = 1..C``, ``Λ = diag(λ^j)``) contributes three
pieces to every linear-attention scheme (``docs/sequence_parallel.md``):

* ``intra(q, k, v)`` — causal Lightning attention *inside* the chunk with a zero initial state,
  ``[(Q Kᵀ) ⊙ D] V``. The expensive part, and the part that overlaps communication. On the CPU it
  is ``reference.lightning.chunked`` (float64 in the tests); on CUDA ``kernels.lightning.attention``
  where ``kernel_path`` holds, else a vectorised torch chunked form. Differentiable.
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

**Two paths.** The pieces above are the *split* path: what the CPU ranks run (``reference``, float64
in the tests), and CUDA when the kernel cannot be used (float64 inputs, or no ``kernels``). On CUDA
with fp32/fp16/bf16 inputs the schemes take the *kernel* path instead (``kernel_path``), which
lets one call of ``kernels.lightning.attention`` do everything that touches the whole chunk:

* ``attention(q, k, v, rates, scale, initial_state=P, output_final_state=True)`` gives
  ``o = intra + scale·Λ Q P`` and the final state ``λ^C P + M`` in one pass on tensor cores with an
  fp32 state; its backward, fed ``dO`` and the gradient of the final state, gives ``dQ, dK, dV``
  including the ``M`` path. Nothing of size ``C`` is cast to float32.
* ``state(k, v, rates)`` (``M``) and ``state_grad(q, do, rates, scale)`` (``scale·(ΛQ)ᵀ dO``, LASP-2's
  ``dM_r``) are the only other products over the chunk: the states a rank must *send* before its
  kernel runs. One weighting pass (fp32 weights, one rounding to the input dtype, as the kernel
  does) and one batched product with 16-bit operands accumulated into an fp32 result.
  Tokens whose decay weight is below ``2^-126`` — zero in the kernel's own fp32 arithmetic — are
  skipped (``horizon``): with strong decays and long chunks that is most of the chunk. The product
  is cut into a few hundred slices so that it fills the GPU (``gram``).
* Decay rates travel as a host tuple (``rates``) and every device tensor made from them is cached
  (``block_decay``, the weights; the kernel caches its own copy of a host decay), so the hot path
  has no host–device synchronisation.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch

from simdist import accounting

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
    "USE_KERNEL",
    "kernel_path",
    "rates",
    "attention",
    "kernel_forward",
    "kernel_backward",
    "horizon",
    "gram",
    "state",
    "state_grad",
    "block_decay",
    "advance",
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


def implementation(device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """Which code does a linear scheme's local work on ``device`` for ``dtype`` (recorded by the benchmark)."""
    device = torch.device(device)
    dtype = dtype or torch.bfloat16
    if _uses_kernel(device, dtype):
        bmm = "fp32-out bmm" if device.type == "cuda" and dtype != torch.float32 and _fp32_out_bmm(str(device), dtype) else "bmm"
        return f"kernels.lightning.attention with initial/final state (one pass) + torch {bmm} for the sent states"
    if device.type == "cuda":
        return "simdist.local torch chunked (fallback), split intra + inter"
    return "reference.lightning.chunked, split intra + inter"


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

    ``use_kernel``: ``None`` (default) uses ``kernels.lightning`` where ``kernel_path(q)`` says so;
    ``True`` forces it (on the CPU that needs ``TRITON_INTERPRET=1``); ``False`` never uses it.
    ``log_lam`` on the CPU keeps the kernel call free of host–device synchronisation (a CUDA tensor
    is checked by the kernel with one synchronisation).
    """
    H = q.shape[1]
    if use_kernel is None:
        use_kernel = kernel_path(q)
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
# The kernel path: the state goes through kernels.lightning, decay rates stay on the host
# --------------------------------------------------------------------------------------------

#: Which path the linear schemes take: ``None`` (default) — the kernel path on CUDA for fp32, fp16
#: and bf16 inputs when ``kernels.lightning`` imports; ``True`` — the kernel path wherever the kernel
#: runs (on the CPU that needs ``TRITON_INTERPRET=1``: how the tests check it); ``False`` — never.
#: Read when a scheme's forward starts; its backward follows the same path.
USE_KERNEL = None

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Decay weights below ``2^-HORIZON_LOG2`` are dropped from ``state``/``state_grad`` (``horizon``).
HORIZON_LOG2 = 126


def _uses_kernel(device: torch.device, dtype: torch.dtype) -> bool:
    if USE_KERNEL is False or dtype not in _KERNEL_DTYPES or (USE_KERNEL is None and device.type != "cuda"):
        return False
    return _kernel() is not None


def kernel_path(q: torch.Tensor) -> bool:
    """Whether the linear schemes run ``q``'s chunk on the kernel path (see ``USE_KERNEL``)."""
    return _uses_kernel(q.device, q.dtype)


def rates(lam) -> tuple | None:
    """The decay rates as a host tuple of floats, or ``None`` when there is no decay (every ``λ = 1``).

    ``lam``: ``None``, or the float64 CPU tensor ``[H]`` that ``simdist._layout.handshake`` returns.
    """
    if lam is None:
        return None
    values = tuple(float(x) for x in lam.tolist())
    return None if all(x == 1.0 for x in values) else values


def attention(q, k, v, rates_, scale: float, *, initial_state=None, output_final_state: bool = False):
    """``kernels.lightning.attention`` on the chunk, with the decay given on the host.

    ``initial_state``: the incoming state ``P`` (fp32 ``[B, H, K, V]``; no gradient is taken for it
    here), or ``None`` for zeros. Returns ``o`` or ``(o, final_state)`` like the kernel.
    """
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("kernels.lightning.attention cannot be imported")
    H = q.shape[1]
    decay = rates_ if rates_ is not None else (1.0,) * H
    return kernel(q, k, v, decay, scale=scale, initial_state=initial_state, output_final_state=output_final_state)


def kernel_forward(q, k, v, rates_, scale: float, initial_state):
    """The kernel path's local work inside a scheme's forward: ``(o, graph)``.

    Runs ``attention`` with the incoming state and the final state as outputs, under autograd, and
    returns the detached output with the graph that ``kernel_backward`` differentiates later.
    """
    with accounting.span("compute", "kernel"), torch.enable_grad():
        qd, kd, vd = (x.detach().requires_grad_() for x in (q, k, v))
        o, final = attention(qd, kd, vd, rates_, scale, initial_state=initial_state, output_final_state=True)
    return o.detach(), (qd, kd, vd, o, final)


def kernel_backward(graph, do, d_final):
    """``(dq, dk, dv)`` of ``kernel_forward``'s graph, given ``dO`` and the gradient of the final
    state (``None`` where no later chunk reads it)."""
    qd, kd, vd, o, final = graph
    with accounting.span("compute", "kernel backward"):
        outputs, grads = ((o, final), (do, d_final)) if d_final is not None else ((o,), (do,))
        return torch.autograd.grad(outputs, (qd, kd, vd), grads)


def horizon(rates_, C: int) -> int:
    """How many tokens of a chunk ``state`` and ``state_grad`` read: all that can matter, rounded up.

    ``state`` weighs token ``j`` by ``λ^(C-j)`` and ``state_grad`` by ``λ^j``. Beyond
    ``⌈126 / -log2 λ_max⌉`` tokens from the chunk's end (resp. start) every weight is below ``2^-126``,
    fp32's smallest normal number, which the kernel's own fp32 ``exp2`` flushes to zero: those tokens
    are skipped. The count is rounded up to a multiple of 64 (of 1024 from 1024 on) so the batched
    product splits evenly, and it is the whole chunk when that would be more than half of it, without
    decay, or when a head has ``λ = 1``.
    """
    if rates_ is None or max(rates_) >= 1.0:
        return C
    needed = math.ceil(HORIZON_LOG2 / -math.log2(max(rates_)))
    quantum = 1024 if needed >= 1024 else 64
    L = -(-needed // quantum) * quantum
    return C if 2 * L > C else L


@functools.lru_cache(maxsize=128)
def _weights(rates_: tuple, L: int, reverse: bool, scale: float, device: str) -> torch.Tensor:
    """fp32 ``[H, L, 1]`` on ``device``: ``λ^(L-1) … λ^0`` (``state``'s last ``L`` tokens) or
    ``scale·λ^1 … scale·λ^L`` (``state_grad``'s first ``L``), formed in float64 on the host."""
    lam = torch.tensor(rates_, dtype=torch.float64)[:, None]
    e = torch.arange(1, L + 1, dtype=torch.float64) if reverse else torch.arange(L - 1, -1, -1, dtype=torch.float64)
    w = torch.exp(e * torch.log(lam)) * scale  # e ≥ 0: strong decays underflow to 0, never overflow
    return w.float()[:, :, None].to(device)


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


def _weigh(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x ⊙ w`` (row weights, fp32) computed in fp32 and rounded once to ``x``'s dtype, in one pass."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return torch.mul(x, w, out=out)


def state(k: torch.Tensor, v: torch.Tensor, rates_) -> torch.Tensor:
    """``M = Σ_j λ^(C-j) k_jᵀ v_j``: the chunk's own state (zero initial state), fp32 ``[B, H, K, V]``.

    The kernel path's counterpart of ``chunk_state``; what a rank sends before its kernel runs.
    """
    C = k.shape[2]
    L = horizon(rates_, C)
    ks, vs = k[:, :, C - L :], v[:, :, C - L :]
    if rates_ is not None:
        ks = _weigh(ks, _weights(rates_, L, False, 1.0, str(k.device)))
    return gram(ks, vs)


def state_grad(q: torch.Tensor, do: torch.Tensor, rates_, scale: float) -> torch.Tensor:
    """``scale · Σ_j λ^j q_jᵀ dO_j``: the gradient w.r.t. the incoming state of ``o = … + scale·ΛQP``.

    The kernel path's counterpart of ``grad_state_in`` (LASP-2's ``dM_r``), fp32 ``[B, H, K, V]``.
    """
    L = horizon(rates_, q.shape[2])
    qs, ds = q[:, :, :L], do[:, :, :L]
    if rates_ is None:
        out = gram(qs, ds)
        return out if scale == 1.0 else out * scale
    return gram(_weigh(qs, _weights(rates_, L, True, float(scale), str(q.device))), ds)


@functools.lru_cache(maxsize=128)
def _block_decay(rates_: tuple, C: int, device: str) -> torch.Tensor:
    return torch.tensor([lam**C for lam in rates_], dtype=torch.float32)[:, None, None].to(device)


def block_decay(rates_, C: int, device) -> torch.Tensor | None:
    """``λ^C`` as a cached fp32 ``[H, 1, 1]`` tensor on ``device`` (``None`` without decay)."""
    return None if rates_ is None else _block_decay(rates_, int(C), str(device))


def advance(P: torch.Tensor, M: torch.Tensor, rates_, C: int) -> torch.Tensor:
    """``λ^C P + M``: a state carried over a chunk of ``C`` tokens whose own state is ``M``."""
    decay = block_decay(rates_, C, P.device)
    return P + M if decay is None else torch.addcmul(M, decay, P)


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
