r"""The kernel path of the linear schemes: one call of ``kernels.lightning.attention`` per chunk.

On CUDA with fp32/fp16/bf16 inputs LASP-1 and LASP-2 take this path instead of the split path of
``simdist.local`` (``applies``; ``USE_KERNEL`` overrides). It computes the same quantities, under the
same names, but lets one kernel call do everything that touches the whole chunk:

* ``attention(q, k, v, rates, scale, initial_state=P, output_final_state=True)`` gives
  ``o = intra + scale·Λ Q P`` and the final state ``λ^C P + M`` in one pass on tensor cores with an
  fp32 state; its backward, fed ``dO`` and the gradient of the final state, gives ``dQ, dK, dV``
  including the ``M`` path. Nothing of size ``C`` is cast to float32. ``forward`` and ``backward``
  wrap it for the schemes' hand-written autograd functions.
* ``chunk_state(k, v, rates)`` (``M``) and ``grad_incoming(q, do, rates, scale)``
  (``scale·(ΛQ)ᵀ dO``, LASP-2's ``dM_r``) are the only other products over the chunk: the states a
  rank must *send* before its kernel runs. One weighting pass (fp32 weights, one rounding to the input
  dtype, as the kernel does) and one batched product with 16-bit operands accumulated into an fp32
  result. Tokens whose decay weight is below ``2^-126`` — zero in the kernel's own fp32 arithmetic —
  are skipped (``horizon``): with strong decays and long chunks that is most of the chunk. The
  product is cut into a few hundred slices so that it fills the GPU (``simdist.local.gram``).
* Decay rates travel as a host tuple (``simdist.local.rates``) and every device tensor made from them
  is cached (``simdist.local.factors``, ``block_decay``; the kernel caches its own copy of a host
  decay), so the hot path has no host–device synchronisation. ``simdist.local.advance`` carries a
  state over a chunk on both paths.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch

from simdist import accounting
from simdist.local import factors, gram, gram_operands

__all__ = [
    "USE_KERNEL",
    "applies",
    "implementation",
    "kernel",
    "attention",
    "forward",
    "backward",
    "chunk_state",
    "grad_incoming",
    "horizon",
]

#: Which path the linear schemes take: ``None`` (default) — the kernel path on CUDA for fp32, fp16
#: and bf16 inputs when ``kernels.lightning`` imports; ``True`` — the kernel path wherever the kernel
#: runs (on the CPU that needs ``TRITON_INTERPRET=1``: how the tests check it); ``False`` — never.
#: Read when a scheme's forward starts; its backward follows the same path.
USE_KERNEL = None

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Decay weights below ``2^-HORIZON_LOG2`` are dropped from ``chunk_state``/``grad_incoming`` (``horizon``).
HORIZON_LOG2 = 126


@functools.lru_cache(maxsize=None)
def kernel():
    """``kernels.lightning.attention`` if it can be imported and called as documented, else ``None``."""
    try:
        from kernels import lightning as kl

        fn = kl.attention
        inspect.signature(fn).bind(None, None, None, None, scale=1.0)
        return fn
    except Exception:
        return None


def _runs_kernel(device: torch.device, dtype: torch.dtype) -> bool:
    if USE_KERNEL is False or dtype not in _KERNEL_DTYPES or (USE_KERNEL is None and device.type != "cuda"):
        return False
    return kernel() is not None


def applies(q: torch.Tensor) -> bool:
    """Whether the linear schemes run ``q``'s chunk on the kernel path (see ``USE_KERNEL``)."""
    return _runs_kernel(q.device, q.dtype)


def implementation(device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """Which code does a linear scheme's local work on ``device`` for ``dtype`` (recorded by the benchmark)."""
    device = torch.device(device)
    dtype = dtype or torch.bfloat16
    if _runs_kernel(device, dtype):
        return (f"kernels.lightning.attention with initial/final state (one pass) + torch "
                f"{gram_operands(device, dtype)} for the sent states")  # fmt: skip
    if device.type == "cuda":
        return "simdist.local torch chunked (fallback), split intra + inter"
    return "reference.lightning.chunked, split intra + inter"


def attention(q, k, v, rates_, scale: float, *, initial_state=None, output_final_state: bool = False):
    """``kernels.lightning.attention`` on the chunk, with the decay given on the host.

    ``initial_state``: the incoming state ``P`` (fp32 ``[B, H, K, V]``; no gradient is taken for it
    here), or ``None`` for zeros. Returns ``o`` or ``(o, final_state)`` like the kernel.
    """
    fn = kernel()
    if fn is None:
        raise RuntimeError("kernels.lightning.attention cannot be imported")
    decay = rates_ if rates_ is not None else (1.0,) * q.shape[1]
    return fn(q, k, v, decay, scale=scale, initial_state=initial_state, output_final_state=output_final_state)


def forward(q, k, v, rates_, scale: float, initial_state):
    """The kernel path's local work inside a scheme's forward: ``(o, graph)``.

    Runs ``attention`` with the incoming state and the final state as outputs, under autograd, and
    returns the detached output with the graph that ``backward`` differentiates later.
    """
    with accounting.span("compute", "kernel"), torch.enable_grad():
        qd, kd, vd = (x.detach().requires_grad_() for x in (q, k, v))
        o, final = attention(qd, kd, vd, rates_, scale, initial_state=initial_state, output_final_state=True)
    return o.detach(), (qd, kd, vd, o, final)


def backward(graph, do, d_final):
    """``(dq, dk, dv)`` of ``forward``'s graph, given ``dO`` and the gradient of the final
    state (``None`` where no later chunk reads it)."""
    qd, kd, vd, o, final = graph
    with accounting.span("compute", "kernel backward"):
        outputs, grads = ((o, final), (do, d_final)) if d_final is not None else ((o,), (do,))
        return torch.autograd.grad(outputs, (qd, kd, vd), grads)


def horizon(rates_, C: int) -> int:
    """How many tokens of a chunk ``chunk_state`` and ``grad_incoming`` read: all that can matter, rounded up.

    ``chunk_state`` weighs token ``j`` by ``λ^(C-j)`` and ``grad_incoming`` by ``λ^j``. Beyond
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


def _weigh(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x ⊙ w`` (row weights, fp32) computed in fp32 and rounded once to ``x``'s dtype, in one pass."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return torch.mul(x, w, out=out)


def chunk_state(k: torch.Tensor, v: torch.Tensor, rates_) -> torch.Tensor:
    """``M = Σ_j λ^(C-j) k_jᵀ v_j``: the chunk's own state (zero initial state), fp32 ``[B, H, K, V]``.

    What a rank sends before its kernel runs (``simdist.local.chunk_state`` on the split path).
    """
    C = k.shape[2]
    L = horizon(rates_, C)
    ks, vs = k[:, :, C - L :], v[:, :, C - L :]
    if rates_ is not None:
        # the last L tokens' weights λ^(L-1) … λ^0 are those of a chunk of L tokens
        ks = _weigh(ks, factors(rates_, L, torch.float32, k.device).k)
    return gram(ks, vs)


def grad_incoming(q: torch.Tensor, do: torch.Tensor, rates_, scale: float) -> torch.Tensor:
    """``scale · Σ_j λ^j q_jᵀ dO_j``: the gradient w.r.t. the incoming state of ``o = … + scale·ΛQP``.

    LASP-2's ``dM_r``, fp32 ``[B, H, K, V]`` (``simdist.local.grad_incoming`` on the split path).
    """
    L = horizon(rates_, q.shape[2])
    qs, ds = q[:, :, :L], do[:, :, :L]
    if rates_ is None:
        out = gram(qs, ds)
        return out if scale == 1.0 else out * scale
    return gram(_weigh(qs, factors(rates_, L, torch.float32, q.device).q * float(scale)), ds)
