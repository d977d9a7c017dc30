r"""Gated Linear Attention in Triton: forward and backward (``d log_alpha`` included), any length.

``attention(q, k, v, log_alpha, *, scale=1.0)`` computes the same function as
``reference.gla.chunked`` (``docs/gla.md``; arXiv 2312.06635)::

    S_t = Diag(α_t) S_{t-1} + k_tᵀ v_t,    o_t = scale · q_t S_t,    α_t = exp(log_alpha_t) ∈ (0, 1]^K

Design (for the H100; what the benchmark measures)
--------------------------------------------------
*Which FlashLinearAttention variant: the materialised one.* The non-materialised variant keeps the
``K × V`` state on chip and walks the chunks of one (batch, head) in order; its parallelism is
``B·H·(V/BV)`` programs. At ``B=2, H=16, T=32k`` that is 32 (b, h) pairs, each 512 chunks long, and
every walker must also rebuild the intra-chunk matrix (the gated ``C × C × K`` part of GLA) for its
own slice of ``V``. The materialised variant splits the work by what it depends on — five kernels:

1. ``_fwd_states_kernel`` — the only sequential pass of the forward, over ``K × V`` states only:
   one program per ``(BK × BV tile, b, h)`` walks the chunks and writes the state entering every
   chunk (``S_[i]``, input dtype; the final state also in fp32): per chunk one ``[BK, C] × [C, BV]``
   product. Without a ``config`` the state tile shrinks (down to 16 × 64) when ``B·H`` is small,
   so that there are at least two programs per multiprocessor (``B=2, H=16``: 512 instead of 128).
2. ``_fwd_output_kernel`` — fully parallel over (V tile, chunk, b, h): the intra-chunk matrix
   ``P`` on chip, then ``O = P V + (Q ⊙ e^b) S_[i]``. ``P`` never round-trips through memory
   inside the forward; it is stored once (input dtype, 128 bytes per token and head at ``C = 64``)
   for the backward.
3. ``_bwd_dstates_kernel`` — the reverse sequential pass, ``dS_[i] = Diag(e^{b_C}) dS_[i+1] +
   (Q ⊙ e^b)ᵀ dO``, plus the chunk's ``Σ_v S_[i+1] ⊙ dS_[i+1]`` (the gradient of ``b_C``).
4. ``_bwd_dv_kernel`` — parallel over (chunk, b, h): ``dV = Pᵀ dO + (K ⊙ e^{b_C − b}) dS_[i+1]``,
   and ``dP = (dO Vᵀ) ⊙ M`` stored (input dtype, like ``P``) for the next kernel.
5. ``_bwd_kernel`` — fully parallel over (chunk, K tile, b, h): the K tile's ``dQ, dK`` (inter
   terms, the gate-free diagonal, and the halving levels below, each level reading ``dP`` with its
   pairs as the load mask) and ``d log_alpha = `` the within-chunk reverse cumulative sum of
   ``q ⊙ dq − k ⊙ dk`` plus the ``b_C`` term. Everything but ``dV`` is separable over key channels.

*The intra-chunk matrix by recursive halving over the whole chunk.* A query ``j`` and a key
``s < j`` of one chunk first differ in some bit ``L`` of their row numbers: at that *level* the rows
fall into blocks of ``2^(L+1)``, ``j`` in the upper half of a block and ``s`` in the lower half, and
the last row ``r`` of the lower half lies between them, so ``e^{b_j − b_s} = e^{b_j − b_r} · e^{b_r − b_s}``
with both exponents ``≤ 0``. All pairs of one level are one ``C × C`` tensor-core product of
``Q ⊙ e^{b − b_r}`` (upper-half rows) and ``K ⊙ e^{b_r − b}`` (lower-half rows), kept on its own
blocks; ``log2 C`` levels and the gate-free diagonal ``q_j · k_j`` give ``P`` exactly (6 levels at
``C = 64``). Each row is in exactly one half per level, so a level costs *one* exponential per row
and key channel, and its exponents are a product of the chunk's gates with a constant 0/1 matrix
(``_level_table``): sums of gates on the tensor cores, never the difference of two cumulative sums.
The backward runs the same levels, two products each: ``dQ += E ⊙ (dP_L (K ⊙ E))``,
``dK += E ⊙ (dP_Lᵀ (Q ⊙ E))``. Loops over levels are real loops (not unrolled): unrolled, the
compiler overlapped several levels' live tensors and spilled registers. (History: the first
version built the 16-row diagonal sub-blocks row by row; the second by halving within 16-row
sub-blocks plus one product per off-diagonal sub-block; the third kept ``dP`` in registers, which
Triton 3.6 miscompiled on the H100 — ``docs/benchmarks/gla_perf_log.md``.)

*Written around a compiler bug.* On the H100 with Triton 3.6, three forms in the backward came out
wrong at some tile widths and addressed shared memory out of range at others (found with
``compute-sanitizer``; entry 4 of the log): ``dP`` held in registers across the level loop as a
product's left operand, ``tl.trans`` of it, and ``K ⊙ e^{b_C − b}`` as the left operand of the dV
sum. Here ``dP`` is loaded per level (its transpose included: a transposed view of shared memory),
and ``dV`` is computed transposed, ``dVᵀ = dOᵀ P + dSᵀ (K ⊙ e^{b_C − b})ᵀ``, so the gated keys are
the right operand, and stored through transposed addresses. The GPU tests cover the widths that
failed.

What it costs: the states are the price of parallelism — one ``K × V`` state per chunk written and
read (in bf16 at ``C = 64``: 512 bytes per token and head, beside 1280 bytes of ``q, k, v, g, o``).
Every exponent in every kernel is ``≤ 0`` (a sum of ``log α`` inside one chunk), so nothing
overflows however small the gates. Inputs are fp32, fp16 or bf16 (``log_alpha`` may have its own
dtype); all products accumulate in fp32; the running states are fp32 on chip. fp16/bf16 products
take operands in the input dtype (the level operands ``Q ⊙ E``, ``K ⊙ E`` are formed in it, with
``E`` rounded to it); fp32 inputs use three-pass tf32 products on the GPU (``tf32x3``, about fp32's
accuracy); exponentials are ``ex2.approx.ftz`` on the GPU.

Shapes: ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]``, ``log_alpha: [B, H, T, K]`` (``≤ 0``, ``-inf``
a full reset; not checked on the device, which would cost a synchronisation), states ``[B, H, K, V]``;
``K, V ≤ 256``. Gates are raised to ``GATE_FLOOR = -1e4`` as they are loaded (``e^-1e4`` is 0 in every
dtype), so ``-inf`` never meets a 0 of the level tables (``0 · -inf = NaN``). The intra-chunk matrix
is masked with ``where``: a NaN or inf in a later token's ``q`` or ``k`` leaves earlier rows bit for
bit unchanged; a poisoned ``v`` reaches the rows of its own chunk and no earlier one.
Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from kernels import _triton
from kernels._triton import INTERPRETER, check_qkv, empty, launch, next_power_of_2

__all__ = ["attention", "Config", "DEFAULT_CONFIG", "config_for"]

#: ``ex2.approx.ftz`` exponentials on the GPU (``_exp``); the interpreter has no inline assembly.
_FAST = not INTERPRETER

@dataclass(frozen=True)
class Config:
    """Launch settings (the benchmark sweeps them; results do not depend on them beyond rounding).

    Attributes:
        chunk_size: ``C``, tokens per chunk: 16, 32, 64 or 128 (``log2 C`` halving levels).
        state_block_k, state_block_v: the ``BK × BV`` state tile of the two sequential kernels
            (smaller tiles: more programs in parallel when ``B·H`` is small).
        block_k: the tile of key channels in the two chunk-parallel kernels (narrowed where their
            operands would not fit in shared memory: fp32 inputs, ``C = 128``, wide heads).
        block_v: the tile of ``V`` in the forward output kernel (``P`` is recomputed per tile, so
            the default covers ``V = 128`` in one); the backward always takes all of ``V``.
        bwd_block_k: the tile of key channels per program of the backward kernel (it splits ``K``).
        num_warps: for the forward output kernel; bwd_num_warps: for the backward kernel (chunks of
            128 get at least 8).
        num_stages: for the chunk-parallel kernels (2: each level loop prefetches the next level's
            0/1 matrix while the current one computes).
        state_num_warps, state_num_stages: for the sequential kernels.
    """

    chunk_size: int = 64
    state_block_k: int = 64
    state_block_v: int = 64
    block_k: int = 64
    block_v: int = 128
    bwd_block_k: int = 64
    num_warps: int = 4
    bwd_num_warps: int = 4
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
            bwd_block_k=min(self.bwd_block_k, pk),
        )


DEFAULT_CONFIG = Config()


def config_for(B: int, H: int, K: int, V: int, device: torch.device) -> Config:
    """``DEFAULT_CONFIG``, with smaller state tiles when ``B·H`` alone would leave the GPU idle.

    The two sequential kernels run one program per ``(state tile, b, h)``; each walks every chunk.
    Below about two programs per multiprocessor their walks are latency-bound, so the state tile
    shrinks (64 × 64 → 32 × 64 → 16 × 64) until there are (e.g. ``B = 2, H = 16``: 128 → 512 programs).
    Not 32 × 32: compiled for sm_90 that tile takes 238 registers (two programs per multiprocessor),
    16 × 64 takes 68–96.
    """
    if device.type != "cuda":
        return DEFAULT_CONFIG
    wanted = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    for bk, bv in ((64, 64), (32, 64), (16, 64)):
        if B * H * triton.cdiv(K, bk) * triton.cdiv(V, bv) >= wanted:
            break
    return replace(DEFAULT_CONFIG, state_block_k=bk, state_block_v=bv)


# --------------------------------------------------------------------------------------------
# The halving levels of one chunk
# --------------------------------------------------------------------------------------------


def _level_table(C: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The 0/1 matrices whose products with a chunk's gates ``g [C, ·]`` give every exponent the kernels use.

    ``table[L]`` for a halving level ``L < log2 C`` (see ``_level``), then ``table[log2 C] = [i ≤ j]``
    (``(table @ g)[j] = b_j``, the cumulative gate) and ``table[log2 C + 1] = [i > j]``
    (``b_C − b_j``). Every entry of every product is a *sum of gates* (``≤ 0`` exactly: no
    difference of two cumulative sums), computed on the tensor cores; 0 and 1 are exact in every
    dtype. Loaded by the kernels (a few KiB, cache-resident) rather than built from index
    arithmetic, which would hold dozens of registers of row and column indices.
    """
    key = (C, dtype, str(device))
    table = _TABLES.get(key)
    if table is None:
        o = torch.arange(C)
        j, i = o[:, None], o[None, :]
        mats = []
        for L in range(C.bit_length() - 1):
            upper = ((j >> L) & 1) == 1
            same_half = (j >> L) == (i >> L)
            mats.append(same_half & torch.where(upper, i <= j, i > j))
        mats += [i <= j, i > j]
        table = torch.stack(mats).to(dtype).to(device).contiguous()
        if table.device.type != "meta":
            _TABLES[key] = table
    return table


_TABLES: dict = {}


@triton.jit
def _level(L, C: tl.constexpr):
    """Level ``L`` of a chunk of ``C`` rows: the (query, key) pairs whose row indices first differ in bit ``L``.

    Rows are grouped in blocks of ``2^(L+1)``. A query ``j`` in the upper half of a block and a key
    ``s`` in its lower half are separated by the block's midpoint ``r`` (the last row of the lower
    half), so ``e^{b_j − b_s} = e^{b_j − b_r} · e^{b_r − b_s}`` with both exponents ``≤ 0``. Every row
    is in the upper half of its block or in the lower half, never both, so *one* exponent per row
    and key channel serves the level:

        upper row j:  b_j − b_r = Σ_{r < i ≤ j} g_i        lower row s:  b_r − b_s = Σ_{s < i ≤ r} g_i

    — the product of ``_level_table``'s matrix ``L`` with the gates. Returns ``(upper, block)``:
    ``upper [C]`` marks upper-half rows; ``block [C, C]`` marks pairs in one block. The product of
    upper-row queries and lower-row keys, restricted to one block, is exactly the level's pairs;
    levels ``0 … log2(C) − 1`` cover every ``s < j`` once.
    """
    o = tl.arange(0, C)
    upper = ((o >> L) & 1) == 1
    block = (o >> (L + 1))[:, None] == (o >> (L + 1))[None, :]
    return upper, block


#: Gates are raised to this floor as they are loaded. ``e^-1e4`` is 0 in every float dtype, so the
#: result is that of any smaller gate, and ``-inf`` (a reset, ``α = 0``) never meets a 0 of the level
#: tables in a product (``0 · -inf = NaN``) or a tf32x3 split (``-inf − -inf``). A NaN stays NaN.
GATE_FLOOR = tl.constexpr(-1.0e4)


@triton.jit
def _load_gate(ptrs, mask):
    """``log α`` at ``ptrs`` (0 where ``mask`` is false), raised to ``GATE_FLOOR``, in the gates' dtype."""
    g = tl.load(ptrs, mask=mask, other=0.0)
    return tl.where(g < GATE_FLOOR, GATE_FLOOR, g).to(g.dtype)


@triton.jit
def _exp(x, FAST: tl.constexpr):
    """``e^x`` for ``x ≤ 0``: on the GPU one ``ex2.approx.ftz`` (results below 2^-126 flush to 0,
    which is what they are worth here) instead of the denormal-safe sequence ``tl.exp`` emits."""
    if FAST:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=r,r", [x * 1.4426950408889634], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.exp(x)


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
    G_PRECISION: tl.constexpr,
    FAST: tl.constexpr,
):
    """S_[i+1] = Diag(e^{b_C}) S_[i] + (K_i ⊙ e^{b_C − b})ᵀ V_i, one BK × BV tile, chunks in order.

    Keys and gates are read transposed (``[BK, C]``), so that ``K̂ᵀ`` is the left operand of the
    state product straight from the product that made its exponents: ``(Gᵀ L)[k, s] = Σ_{i > s} g_ik
    = b_Ck − b_sk`` with the 0/1 matrix ``L[i, s] = [i > s]`` (a cumulative sum on the tensor cores,
    exact sums of gates, never a difference).
    """
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
    later = (o_t[:, None] > o_t[None, :]).to(g_ptr.dtype.element_ty)  # [i, s]: 1 where i > s

    state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        state += tl.load(h0_ptr + i_bh * K * V + kv_off, mask=m_kv, other=0.0)
    for i_t in range(NT):
        tl.store(h_base + i_t * K * V + kv_off, state.to(h_ptr.dtype.element_ty), mask=m_kv)
        rows = i_t * C + o_t
        m_kt = m_k[:, None] & (rows < T)[None, :]
        k_t = tl.load(k_base + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0.0)
        g_t = _load_gate(g_base + rows[None, :] * K + o_k[:, None], m_kt)
        v_c = tl.load(v_base + rows[:, None] * V + o_v[None, :], mask=(rows < T)[:, None] & m_v[None, :], other=0.0)
        # padded rows have g = 0: b stays at the last real row's value
        decay_to_end = _exp(tl.dot(g_t, later, input_precision=G_PRECISION), FAST)  # e^{b_C − b}: [BK, C]
        k_hat = (k_t.to(tl.float32) * decay_to_end).to(dt)
        total = tl.sum(g_t.to(tl.float32), axis=1)  # b_C: [BK]
        state = tl.dot(k_hat, v_c, state * _exp(total, FAST)[:, None], input_precision=PRECISION)
    tl.store(h_base + NT * K * V + kv_off, state.to(h_ptr.dtype.element_ty), mask=m_kv)
    tl.store(ht_ptr + i_bh * K * V + kv_off, state, mask=m_kv)


@triton.jit
def _fwd_output_kernel(
    q_ptr,  # [BH, T, K]
    k_ptr,  # [BH, T, K]
    v_ptr,  # [BH, T, V]
    g_ptr,  # [BH, T, K]
    h_ptr,  # [BH, NT + 1, K, V]
    tab_ptr,  # [LOG2C + 2, C, C] gate dtype: _level_table
    A_ptr,  # [BH, NT, C, C] out, input dtype: P of every chunk (for the backward)
    o_ptr,  # [BH, T, V] out
    scale,
    T,
    NT,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    LOG2C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PRECISION: tl.constexpr,
    G_PRECISION: tl.constexpr,
    FAST: tl.constexpr,
):
    """O = P V + (Q ⊙ e^b) S_[i] for one chunk and one BV tile of V; P never leaves the chip.

    P_js = Σ_k q_jk k_sk e^{b_jk − b_sk} (s ≤ j): the gate-free diagonal ``q_j · k_j``, then one
    ``C × C`` product per halving level (``_level``), all exponents ``≤ 0``, summed over tiles of
    ``K`` (everything in P is separable over key channels). The levels run from the finest to the
    coarsest through one accumulator: after level ``L``'s product, entries outside level ``L``'s
    blocks (cross-block products, which no level wants) are zeroed; the blocks nest, so that also
    keeps every finer level's pairs. Operands stay in the input dtype; ``scale`` is applied to the
    fp32 results. The program of the first V tile also stores P (input dtype) for the backward.
    """
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    NK: tl.constexpr = (K + BK - 1) // BK
    o_t = tl.arange(0, C)
    rows = i_t * C + o_t
    m_t = rows < T
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    dt = q_ptr.dtype.element_ty
    cc = o_t[:, None] * C + o_t[None, :]

    P = tl.zeros([C, C], dtype=tl.float32)
    for i_k in tl.static_range(NK):
        o_k = i_k * BK + tl.arange(0, BK)
        off = i_bh * T * K + rows[:, None] * K + o_k[None, :]
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        q_c = tl.load(q_ptr + off, mask=m_tk, other=0.0)
        k_c = tl.load(k_ptr + off, mask=m_tk, other=0.0)
        g_c = _load_gate(g_ptr + off, m_tk)
        qk = tl.sum(q_c.to(tl.float32) * k_c.to(tl.float32), axis=1)
        acc = tl.where(o_t[:, None] == o_t[None, :], qk[:, None], 0.0)  # the gate-free diagonal
        for L in range(LOG2C):  # a loop, not unrolled: the compiler must not overlap the levels' live values
            upper, block = _level(L, C)
            e = _exp(tl.dot(tl.load(tab_ptr + L * C * C + cc), g_c, input_precision=G_PRECISION), FAST)
            q_l = q_c * tl.where(upper[:, None], e, 0.0).to(dt)
            k_l = k_c * tl.where(upper[:, None], 0.0, e).to(dt)
            acc = tl.dot(q_l, tl.trans(k_l), acc, input_precision=PRECISION)
            acc = tl.where(block, acc, 0.0)  # (the top level's block is the whole chunk)
        P += acc
    # Entries above the diagonal are zero in exact arithmetic, but a level's product also pairs a
    # query with later keys of its block (0 · NaN = NaN for a poisoned key): select, never multiply.
    P = tl.where(o_t[:, None] >= o_t[None, :], P * scale, 0.0)
    if i_v == 0:
        tl.store(A_ptr + (i_bh * NT + i_t) * C * C + cc, P.to(A_ptr.dtype.element_ty))

    m_tv = m_t[:, None] & m_v[None, :]
    v_c = tl.load(v_ptr + i_bh * T * V + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
    out = tl.dot(P.to(dt), v_c, input_precision=PRECISION)
    inter = tl.zeros([C, BV], dtype=tl.float32)
    h_base = h_ptr + (i_bh * (NT + 1) + i_t) * K * V
    for i_k in tl.static_range(NK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        off = i_bh * T * K + rows[:, None] * K + o_k[None, :]
        m_tk = m_t[:, None] & m_k[None, :]
        q_c = tl.load(q_ptr + off, mask=m_tk, other=0.0)
        g_c = _load_gate(g_ptr + off, m_tk)
        b = tl.dot(tl.load(tab_ptr + LOG2C * C * C + cc), g_c, input_precision=G_PRECISION)  # b_j
        q_hat = q_c * _exp(b, FAST).to(dt)
        s_c = tl.load(h_base + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        inter = tl.dot(q_hat, s_c.to(dt), inter, input_precision=PRECISION)
    out += inter * scale
    tl.store(o_ptr + i_bh * T * V + rows[:, None] * V + o_v[None, :], out.to(o_ptr.dtype.element_ty), mask=m_tv)


# --------------------------------------------------------------------------------------------
# Backward kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _bwd_dstates_kernel(
    q_ptr,  # [BH, T, K]
    g_ptr,  # [BH, T, K]
    do_ptr,  # [BH, T, V]
    h_ptr,  # [BH, NT + 1, K, V]: the forward's states
    dht_ptr,  # [BH, K, V] fp32 gradient of the final state (if HAS_DHT)
    dh_ptr,  # [BH, NT, K, V] out: gradient w.r.t. the state after chunk i
    dh0_ptr,  # [BH, K, V] fp32 out: gradient w.r.t. the initial state (if HAS_H0)
    last_ptr,  # [BH, NT, cdiv(V, BV), K] fp32 out: Σ_v S_[i+1] ⊙ dS_[i+1] over this tile's v
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
    G_PRECISION: tl.constexpr,
    FAST: tl.constexpr,
):
    """dS_[i] = Diag(e^{b_C}) dS_[i+1] + (Q_i ⊙ e^b)ᵀ dO_i, chunks from the last to the first.

    Also the chunk's last-row term of d log_alpha, ``Σ_v S_[i+1] ⊙ dS_[i+1]`` (the gradient of
    ``b_C``, which every gate of the chunk enters), as one partial sum per tile of V.
    """
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    NVT = tl.num_programs(1)
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
    upto = (o_t[:, None] <= o_t[None, :]).to(g_ptr.dtype.element_ty)  # [i, s]: 1 where i ≤ s

    dstate = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dstate += tl.load(dht_ptr + i_bh * K * V + kv_off, mask=m_kv, other=0.0)
    for i in range(NT):
        i_t = NT - 1 - i
        tl.store(dh_base + i_t * K * V + kv_off, dstate.to(dh_ptr.dtype.element_ty), mask=m_kv)
        s_next = tl.load(h_ptr + (i_bh * (NT + 1) + i_t + 1) * K * V + kv_off, mask=m_kv, other=0.0)
        tl.store(last_ptr + ((i_bh * NT + i_t) * NVT + i_v) * K + o_k, tl.sum(s_next.to(tl.float32) * dstate, axis=1),
                 mask=m_k)  # fmt: skip
        rows = i_t * C + o_t
        m_kt = m_k[:, None] & (rows < T)[None, :]
        q_t = tl.load(q_base + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0.0).to(tl.float32) * scale
        g_t = _load_gate(g_base + rows[None, :] * K + o_k[:, None], m_kt)
        do_c = tl.load(do_base + rows[:, None] * V + o_v[None, :], mask=(rows < T)[:, None] & m_v[None, :], other=0.0)
        q_hat = (q_t * _exp(tl.dot(g_t, upto, input_precision=G_PRECISION), FAST)).to(dt)  # Q ⊙ e^b, transposed
        total = tl.sum(g_t.to(tl.float32), axis=1)
        dstate = tl.dot(q_hat, do_c, dstate * _exp(total, FAST)[:, None], input_precision=PRECISION)
    if HAS_H0:
        tl.store(dh0_ptr + i_bh * K * V + kv_off, dstate, mask=m_kv)


@triton.jit
def _bwd_dv_kernel(
    k_ptr,  # [BH, T, K]
    v_ptr,  # [BH, T, V]
    g_ptr,  # [BH, T, K]
    tab_ptr,  # [LOG2C + 2, C, C] gate dtype: _level_table
    A_ptr,  # [BH, NT, C, C] input dtype: P of every chunk (from the forward, scale included)
    do_ptr,  # [BH, T, V]
    dh_ptr,  # [BH, NT, K, V]: gradient w.r.t. S_[i+1]
    dA_ptr,  # [BH, NT, C, C] out, input dtype: dP = scale · (dO Vᵀ) ⊙ [s ≤ j]
    dv_ptr,  # [BH, T, V] out
    scale,
    T,
    NT,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    LOG2C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PRECISION: tl.constexpr,
    G_PRECISION: tl.constexpr,
    FAST: tl.constexpr,
):
    """dV = Pᵀ dO + (K ⊙ e^{b_C − b}) dS_[i+1] and dP = scale · (dO Vᵀ) ⊙ M of one chunk (all of V).

    dP is stored (input dtype, like P) for ``_bwd_kernel``, which reads it once per halving level
    with the level's pairs as the load mask.
    """
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    NK: tl.constexpr = (K + BK - 1) // BK
    o_t = tl.arange(0, C)
    rows = i_t * C + o_t
    m_t = rows < T
    o_v = tl.arange(0, BV)
    m_v = o_v < V
    dt = k_ptr.dtype.element_ty
    cc = o_t[:, None] * C + o_t[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    off_v = i_bh * T * V + rows[:, None] * V + o_v[None, :]
    do_c = tl.load(do_ptr + off_v, mask=m_tv, other=0.0)
    v_c = tl.load(v_ptr + off_v, mask=m_tv, other=0.0)
    dP = tl.dot(do_c, tl.trans(v_c), input_precision=PRECISION) * scale
    dP = tl.where(o_t[:, None] >= o_t[None, :], dP, 0.0)
    tl.store(dA_ptr + (i_bh * NT + i_t) * C * C + cc, dP.to(dA_ptr.dtype.element_ty))

    # dV is computed transposed, dVᵀ = dOᵀ P + dSᵀ (K ⊙ e^{b_C − b})ᵀ, and stored through transposed
    # addresses: so the gated keys are the right operand of their product (taken from shared memory).
    # As the left operand, formed in registers, Triton 3.6 miscompiled this product on the H100.
    P = tl.load(A_ptr + (i_bh * NT + i_t) * C * C + cc)
    dv_t = tl.dot(tl.trans(do_c), P, input_precision=PRECISION)  # [BV, C]
    dh_base = dh_ptr + (i_bh * NT + i_t) * K * V
    # table LOG2C + 1 read transposed: later[i, s] = [i > s], so (Gᵀ later)[k, s] = b_C − b_s
    later = tl.load(tab_ptr + (LOG2C + 1) * C * C + o_t[None, :] * C + o_t[:, None])
    for i_k in tl.static_range(NK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        off_t = i_bh * T * K + rows[None, :] * K + o_k[:, None]  # [BK, C]: keys and gates transposed
        m_kt = m_k[:, None] & m_t[None, :]
        k_t = tl.load(k_ptr + off_t, mask=m_kt, other=0.0)
        g_t = _load_gate(g_ptr + off_t, m_kt)
        to_end = _exp(tl.dot(g_t, later, input_precision=G_PRECISION), FAST)
        ds_c = tl.load(dh_base + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        dv_t = tl.dot(tl.trans(ds_c.to(dt)), (k_t * to_end).to(dt), dv_t, input_precision=PRECISION)
    off_vt = i_bh * T * V + rows[None, :] * V + o_v[:, None]
    tl.store(dv_ptr + off_vt, dv_t.to(dv_ptr.dtype.element_ty), mask=m_v[:, None] & m_t[None, :])


@triton.jit
def _bwd_kernel(
    q_ptr,  # [BH, T, K]
    k_ptr,  # [BH, T, K]
    v_ptr,  # [BH, T, V]
    g_ptr,  # [BH, T, K]
    h_ptr,  # [BH, NT + 1, K, V]
    tab_ptr,  # [LOG2C + 2, C, C] gate dtype: _level_table
    dA_ptr,  # [BH, NT, C, C] input dtype: dP of every chunk (_bwd_dv_kernel)
    do_ptr,  # [BH, T, V]
    dh_ptr,  # [BH, NT, K, V]: gradient w.r.t. S_[i+1]
    last_ptr,  # [BH, NT, NVT, K] fp32: partial sums of Σ_v S_[i+1] ⊙ dS_[i+1] (_bwd_dstates_kernel)
    dq_ptr,  # [BH, T, K] out
    dk_ptr,  # [BH, T, K] out
    dg_ptr,  # [BH, T, K] out
    scale,
    T,
    NT,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    LOG2C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PRECISION: tl.constexpr,
    G_PRECISION: tl.constexpr,
    FAST: tl.constexpr,
    NVT: tl.constexpr,
):
    """dQ, dK and d log_alpha of one chunk for one tile of BK key channels (all of V in one BV tile).

    The inter terms ``scale · e^b ⊙ (dO S_[i]ᵀ)`` and ``e^{b_C − b} ⊙ (V dS_[i+1]ᵀ)``, the gate-free
    diagonal ``dP_jj``, and per halving level two products with ``dP`` restricted to the level's
    pairs: ``dQ += E ⊙ (dP_L (K ⊙ E))`` and ``dK += E ⊙ (dP_Lᵀ (Q ⊙ E))`` (``E`` the level's
    exponentials; the pairs select upper-half rows for dQ and lower-half rows for dK). ``dP_L`` is
    *loaded* with the level's pairs as the mask, so both products take it from shared memory (its
    transpose included). Then ``∂L/∂b = q ⊙ dq − k ⊙ dk`` summed backwards inside the chunk, plus on
    every row ``Σ_v S_[i+1] ⊙ dS_[i+1]`` (summed by the reverse state pass, one partial per V tile).

    Why loaded and not kept on chip: holding ``dP`` in registers as a product operand (and its
    transpose) was what Triton 3.6 miscompiled on the H100 (wrong dQ/dK at some tile widths, an
    out-of-range shared-memory access at others; ``docs/benchmarks/gla_perf_log.md``, entry 4).
    """
    i_t, i_kt, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = tl.arange(0, C)
    rows = i_t * C + o_t
    m_t = rows < T
    o_v = tl.arange(0, BV)
    m_v = o_v < V
    dt = q_ptr.dtype.element_ty
    cc = o_t[:, None] * C + o_t[None, :]
    dA_base = dA_ptr + (i_bh * NT + i_t) * C * C
    h_base = h_ptr + (i_bh * (NT + 1) + i_t) * K * V
    dh_base = dh_ptr + (i_bh * NT + i_t) * K * V

    m_tv = m_t[:, None] & m_v[None, :]
    off_v = i_bh * T * V + rows[:, None] * V + o_v[None, :]
    do_c = tl.load(do_ptr + off_v, mask=m_tv, other=0.0)
    v_c = tl.load(v_ptr + off_v, mask=m_tv, other=0.0)
    o_k = i_kt * BK + tl.arange(0, BK)
    m_k = o_k < K
    off = i_bh * T * K + rows[:, None] * K + o_k[None, :]
    m_tk = m_t[:, None] & m_k[None, :]
    q_c = tl.load(q_ptr + off, mask=m_tk, other=0.0)
    k_c = tl.load(k_ptr + off, mask=m_tk, other=0.0)
    g_c = _load_gate(g_ptr + off, m_tk)
    kv = o_k[:, None] * V + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    s_c = tl.load(h_base + kv, mask=m_kv, other=0.0).to(dt)
    ds_c = tl.load(dh_base + kv, mask=m_kv, other=0.0).to(dt)

    # inter-chunk terms
    e_b = _exp(tl.dot(tl.load(tab_ptr + LOG2C * C * C + cc), g_c, input_precision=G_PRECISION), FAST)
    dq = tl.dot(do_c, tl.trans(s_c), input_precision=PRECISION) * (e_b * scale)
    to_end = _exp(tl.dot(tl.load(tab_ptr + (LOG2C + 1) * C * C + cc), g_c, input_precision=G_PRECISION), FAST)
    dk = tl.dot(v_c, tl.trans(ds_c), input_precision=PRECISION) * to_end  # (V dS_[i+1]ᵀ) ⊙ e^{b_C − b}

    # intra: the gate-free diagonal, then the levels (each level's pairs are its load mask)
    dp_diag = tl.load(dA_base + cc, mask=o_t[:, None] == o_t[None, :], other=0.0)
    dq = tl.dot(dp_diag, k_c, dq, input_precision=PRECISION)
    dk = tl.dot(dp_diag, q_c, dk, input_precision=PRECISION)  # the diagonal is its own transpose
    for L in range(LOG2C):  # a loop, not unrolled: the compiler must not overlap the levels' live values
        upper, block = _level(L, C)
        pairs = block & upper[:, None] & (upper == 0)[None, :]  # (query j upper, key s lower, one block)
        dp_l = tl.load(dA_base + cc, mask=pairs, other=0.0)
        e = _exp(tl.dot(tl.load(tab_ptr + L * C * C + cc), g_c, input_precision=G_PRECISION), FAST)
        e_q = tl.where(upper[:, None], e, 0.0)
        e_k = tl.where(upper[:, None], 0.0, e)
        dq += e_q * tl.dot(dp_l, k_c * e_k.to(dt), input_precision=PRECISION)
        dk += e_k * tl.dot(tl.trans(dp_l), q_c * e_q.to(dt), input_precision=PRECISION)

    # d log_alpha: ∂L/∂b = q ⊙ dq − k ⊙ dk, summed from the end of the chunk backwards
    db = q_c.to(tl.float32) * dq - k_c.to(tl.float32) * dk
    last = tl.zeros([BK], dtype=tl.float32)
    for i_v in tl.static_range(NVT):
        last += tl.load(last_ptr + ((i_bh * NT + i_t) * NVT + i_v) * K + o_k, mask=m_k, other=0.0)
    dg = (last + tl.sum(db, axis=0))[None, :] - tl.cumsum(db, axis=0) + db
    tl.store(dq_ptr + off, dq.to(dq_ptr.dtype.element_ty), mask=m_tk)
    tl.store(dk_ptr + off, dk.to(dk_ptr.dtype.element_ty), mask=m_tk)
    tl.store(dg_ptr + off, dg.to(dg_ptr.dtype.element_ty), mask=m_tk)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _precision(dtype: torch.dtype) -> str:
    """fp32 operands: three tf32 tensor-core passes (``tf32x3``: big·big + big·small + small·big, about
    fp32's accuracy; plain ``ieee`` products run on the CUDA cores, and spill at these tile sizes).
    Ignored by ``tl.dot`` for 16-bit operands."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _launch_kw(cfg: Config, kind: str) -> dict:
    """Warps and stages; chunks of 128 rows get at least 8 warps (two warpgroups of 64 rows each:
    with four, every ``C × C`` tile would hold 128 fp32 values per thread and spill)."""
    if INTERPRETER:
        return {}
    least = max(1, cfg.chunk_size // 16)
    if kind == "state":
        return dict(num_warps=max(least, cfg.state_num_warps), num_stages=cfg.state_num_stages)
    warps = cfg.bwd_num_warps if kind == "bwd" else cfg.num_warps
    return dict(num_warps=max(least, warps), num_stages=cfg.num_stages)


#: Shared memory one program may plan for (an H100 block may have up to 227 KiB; the estimates
#: below are rough, so they keep a margin). Tiles that would not fit are narrowed.
_SMEM_BUDGET = 160 * 1024


def _tiles(cfg: Config, K: int, V: int, dtype: torch.dtype) -> dict:
    """Tiles of the two chunk-parallel kernels: the requested ones, narrowed where they would not fit on chip.

    Estimates of the buffers the compiler stages in shared memory (``e`` bytes per element): the
    output kernel, per K tile, the gates and one level's key operand (``C × BK`` each) beside ``P``,
    a ``C × BV`` tile of ``v`` and a ``BK × BV`` state tile; the backward kernel ``dO`` and ``v`` for
    all of ``V``, ``P`` and ``dP``, two state tiles ``BK × V`` and three ``C × BK`` operands. The
    output kernel narrows ``BV`` first (``P`` is then recomputed per V tile), the backward ``BK``.
    """
    e = torch.finfo(dtype).bits // 8
    C = cfg.chunk_size
    v_full = max(16, next_power_of_2(V))
    bk, bv = cfg.block_k, cfg.block_v
    while e * (C * C + 2 * C * bk + C * bv + bk * bv) > _SMEM_BUDGET and (bv > 16 or bk > 16):
        if bv > 16:
            bv //= 2
        else:
            bk //= 2
    bk_bwd = cfg.bwd_block_k
    while e * (2 * C * C + 2 * C * v_full + 2 * bk_bwd * v_full + 3 * C * bk_bwd) > _SMEM_BUDGET and bk_bwd > 16:
        bk_bwd //= 2
    return {"out": (bk, bv), "bwd": (bk_bwd, v_full)}


def _forward(q, k, v, g, h0, scale: float, cfg: Config):
    """``(o, h, A, final)``: inputs ``[BH, T, ·]`` contiguous; ``h0`` fp32 ``[BH, K, V]`` or None."""
    BH, T, K = q.shape
    V = v.shape[-1]
    C = cfg.chunk_size
    NT = triton.cdiv(T, C)
    dev = q.device
    prec, g_prec = _precision(q.dtype), _precision(g.dtype)
    h = empty(BH, NT + 1, K, V, device=dev, dtype=q.dtype)
    final = empty(BH, K, V, device=dev, dtype=torch.float32)
    # P is kept for the backward in the input dtype: its readers round it to that dtype for tl.dot anyway.
    A = empty(BH, NT, C, C, device=dev, dtype=q.dtype)
    o = empty(BH, T, V, device=dev, dtype=v.dtype)
    sbk, sbv = cfg.state_block_k, cfg.state_block_v
    launch(
        _fwd_states_kernel, (triton.cdiv(K, sbk), triton.cdiv(V, sbv), BH),
        k, v, g, h0 if h0 is not None else final, h, final, T, NT,
        K=K, V=V, C=C, BK=sbk, BV=sbv, HAS_H0=h0 is not None, PRECISION=prec, G_PRECISION=g_prec, FAST=_FAST,
        **_launch_kw(cfg, "state"),
    )  # fmt: skip
    bk, bv = _tiles(cfg, K, V, q.dtype)["out"]
    launch(
        _fwd_output_kernel, (triton.cdiv(V, bv), NT, BH),
        q, k, v, g, h, _level_table(C, g.dtype, dev), A, o, scale, T, NT,
        K=K, V=V, C=C, LOG2C=C.bit_length() - 1, BK=bk, BV=bv, PRECISION=prec, G_PRECISION=g_prec, FAST=_FAST,
        **_launch_kw(cfg, "fwd"),
    )  # fmt: skip
    return o, h, A, final


def _backward(q, k, v, g, h, A, do, dht, has_h0: bool, scale: float, cfg: Config):
    """``(dq, dk, dv, dg, dh0)`` for inputs ``[BH, T, ·]``; ``dht`` fp32 ``[BH, K, V]`` or None."""
    BH, T, K = q.shape
    V = v.shape[-1]
    C = cfg.chunk_size
    NT = triton.cdiv(T, C)
    dev = q.device
    prec, g_prec = _precision(q.dtype), _precision(g.dtype)
    dh = empty(BH, NT, K, V, device=dev, dtype=q.dtype)
    nvt = triton.cdiv(V, cfg.state_block_v)
    last = empty(BH, NT, nvt, K, device=dev, dtype=torch.float32)
    dh0 = empty(BH, K, V, device=dev, dtype=torch.float32) if has_h0 else None
    dq = empty(*q.shape, device=dev, dtype=q.dtype)
    dk = empty(*k.shape, device=dev, dtype=k.dtype)
    dv = empty(*v.shape, device=dev, dtype=v.dtype)
    dg = empty(*g.shape, device=dev, dtype=g.dtype)
    sbk, sbv = cfg.state_block_k, cfg.state_block_v
    launch(
        _bwd_dstates_kernel, (triton.cdiv(K, sbk), triton.cdiv(V, sbv), BH),
        q, g, do, h, dht if dht is not None else dh, dh, dh0 if dh0 is not None else dh, last, scale, T, NT,
        K=K, V=V, C=C, BK=sbk, BV=sbv, HAS_DHT=dht is not None, HAS_H0=has_h0, PRECISION=prec,
        G_PRECISION=g_prec, FAST=_FAST, **_launch_kw(cfg, "state"),
    )  # fmt: skip
    bk, bv = _tiles(cfg, K, V, q.dtype)["bwd"]
    tab = _level_table(C, g.dtype, dev)
    dA = empty(BH, NT, C, C, device=dev, dtype=q.dtype)
    launch(
        _bwd_dv_kernel, (NT, BH),
        k, v, g, tab, A, do, dh, dA, dv, scale, T, NT,
        K=K, V=V, C=C, LOG2C=C.bit_length() - 1, BK=bk, BV=bv, PRECISION=prec, G_PRECISION=g_prec, FAST=_FAST,
        **_launch_kw(cfg, "bwd"),
    )  # fmt: skip
    launch(
        _bwd_kernel, (NT, triton.cdiv(K, bk), BH),
        q, k, v, g, h, tab, dA, do, dh, last, dq, dk, dg, scale, T, NT,
        K=K, V=V, C=C, LOG2C=C.bit_length() - 1, BK=bk, BV=bv, PRECISION=prec, G_PRECISION=g_prec, FAST=_FAST,
        NVT=nvt, **_launch_kw(cfg, "bwd"),
    )  # fmt: skip
    return dq, dk, dv, dg, dh0


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
        log_alpha: ``[B, H, T, K]`` log-space gates ``≤ 0`` (fp32, fp16 or bf16, own dtype allowed;
            ``-inf`` is a reset of that key channel); receives a gradient.
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
    scale = _triton.check_scale(scale)
    _triton.check_flag("output_final_state", output_final_state)
    cfg = config_for(B, H, K, V, q.device) if config is None else _triton.check_config(config, Config)
    _triton.check_chunk_size("config.chunk_size", cfg.chunk_size)
    for field in ("state_block_k", "state_block_v", "block_k", "block_v", "bwd_block_k"):
        size = getattr(cfg, field)
        if not isinstance(size, int) or size < 16 or size & (size - 1):
            raise ValueError(f"config.{field} must be a power of two ≥ 16, got {size!r}")
    cfg = cfg.clipped(K, V)

    initial_state = _triton.check_initial_state(initial_state, (B, H, K, V), q.device)

    if _triton.interpreter_upcasts(q.dtype) or _triton.interpreter_upcasts(log_alpha.dtype):
        o, final = attention(q.float(), k.float(), v.float(), log_alpha.float(), scale=scale,
                             initial_state=initial_state, output_final_state=True, config=config)  # fmt: skip
        o = o.to(q.dtype)
        return (o, final) if output_final_state else o

    o, final = _GLAttention.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), log_alpha.contiguous(), initial_state, scale, cfg
    )
    return (o, final) if output_final_state else o

