r"""Gated Linear Attention in Triton: forward and backward (``d log_alpha`` included), any length.

``attention(q, k, v, log_alpha, *, scale=1.0)`` computes the same function as
``reference.gla.chunked`` (ALGORITHMS.md §3)::

    S_t = Diag(α_t) S_{t-1} + k_tᵀ v_t,    o_t = scale · q_t S_t,    α_t = exp(log_alpha_t) ∈ (0, 1]^K

Design (for the H100; what the benchmark measures)
--------------------------------------------------
*Which FlashLinearAttention variant: the materialised one.* The non-materialised variant keeps the
``K × V`` state on chip and walks the chunks of one (batch, head) in order; its parallelism is
``B·H·(V/BV)`` programs. At ``B=2, H=16, T=32k`` that is 32 (b, h) pairs — 128 programs with
``BV = 32``, each 512 chunks long — and every one of them must also rebuild the whole intra-chunk
matrix (a ``C × C × K`` computation with per-channel gates, the expensive part of GLA) for its own
slice of ``V``. The materialised variant splits the work by what it depends on:

1. ``_fwd_states_kernel`` — the only sequential pass, over ``K × V`` states only: one program per
   ``(BK × BV tile, b, h)`` walks the chunks and writes the state entering every chunk
   (``S_[i]``, in the input dtype; the final state also in fp32). Per chunk it does one
   ``[BK, C] × [C, BV]`` product: cheap work, so its latency-bound walk is short. Without a
   ``config`` the state tile shrinks (down to 32 × 32) when ``B·H`` is small, so that there are at
   least two programs per multiprocessor (``B=2, H=16``: 512 instead of 128).
2. ``_fwd_intra_kernel`` — fully parallel over (chunk, b, h): the intra-chunk matrix ``P``
   (``C × C``, computed in fp32, stored in the input dtype that its readers round it to anyway) by
   *secondary chunking on chip*, sub-chunks of 16. Off-diagonal sub-blocks are ``tl.dot`` products
   of ``Q_u ⊙ e^{b − b_n}`` and ``K_w ⊙ e^{b_n − b}``. Diagonal sub-blocks are exact, by *recursive
   halving* (``_diagonal_level``): a query ``j`` and a key ``s < j`` of one sub-chunk first split at
   some level ``L`` (rows grouped in blocks of ``2^(L+1)``, ``j`` in the upper half, ``s`` in the
   lower); the block's midpoint ``r`` lies between them, so ``e^{b_j − b_s} = e^{b_j − b_r} ·
   e^{b_r − b_s}`` with both exponents ``≤ 0``, and all pairs of one level form one 16 × 16
   product. Four levels and the gate-free diagonal ``q_j · k_j`` cover the sub-block on the tensor
   cores. (The first version walked the 16 rows one at a time with a running product of gates; on
   the H100 that serial loop made the forward 1.6× slower than fla — ``docs/benchmarks/gla_perf_log.md``.)
3. ``_fwd_output_kernel`` — fully parallel over (chunk, V tile, b, h): two chunk-sized products
   ``O = P V + (Q ⊙ e^b) S_[i]`` (``M = C`` rows: Hopper's warpgroup MMA shape).

The backward mirrors it: ``_bwd_dstates_kernel`` (the reverse sequential pass,
``dS_[i] = Diag(e^{b_C}) dS_[i+1] + (Q ⊙ e^b)ᵀ dO``), ``_bwd_dv_kernel`` (parallel over chunks:
``dV = Pᵀ dO + (K ⊙ e^{b_C − b}) dS_[i+1]`` and ``dP = (dO Vᵀ) ⊙ M``), and ``_bwd_dqk_kernel``
(parallel over chunks and tiles of ``K`` — everything in it is separable over key channels: the
intra ``dQ, dK`` by secondary chunking, the diagonal sub-blocks by the same halving levels, two
products per level, plus the inter terms and ``d log_alpha``: ``∂L/∂b = q ⊙ dq − k ⊙ dk`` (plus
``Σ_v S_[i+1] ⊙ dS_[i+1]`` on the chunk's last row), summed backwards *within each chunk* only).
``reference.gla.chunked_backward`` is the same algorithm in NumPy/PyTorch.

What it costs: the states are the price of parallelism — one ``K × V`` state per chunk written and
read (in bf16 at ``C = 64``: 512 bytes per token and head, beside 1280 bytes of ``q, k, v, g, o``);
``C = 128`` halves that and doubles the intra work, so the benchmark sweeps both. Every exponent in
every kernel is ``≤ 0`` (differences of the running sum of ``log α`` inside one chunk), so nothing
overflows however small the gates. Inputs are fp32, fp16 or bf16 (``log_alpha`` may have its own
dtype); all products accumulate in fp32; the running states are fp32 on chip. fp32 inputs use IEEE
fp32 products on the GPU (``input_precision="ieee"``, no tf32); fp16/bf16 products take operands in
the input dtype.

Shapes: ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]``, ``log_alpha: [B, H, T, K]`` (``≤ 0``; not
checked on the device, which would cost a synchronisation), states ``[B, H, K, V]``; ``K, V ≤ 256``.
Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from kernels._triton import INTERPRETER, check_device, check_qkv, next_power_of_2

__all__ = ["attention", "Config", "DEFAULT_CONFIG"]

SUB = 16  # the secondary chunk: the smallest tile tl.dot accepts on the GPU
LEVELS = 4  # log2(SUB): the halving levels of an exact diagonal sub-block


@dataclass(frozen=True)
class Config:
    """Launch settings (the benchmark sweeps them; results do not depend on them beyond rounding).

    Attributes:
        chunk_size: ``C``, tokens per chunk: 16, 32, 64 or 128.
        state_block_k, state_block_v: the ``BK × BV`` state tile of the two sequential kernels
            (smaller tiles: more programs in parallel when ``B·H`` is small).
        block_k, block_v: tiles over ``K`` and ``V`` in the parallel kernels (narrowed where their
            operands would not fit in shared memory: fp32 inputs, ``C = 128``, ``K = 256``).
        dqk_block_k: the key columns per program of the dQ/dK kernel (it splits ``K``).
        num_warps, num_stages: for the parallel kernels.
        state_num_warps, state_num_stages: for the sequential kernels.
    """

    chunk_size: int = 64
    state_block_k: int = 64
    state_block_v: int = 64
    block_k: int = 64
    block_v: int = 64
    dqk_block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2
    state_num_warps: int = 4
    state_num_stages: int = 2

    def clipped(self, K: int, V: int) -> "Config":
        """Tiles no wider than the padded head widths (powers of two, at least 16)."""
        pk, pv = max(16, next_power_of_2(K)), max(16, next_power_of_2(V))
        return replace(
            self,
            state_block_k=min(self.state_block_k, pk),
            state_block_v=min(self.state_block_v, pv),
            block_k=min(self.block_k, pk),
            block_v=min(self.block_v, pv),
            dqk_block_k=min(self.dqk_block_k, pk),
        )


DEFAULT_CONFIG = Config()


def _auto_config(B: int, H: int, K: int, V: int, device: torch.device) -> Config:
    """``DEFAULT_CONFIG``, with smaller state tiles when ``B·H`` alone would leave the GPU idle.

    The two sequential kernels run one program per ``(state tile, b, h)``; each walks every chunk.
    Below about two programs per multiprocessor their walks are latency-bound, so the state tile
    shrinks (64 × 64 → 32 × 64 → 32 × 32) until there are (e.g. ``B = 2, H = 16``: 128 → 512 programs).
    """
    if device.type != "cuda":
        return DEFAULT_CONFIG
    wanted = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    for bk, bv in ((64, 64), (32, 64), (32, 32)):
        if B * H * triton.cdiv(K, bk) * triton.cdiv(V, bv) >= wanted:
            break
    return replace(DEFAULT_CONFIG, state_block_k=bk, state_block_v=bv)


# --------------------------------------------------------------------------------------------
# Forward kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _fwd_states_kernel(
    k_ptr,  # [BH, T, K]
    v_ptr,  # [BH, T, V]
    g_ptr,  # [BH, T, K] log_alpha
    h0_ptr,  # [BH, K, V] fp32 initial state (if HAS_H0)
    h_ptr,  # [BH, NT + 1, K, V] out: the state before chunk i (slot NT: the final state)
    ht_ptr,  # [BH, K, V] fp32 out: the final state
    T,
    NT,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_H0: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """S_[i+1] = Diag(e^{b_C}) S_[i] + (K_i ⊙ e^{b_C − b})ᵀ V_i, one BK × BV tile, chunks in order."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = tl.arange(0, C)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    kv_off = o_k[:, None] * V + o_v[None, :]
    k_base = k_ptr + i_bh * T * K
    g_base = g_ptr + i_bh * T * K
    v_base = v_ptr + i_bh * T * V
    h_base = h_ptr + i_bh * (NT + 1) * K * V
    dt = v_ptr.dtype.element_ty

    state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        state += tl.load(h0_ptr + i_bh * K * V + kv_off, mask=m_kv, other=0.0)
    for i_t in range(NT):
        tl.store(h_base + i_t * K * V + kv_off, state.to(h_ptr.dtype.element_ty), mask=m_kv)
        rows = i_t * C + o_t
        m_t = rows < T
        # keys and gates transposed: [BK, C]
        m_kt = m_k[:, None] & m_t[None, :]
        k_t = tl.load(k_base + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0.0).to(tl.float32)
        g_t = tl.load(g_base + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0.0).to(tl.float32)
        v_c = tl.load(v_base + rows[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        b = tl.cumsum(g_t, axis=1)  # padded rows have g = 0: b stays at the last real value
        b_last = tl.sum(tl.where(o_t[None, :] == C - 1, b, 0.0), axis=1)  # [BK]
        k_hat = (k_t * tl.exp(tl.minimum(b_last[:, None] - b, 0.0))).to(dt)
        state = state * tl.exp(b_last)[:, None] + tl.dot(k_hat, v_c, input_precision=PRECISION)
    tl.store(h_base + NT * K * V + kv_off, state.to(h_ptr.dtype.element_ty), mask=m_kv)
    tl.store(ht_ptr + i_bh * K * V + kv_off, state, mask=m_kv)


@triton.jit
def _diagonal_level(c, L, SUB: tl.constexpr):
    """Level ``L`` of the exact diagonal sub-block: pairs that first split at block size ``2^(L+1)``.

    ``c`` is the cumulative gate inside one sub-chunk, ``[SUB, BK]`` fp32. Rows are grouped in blocks
    of ``2^(L+1)``; a query ``j`` in the upper half of a block and a key ``s`` in the lower half of
    the *same* block are separated by the block's midpoint ``r`` (the last row of the lower half), so

        e^{c_j − c_s} = e^{c_j − c_r} · e^{c_r − c_s}        both exponents ≤ 0

    and all such pairs of one level are one matrix product. Levels 0..log2(SUB)-1 cover every pair
    ``s < j`` exactly once (the level is the highest bit in which ``j`` and ``s`` differ); the pairs
    ``s = j`` need no gate. ``c_r`` is gathered by a product with a 0/1 selection matrix in IEEE fp32
    (one 1.0 per row: exact). Returns ``(eq, ek, pairs)``: ``eq = e^{c − c_r}`` on upper-half rows
    and 0 elsewhere, ``ek = e^{c_r − c}`` on lower-half rows and 0 elsewhere, and the ``[SUB, SUB]``
    mask of this level's (query, key) pairs.
    """
    o_s = tl.arange(0, SUB)
    ref = ((o_s >> (L + 1)) << (L + 1)) + (1 << L) - 1  # the midpoint row of each row's block
    select = (o_s[None, :] == ref[:, None]).to(tl.float32)
    c_ref = tl.dot(select, c, input_precision="ieee")
    upper = ((o_s >> L) & 1) == 1
    eq = tl.where(upper[:, None], tl.exp(tl.minimum(c - c_ref, 0.0)), 0.0)
    ek = tl.where(upper[:, None], 0.0, tl.exp(tl.minimum(c_ref - c, 0.0)))
    same_block = (o_s[:, None] >> (L + 1)) == (o_s[None, :] >> (L + 1))
    pairs = same_block & upper[:, None] & (((o_s >> L) & 1) == 0)[None, :]
    return eq, ek, pairs


@triton.jit
def _fwd_intra_kernel(
    q_ptr,  # [BH, T, K]
    k_ptr,  # [BH, T, K]
    g_ptr,  # [BH, T, K]
    A_ptr,  # [BH, NT, C, C] out, input dtype: P of every chunk (zeros above the diagonal)
    scale,
    T,
    NT,
    K: tl.constexpr,
    C: tl.constexpr,
    SUB: tl.constexpr,
    LEVELS: tl.constexpr,
    BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """P_js = Σ_k q_jk k_sk e^{b_jk − b_sk} (s ≤ j) for one chunk, by secondary chunking.

    Off-diagonal sub-blocks: products after rescaling by b_n (first row of the query sub-chunk).
    Diagonal sub-blocks: exact, by ``LEVELS`` products of the recursive halving in
    ``_diagonal_level`` plus the gate-free diagonal ``q_j · k_j``. Every exponent is ≤ 0.
    """
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    NC: tl.constexpr = C // SUB
    o_s = tl.arange(0, SUB)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    base = i_bh * T * K
    A_base = A_ptr + (i_bh * NT + i_t) * C * C
    a_dt = A_ptr.dtype.element_ty
    dt = q_ptr.dtype.element_ty
    c0 = i_t * C
    eye = o_s[:, None] == o_s[None, :]

    carry_u = tl.zeros([BK], dtype=tl.float32)  # cumulative gate before sub-chunk u
    for u in range(NC):
        rows_u = c0 + u * SUB + o_s
        m_u = (rows_u < T)[:, None] & m_k[None, :]
        off_u = base + rows_u[:, None] * K + o_k[None, :]
        q_u = tl.load(q_ptr + off_u, mask=m_u, other=0.0).to(tl.float32) * scale
        k_u = tl.load(k_ptr + off_u, mask=m_u, other=0.0).to(tl.float32)
        g_u = tl.load(g_ptr + off_u, mask=m_u, other=0.0).to(tl.float32)
        c_u = tl.cumsum(g_u, axis=0)
        # b_n: the cumulative gate at the first row of u (that row's gate, loaded on its own)
        first = c0 + u * SUB
        g_first = tl.load(g_ptr + base + first * K + o_k, mask=m_k & (o_k * 0 + first < T), other=0.0)
        b_n = carry_u + g_first.to(tl.float32)
        q_hat = (q_u * tl.exp(tl.minimum(c_u - g_first.to(tl.float32)[None, :], 0.0))).to(dt)

        # off-diagonal sub-blocks: products after rescaling by b_n
        carry_w = tl.zeros([BK], dtype=tl.float32)
        for w in range(0, u):
            rows_w = c0 + w * SUB + o_s
            off_w = base + rows_w[:, None] * K + o_k[None, :]
            m_w = (rows_w < T)[:, None] & m_k[None, :]
            k_w = tl.load(k_ptr + off_w, mask=m_w, other=0.0).to(tl.float32)
            g_w = tl.load(g_ptr + off_w, mask=m_w, other=0.0).to(tl.float32)
            b_w = carry_w[None, :] + tl.cumsum(g_w, axis=0)
            k_hat = (k_w * tl.exp(tl.minimum(b_n[None, :] - b_w, 0.0))).to(dt)
            a_uw = tl.dot(q_hat, tl.trans(k_hat), input_precision=PRECISION)
            tl.store(A_base + (u * SUB + o_s)[:, None] * C + (w * SUB + o_s)[None, :], a_uw.to(a_dt))
            carry_w += tl.sum(g_w, axis=0)

        # diagonal sub-block, exact: q_j · k_j on the diagonal, then the halving levels
        a_uu = tl.where(eye, tl.sum(q_u * k_u, axis=1)[:, None], 0.0)
        for L in range(LEVELS):
            eq, ek, pairs = _diagonal_level(c_u, L, SUB)
            q_l = (q_u * eq).to(dt)
            k_l = (k_u * ek).to(dt)
            a_uu += tl.where(pairs, tl.dot(q_l, tl.trans(k_l), input_precision=PRECISION), 0.0)
        tl.store(A_base + (u * SUB + o_s)[:, None] * C + (u * SUB + o_s)[None, :], a_uu.to(a_dt))

        # zeros above the diagonal, so that P is fully defined
        for w in range(u + 1, NC):
            tl.store(A_base + (u * SUB + o_s)[:, None] * C + (w * SUB + o_s)[None, :], tl.zeros([SUB, SUB], dtype=a_dt))
        carry_u += tl.sum(g_u, axis=0)


@triton.jit
def _fwd_output_kernel(
    q_ptr,  # [BH, T, K]
    v_ptr,  # [BH, T, V]
    g_ptr,  # [BH, T, K]
    h_ptr,  # [BH, NT + 1, K, V]
    A_ptr,  # [BH, NT, C, C] input dtype
    o_ptr,  # [BH, T, V] out
    scale,
    T,
    NT,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """O = P V + (Q ⊙ e^b) S_[i] for one chunk and one BV tile of V."""
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = tl.arange(0, C)
    rows = i_t * C + o_t
    m_t = rows < T
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    dt = v_ptr.dtype.element_ty
    h_base = h_ptr + (i_bh * (NT + 1) + i_t) * K * V

    acc = tl.zeros([C, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        off = i_bh * T * K + rows[:, None] * K + o_k[None, :]
        m_tk = m_t[:, None] & m_k[None, :]
        q_c = tl.load(q_ptr + off, mask=m_tk, other=0.0).to(tl.float32) * scale
        g_c = tl.load(g_ptr + off, mask=m_tk, other=0.0).to(tl.float32)
        q_hat = (q_c * tl.exp(tl.cumsum(g_c, axis=0))).to(dt)
        h_c = tl.load(h_base + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        acc += tl.dot(q_hat, h_c.to(dt), input_precision=PRECISION)
    A_base = A_ptr + (i_bh * NT + i_t) * C * C
    P = tl.load(A_base + o_t[:, None] * C + o_t[None, :])
    P = tl.where(o_t[:, None] >= o_t[None, :], P, 0.0).to(dt)
    m_tv = m_t[:, None] & m_v[None, :]
    v_c = tl.load(v_ptr + i_bh * T * V + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
    acc += tl.dot(P, v_c, input_precision=PRECISION)
    tl.store(o_ptr + i_bh * T * V + rows[:, None] * V + o_v[None, :], acc.to(o_ptr.dtype.element_ty), mask=m_tv)


# --------------------------------------------------------------------------------------------
# Backward kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _bwd_dstates_kernel(
    q_ptr,  # [BH, T, K]
    g_ptr,  # [BH, T, K]
    do_ptr,  # [BH, T, V]
    dht_ptr,  # [BH, K, V] fp32 gradient of the final state (if HAS_DHT)
    dh_ptr,  # [BH, NT, K, V] out: gradient w.r.t. the state after chunk i
    dh0_ptr,  # [BH, K, V] fp32 out: gradient w.r.t. the initial state (if HAS_H0)
    scale,
    T,
    NT,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_DHT: tl.constexpr,
    HAS_H0: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dS_[i] = Diag(e^{b_C}) dS_[i+1] + (Q_i ⊙ e^b)ᵀ dO_i, chunks from the last to the first."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = tl.arange(0, C)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    kv_off = o_k[:, None] * V + o_v[None, :]
    q_base = q_ptr + i_bh * T * K
    g_base = g_ptr + i_bh * T * K
    do_base = do_ptr + i_bh * T * V
    dh_base = dh_ptr + i_bh * NT * K * V
    dt = do_ptr.dtype.element_ty

    dstate = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dstate += tl.load(dht_ptr + i_bh * K * V + kv_off, mask=m_kv, other=0.0)
    for i in range(NT):
        i_t = NT - 1 - i
        tl.store(dh_base + i_t * K * V + kv_off, dstate.to(dh_ptr.dtype.element_ty), mask=m_kv)
        rows = i_t * C + o_t
        m_t = rows < T
        m_kt = m_k[:, None] & m_t[None, :]
        q_t = tl.load(q_base + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0.0).to(tl.float32) * scale
        g_t = tl.load(g_base + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0.0).to(tl.float32)
        do_c = tl.load(do_base + rows[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        b = tl.cumsum(g_t, axis=1)
        b_last = tl.sum(tl.where(o_t[None, :] == C - 1, b, 0.0), axis=1)
        q_hat = (q_t * tl.exp(b)).to(dt)
        dstate = dstate * tl.exp(b_last)[:, None] + tl.dot(q_hat, do_c, input_precision=PRECISION)
    if HAS_H0:
        tl.store(dh0_ptr + i_bh * K * V + kv_off, dstate, mask=m_kv)


@triton.jit
def _bwd_dv_kernel(
    k_ptr,  # [BH, T, K]
    v_ptr,  # [BH, T, V]
    g_ptr,  # [BH, T, K]
    A_ptr,  # [BH, NT, C, C] input dtype (from the forward)
    do_ptr,  # [BH, T, V]
    dh_ptr,  # [BH, NT, K, V]
    dv_ptr,  # [BH, T, V] out
    dA_ptr,  # [BH, NT, C, C] fp32 out: (dO Vᵀ) ⊙ M
    T,
    NT,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dV = Pᵀ dO + (K ⊙ e^{b_C − b}) dS_[i+1] and dP = (dO Vᵀ) ⊙ M for one chunk."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_t = tl.arange(0, C)
    rows = i_t * C + o_t
    m_t = rows < T
    causal = o_t[:, None] >= o_t[None, :]
    dt = v_ptr.dtype.element_ty
    A_off = (i_bh * NT + i_t) * C * C + o_t[:, None] * C + o_t[None, :]
    dh_base = dh_ptr + (i_bh * NT + i_t) * K * V
    P = tl.where(causal, tl.load(A_ptr + A_off), 0.0).to(dt)

    dP = tl.zeros([C, C], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        off_v = i_bh * T * V + rows[:, None] * V + o_v[None, :]
        do_c = tl.load(do_ptr + off_v, mask=m_tv, other=0.0)
        v_c = tl.load(v_ptr + off_v, mask=m_tv, other=0.0)
        dP += tl.dot(do_c, tl.trans(v_c), input_precision=PRECISION)
        dv = tl.dot(tl.trans(P), do_c, input_precision=PRECISION)
        for i_k in range(0, tl.cdiv(K, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            m_k = o_k < K
            off_k = i_bh * T * K + rows[:, None] * K + o_k[None, :]
            m_tk = m_t[:, None] & m_k[None, :]
            k_c = tl.load(k_ptr + off_k, mask=m_tk, other=0.0).to(tl.float32)
            g_c = tl.load(g_ptr + off_k, mask=m_tk, other=0.0).to(tl.float32)
            b = tl.cumsum(g_c, axis=0)
            b_last = tl.sum(tl.where(o_t[:, None] == C - 1, b, 0.0), axis=0)
            k_hat = (k_c * tl.exp(tl.minimum(b_last[None, :] - b, 0.0))).to(dt)
            dh_c = tl.load(dh_base + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
            dv += tl.dot(k_hat, dh_c.to(dt), input_precision=PRECISION)
        tl.store(dv_ptr + off_v, dv.to(dv_ptr.dtype.element_ty), mask=m_tv)
    tl.store(dA_ptr + A_off, tl.where(causal, dP, 0.0))


@triton.jit
def _bwd_dqk_kernel(
    q_ptr,  # [BH, T, K]
    k_ptr,  # [BH, T, K]
    v_ptr,  # [BH, T, V]
    g_ptr,  # [BH, T, K]
    h_ptr,  # [BH, NT + 1, K, V]
    do_ptr,  # [BH, T, V]
    dh_ptr,  # [BH, NT, K, V]
    dA_ptr,  # [BH, NT, C, C] fp32
    dq_ptr,  # [BH, T, K] out
    dk_ptr,  # [BH, T, K] out
    dg_ptr,  # [BH, T, K] out
    scale,
    T,
    NT,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    SUB: tl.constexpr,
    LEVELS: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dQ, dK (intra by secondary chunking + inter) and d log_alpha for one chunk and BK key columns.

    Every quantity here is separable over the key channels, so programs split K; each holds its
    ``BK × V`` slices of S_[i] and dS_[i+1] for the whole chunk. Sub-chunks are visited from the
    last to the first so that d log_alpha, a reverse cumulative sum of ∂L/∂b inside the chunk, is
    finished sub-chunk by sub-chunk.
    """
    i_t, i_kt, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    NC: tl.constexpr = C // SUB
    o_s = tl.arange(0, SUB)
    o_k = i_kt * BK + tl.arange(0, BK)
    m_k = o_k < K
    o_v = tl.arange(0, BV)
    m_v = o_v < V
    base_k = i_bh * T * K
    base_v = i_bh * T * V
    c0 = i_t * C
    dt = q_ptr.dtype.element_ty
    eye = o_s[:, None] == o_s[None, :]
    dA_base = dA_ptr + (i_bh * NT + i_t) * C * C

    # this program's slices of S_[i], S_[i+1] and dS_[i+1]: [BK, V]
    kv = o_k[:, None] * V + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    h_base = h_ptr + (i_bh * (NT + 1) + i_t) * K * V
    s_i = tl.load(h_base + kv, mask=m_kv, other=0.0).to(dt)
    ds_i = tl.load(dh_ptr + (i_bh * NT + i_t) * K * V + kv, mask=m_kv, other=0.0)
    s_next = tl.load(h_base + K * V + kv, mask=m_kv, other=0.0).to(tl.float32)
    last_row = tl.sum(s_next * ds_i.to(tl.float32), axis=1)  # Σ_v S_[i+1] ⊙ dS_[i+1]
    ds_i = ds_i.to(dt)

    # b_C, the chunk's total gate
    rows_c = c0 + tl.arange(0, C)
    m_c = (rows_c < T)[:, None] & m_k[None, :]
    total = tl.sum(tl.load(g_ptr + base_k + rows_c[:, None] * K + o_k[None, :], mask=m_c, other=0.0).to(tl.float32), 0)

    dg_carry = last_row  # Σ of ∂L/∂b over the rows after the current sub-chunk (and the last-row term)
    after = tl.zeros([BK], dtype=tl.float32)  # Σ of the gates of the sub-chunks after u
    for uu in range(NC):
        u = NC - 1 - uu  # from the last sub-chunk to the first
        rows_u = c0 + u * SUB + o_s
        m_u = (rows_u < T)[:, None] & m_k[None, :]
        off_u = base_k + rows_u[:, None] * K + o_k[None, :]
        q_u = tl.load(q_ptr + off_u, mask=m_u, other=0.0).to(tl.float32) * scale
        k_u = tl.load(k_ptr + off_u, mask=m_u, other=0.0).to(tl.float32)
        g_u = tl.load(g_ptr + off_u, mask=m_u, other=0.0).to(tl.float32)
        g_sum = tl.sum(g_u, axis=0)
        before = total - after - g_sum  # cumulative gate before sub-chunk u
        c_u = tl.cumsum(g_u, axis=0)
        b_u = before[None, :] + c_u
        first = c0 + u * SUB
        g_first = tl.load(g_ptr + base_k + first * K + o_k, mask=m_k & (o_k * 0 + first < T), other=0.0)
        b_n = before + g_first.to(tl.float32)

        # inter-chunk terms: e^b ⊙ (dO S_[i]ᵀ) and e^{b_C − b} ⊙ (V dS_[i+1]ᵀ)
        m_uv = (rows_u < T)[:, None] & m_v[None, :]
        off_uv = base_v + rows_u[:, None] * V + o_v[None, :]
        do_u = tl.load(do_ptr + off_uv, mask=m_uv, other=0.0)
        v_u = tl.load(v_ptr + off_uv, mask=m_uv, other=0.0)
        dq = tl.dot(do_u, tl.trans(s_i), input_precision=PRECISION) * tl.exp(b_u)
        dk = tl.dot(v_u, tl.trans(ds_i), input_precision=PRECISION) * tl.exp(tl.minimum(total[None, :] - b_u, 0.0))

        # off-diagonal, queries u against earlier keys w: dQ_u += (dP_uw (K_w ⊙ e^{b_n − b_w})) ⊙ e^{b_u − b_n}
        dq_off = tl.zeros([SUB, BK], dtype=tl.float32)
        b_prev = before
        for ww in range(0, u):
            w_prev = u - 1 - ww
            rows_w = c0 + w_prev * SUB + o_s
            off_w = base_k + rows_w[:, None] * K + o_k[None, :]
            m_w = (rows_w < T)[:, None] & m_k[None, :]
            k_w = tl.load(k_ptr + off_w, mask=m_w, other=0.0).to(tl.float32)
            g_w = tl.load(g_ptr + off_w, mask=m_w, other=0.0).to(tl.float32)
            b_prev -= tl.sum(g_w, axis=0)
            b_w = b_prev[None, :] + tl.cumsum(g_w, axis=0)
            k_hat = (k_w * tl.exp(tl.minimum(b_n[None, :] - b_w, 0.0))).to(dt)
            dP_uw = tl.load(dA_base + (u * SUB + o_s)[:, None] * C + (w_prev * SUB + o_s)[None, :]).to(dt)
            dq_off += tl.dot(dP_uw, k_hat, input_precision=PRECISION)
        dq += dq_off * tl.exp(tl.minimum(c_u - g_first.to(tl.float32)[None, :], 0.0))

        # off-diagonal, keys u against later queries w: dK_u += (dP_wuᵀ (Q_w ⊙ e^{b_w − b_n(w)})) ⊙ e^{b_n(w) − b_u}
        b_next = before + g_sum
        for w in range(u + 1, NC):
            rows_w = c0 + w * SUB + o_s
            off_w = base_k + rows_w[:, None] * K + o_k[None, :]
            m_w = (rows_w < T)[:, None] & m_k[None, :]
            q_w = tl.load(q_ptr + off_w, mask=m_w, other=0.0).to(tl.float32) * scale
            g_w = tl.load(g_ptr + off_w, mask=m_w, other=0.0).to(tl.float32)
            c_w = tl.cumsum(g_w, axis=0)
            first_w = c0 + w * SUB
            g_first_w = tl.load(g_ptr + base_k + first_w * K + o_k, mask=m_k & (o_k * 0 + first_w < T), other=0.0)
            g_first_w = g_first_w.to(tl.float32)
            q_hat = (q_w * tl.exp(tl.minimum(c_w - g_first_w[None, :], 0.0))).to(dt)
            b_nw = b_next + g_first_w
            dP_wu = tl.load(dA_base + (w * SUB + o_s)[:, None] * C + (u * SUB + o_s)[None, :]).to(dt)
            dk_part = tl.dot(tl.trans(dP_wu), q_hat, input_precision=PRECISION)
            dk += dk_part * tl.exp(tl.minimum(b_nw[None, :] - b_u, 0.0))
            b_next += tl.sum(g_w, axis=0)

        # diagonal sub-block, exact: the gate-free diagonal, then the halving levels
        dP_uu = tl.load(dA_base + (u * SUB + o_s)[:, None] * C + (u * SUB + o_s)[None, :])
        dP_diag = tl.sum(tl.where(eye, dP_uu, 0.0), axis=1)
        dq += dP_diag[:, None] * k_u
        dk += dP_diag[:, None] * q_u
        for L in range(LEVELS):
            eq, ek, pairs = _diagonal_level(c_u, L, SUB)
            dP_l = tl.where(pairs, dP_uu, 0.0).to(dt)
            dq += tl.dot(dP_l, (k_u * ek).to(dt), input_precision=PRECISION) * eq
            dk += tl.dot(tl.trans(dP_l), (q_u * eq).to(dt), input_precision=PRECISION) * ek

        # d log_alpha: ∂L/∂b = q ⊙ dq − k ⊙ dk, summed from the end of the chunk backwards
        db = q_u * dq - k_u * dk
        db_sum = tl.sum(db, axis=0)
        dg = dg_carry[None, :] + db_sum[None, :] - tl.cumsum(db, axis=0) + db
        dg_carry += db_sum
        after += g_sum

        tl.store(dq_ptr + off_u, (dq * scale).to(dq_ptr.dtype.element_ty), mask=m_u)
        tl.store(dk_ptr + off_u, dk.to(dk_ptr.dtype.element_ty), mask=m_u)
        tl.store(dg_ptr + off_u, dg.to(dg_ptr.dtype.element_ty), mask=m_u)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


#: When a list, launches are recorded there instead of run (``_compile_for_gpu``).
_RECORDER: list | None = None


def _empty(*shape, device, dtype) -> torch.Tensor:
    """Every buffer the kernels write is allocated here, uninitialised (the kernels write every
    element): one place, so the tests can swap it for NaN-filled memory and prove that claim."""
    return torch.empty(*shape, device=device, dtype=dtype)


def _launch(kernel, grid, *args, **kwargs):
    if _RECORDER is not None:
        _RECORDER.append((kernel, args, kwargs))
    else:
        kernel[grid](*args, **kwargs)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _launch_kw(cfg: Config, *, state: bool) -> dict:
    if INTERPRETER:
        return {}
    if state:
        return dict(num_warps=cfg.state_num_warps, num_stages=cfg.state_num_stages)
    return dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)


#: Shared memory one program may plan for (an H100 block may have up to 227 KiB; the estimates
#: below are rough, so they keep a margin). Tiles that would not fit are narrowed, V first.
_SMEM_BUDGET = 160 * 1024


def _fit(bk: int, bv: int, need) -> tuple[int, int]:
    """Halve ``bv`` (then ``bk``) down to 16 until ``need(bk, bv)`` bytes fit the budget."""
    while need(bk, bv) > _SMEM_BUDGET and (bv > 16 or bk > 16):
        if bv > 16:
            bv //= 2
        else:
            bk //= 2
    return bk, bv


def _tiles(cfg: Config, K: int, V: int, dtype: torch.dtype) -> dict:
    """Per-kernel tiles: the requested ones, narrowed where their operands would not fit on chip.

    Estimates of the operand buffers (``e`` bytes per element, ``st`` pipeline stages): the output
    kernel holds ``P``, a ``C × BV`` tile of ``v`` and, per stage, ``C × BK`` of ``q`` and ``BK × BV`` of
    ``S``; the dV kernel holds ``P``, per stage ``C × BV`` of ``dO`` and ``v`` and ``C × BK + BK × BV``; the
    dQ/dK kernel holds ``BK × V`` slices of two states (and reads a third) for the whole chunk.
    """
    e = torch.finfo(dtype).bits // 8
    C, st = cfg.chunk_size, max(1, cfg.num_stages)
    bk_full = max(16, next_power_of_2(K))
    out = _fit(cfg.block_k, cfg.block_v, lambda bk, bv: e * (C * C + C * bv + st * (C * bk + bk * bv)))
    dv = _fit(cfg.block_k, cfg.block_v, lambda bk, bv: e * (C * C + st * (2 * C * bv + C * bk + bk * bv)))
    v_full = max(16, next_power_of_2(V))
    bk_dqk, _ = _fit(cfg.dqk_block_k, 16, lambda bk, _: e * (3 * bk * v_full + 2 * SUB * v_full))
    return {"out": out, "dv": dv, "dqk_bk": bk_dqk, "k_full": bk_full}


def _forward(q, k, v, g, h0, scale: float, cfg: Config):
    """``(o, h, A, final)``: inputs ``[BH, T, ·]`` contiguous; ``h0`` fp32 ``[BH, K, V]`` or None."""
    BH, T, K = q.shape
    V = v.shape[-1]
    C = cfg.chunk_size
    NT = triton.cdiv(T, C)
    dev = q.device
    prec = _precision(q.dtype)
    h = _empty(BH, NT + 1, K, V, device=dev, dtype=q.dtype)
    final = _empty(BH, K, V, device=dev, dtype=torch.float32)
    # P is stored in the input dtype: both of its readers round it to that dtype for tl.dot anyway.
    A = _empty(BH, NT, C, C, device=dev, dtype=q.dtype)
    o = _empty(BH, T, V, device=dev, dtype=v.dtype)
    sbk, sbv = cfg.state_block_k, cfg.state_block_v
    _launch(
        _fwd_states_kernel, (triton.cdiv(K, sbk), triton.cdiv(V, sbv), BH),
        k, v, g, h0 if h0 is not None else final, h, final, T, NT,
        K=K, V=V, C=C, BK=sbk, BV=sbv, HAS_H0=h0 is not None, PRECISION=prec, **_launch_kw(cfg, state=True),
    )  # fmt: skip
    tiles = _tiles(cfg, K, V, q.dtype)
    _launch(
        _fwd_intra_kernel, (NT, BH),
        q, k, g, A, scale, T, NT,
        K=K, C=C, SUB=SUB, LEVELS=LEVELS, BK=tiles["k_full"], PRECISION=prec, **_launch_kw(cfg, state=False),
    )  # fmt: skip
    bk, bv = tiles["out"]
    _launch(
        _fwd_output_kernel, (triton.cdiv(V, bv), NT, BH),
        q, v, g, h, A, o, scale, T, NT,
        K=K, V=V, C=C, BK=bk, BV=bv, PRECISION=prec, **_launch_kw(cfg, state=False),
    )  # fmt: skip
    return o, h, A, final


def _backward(q, k, v, g, h, A, do, dht, has_h0: bool, scale: float, cfg: Config):
    """``(dq, dk, dv, dg, dh0)`` for inputs ``[BH, T, ·]``; ``dht`` fp32 ``[BH, K, V]`` or None."""
    BH, T, K = q.shape
    V = v.shape[-1]
    C = cfg.chunk_size
    NT = triton.cdiv(T, C)
    dev = q.device
    prec = _precision(q.dtype)
    dh = _empty(BH, NT, K, V, device=dev, dtype=q.dtype)
    dh0 = _empty(BH, K, V, device=dev, dtype=torch.float32) if has_h0 else None
    dA = _empty(BH, NT, C, C, device=dev, dtype=torch.float32)
    dq = _empty(*q.shape, device=dev, dtype=q.dtype)
    dk = _empty(*k.shape, device=dev, dtype=k.dtype)
    dv = _empty(*v.shape, device=dev, dtype=v.dtype)
    dg = _empty(*g.shape, device=dev, dtype=g.dtype)
    sbk, sbv = cfg.state_block_k, cfg.state_block_v
    _launch(
        _bwd_dstates_kernel, (triton.cdiv(K, sbk), triton.cdiv(V, sbv), BH),
        q, g, do, dht if dht is not None else dA, dh, dh0 if dh0 is not None else dA, scale, T, NT,
        K=K, V=V, C=C, BK=sbk, BV=sbv, HAS_DHT=dht is not None, HAS_H0=has_h0, PRECISION=prec,
        **_launch_kw(cfg, state=True),
    )  # fmt: skip
    tiles = _tiles(cfg, K, V, q.dtype)
    bk, bv = tiles["dv"]
    _launch(
        _bwd_dv_kernel, (NT, BH),
        k, v, g, A, do, dh, dv, dA, T, NT,
        K=K, V=V, C=C, BK=bk, BV=bv, PRECISION=prec, **_launch_kw(cfg, state=False),
    )  # fmt: skip
    bk = tiles["dqk_bk"]
    _launch(
        _bwd_dqk_kernel, (NT, triton.cdiv(K, bk), BH),
        q, k, v, g, h, do, dh, dA, dq, dk, dg, scale, T, NT,
        K=K, V=V, C=C, SUB=SUB, LEVELS=LEVELS, BK=bk, BV=max(16, next_power_of_2(V)), PRECISION=prec,
        **_launch_kw(cfg, state=False),
    )  # fmt: skip
    return dq, dk, dv, dg, dh0


def _compile_for_gpu(dtype: torch.dtype = torch.bfloat16, K: int = 128, V: int = 128, config: Config | None = None,
                     *, arch: int = 90, T: int = 4096) -> dict:  # fmt: skip
    """Compile all six kernels for an NVIDIA GPU (``sm_<arch>``, default the H100's 90) without one.

    The forward and backward launchers run on ``meta`` tensors with launches recorded instead of
    run, and each recorded launch — the very arguments, tiles and warps a real call would use — is
    compiled by Triton down to a cubin with the ``ptxas`` its wheel ships. This proves, on a machine
    with no GPU, that the kernels pass the GPU compiler (``tl.dot`` shapes, layouts, shared-memory
    limits), which the interpreter does not check. Needs a process without ``TRITON_INTERPRET=1``.

    Returns ``{kernel name: {"shared_bytes", "num_warps", "num_stages", "registers", "stack_bytes"}}``
    (the last two when the wheel's ``cuobjdump`` is there; stack bytes are register spills).
    """
    global _RECORDER
    if INTERPRETER:
        raise RuntimeError("_compile_for_gpu needs a process without TRITON_INTERPRET=1 (the interpreter replaces @triton.jit)")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cfg = (config or DEFAULT_CONFIG).clipped(K, V)
    BH = 2

    def meta(*shape, dt=dtype):
        return torch.empty(*shape, device="meta", dtype=dt)

    q, k, g = meta(BH, T, K), meta(BH, T, K), meta(BH, T, K)
    v, do = meta(BH, T, V), meta(BH, T, V)
    states = meta(BH, K, V, dt=torch.float32)
    _RECORDER = []
    try:
        _, h, A, _ = _forward(q, k, v, g, states, 0.5, cfg)
        _backward(q, k, v, g, h, A, do, states, True, 0.5, cfg)
        launches = _RECORDER
    finally:
        _RECORDER = None

    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    results = {}
    for kernel, args, kwargs in launches:
        kwargs = dict(kwargs)
        options = {"num_warps": kwargs.pop("num_warps", 4), "num_stages": kwargs.pop("num_stages", 2)}
        signature, constexprs, attrs = {}, {}, {}
        for i, name in enumerate(kernel.arg_names):
            value = args[i] if i < len(args) else kwargs[name]
            if name in kwargs:
                signature[name], constexprs[name] = "constexpr", value
            elif isinstance(value, torch.Tensor):
                signature[name] = "*" + names[value.dtype]
                attrs[(i,)] = [["tt.divisibility", 16]]  # what the launcher sees for allocator memory
            elif isinstance(value, float):
                signature[name] = "fp32"
            else:
                signature[name] = "i32"
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
        results[kernel.fn.__name__] = {"shared_bytes": compiled.metadata.shared, **options,
                                       **_resource_usage(compiled.asm.get("cubin"))}  # fmt: skip
    return results


def _resource_usage(cubin) -> dict:
    """Registers per thread and stack (spill) bytes of a cubin, from the cuobjdump Triton ships."""
    import os
    import re
    import subprocess
    import tempfile

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not cubin or not os.path.exists(tool):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", text)
    return {"registers": int(found.group(1)), "stack_bytes": int(found.group(2))} if found else {}


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------


class _GLAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, initial_state, scale, cfg):
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not zeros
        B, H, T, K = q.shape
        V = v.shape[-1]
        q3, k3, g3 = (x.reshape(B * H, T, K) for x in (q, k, g))
        v3 = v.reshape(B * H, T, V)
        h0 = None if initial_state is None else initial_state.reshape(B * H, K, V).float().contiguous()
        o, h, A, final = _forward(q3, k3, v3, g3, h0, scale, cfg)
        ctx.save_for_backward(q3, k3, v3, g3, h, A)
        ctx.meta = (B, H, T, K, V, scale, cfg, initial_state is not None,
                    None if initial_state is None else initial_state.dtype)  # fmt: skip
        return o.reshape(B, H, T, V), final.reshape(B, H, K, V)

    @staticmethod
    def backward(ctx, do, d_final):
        q3, k3, v3, g3, h, A = ctx.saved_tensors
        B, H, T, K, V, scale, cfg, has_h0, h0_dtype = ctx.meta
        if do is None:  # only the final state was used
            do = torch.zeros(B, H, T, V, device=q3.device, dtype=v3.dtype)
        do3 = do.reshape(B * H, T, V).to(v3.dtype).contiguous()
        dht = None if d_final is None else d_final.reshape(B * H, K, V).float().contiguous()
        dq, dk, dv, dg, dh0 = _backward(q3, k3, v3, g3, h, A, do3, dht, has_h0, scale, cfg)
        d_init = dh0.reshape(B, H, K, V).to(h0_dtype) if has_h0 else None
        return (
            dq.reshape(B, H, T, K),
            dk.reshape(B, H, T, K),
            dv.reshape(B, H, T, V),
            dg.reshape(B, H, T, K),
            d_init,
            None,
            None,
        )


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    *,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    config: Config | None = None,
):
    r"""Gated Linear Attention (paper Eq. 3, FlashLinearAttention materialised), differentiable.

    Args:
        q: ``[B, H, T, K]`` queries (fp32, fp16 or bf16; CUDA, or CPU under the interpreter).
        k: ``[B, H, T, K]`` keys, same dtype and device.
        v: ``[B, H, T, V]`` values, same dtype and device.
        log_alpha: ``[B, H, T, K]`` log-space gates ``≤ 0`` (fp32, fp16 or bf16, own dtype allowed);
            receives a gradient.
        scale: multiplies ``q`` (default 1.0, the paper's math; ``K ** -0.5`` is common).
        initial_state: optional ``[B, H, K, V]`` state before the first token (any float dtype; used
            in fp32); receives a gradient.
        output_final_state: also return the state after the last token (fp32 ``[B, H, K, V]``),
            through which gradients flow back.
        config: launch settings (``Config``); ``None`` uses ``DEFAULT_CONFIG`` with state tiles sized
            to the GPU (smaller when ``B·H`` is small).

    Returns:
        ``o: [B, H, T, V]`` in the dtype of ``v`` — or ``(o, final_state)``.
    """
    B, H, T, K, V = check_qkv(q, k, v, ("log_alpha", log_alpha))
    if tuple(log_alpha.shape) != (B, H, T, K):
        raise ValueError(f"log_alpha must have the shape of q {(B, H, T, K)}, got {tuple(log_alpha.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state must be True or False, got {output_final_state!r}")
    cfg = _auto_config(B, H, K, V, q.device) if config is None else config
    if not isinstance(cfg, Config):
        raise TypeError(f"config must be a kernels.gla.Config, got {type(cfg).__name__}")
    if cfg.chunk_size not in (16, 32, 64, 128):
        raise ValueError(f"config.chunk_size must be 16, 32, 64 or 128, got {cfg.chunk_size!r}")
    for field in ("state_block_k", "state_block_v", "block_k", "block_v", "dqk_block_k"):
        size = getattr(cfg, field)
        if not isinstance(size, int) or size < 16 or size & (size - 1):
            raise ValueError(f"config.{field} must be a power of two ≥ 16, got {size!r}")
    cfg = cfg.clipped(K, V)

    if initial_state is not None:
        check_device("initial_state", initial_state)
        if tuple(initial_state.shape) != (B, H, K, V):
            raise ValueError(
                f"initial_state must have shape [B, H, K, V] = {(B, H, K, V)}, got {tuple(initial_state.shape)}"
            )
        if initial_state.device != q.device:
            raise ValueError(f"initial_state must be on {q.device}, got {initial_state.device}")
        if not initial_state.is_floating_point():
            raise TypeError(f"initial_state must be a floating tensor, got {initial_state.dtype}")

    if INTERPRETER and torch.bfloat16 in (q.dtype, log_alpha.dtype):
        # Triton's CPU interpreter computes bf16 wrongly: run in fp32 and round the output back.
        o, final = attention(q.float(), k.float(), v.float(), log_alpha.float(), scale=scale,
                             initial_state=initial_state, output_final_state=True, config=config)  # fmt: skip
        o = o.to(q.dtype)
        return (o, final) if output_final_state else o

    o, final = _GLAttention.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), log_alpha.contiguous(), initial_state, float(scale), cfg
    )
    return (o, final) if output_final_state else o
