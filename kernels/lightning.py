r"""Lightning Attention-2 in Triton: forward and backward, any length, optional states.

``attention(q, k, v, decay, *, scale=1.0)`` computes the same function as
``reference.lightning.chunked`` (``docs/lightning.md``; arXiv 2401.04658): ``o_t = Σ_{s≤t} λ^(t-s) (scale·q_t·k_s) v_s``,
plus ``λ^(t+1) scale·q_t S_0`` when an initial state is given.

Design (for the H100; what the benchmark measures)
--------------------------------------------------
*One kernel, four jobs.* Every pass of Lightning Attention-2 has the same shape: walk the blocks of
a sequence, and for each block add an *intra* term (a masked, decayed ``C × C`` product) to an
*inter* term (the block against a carried ``D_a × D_c`` state), then update the state. The forward
is ``(a, b, c) = (q, k, v)``. Algorithm 2's ``dQ`` is the same walk over ``(dO, v, k)`` with the
state transposed; ``dV`` and ``dK`` are the walk *backwards* in time over ``(k, q, dO)`` and
``(v, dO, q)``. So ``_chunk_scan_kernel`` serves all four with a ``REVERSE`` switch that mirrors
the mask and swaps which side carries ``λ^j`` and which ``λ^(n-j)``.

*Which FlashLinearAttention variant.* Neither extreme. The non-materialised variant keeps the state
on chip and reads ``q, k, v`` once (the least traffic: the forward is memory-bound, its floor is
four passes over ``[B, H, T, 128]``), but its parallelism is ``B·H·(V/BV)`` programs walking the
whole sequence: 64 programs at ``B=2, H=16, T=32k`` on a 132-SM GPU. The materialised variant (fla's
``chunk``) is fully parallel but writes and reads one ``K × V`` state per 64-token block — twice the
bytes of ``q`` itself, which is where fla's forward time goes. Here the sequence is cut into a few
*segments* only when ``B·H·(V/BV)`` programs cannot fill the GPU: a first kernel reduces each segment
to its local state (one matrix product per block, fully parallel), a tiny scan turns those into the
state entering each segment, and the main kernel walks every segment in parallel from its entering
state. Short sequences (``T=2k`` at ``B·H=512``) get one segment: no states stored at all; long ones
store ``T/segment`` states instead of ``T/64``.

*Tiles.* Blocks of ``C = 64`` tokens; the state is ``D_a × BC`` with ``D_a`` the whole reduction width
(``K`` or ``V``, padded to a power of two ≥ 16, at most 256) and ``BC = 64`` columns (32 when
``D_a > 128``), fp32 in registers; four warps (one warpgroup: Hopper's ``wgmma`` wants ``M = 64``
per warpgroup); loads of block ``i+1`` are software-pipelined under block ``i``'s products. Inputs
are fp32, fp16 or bf16; products accumulate in fp32; the fp32 state is rounded to the input dtype only
as an operand of the inter product. fp32 inputs use IEEE fp32 products (no tf32) on the GPU.

Decay powers are formed as ``exp2(e · log2 λ)`` with ``e ≥ 0`` always (padding rows get 0), so
strong decays underflow to 0 and never overflow. The intra-block mask is applied with ``where``, not
only as a weight of 0: a NaN or inf in a later token's ``q`` or ``k`` leaves every earlier row bit for
bit unchanged; a poisoned ``v`` reaches the rows of its own block (``P V`` multiplies it by the
zeros above the diagonal) and no earlier one.

Shapes: ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]``, ``decay: [H]`` in ``(0, 1]``, states
``[B, H, K, V]``. Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels import _triton
from kernels._triton import INTERPRETER, check_qkv, empty, launch, next_power_of_2

__all__ = ["attention", "Config", "DEFAULT_CONFIG"]


@dataclass(frozen=True)
class Config:
    """Launch settings (the benchmark sweeps them; results do not depend on them beyond rounding).

    Attributes:
        num_warps, num_stages: of the scan kernels (four warps: one Hopper warpgroup, ``M = 64``).
        block_c: output columns per program; ``None``: 64 (32 when the reduction width exceeds 128),
            never a state tile above 128 × 128 fp32 values.
        fused_dkdv: one reverse pass for dK and dV together (eight warps hold the whole dKV; heads up
            to 128 wide) instead of two chunk-scan walks.
        segment_below_programs_per_sm: segment a sequence only when fewer walks than this many per
            multiprocessor (a measured 256 walks on 132 SMs beat any segmenting: it costs an extra
            pass over k, v) ...
        segment_target_programs_per_sm: ... and then into enough segments for about this many.
    """

    num_warps: int = 4
    num_stages: int = 2
    block_c: int | None = None
    fused_dkdv: bool = False
    segment_below_programs_per_sm: float = 1.0
    segment_target_programs_per_sm: float = 4.0


DEFAULT_CONFIG = Config()


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _chunk_scan_kernel(
    a_ptr,  # [BH, T, DA]   rows that read the state (q in the forward)
    b_ptr,  # [BH, T, DA]   rows that write the state together with c (k in the forward)
    c_ptr,  # [BH, T, DC]   values (v in the forward)
    out_ptr,  # [BH, T, DC]
    log2_decay_ptr,  # [H] fp32: log2 λ
    state_in_ptr,  # segment entry states, element (bh, s, i, j) at the strides below
    state_out_ptr,  # [BH, DA, DC] fp32: the state after the whole sequence (if STORE_FINAL)
    T,
    H,
    seg_len,  # tokens per segment (a multiple of BLOCK_T)
    scale_a,  # multiplies every output (the forward's `scale` on q)
    scale_b,  # multiplies every product with b (the scale on q when q plays b)
    s_in_bh,
    s_in_seg,
    s_in_row,
    s_in_col,
    DA: tl.constexpr,
    DC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_C: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_STATE_IN: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One program: one segment of one (batch, head), one block of BLOCK_C output columns.

    forward (REVERSE=0), block of n tokens, local index j = 1..n:
        out_j = scale_a·( Σ_{s≤j} λ^(j-s) (a_j·b_s)·scale_b c_s  +  λ^j a_j X )
        X     = λ^n X + Σ_j λ^(n-j) scale_b b_jᵀ c_j
    reverse (REVERSE=1): blocks from the last to the first, and
        out_j = scale_a·( Σ_{s≥j} λ^(s-j) (a_j·b_s)·scale_b c_s  +  λ^(n-j) a_j X )
        X     = λ^n X + Σ_j λ^j scale_b b_jᵀ c_j
    """
    i_col = tl.program_id(0)
    i_seg = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    log2_decay = tl.load(log2_decay_ptr + i_bh % H)

    seg_start = i_seg * seg_len
    seg_end = tl.minimum(seg_start + seg_len, T)
    n_blocks = tl.cdiv(seg_end - seg_start, BLOCK_T)

    offs_t = tl.arange(0, BLOCK_T)
    offs_a = tl.arange(0, BLOCK_A)
    offs_c = i_col * BLOCK_C + tl.arange(0, BLOCK_C)
    a_valid = offs_a < DA
    c_valid = offs_c < DC

    a_base = a_ptr + i_bh * T * DA
    b_base = b_ptr + i_bh * T * DA
    c_base = c_ptr + i_bh * T * DC
    out_base = out_ptr + i_bh * T * DC

    if HAS_STATE_IN:
        s_ptrs = (
            state_in_ptr
            + i_bh * s_in_bh
            + i_seg * s_in_seg
            + offs_a[:, None] * s_in_row
            + offs_c[None, :] * s_in_col
        )
        state = tl.load(s_ptrs, mask=a_valid[:, None] & c_valid[None, :], other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK_A, BLOCK_C], dtype=tl.float32)

    # The intra-block mask D depends only on the distance between two positions, so it is the same
    # for every block (a shorter last block just has zero rows): build it once.
    rows = offs_t[:, None]
    cols = offs_t[None, :]
    if REVERSE:
        distance = cols - rows  # s - t: the future feeds the past
    else:
        distance = rows - cols  # t - s: the past feeds the present
    mask_weight = tl.where(distance >= 0, tl.exp2(tl.maximum(distance, 0).to(tl.float32) * log2_decay), 0.0)
    mask_weight = mask_weight * scale_b
    for i in range(n_blocks):
        if REVERSE:
            t0 = seg_start + (n_blocks - 1 - i) * BLOCK_T
        else:
            t0 = seg_start + i * BLOCK_T
        # The causal predicate, rebuilt from absolute positions in each iteration: the same values
        # as ``distance >= 0``, but not loop-invariant, so the compiler does not hoist a second
        # [BLOCK_T, BLOCK_T] tile that would stay live across the loop (hoisted, it raises the
        # sm_90 spills from 32 to 56 stack bytes and costs 11 % at 2k: perf log, versions 5-6).
        if REVERSE:
            causal = (t0 + offs_t)[None, :] >= (t0 + offs_t)[:, None]
        else:
            causal = (t0 + offs_t)[:, None] >= (t0 + offs_t)[None, :]
        n = tl.minimum(BLOCK_T, seg_end - t0)
        t_valid = offs_t < n
        j = (offs_t + 1).to(tl.float32)  # local index 1..BLOCK_T

        ab_mask = t_valid[:, None] & a_valid[None, :]
        a = tl.load(a_base + (t0 + offs_t)[:, None] * DA + offs_a[None, :], mask=ab_mask, other=0.0)
        b = tl.load(b_base + (t0 + offs_t)[:, None] * DA + offs_a[None, :], mask=ab_mask, other=0.0)
        c = tl.load(
            c_base + (t0 + offs_t)[:, None] * DC + offs_c[None, :],
            mask=t_valid[:, None] & c_valid[None, :],
            other=0.0,
        )

        # Decay exponents, always ≥ 0 (padding rows get a weight of 0, never an overflow).
        if REVERSE:
            a_exp = n - j
            b_exp = j
        else:
            a_exp = j
            b_exp = n - j
        a_weight = tl.where(t_valid, tl.exp2(tl.maximum(a_exp, 0.0) * log2_decay), 0.0)
        b_weight = tl.where(t_valid, tl.exp2(tl.maximum(b_exp, 0.0) * log2_decay), 0.0) * scale_b

        # intra: [(a bᵀ) ⊙ D] c
        # selected with where, not only weighted: 0 · NaN = NaN would carry a later token's NaN back
        scores = tl.where(causal, tl.dot(a, tl.trans(b), input_precision=DOT_PRECISION) * mask_weight, 0.0)
        out = tl.dot(scores.to(c.dtype), c, input_precision=DOT_PRECISION)
        # inter: the carried state, seen by every row with its decay
        inter = tl.dot(a, state.to(a.dtype), input_precision=DOT_PRECISION)
        out += inter * a_weight[:, None]
        tl.store(
            out_base + (t0 + offs_t)[:, None] * DC + offs_c[None, :],
            (out * scale_a).to(out_ptr.dtype.element_ty),
            mask=t_valid[:, None] & c_valid[None, :],
        )

        # state: decay the old one over the block, add this block's decayed bᵀ c. The row weights
        # go on c (BLOCK_T × BLOCK_C values) rather than b (BLOCK_T × BLOCK_A): fewer to scale.
        c_decayed = (c.to(tl.float32) * b_weight[:, None]).to(c.dtype)
        state = state * tl.exp2(n.to(tl.float32) * log2_decay) + tl.dot(
            tl.trans(b), c_decayed, input_precision=DOT_PRECISION
        )

    if STORE_FINAL:
        is_last = (i_seg == 0) if REVERSE else (i_seg == tl.num_programs(1) - 1)
        if is_last:
            o_ptrs = state_out_ptr + i_bh * DA * DC + offs_a[:, None] * DC + offs_c[None, :]
            tl.store(o_ptrs, state, mask=a_valid[:, None] & c_valid[None, :])


@triton.jit
def _dkdv_kernel(
    q_ptr,  # [BH, T, DK]
    k_ptr,  # [BH, T, DK]
    v_ptr,  # [BH, T, DV]
    do_ptr,  # [BH, T, DV]
    dk_ptr,  # [BH, T, DK] out
    dv_ptr,  # [BH, T, DV] out
    log2_decay_ptr,
    state_in_ptr,  # [BH, n_seg, DK, DV] fp32: dKV entering each segment from its right (if HAS_STATE_IN)
    state_out_ptr,  # [BH, DK, DV] fp32: dKV after block 1, the initial state's gradient (if STORE_FINAL)
    T,
    H,
    seg_len,
    scale,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
    HAS_STATE_IN: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Algorithm 2's reverse sweep with dK and dV in one pass: q, k, v, dO read once per block.

    The same mathematics as two reverse ``_chunk_scan_kernel`` walks, but the whole ``DK × DV``
    gradient state lives in one program (eight warps hold it), so every input is read once.
    """
    i_seg = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    log2_decay = tl.load(log2_decay_ptr + i_bh % H)
    seg_start = i_seg * seg_len
    seg_end = tl.minimum(seg_start + seg_len, T)
    n_blocks = tl.cdiv(seg_end - seg_start, BLOCK_T)

    offs_t = tl.arange(0, BLOCK_T)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = tl.arange(0, BLOCK_V)
    k_valid = offs_k < DK
    v_valid = offs_v < DV
    kv_mask = k_valid[:, None] & v_valid[None, :]
    if HAS_STATE_IN:
        ptrs = state_in_ptr + (i_bh * tl.num_programs(1) + i_seg) * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
        dkv = tl.load(ptrs, mask=kv_mask, other=0.0)
    else:
        dkv = tl.zeros([BLOCK_K, BLOCK_V], dtype=tl.float32)

    # Reverse mask: entry (t, s) = λ^(s-t) for s ≥ t — the transpose of the forward's D.
    distance = offs_t[None, :] - offs_t[:, None]
    mask_weight = tl.where(distance >= 0, tl.exp2(tl.maximum(distance, 0).to(tl.float32) * log2_decay), 0.0) * scale

    base_k = i_bh * T * DK
    base_v = i_bh * T * DV
    for i in range(n_blocks):
        t0 = seg_start + (n_blocks - 1 - i) * BLOCK_T
        causal = (t0 + offs_t)[None, :] >= (t0 + offs_t)[:, None]  # rebuilt per block: see _chunk_scan_kernel
        n = tl.minimum(BLOCK_T, seg_end - t0)
        t_valid = offs_t < n
        j = (offs_t + 1).to(tl.float32)
        rows_k = (t0 + offs_t)[:, None] * DK + offs_k[None, :]
        rows_v = (t0 + offs_t)[:, None] * DV + offs_v[None, :]
        mk = t_valid[:, None] & k_valid[None, :]
        mv = t_valid[:, None] & v_valid[None, :]
        q = tl.load(q_ptr + base_k + rows_k, mask=mk, other=0.0)
        k = tl.load(k_ptr + base_k + rows_k, mask=mk, other=0.0)
        v = tl.load(v_ptr + base_v + rows_v, mask=mv, other=0.0)
        do = tl.load(do_ptr + base_v + rows_v, mask=mv, other=0.0)
        k_weight = tl.where(t_valid, tl.exp2(tl.maximum(n - j, 0.0) * log2_decay), 0.0)  # λ^(n-j)
        q_weight = tl.where(t_valid, tl.exp2(j * log2_decay), 0.0) * scale  # λ^j · scale

        dkv_low = dkv.to(q.dtype)
        # dV = [(Q Kᵀ) ⊙ D]ᵀ dO + (λ^(n-j) K) dKV
        s_kq = tl.where(causal, tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * mask_weight, 0.0)
        dv = tl.dot(s_kq.to(do.dtype), do, input_precision=DOT_PRECISION)
        dv += tl.dot(k, dkv_low, input_precision=DOT_PRECISION) * k_weight[:, None]
        # dK = [(dO Vᵀ) ⊙ D]ᵀ Q + (λ^(n-j) V) dKVᵀ
        s_vdo = tl.where(causal, tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION) * mask_weight, 0.0)
        dk = tl.dot(s_vdo.to(q.dtype), q, input_precision=DOT_PRECISION)
        dk += tl.dot(v, tl.trans(dkv_low), input_precision=DOT_PRECISION) * k_weight[:, None]
        tl.store(dk_ptr + base_k + rows_k, dk.to(dk_ptr.dtype.element_ty), mask=mk)
        tl.store(dv_ptr + base_v + rows_v, dv.to(dv_ptr.dtype.element_ty), mask=mv)
        # one block back: dKV = λ^n dKV + (Λ Q)ᵀ dO
        do_weighted = (do.to(tl.float32) * q_weight[:, None]).to(do.dtype)
        dkv = dkv * tl.exp2(n.to(tl.float32) * log2_decay) + tl.dot(tl.trans(q), do_weighted, input_precision=DOT_PRECISION)

    if STORE_FINAL:
        if i_seg == 0:
            tl.store(state_out_ptr + i_bh * DK * DV + offs_k[:, None] * DV + offs_v[None, :], dkv, mask=kv_mask)


@triton.jit
def _segment_state_kernel(
    b_ptr,  # [BH, T, DA]
    c_ptr,  # [BH, T, DC]
    log2_decay_ptr,
    local_ptr,  # [BH, n_seg, DA, DC] fp32 out: each segment's own state, started from zero
    T,
    H,
    seg_len,
    scale_b,
    DA: tl.constexpr,
    DC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_C: tl.constexpr,
    REVERSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Σ over the segment of λ^e · scale_b · b_tᵀ c_t, with e = (last - t) forward, (t - first + 1) reverse.

    No block depends on another here: this is one long matrix product per segment.
    """
    i_col = tl.program_id(0)
    i_seg = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    n_seg = tl.num_programs(1)
    log2_decay = tl.load(log2_decay_ptr + i_bh % H)

    seg_start = i_seg * seg_len
    seg_end = tl.minimum(seg_start + seg_len, T)
    offs_t = tl.arange(0, BLOCK_T)
    offs_a = tl.arange(0, BLOCK_A)
    offs_c = i_col * BLOCK_C + tl.arange(0, BLOCK_C)
    a_valid = offs_a < DA
    c_valid = offs_c < DC
    b_base = b_ptr + i_bh * T * DA
    c_base = c_ptr + i_bh * T * DC

    acc = tl.zeros([BLOCK_A, BLOCK_C], dtype=tl.float32)
    for t0 in range(seg_start, seg_end, BLOCK_T):
        t = t0 + offs_t
        t_valid = t < seg_end
        b = tl.load(b_base + t[:, None] * DA + offs_a[None, :], mask=t_valid[:, None] & a_valid[None, :], other=0.0)
        c = tl.load(c_base + t[:, None] * DC + offs_c[None, :], mask=t_valid[:, None] & c_valid[None, :], other=0.0)
        if REVERSE:
            e = (t - seg_start + 1).to(tl.float32)
        else:
            e = (seg_end - 1 - t).to(tl.float32)
        w = tl.where(t_valid, tl.exp2(tl.maximum(e, 0.0) * log2_decay), 0.0) * scale_b
        acc += tl.dot(tl.trans(b), (c.to(tl.float32) * w[:, None]).to(c.dtype), input_precision=DOT_PRECISION)

    ptrs = local_ptr + (i_bh * n_seg + i_seg) * DA * DC + offs_a[:, None] * DC + offs_c[None, :]
    tl.store(ptrs, acc, mask=a_valid[:, None] & c_valid[None, :])


@triton.jit
def _segment_scan_kernel(
    local_ptr,  # [BH, n_seg, DA*DC] fp32: each segment's own state
    start_ptr,  # [BH, DA*DC] fp32: the state entering the sequence (if HAS_START)
    entry_ptr,  # [BH, n_seg, DA*DC] fp32 out: the state entering each segment
    final_ptr,  # [BH, DA*DC] fp32 out: the state after the whole sequence
    T,
    H,
    n_seg,
    seg_len,
    log2_decay_ptr,
    SIZE: tl.constexpr,  # DA*DC
    BLOCK: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_START: tl.constexpr,
):
    """Exclusive decayed scan over segments: entry_s = λ^(len of previous) entry_prev + local_prev."""
    i_blk = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    log2_decay = tl.load(log2_decay_ptr + i_bh % H)
    offs = i_blk * BLOCK + tl.arange(0, BLOCK)
    valid = offs < SIZE
    if HAS_START:
        x = tl.load(start_ptr + i_bh * SIZE + offs, mask=valid, other=0.0)
    else:
        x = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(n_seg):
        s = (n_seg - 1 - i) if REVERSE else i
        tl.store(entry_ptr + (i_bh * n_seg + s) * SIZE + offs, x, mask=valid)
        length = tl.minimum(seg_len, T - s * seg_len).to(tl.float32)
        local = tl.load(local_ptr + (i_bh * n_seg + s) * SIZE + offs, mask=valid, other=0.0)
        x = x * tl.exp2(length * log2_decay) + local
    tl.store(final_ptr + i_bh * SIZE + offs, x, mask=valid)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _column_block(da: int, dc: int, cfg: Config) -> int:
    if cfg.block_c is not None:
        block = cfg.block_c
    else:
        block = 64 if next_power_of_2(da) <= 128 else 32
    # keep the fp32 state tile (BLOCK_A × BLOCK_C) within 128 × 128 registers' worth
    block = min(block, max(16, 16384 // max(16, next_power_of_2(da))))
    return max(16, min(block, next_power_of_2(dc)))


def _segment_entries(b, c, log2_decay, start, *, seg_len, n_seg, scale_b, reverse, chunk_size, cfg):
    """States entering each segment ``[BH, n_seg, DA, DC]`` and the state after everything ``[BH, DA, DC]``."""
    BH, T, DA = b.shape
    DC = c.shape[-1]
    H = log2_decay.shape[0]
    block_a, block_c = max(16, next_power_of_2(DA)), _column_block(DA, DC, cfg)
    local = empty(BH, n_seg, DA, DC, device=b.device, dtype=torch.float32)
    grid = (triton.cdiv(DC, block_c), n_seg, BH)
    launch(
        _segment_state_kernel, grid, b, c, log2_decay, local, T, H, seg_len, scale_b,
        DA=DA, DC=DC, BLOCK_T=chunk_size, BLOCK_A=block_a, BLOCK_C=block_c,
        REVERSE=reverse, DOT_PRECISION=_dot_precision(b.dtype), num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )  # fmt: skip
    entry = empty(*local.shape, device=b.device, dtype=torch.float32)
    final = empty(BH, DA, DC, device=b.device, dtype=torch.float32)
    block = min(1024, next_power_of_2(DA * DC))
    launch(
        _segment_scan_kernel, (triton.cdiv(DA * DC, block), BH), local, start if start is not None else local, entry, final, T, H, n_seg, seg_len, log2_decay,
        SIZE=DA * DC, BLOCK=block, REVERSE=reverse, HAS_START=start is not None, num_warps=cfg.num_warps,
    )  # fmt: skip
    return entry, final


def _chunk_scan(a, b, c, log2_decay, entry, *, seg_len, n_seg, scale_a, scale_b, reverse, chunk_size, cfg,
                transpose_entry=False, store_final=False):  # fmt: skip
    """Launch ``_chunk_scan_kernel``; ``entry`` holds the state entering each segment (or is None)."""
    BH, T, DA = a.shape
    DC = c.shape[-1]
    H = log2_decay.shape[0]
    block_a, block_c = max(16, next_power_of_2(DA)), _column_block(DA, DC, cfg)
    out = empty(BH, T, DC, device=a.device, dtype=a.dtype)
    final = empty(BH, DA, DC, device=a.device, dtype=torch.float32) if store_final else out
    if entry is not None:
        # entry is [BH, n_seg, rows, cols]; the kernel reads element (bh, s, i, j) with i along DA.
        s_bh, s_seg, s_row, s_col = entry.stride()
        if transpose_entry:
            s_row, s_col = s_col, s_row
    else:
        s_bh = s_seg = s_row = s_col = 0
    grid = (triton.cdiv(DC, block_c), n_seg, BH)
    launch(
        _chunk_scan_kernel, grid, a, b, c, out, log2_decay, entry if entry is not None else out, final,
        T, H, seg_len, scale_a, scale_b, s_bh, s_seg, s_row, s_col,
        DA=DA, DC=DC, BLOCK_T=chunk_size, BLOCK_A=block_a, BLOCK_C=block_c,
        REVERSE=reverse, HAS_STATE_IN=entry is not None, STORE_FINAL=store_final,
        DOT_PRECISION=_dot_precision(a.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out, (final if store_final else None)


def _dkdv(q, k, v, do, log2_decay, d_entry, *, scale, seg_len, n_seg, chunk_size, cfg, store_final):
    """Launch ``_dkdv_kernel``: ``(dk, dv, gradient of the initial state or None)``."""
    BH, T, DK = q.shape
    DV = v.shape[-1]
    dk = empty(*k.shape, device=k.device, dtype=k.dtype)
    dv = empty(*v.shape, device=v.device, dtype=v.dtype)
    final = empty(BH, DK, DV, device=q.device, dtype=torch.float32) if store_final else dk
    launch(
        _dkdv_kernel, (1, n_seg, BH), q, k, v, do, dk, dv, log2_decay, d_entry if d_entry is not None else dk, final, T,
        log2_decay.shape[0], seg_len, scale,
        DK=DK, DV=DV, BLOCK_T=chunk_size, BLOCK_K=max(16, next_power_of_2(DK)),
        BLOCK_V=max(16, next_power_of_2(DV)), HAS_STATE_IN=d_entry is not None, STORE_FINAL=store_final,
        DOT_PRECISION=_dot_precision(q.dtype), num_warps=8, num_stages=cfg.num_stages,
    )  # fmt: skip
    return dk, dv, (final if store_final else None)


def _plan_segments(B: int, H: int, T: int, V: int, K: int, chunk_size: int, segment_size, device, cfg: Config) -> int:
    """Tokens per segment: the whole sequence unless that leaves the GPU under-filled."""
    if segment_size is not None:
        return segment_size
    if INTERPRETER or device.type != "cuda":
        return max(chunk_size, triton.cdiv(T, chunk_size) * chunk_size)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = B * H * triton.cdiv(V, _column_block(K, V, cfg))
    if programs >= cfg.segment_below_programs_per_sm * sms:
        # Enough independent walks already: segments would cost an extra pass over k and v.
        return triton.cdiv(T, chunk_size) * chunk_size
    wanted = cfg.segment_target_programs_per_sm * sms
    # Rounded down, not up: one walk more than the GPU holds at once costs a whole second wave of
    # walks (B=2, H=16, T=32k: 9 segments measured 2.61 ms forward+backward, 8 segments 2.16 ms).
    n_seg = max(1, min(triton.cdiv(T, 8 * chunk_size), int(wanted // programs)))
    return triton.cdiv(triton.cdiv(T, n_seg), chunk_size) * chunk_size


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------


class _LightningAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, log2_decay, initial_state, scale, chunk_size, seg_len, cfg):
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not zeros
        B, H, T, K = q.shape
        V = v.shape[-1]
        q3, k3, v3 = (x.reshape(B * H, T, x.shape[-1]) for x in (q, k, v))
        n_seg = triton.cdiv(T, seg_len)
        start = None if initial_state is None else initial_state.reshape(B * H, K, V)
        if n_seg > 1:
            entry, _ = _segment_entries(
                k3, v3, log2_decay, start, seg_len=seg_len, n_seg=n_seg, scale_b=1.0, reverse=False,
                chunk_size=chunk_size, cfg=cfg,
            )  # fmt: skip
        else:
            entry = None if start is None else start.reshape(B * H, 1, K, V)
        o, final = _chunk_scan(
            q3, k3, v3, log2_decay, entry, seg_len=seg_len, n_seg=n_seg, scale_a=scale, scale_b=1.0,
            reverse=False, chunk_size=chunk_size, cfg=cfg, store_final=True,
        )  # fmt: skip
        ctx.save_for_backward(q3, k3, v3, log2_decay, entry)
        ctx.meta = (B, H, T, K, V, scale, chunk_size, seg_len, n_seg, initial_state is not None, cfg)
        return o.reshape(B, H, T, V), final.reshape(B, H, K, V)

    @staticmethod
    def backward(ctx, do, d_final):
        q3, k3, v3, log2_decay, entry = ctx.saved_tensors
        B, H, T, K, V, scale, chunk_size, seg_len, n_seg, has_initial, cfg = ctx.meta
        if do is None:  # only the final state was used
            do = torch.zeros(B, H, T, V, device=q3.device, dtype=q3.dtype)
        do3 = do.reshape(B * H, T, V).to(q3.dtype).contiguous()
        d_final3 = None if d_final is None else d_final.reshape(B * H, K, V).float().contiguous()
        common = dict(seg_len=seg_len, n_seg=n_seg, chunk_size=chunk_size, cfg=cfg)

        # dQ: the forward walk over (dO, v, k), against the forward's states transposed.
        dq, _ = _chunk_scan(do3, v3, k3, log2_decay, entry, scale_a=scale, scale_b=1.0, reverse=False,
                            transpose_entry=True, **common)  # fmt: skip

        # dK, dV: the backward walk; the carried gradient starts from d(final state).
        if n_seg > 1:
            d_entry, d_initial = _segment_entries(
                q3, do3, log2_decay, d_final3, seg_len=seg_len, n_seg=n_seg, scale_b=scale, reverse=True,
                chunk_size=chunk_size, cfg=cfg,
            )  # fmt: skip
        else:
            d_entry = None if d_final3 is None else d_final3.reshape(B * H, 1, K, V)
        if cfg.fused_dkdv and max(K, V) <= 128:
            dk, dv, d_initial_1 = _dkdv(q3, k3, v3, do3, log2_decay, d_entry, scale=scale,
                                        store_final=has_initial and n_seg == 1, **common)  # fmt: skip
        else:
            dv, d_initial_1 = _chunk_scan(k3, q3, do3, log2_decay, d_entry, scale_a=1.0, scale_b=scale, reverse=True,
                                          store_final=has_initial and n_seg == 1, **common)  # fmt: skip
            dk, _ = _chunk_scan(v3, do3, q3, log2_decay, d_entry, scale_a=1.0, scale_b=scale, reverse=True,
                                transpose_entry=True, **common)  # fmt: skip
        d_init = None
        if has_initial:
            d_init = (d_initial if n_seg > 1 else d_initial_1).reshape(B, H, K, V)
        return (
            dq.reshape(B, H, T, K),
            dk.reshape(B, H, T, K),
            dv.reshape(B, H, T, V),
            None,
            d_init,
            None,
            None,
            None,
            None,
        )


def _log2_decay(decay, H: int, device: torch.device) -> torch.Tensor:
    """``log2 λ`` as an fp32 ``[H]`` tensor on ``device``, after checking ``0 < λ ≤ 1``.

    Rates given on the host (a sequence, a NumPy array, a CPU tensor) are checked there and their
    device copy is cached, so a training step pays no host-device synchronisation; rates given as a
    CUDA tensor are checked with one synchronisation per call.
    """
    if isinstance(decay, torch.Tensor) and decay.device.type != "cpu":
        decay = decay.detach().double()
        if decay.shape != (H,):
            raise ValueError(f"decay must have shape [H] = [{H}], got {tuple(decay.shape)}")
        if not bool(((decay > 0) & (decay <= 1)).all()):
            raise ValueError("decay must lie in (0, 1] for every head")
        return torch.log2(decay).float().to(device).contiguous()
    try:
        values = torch.as_tensor(decay, dtype=torch.float64).detach()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"decay must be a sequence or array of H = {H} rates, got {type(decay).__name__}") from err
    if values.shape != (H,):
        raise ValueError(f"decay must have shape [H] = [{H}], got {tuple(values.shape)}")
    if not bool(((values > 0) & (values <= 1)).all()):
        raise ValueError("decay must lie in (0, 1] for every head")
    return _cached_log2_decay(tuple(values.tolist()), str(device))


@functools.lru_cache(maxsize=64)
def _cached_log2_decay(values: tuple, device: str) -> torch.Tensor:
    return torch.log2(torch.tensor(values, dtype=torch.float64)).float().to(device)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay,
    *,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    segment_size: int | None = None,
    config: Config | None = None,
):
    r"""Lightning Attention-2 (causal linear attention with a per-head decay), differentiable.

    Args:
        q: ``[B, H, T, K]`` queries (fp32, fp16 or bf16; CUDA, or CPU under the interpreter, where
            bf16 is computed in fp32 because the interpreter's bf16 arithmetic is wrong).
        k: ``[B, H, T, K]`` keys, same dtype and device.
        v: ``[B, H, T, V]`` values.
        decay: ``[H]`` rates ``λ`` in ``(0, 1]`` (a tensor or a sequence; no gradient flows to it).
        scale: multiplies ``q`` (default 1.0, the paper's math).
        initial_state: optional ``[B, H, K, V]`` state before the first token (any float dtype;
            used in fp32); it receives a gradient.
        output_final_state: also return the state after the last token (fp32 ``[B, H, K, V]``),
            through which gradients flow back.
        chunk_size: block length ``C`` (16, 32, 64 or 128; 64 is tuned for the H100).
        segment_size: tokens per independently scheduled segment (a multiple of ``chunk_size``);
            ``None`` chooses from the GPU's size.
        config: launch settings (``Config``); ``None`` uses ``DEFAULT_CONFIG``.

    Returns:
        ``o: [B, H, T, V]`` in the dtype of ``q`` — or ``(o, final_state)``.

    Heads of width up to 256 are supported (``K, V ≤ 256``), with ``T · max(K, V) < 2^31`` and
    ``B · H ≤ 65535``.
    """
    B, H, T, K, V = check_qkv(q, k, v)
    chunk_size = _triton.check_chunk_size("chunk_size", chunk_size)
    if T * max(K, V) >= 2**31:
        raise ValueError(f"T · max(K, V) must stay below 2^31 (32-bit offsets), got T={T}, K={K}, V={V}")
    if B * H > 65535:
        raise ValueError(f"B · H must be at most 65535 (a CUDA grid dimension), got B={B}, H={H}")
    if segment_size is not None and (
        isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size < chunk_size
        or segment_size % chunk_size
    ):  # fmt: skip
        raise ValueError(f"segment_size must be a positive multiple of chunk_size={chunk_size}, got {segment_size!r}")
    scale = _triton.check_scale(scale)
    _triton.check_flag("output_final_state", output_final_state)
    cfg = DEFAULT_CONFIG if config is None else _triton.check_config(config, Config)
    log2_decay = _log2_decay(decay, H, q.device)
    initial_state = _triton.check_initial_state(initial_state, (B, H, K, V), q.device)
    if initial_state is not None:
        initial_state = initial_state.float().contiguous()

    if _triton.interpreter_upcasts(q.dtype):
        o, final = attention(q.float(), k.float(), v.float(), decay, scale=scale, initial_state=initial_state,
                             output_final_state=True, chunk_size=chunk_size, segment_size=segment_size,
                             config=config)  # fmt: skip
        o = o.to(q.dtype)
        return (o, final) if output_final_state else o

    seg_len = _plan_segments(B, H, T, V, K, chunk_size, segment_size, q.device, cfg)
    o, final = _LightningAttention.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), log2_decay, initial_state, scale, chunk_size, seg_len, cfg
    )
    return (o, final) if output_final_state else o
