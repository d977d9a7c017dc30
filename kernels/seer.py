r"""SeerAttention's gate kernels in Triton: its ground truth, block pooling, and its block selection.

``ground_truth(q, k, *, block=64, scale=None)`` computes the same function as
``reference.seer.ground_truth`` (``docs/seer.md``; arXiv 2410.13276): with the causal attention
probabilities ``P = softmax(scale · q kᵀ)``, the 2-D max-pool of ``P`` over (query block ``i``,
key block ``j``), each block-row renormalised to sum 1, zeros above the diagonal —
``[B, H, nq, nq]`` fp32, ``nq = ceil(T / block)``. ``P`` (``T × T``) is never materialised.

``pool(x, *, block=64, kind="avg")`` equals ``reference.seer.pool``; ``pool_features(x, *, block,
kinds=("max", "min", "avg"))`` pools several kinds in one read of ``x`` and writes them side by side
(``[B, H, nq, len(kinds)·D]``, the gate's key features in that order).

``gate_topk(q_gate, k_gate, *, density, block)`` turns the gate's projected queries and keys
(before RoPE) into its block mask: ``reference.seer.select_topk(reference.seer.gate_scores(
RoPE(q_gate), RoPE(k_gate)), density=density)`` in two kernels, nothing read back to the host
(design in its docstring).

Design of the ground truth
--------------------------
``max_{t ∈ i, s ∈ j} P[t, s] = max_{t ∈ i} exp(r_tj − lse_t)`` where ``r_tj = max_{s ∈ j} scale·q_t·k_s``
is the row's raw maximum score over key block ``j`` and ``lse_t`` the row's final log-sum-exp. So
one program per query tile (``Config.block_rows`` consecutive block-rows of one head) walks its
causal key blocks twice, with keys only (no values):

1. the flash forward's running max and sum, giving every row's ``lse`` (base 2 inside);
2. the scores again, each key block reduced at once, per block-row of the tile, to
   ``g_ij = 2^(max_t (max_s s_ts − lse_t))`` — two maxima and a subtraction per element, no
   exponential — and stored to the output as it is found, the row's sum kept in a register;
3. the tile's rows read back, divided by their sums, and written with zeros above the diagonal.

Every step costs O(1) per key block: the row is never held as a register vector of length
``nq`` (updating such a vector costs ``O(nq)`` per key block, so the kernel's cost would grow
faster than ``T²``: perf log, run 2). Nothing of size ``T × nq`` reaches memory; the output is
written once and read back once by the program that wrote it. The two walks cost two ``q kᵀ``
products per key block — the same matrix FLOPs as a dense flash forward (``q kᵀ`` and ``p v``),
with half its exponentials.

Key tiles are one block. The block-rows of a tile share its walk: the key blocks left of the
tile are visible to all its rows (no mask), the tile's own ``block_rows`` key blocks get the
causal mask, and a block-row above one of them gets ``2^(−∞) = 0`` there (its right value).
Rows past the end of the sequence get ``lse = +inf`` and drop out of every maximum.

*Launch order for the L2* (as in ``kernels.block_sparse``): the query tiles of one kv head are
the fastest grid axis, heaviest first, the query heads that share a kv head side by side; the
programs running together read one head's keys, which stay in the L2. GQA: ``k`` may have
``Hkv`` heads dividing ``H``, read in place. Inputs fp32, fp16 or bf16 (products in the input
dtype, fp32 accumulation; fp32 products three-pass tf32 on the GPU); bf16 runs in fp32 under the
interpreter. Inference only (no backward; inputs that require a gradient while autograd is on are
refused — the ground truth is a training *target*).

Pooling
-------
One program per block of a head (or per few consecutive blocks) loads each block's ``[block, D]``
tile once and keeps what the kinds ask for: the mean over the block's real tokens (the last
block's too), the maximum, the minimum. The gate's key features ``[max, min, avg]`` then cost one
read of ``k`` instead of three, and the concatenation none. Few warps per block (2 for 64 × 128
tiles): the reductions stay inside threads.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from kernels import _triton
from kernels._triton import INTERPRETER, check_device, check_dtype, next_power_of_2
from kernels.block_sparse import check_block, check_inputs, kv_head_major_grid, kv_head_major_program, refuse_autograd

__all__ = ["ground_truth", "gate_topk", "pool", "pool_features", "Config", "DEFAULT_CONFIG", "config_for", "POOL_KINDS"]

POOL_KINDS = ("avg", "max", "min")

#: Shared memory one program may plan for (an H100 block may have up to 227 KiB).
_SMEM_BUDGET = 200 * 1024
_LOG2E = 1.0 / math.log(2.0)



@dataclass(frozen=True)
class Config:
    """Launch settings of the ground-truth kernel (results do not depend on them beyond rounding).

    Attributes:
        block_rows: consecutive block-rows per program (1, 2, 4 or 8; ``block_rows · block ≤ 128``):
            blocks of 64 with 2 make 128-row query tiles, 128 × 64 products.
        num_warps: warps per program.
        num_stages: software-pipelining depth of the key-block loops.
    """

    block_rows: int = 1
    num_warps: int = 4
    num_stages: int = 2


#: The setting for blocks of 64: two block-rows per program (128 × 64 products), the fastest of the
#: H100 sweep at 32k (18.6 ms against 21.3 ms with one block-row; perf log, run 3).
DEFAULT_CONFIG = Config(block_rows=2)

_BY_BLOCK = {16: Config(num_warps=2), 32: Config(num_warps=4), 64: DEFAULT_CONFIG, 128: Config(num_warps=8)}


def config_for(block: int) -> Config:
    """The default for a block size (what ``config=None`` uses): more warps for larger tiles, two
    block-rows per program for blocks of 64 (``DEFAULT_CONFIG``), one for the others."""
    return _BY_BLOCK[check_block(block)]


def _check_rows(cfg: Config, block: int) -> int:
    rows = cfg.block_rows
    if isinstance(rows, bool) or not isinstance(rows, int) or rows not in (1, 2, 4, 8) or rows * block > 128:
        raise ValueError(f"config.block_rows must be 1, 2, 4 or 8 with block_rows · block ≤ 128, got {rows!r} "
                         f"with block={block}")  # fmt: skip
    return rows


@triton.jit
def _ground_truth_kernel(
    Q, K, G,
    sqb, sqh, sqt,
    skb, skh, skt,
    H, T, NQB, GROUP, qk_scale,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, HEAD_K: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """``ROWS`` consecutive block-rows (a query tile of ``ROWS · BLOCK`` rows) of one head."""
    pid_m, b, h, hk, pid_bh = kv_head_major_program(H, GROUP)  # heaviest tiles first, one head's keys in the L2
    qb0 = pid_m * ROWS  # the tile's first block-row
    BLOCK_M: tl.constexpr = ROWS * BLOCK

    offs_m = qb0 * BLOCK + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK)
    offs_k = tl.arange(0, BLOCK_K)
    kmask = offs_k < HEAD_K
    row_in = offs_m < T
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m.to(tl.int64)[:, None] * sqt + offs_k[None, :],
                mask=row_in[:, None] & kmask[None, :], other=0.0)  # fmt: skip
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + offs_k[:, None]
    # key blocks left of the tile are visible to all its rows; the tile's own ROWS blocks are masked
    n_full = qb0
    n_all = tl.minimum(qb0 + ROWS, NQB)

    # 1. every row's log-sum-exp (base 2)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for j in range(0, n_full):
        kt = tl.load(k_base + (j * BLOCK + offs_n).to(tl.int64)[None, :] * skt, mask=kmask[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
        m_i = m_new
    for j in range(n_full, n_all):
        s = _masked_scores(q, k_base, skt, j, offs_m, offs_n, kmask, T, qk_scale, BLOCK, PRECISION)
        # key block 0 comes first and every row sees its first key: m_i is finite from there on
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
        m_i = m_new
    lse = tl.where(row_in, m_i + tl.log2(l_i), float("inf"))  # padded rows drop out of the maxima

    # 2. per key block, each block-row's largest probability 2^(max_t (max_s s_ts − lse_t)), stored
    #    at once (unnormalised) and added to the row's sum: O(1) per key block, whatever T
    rows = qb0 + tl.arange(0, ROWS)
    rows_in = rows < NQB
    g_rows = G + (pid_bh.to(tl.int64) * NQB + rows) * NQB
    total = tl.zeros([ROWS], dtype=tl.float32)
    for j in range(0, n_full):
        kt = tl.load(k_base + (j * BLOCK + offs_n).to(tl.int64)[None, :] * skt, mask=kmask[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        g = tl.exp2(tl.max(tl.reshape(tl.max(s, 1) - lse, (ROWS, BLOCK)), 1))
        tl.store(g_rows + j, g, mask=rows_in)
        total += g
    for j in range(n_full, n_all):
        s = _masked_scores(q, k_base, skt, j, offs_m, offs_n, kmask, T, qk_scale, BLOCK, PRECISION)
        # a block-row above this key block sees none of it: 2^(−inf) = 0, its right value anyway
        g = tl.exp2(tl.max(tl.reshape(tl.max(s, 1) - lse, (ROWS, BLOCK)), 1))
        tl.store(g_rows + j, g, mask=rows_in)
        total += g

    # 3. the rows divided by their sums, zeros above the diagonal (the stores above must be visible
    #    to every thread of the program first)
    tl.debug_barrier()
    inv = 1.0 / tl.where(total > 0, total, 1.0)  # block-rows past the end have none (and store nothing)
    for c in range(0, NQB, CHUNK):
        cols = c + tl.arange(0, CHUNK)
        ptrs = g_rows[:, None] + cols[None, :]
        written = rows_in[:, None] & (cols[None, :] <= rows[:, None])
        x = tl.load(ptrs, mask=written, other=0.0)
        tl.store(ptrs, x * inv[:, None], mask=rows_in[:, None] & (cols < NQB)[None, :])


@triton.jit
def _masked_scores(q, k_base, skt, j, offs_m, offs_n, kmask, T, qk_scale, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """Scores of key block ``j`` with the causal and sequence-end masks (``−inf`` where hidden)."""
    cols = j * BLOCK + offs_n
    kt = tl.load(k_base + cols.to(tl.int64)[None, :] * skt, mask=kmask[:, None] & (cols < T)[None, :], other=0.0)
    visible = (cols[None, :] <= offs_m[:, None]) & (cols < T)[None, :]
    return tl.where(visible, tl.dot(q, kt, input_precision=PRECISION) * qk_scale, float("-inf"))


@triton.jit
def _gate_logits_kernel(
    QG, KG, COS, SIN, L,
    sqb, sqh, sqn,
    skb, skh, skn,
    H, N, GROUP, scale,
    DG: tl.constexpr, BLOCK_D: tl.constexpr, TILE: tl.constexpr, CHUNK: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Logits ``scale · q̃_i · k̃_j`` (RoPE on the fly) of block-rows ``TILE·p …`` of one head, ``j ≤ i``."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest rows first
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    i0 = pid_m * TILE
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < DG
    partner = tl.where(offs_d < DG // 2, offs_d + DG // 2, offs_d - DG // 2)
    sign = tl.where(offs_d < DG // 2, -1.0, 1.0)
    rows = i0 + tl.arange(0, TILE)
    # rotated in fp32, then rounded to the input dtype as the reference's RoPE output is
    q = _rotated(QG + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, sqn, rows, N, COS, SIN, offs_d, partner, sign, dmask, DG)
    q = q.to(QG.dtype.element_ty)
    k_base = KG + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    l_base = L + pid_bh.to(tl.int64) * N * N
    offs_c = tl.arange(0, CHUNK)
    for c in range(0, tl.minimum(i0 + TILE, N), CHUNK):
        cols = c + offs_c
        kc = _rotated(k_base, skn, cols, N, COS, SIN, offs_d, partner, sign, dmask, DG).to(KG.dtype.element_ty)
        s = tl.dot(q, tl.trans(kc), input_precision=PRECISION) * scale
        tl.store(l_base + rows[:, None] * N + cols[None, :], s, mask=(rows < N)[:, None] & (cols[None, :] <= rows[:, None]))


@triton.jit
def _gate_select_kernel(
    L, COUNTS, P, MASK,
    H, N,
    SUB: tl.constexpr, ROW: tl.constexpr, STORE_P: tl.constexpr,
):  # fmt: skip
    """Rows ``SUB·p …`` of one head, each read whole (``ROW ≥ N`` columns): softmax over ``j ≤ i``,
    then the diagonal and the ``k_i − 1`` most probable ``j < i`` kept (ties to the lower index)."""
    pid_bh = tl.program_id(1)
    i = tl.program_id(0) * SUB + tl.arange(0, SUB)
    i_in = i < N
    offs_r = tl.arange(0, ROW)
    base = pid_bh.to(tl.int64) * N * N + i[:, None] * N + offs_r[None, :]
    causal = i_in[:, None] & (offs_r[None, :] <= i[:, None])
    s = tl.load(L + base, mask=causal, other=float("-inf"))
    # rows past the end see nothing: their max and sum are set so that they come out all 0
    shifted = s - tl.where(i_in, tl.max(s, 1), 0.0)[:, None]
    z = tl.where(i_in, tl.sum(tl.exp(shifted), 1), 1.0)
    p = tl.exp(shifted - tl.log(z)[:, None])  # 0 where not causal
    # probabilities are ≥ 0, so their bit patterns order like them; non-candidates get −1
    below = causal & (offs_r[None, :] < i[:, None])
    key = tl.where(below, p.to(tl.int32, bitcast=True), -1)
    want = tl.load(COUNTS + i, mask=i_in, other=1) - 1
    # the largest v with #{key ≥ v} ≥ want, bit by bit from the top: the want-th largest key
    # (all ones where want = 0: then nothing passes)
    v = tl.zeros([SUB], dtype=tl.int32)
    for bit in tl.static_range(30, -1, -1):
        trial = v | (1 << bit)
        enough = tl.sum((key >= trial[:, None]).to(tl.int32), 1) >= want
        v = tl.where(enough, trial, v)
    greater = key > v[:, None]
    equal = key == v[:, None]
    need = want - tl.sum(greater.to(tl.int32), 1)
    keep = greater | (equal & (tl.cumsum(equal.to(tl.int32), 1) <= need[:, None]))
    keep = keep | (offs_r[None, :] == i[:, None])
    inside = i_in[:, None] & (offs_r < N)[None, :]
    if STORE_P:
        tl.store(P + base, p, mask=inside)
    tl.store(MASK + base, keep, mask=inside)


@triton.jit
def _rotated(base, stride, rows, N, COS, SIN, offs_d, partner, sign, dmask, DG: tl.constexpr):
    """Rows ``rows`` of a ``[N, DG]`` head at ``base``, rotate-half RoPE applied, fp32 (zeros past ``N``)."""
    inside = (rows < N)[:, None] & dmask[None, :]
    r = rows.to(tl.int64)[:, None] * stride
    x = tl.load(base + r + offs_d[None, :], mask=inside, other=0.0).to(tl.float32)
    xp = tl.load(base + r + partner[None, :], mask=inside, other=0.0).to(tl.float32)
    t = rows[:, None] * DG + offs_d[None, :]
    cos = tl.load(COS + t, mask=inside, other=0.0)
    sin = tl.load(SIN + t, mask=inside, other=0.0)
    return x * cos + sign[None, :] * xp * sin


@triton.jit
def _pool_kernel(
    X, Y,
    sxb, sxh, sxt,
    H, T, NQB, D,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, PER: tl.constexpr,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, NK: tl.constexpr,
):  # fmt: skip
    """Kinds K0, K1, K2 (0 avg, 1 max, 2 min, −1 none) of ``PER`` consecutive blocks of one head,
    written side by side (the blocks unrolled: their loads are independent)."""
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    x_base = X + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh
    for r in tl.static_range(PER):
        i = tl.program_id(0) * PER + r
        offs_t = i * BLOCK + tl.arange(0, BLOCK)
        inside = (offs_t < T)[:, None] & dmask[None, :]
        x = tl.load(x_base + offs_t.to(tl.int64)[:, None] * sxt + offs_d[None, :], mask=inside, other=0.0).to(tl.float32)
        n = tl.maximum(tl.minimum(T - i * BLOCK, BLOCK), 1).to(tl.float32)  # a block past the end stores nothing
        out = Y + (pid_bh.to(tl.int64) * NQB + i) * (NK * D) + offs_d
        smask = dmask & (i + 0 * offs_d < NQB)
        if K0 >= 0:
            tl.store(out, _pooled(x, inside, n, K0).to(Y.dtype.element_ty), mask=smask)
        if K1 >= 0:
            tl.store(out + D, _pooled(x, inside, n, K1).to(Y.dtype.element_ty), mask=smask)
        if K2 >= 0:
            tl.store(out + 2 * D, _pooled(x, inside, n, K2).to(Y.dtype.element_ty), mask=smask)


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
        config: launch settings (``Config``); ``None`` takes ``config_for(block)``, with one
            block-row per program where the default's taller query tile would not fit in shared
            memory (fp32 with ``K > 128`` and blocks of 64). A ``Config`` given is used as given.

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
    rows = _check_rows(cfg, block)
    need = _smem_needed(q.dtype, rows, block, K)
    if config is None and need > _SMEM_BUDGET and rows > 1:
        # the default's taller query tile is a speed setting: where it does not fit, one block-row does
        cfg = replace(cfg, block_rows=1)
        rows, need = 1, _smem_needed(q.dtype, 1, block, K)
    if need > _SMEM_BUDGET:
        raise ValueError(f"ground_truth with block={block}, block_rows={rows}, K={K} and {q.dtype} needs "
                         f"~{need // 1024} KiB of shared memory per program (its query rows and two key tiles), "
                         f"over {_SMEM_BUDGET // 1024} KiB: use a smaller block, fewer block-rows per program "
                         "(config=Config(block_rows=1)) or 16-bit inputs")  # fmt: skip
    return _ground_truth(q, k, block, scale, cfg)


def _smem_needed(dtype: torch.dtype, rows: int, block: int, K: int) -> int:
    """Shared memory one ground-truth program plans for: its query rows and two key tiles."""
    return (torch.finfo(dtype).bits // 8) * (rows + 2) * block * max(16, next_power_of_2(K))


def _ground_truth(q, k, block: int, scale: float, cfg: Config) -> torch.Tensor:
    """The launcher (inputs checked by the caller)."""
    B, H, T, K = q.shape
    Hkv = k.shape[1]
    rows = _check_rows(cfg, block)
    q, k = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k))
    nq = triton.cdiv(T, block)
    out = _triton.empty(B, H, nq, nq, device=q.device, dtype=torch.float32)
    launch_kw = {} if INTERPRETER else dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    _triton.launch(
        _ground_truth_kernel, kv_head_major_grid(triton.cdiv(nq, rows), B, H, Hkv),
        q, k, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        H, T, nq, H // Hkv, float(scale) * _LOG2E,
        BLOCK=block, ROWS=rows, HEAD_K=K, BLOCK_K=max(16, next_power_of_2(K)),
        CHUNK=min(128, max(16, next_power_of_2(nq))),
        PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32",
        **launch_kw,
    )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------ the gate


def gate_topk(q_gate: torch.Tensor, k_gate: torch.Tensor, *, density: float, block: int, scale: float | None = None,
              rope_base: float = 10000.0, return_probs: bool = False):  # fmt: skip
    r"""The gate's block mask from its projected queries and keys, in two kernels.

    Equals ``reference.seer.select_topk(reference.seer.gate_scores(RoPE(q_gate), RoPE(k_gate)),
    density=density)``: rotate-half RoPE of width ``d_g`` at each block's first position
    ``i · block`` (what ``AttnGate.project`` applies after its projections), the block-causal
    softmax of ``scale · q̃ k̃ᵀ``, then in row ``i`` the diagonal and the ``k_i − 1`` most probable
    blocks ``j < i``, ``k_i = min(i+1, max(1, round(ρ(i+1))))``, ties to the lower index.

    Two kernels: the logits of 64 block-rows per program (16 when ``n ≤ 32``; RoPE on the fly, the
    rotated values rounded to the input dtype as the reference's RoPE output is, then products
    with fp32 accumulation; three-pass tf32 for fp32 inputs); then one warp per row (a few rows of
    ``n ≤ 512``; a warp more per 1024 columns past the first, up to 8) reads the row's logits
    whole, takes the softmax and finds its ``(k_i − 1)``-th largest probability by a bitwise
    search over the probabilities' bit patterns (31 counting passes, no sort), and stores the
    row's mask. The search's 31 dependent reductions are warp shuffles, and many one-warp programs
    run side by side: across 4 warps they would go through shared memory (one 4-warp program per
    16 rows took 0.31 ms at 32k: perf log, run 3). The RoPE tables and the per-row counts are
    built once per shape (cached); nothing is read back to the host.

    Args:
        q_gate: ``[B, H, n, d_g]`` the gate's projected queries, before RoPE.
        k_gate: ``[B, Hkv, n, d_g]`` its projected keys (one per kv head), before RoPE.
        density: ρ ∈ (0, 1].
        block: tokens per block (the RoPE position step).
        scale: multiplies the logits (default ``d_g ** -0.5``).
        rope_base: the gate's RoPE base.
        return_probs: also return the gate's probabilities.

    Returns:
        bool ``[B, H, n, n]`` (block-causal, diagonal kept); with ``return_probs`` also fp32
        ``[B, H, n, n]`` probabilities (rows summing to 1 over ``j ≤ i``, 0 above).
    """
    for name, x in (("q_gate", q_gate), ("k_gate", k_gate)):
        check_device(name, x)
        check_dtype(name, x)
        if x.ndim != 4:
            raise ValueError(f"{name} must have 4 dimensions [B, heads, n, d_g], got shape {tuple(x.shape)}")
    B, H, n, dg = q_gate.shape
    Hkv = k_gate.shape[1]
    if tuple(k_gate.shape) != (B, Hkv, n, dg) or Hkv < 1 or H % Hkv:
        raise ValueError(f"k_gate must have shape [B, Hkv, n, d_g] = [{B}, Hkv, {n}, {dg}] with Hkv dividing H = {H}, "
                         f"got {tuple(k_gate.shape)}")  # fmt: skip
    if k_gate.device != q_gate.device:
        raise ValueError(f"q_gate and k_gate must be on one device, got {q_gate.device} and {k_gate.device}")
    if k_gate.dtype != q_gate.dtype:
        raise TypeError(f"q_gate and k_gate must share one dtype, got {q_gate.dtype} and {k_gate.dtype}")
    if n < 1 or dg % 2 or not 2 <= dg <= 256:
        raise ValueError(f"q_gate must have n ≥ 1 blocks and an even d_g in 2..256, got shape {tuple(q_gate.shape)}")
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
        raise ValueError(f"density must be a real number in (0, 1], got {density!r}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    if isinstance(rope_base, bool) or not isinstance(rope_base, (int, float)) or not rope_base > 1.0:
        raise ValueError(f"rope_base must be a real number > 1, got {rope_base!r}")
    scale = _triton.check_scale(scale, default=dg**-0.5)
    _triton.check_flag("return_probs", return_probs)
    refuse_autograd(q_gate, k_gate)
    if _triton.interpreter_upcasts(q_gate.dtype):
        q_gate, k_gate = q_gate.float(), k_gate.float()
    mask, probs = _gate_topk(q_gate, k_gate, float(density), block, scale, float(rope_base), return_probs)
    return (mask, probs) if return_probs else mask


def _gate_topk(q_gate, k_gate, density: float, block: int, scale: float, rope_base: float, return_probs: bool):
    """The launchers (inputs checked by the caller): ``(mask, probs or None)``."""
    B, H, n, dg = q_gate.shape
    Hkv = k_gate.shape[1]
    cos, sin = _rope_tables(n, dg, block, rope_base, q_gate.device)
    counts = _row_counts(n, density, q_gate.device)
    q_gate, k_gate = (x if x.stride(-1) == 1 else x.contiguous() for x in (q_gate, k_gate))
    logits = torch.empty(B, H, n, n, device=q_gate.device, dtype=torch.float32)  # read only where written
    probs = _triton.empty(B, H, n, n, device=q_gate.device, dtype=torch.float32) if return_probs else None
    mask = _triton.empty(B, H, n, n, device=q_gate.device, dtype=torch.bool)
    tile = 64 if n > 32 else 16
    fp32 = q_gate.dtype == torch.float32
    _triton.launch(
        _gate_logits_kernel, (triton.cdiv(n, tile), B * H),
        q_gate, k_gate, cos, sin, logits,
        q_gate.stride(0), q_gate.stride(1), q_gate.stride(2),
        k_gate.stride(0), k_gate.stride(1), k_gate.stride(2),
        H, n, H // Hkv, scale,
        DG=dg, BLOCK_D=max(16, next_power_of_2(dg)), TILE=tile, CHUNK=64,
        PRECISION="ieee" if INTERPRETER else ("tf32x3" if fp32 else "tf32"),
        # one stage: pipelining the four loads of a key chunk (its values, their RoPE partners, the
        # cos and sin tables) would take 128 KiB of shared memory
        **({} if INTERPRETER else dict(num_warps=4, num_stages=1)),
    )  # fmt: skip
    # the selection: a row in one warp (reductions by shuffles, many programs resident), a warp
    # more per 1024 columns past the first 1024
    row = max(16, next_power_of_2(n))
    sub = max(1, min(16, 1024 // row))
    _triton.launch(
        _gate_select_kernel, (triton.cdiv(n, sub), B * H),
        logits, counts, logits if probs is None else probs, mask, H, n,
        SUB=sub, ROW=row, STORE_P=probs is not None,
        **({} if INTERPRETER else dict(num_warps=max(1, min(8, row // 1024)), num_stages=1)),
    )  # fmt: skip
    return mask, probs


@functools.lru_cache(maxsize=8)
def _rope_tables(n: int, dg: int, block: int, base: float, device: torch.device):
    """fp32 ``cos, sin [n, d_g]`` of the angles ``(i · block) θ_c`` (formed in float64), each half repeated."""
    freq = base ** (-torch.arange(0, dg, 2, dtype=torch.float64) / dg)
    theta = (torch.arange(n, dtype=torch.float64) * block)[:, None] * freq
    theta = torch.cat([theta, theta], dim=-1)
    return theta.cos().float().to(device), theta.sin().float().to(device)


@functools.lru_cache(maxsize=8)
def _row_counts(n: int, density: float, device: torch.device) -> torch.Tensor:
    """``k_i = min(i+1, max(1, round(ρ(i+1))))`` per block-row (``reference.seer.blocks_per_row``), int32."""
    return torch.tensor([min(i + 1, max(1, round(density * (i + 1)))) for i in range(n)], dtype=torch.int32).to(device)


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


def _pool(x, block: int, kinds: tuple, *, per_program: int = 1, num_warps: int | None = None) -> torch.Tensor:
    """The launcher (inputs checked by the caller; ``block`` a power of two in 16..128):
    ``per_program`` consecutive blocks of one head per program, the blocks of a head on the
    fastest grid axis (consecutive programs read consecutive memory)."""
    B, H, T, D = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    nq = triton.cdiv(T, block)
    y = _triton.empty(B, H, nq, len(kinds) * D, device=x.device, dtype=x.dtype)
    codes = [POOL_KINDS.index(kd) for kd in kinds] + [-1] * (3 - len(kinds))
    # few warps: the reductions stay inside threads and warps (blocks of 64 × D = 128 with 2 warps:
    # 0.113 ms for k's three kinds at 32k on the H100, 4 warps 0.253 ms; 1 warp 0.108 ms but it
    # spills; perf log, run 3)
    warps = num_warps or max(1, block * max(16, next_power_of_2(D)) // 4096)
    launch_kw = {} if INTERPRETER else dict(num_warps=warps)
    _triton.launch(_pool_kernel, (triton.cdiv(nq, per_program), B * H), x, y, x.stride(0), x.stride(1), x.stride(2),
                   H, T, nq, D, BLOCK=block, BLOCK_D=max(16, next_power_of_2(D)), PER=per_program,
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
