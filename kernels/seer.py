r"""SeerAttention's training-side kernels in Triton: the gate's ground truth, and block pooling.

``ground_truth(q, k, *, block=64, scale=None)`` computes the same function as
``reference.seer.ground_truth`` (``docs/seer.md``; arXiv 2410.13276): with the causal attention
probabilities ``P = softmax(scale · q kᵀ)``, the 2-D max-pool of ``P`` over (query block ``i``,
key block ``j``), each block-row renormalised to sum 1, zeros above the diagonal —
``[B, H, nq, nq]`` fp32, ``nq = ceil(T / block)``. ``P`` (``T × T``) is never materialised.

``pool(x, *, block=64, kind="avg")`` equals ``reference.seer.pool``; ``pool_features(x, *, block,
kinds=("max", "min", "avg"))`` pools several kinds in one read of ``x`` and writes them side by side
(``[B, H, nq, len(kinds)·D]``, the gate's key features in that order).

Design of the ground truth
--------------------------
``max_{t ∈ i, s ∈ j} P[t, s] = max_{t ∈ i} exp(r_tj − lse_t)`` where ``r_tj = max_{s ∈ j} scale·q_t·k_s``
is the row's raw maximum score over key block ``j`` and ``lse_t`` the row's final log-sum-exp. So
one program per (query block, head) walks its causal key blocks twice, with keys only (no
values):

1. the flash forward's running max and sum, giving every row's ``lse`` (base 2 inside);
2. the scores again, each block reduced at once to ``g_ij = 2^(max_t (max_s s_ts − lse_t))`` — two
   maxima and a subtraction per element, no exponential.

The ``g_ij`` of the block-row are collected in registers (a vector of the padded row length), so
the program ends with the whole row: it divides by the row's sum and stores the row once, zeros
above the diagonal included. Nothing of size ``T × nq`` ever reaches memory. The two walks cost
two ``q kᵀ`` products per key block — the same matrix FLOPs as a dense flash forward (``q kᵀ`` and
``p v``), with half its exponentials.

The query tile equals the block (a program owns one block-row), and so does the key tile; rows
past the end of the sequence get ``lse = +inf`` and drop out of every maximum. GQA as in
``kernels.block_sparse``: ``k`` may have ``Hkv`` heads dividing ``H``, read in place. Inputs fp32,
fp16 or bf16 (products in the input dtype, fp32 accumulation; fp32 products three-pass tf32 on the
GPU); bf16 runs in fp32 under the interpreter. Inference only (no backward; inputs that require a
gradient while autograd is on are refused — the ground truth is a training *target*).

Pooling
-------
One program per (block, head) loads the block's ``[block, D]`` tile once and keeps what the kinds
ask for: the mean over the block's real tokens (the last block's too), the maximum, the minimum.
The gate's key features ``[max, min, avg]`` then cost one read of ``k`` instead of three, and the
concatenation none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels import _triton
from kernels._triton import INTERPRETER, check_device, check_dtype, next_power_of_2
from kernels.block_sparse import BLOCKS, check_block, check_inputs, refuse_autograd

__all__ = ["ground_truth", "pool", "pool_features", "Config", "DEFAULT_CONFIG", "config_for", "POOL_KINDS"]

POOL_KINDS = ("avg", "max", "min")

#: Shared memory one program may plan for (an H100 block may have up to 227 KiB).
_SMEM_BUDGET = 200 * 1024
_LOG2E = 1.0 / math.log(2.0)



@dataclass(frozen=True)
class Config:
    """Launch settings of the ground-truth kernel (one block-row per program; results do not depend
    on them beyond rounding).

    Attributes:
        num_warps: warps per program.
        num_stages: software-pipelining depth of the key-block loops.
    """

    num_warps: int = 4
    num_stages: int = 2


#: The setting for blocks of 64.
DEFAULT_CONFIG = Config()

_BY_BLOCK = {16: Config(num_warps=2), 32: Config(num_warps=4), 64: DEFAULT_CONFIG, 128: Config(num_warps=8)}


def config_for(block: int) -> Config:
    """The default for a block size (what ``config=None`` uses): more warps for larger tiles."""
    return _BY_BLOCK[check_block(block)]


@triton.jit
def _ground_truth_kernel(
    Q, K, G,
    sqb, sqh, sqt,
    skb, skh, skt,
    H, T, NQB, GROUP, qk_scale,
    BLOCK: tl.constexpr, HEAD_K: tl.constexpr, BLOCK_K: tl.constexpr, ROW: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    qb = tl.num_programs(1) - 1 - tl.program_id(1)  # longest rows first
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP

    offs_m = qb * BLOCK + tl.arange(0, BLOCK)
    offs_n = tl.arange(0, BLOCK)
    offs_k = tl.arange(0, BLOCK_K)
    kmask = offs_k < HEAD_K
    row_in = offs_m < T
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m.to(tl.int64)[:, None] * sqt + offs_k[None, :],
                mask=row_in[:, None] & kmask[None, :], other=0.0)  # fmt: skip
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + offs_k[:, None]

    # 1. every row's log-sum-exp (base 2): blocks left of the diagonal unmasked, then the diagonal
    m_i = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(0, qb):
        cols = (j * BLOCK + offs_n).to(tl.int64)
        kt = tl.load(k_base + cols[None, :] * skt, mask=kmask[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
        m_i = m_new
    dcols = qb * BLOCK + offs_n
    visible = (dcols[None, :] <= offs_m[:, None]) & (dcols < T)[None, :]
    kt = tl.load(k_base + dcols.to(tl.int64)[None, :] * skt, mask=kmask[:, None] & (dcols < T)[None, :], other=0.0)
    s_diag = tl.where(visible, tl.dot(q, kt, input_precision=PRECISION) * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s_diag, 1))
    l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s_diag - m_new[:, None]), 1)
    m_i = m_new
    lse = tl.where(row_in, m_i + tl.log2(l_i), float("inf"))  # padded rows drop out of the maxima

    # 2. per key block, the largest probability of the block: 2^(max_t (max_s s_ts − lse_t))
    slots = tl.arange(0, ROW)
    g_row = tl.zeros([ROW], dtype=tl.float32)
    for j in range(0, qb):
        cols = (j * BLOCK + offs_n).to(tl.int64)
        kt = tl.load(k_base + cols[None, :] * skt, mask=kmask[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        g = tl.exp2(tl.max(tl.max(s, 1) - lse, 0))
        g_row = tl.where(slots == j, g, g_row)
    g = tl.exp2(tl.max(tl.max(s_diag, 1) - lse, 0))
    g_row = tl.where(slots == qb, g, g_row)

    g_row = g_row / tl.sum(g_row, 0)
    out = G + (pid_bh.to(tl.int64) * NQB + qb) * NQB + slots
    tl.store(out, g_row, mask=slots < NQB)


@triton.jit
def _pool_kernel(
    X, Y,
    sxb, sxh, sxt,
    H, T, NQB, D,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, NK: tl.constexpr,
):  # fmt: skip
    """Kinds K0, K1, K2 (0 avg, 1 max, 2 min, −1 none) of one block, written side by side."""
    pid_bh = tl.program_id(0)
    i = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_t = i * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    t_in = offs_t < T
    inside = t_in[:, None] & (offs_d < D)[None, :]
    x = tl.load(X + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh + offs_t.to(tl.int64)[:, None] * sxt + offs_d[None, :],
                mask=inside, other=0.0).to(tl.float32)  # fmt: skip
    n = tl.minimum(T - i * BLOCK, BLOCK).to(tl.float32)
    out = Y + (pid_bh.to(tl.int64) * NQB + i) * (NK * D) + offs_d
    dmask = offs_d < D
    if K0 >= 0:
        tl.store(out, _pooled(x, inside, n, K0).to(Y.dtype.element_ty), mask=dmask)
    if K1 >= 0:
        tl.store(out + D, _pooled(x, inside, n, K1).to(Y.dtype.element_ty), mask=dmask)
    if K2 >= 0:
        tl.store(out + 2 * D, _pooled(x, inside, n, K2).to(Y.dtype.element_ty), mask=dmask)


@triton.jit
def _pooled(x, inside, n, KIND: tl.constexpr):
    if KIND == 0:
        y = tl.sum(x, 0) / n
    elif KIND == 1:
        y = tl.max(tl.where(inside, x, float("-inf")), 0)
    else:
        y = tl.min(tl.where(inside, x, float("inf")), 0)
    return y


def ground_truth(q: torch.Tensor, k: torch.Tensor, *, block: int = 64, scale: float | None = None,
                 config: Config | None = None) -> torch.Tensor:  # fmt: skip
    r"""The gate's training target: block max-pooled causal attention probabilities, rows summing to 1.

    Args:
        q: ``[B, H, T, K]`` queries (the model's real, post-RoPE ones); fp32, fp16 or bf16.
        k: ``[B, Hkv, T, K]`` keys, ``Hkv`` dividing ``H``.
        block: 16, 32, 64 or 128.
        scale: multiplies ``q kᵀ`` (default ``K ** -0.5``).
        config: launch settings (``Config``); ``None`` takes ``config_for(block)``.

    Returns:
        fp32 ``[B, H, nq, nq]``: ``GT[i, j] ∝ max`` of ``P`` over query block ``i`` and key block
        ``j``, each row summing to 1, zero above the diagonal.
    """
    B, H, _, T, K, _ = check_inputs(q, k, k)
    block = check_block(block)
    scale = _triton.check_scale(scale, default=K**-0.5)
    cfg = config_for(block) if config is None else _triton.check_config(config, Config)
    refuse_autograd(q, k)
    if _triton.interpreter_upcasts(q.dtype):
        return ground_truth(q.float(), k.float(), block=block, scale=scale, config=config)
    need = (torch.finfo(q.dtype).bits // 8) * 3 * block * max(16, next_power_of_2(K))
    if need > _SMEM_BUDGET:
        raise ValueError(f"ground_truth with block={block}, K={K} and {q.dtype} needs ~{need // 1024} KiB of shared "
                         f"memory per program (a block-row and two key tiles), over {_SMEM_BUDGET // 1024} KiB: "
                         "use a smaller block or 16-bit inputs")  # fmt: skip
    return _ground_truth(q, k, block, scale, cfg)


def _ground_truth(q, k, block: int, scale: float, cfg: Config) -> torch.Tensor:
    """The launcher (inputs checked by the caller)."""
    B, H, T, K = q.shape
    q, k = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k))
    nq = triton.cdiv(T, block)
    out = _triton.empty(B, H, nq, nq, device=q.device, dtype=torch.float32)
    launch_kw = {} if INTERPRETER else dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    _triton.launch(
        _ground_truth_kernel, (B * H, nq),
        q, k, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        H, T, nq, H // k.shape[1], float(scale) * _LOG2E,
        BLOCK=block, HEAD_K=K, BLOCK_K=max(16, next_power_of_2(K)), ROW=max(16, next_power_of_2(nq)),
        PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32",
        **launch_kw,
    )  # fmt: skip
    return out


def pool_features(x: torch.Tensor, *, block: int = 64, kinds=("max", "min", "avg")) -> torch.Tensor:
    """Pool ``x [B, H, T, D]`` over blocks of ``block`` tokens (the last one over its real tokens)
    by each of ``kinds`` (1 to 3 of ``"avg"``, ``"max"``, ``"min"``), in one read of ``x``.

    Returns ``[B, H, ceil(T / block), len(kinds) · D]`` in the dtype of ``x``: the kinds side by
    side in the order given (the gate's key features are ``("max", "min", "avg")``).
    """
    check_device("x", x)
    check_dtype("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must have 4 dimensions [B, H, T, D], got shape {tuple(x.shape)}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    if isinstance(kinds, str) or not 1 <= len(kinds) <= 3 or any(kd not in POOL_KINDS for kd in kinds):
        raise ValueError(f"kinds must be a sequence of 1 to 3 of {POOL_KINDS}, got {kinds!r}")
    B, H, T, D = x.shape
    if T < 1 or not 1 <= D <= 256:
        raise ValueError(f"x must have T ≥ 1 and 1 ≤ D ≤ 256, got shape {tuple(x.shape)}")
    if block & (block - 1) or not 16 <= block <= 128:
        # the kernel's tile is the block: other sizes go through torch (same results)
        return torch.cat([_torch_pool(x, block, kd) for kd in kinds], dim=-1)
    if _triton.interpreter_upcasts(x.dtype):
        return pool_features(x.float(), block=block, kinds=kinds).to(x.dtype)
    return _pool(x, block, tuple(kinds))


def _pool(x, block: int, kinds: tuple) -> torch.Tensor:
    """The launcher (inputs checked by the caller; ``block`` a power of two in 16..128)."""
    B, H, T, D = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    nq = triton.cdiv(T, block)
    y = _triton.empty(B, H, nq, len(kinds) * D, device=x.device, dtype=x.dtype)
    codes = [POOL_KINDS.index(kd) for kd in kinds] + [-1] * (3 - len(kinds))
    launch_kw = {} if INTERPRETER else dict(num_warps=4 if block * D <= 64 * 128 else 8)
    _triton.launch(_pool_kernel, (B * H, nq), x, y, x.stride(0), x.stride(1), x.stride(2), H, T, nq, D,
                   BLOCK=block, BLOCK_D=max(16, next_power_of_2(D)),
                   K0=codes[0], K1=codes[1], K2=codes[2], NK=len(kinds), **launch_kw)  # fmt: skip
    return y


def pool(x: torch.Tensor, *, block: int = 64, kind: str = "avg") -> torch.Tensor:
    """``reference.seer.pool`` on the device: ``[B, H, ceil(T / block), D]``, ``kind`` one of
    ``"avg"``, ``"max"``, ``"min"`` (the last block pooled over its real tokens)."""
    if kind not in POOL_KINDS:
        raise ValueError(f"kind must be one of {POOL_KINDS}, got {kind!r}")
    return pool_features(x, block=block, kinds=(kind,))


def _torch_pool(x: torch.Tensor, block: int, kind: str) -> torch.Tensor:
    B, H, T, D = x.shape
    nq = -(-T // block)
    pad = nq * block - T
    fill = {"avg": 0.0, "max": float("-inf"), "min": float("inf")}[kind]
    xp = torch.nn.functional.pad(x.float(), (0, 0, 0, pad), value=fill).view(B, H, nq, block, D)
    if kind == "max":
        y = xp.amax(3)
    elif kind == "min":
        y = xp.amin(3)
    else:
        n = torch.full((nq,), float(block), device=x.device)
        n[-1] = T - (nq - 1) * block
        y = xp.sum(3) / n[:, None]
    return y.to(x.dtype)
