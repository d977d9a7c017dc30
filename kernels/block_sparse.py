r"""Block-sparse causal softmax attention in Triton (SeerAttention's attention step), forward only.

``attention(q, k, v, block_mask, *, block=64, scale=None)`` computes the same function as
``reference.seer.block_sparse_attention`` (``docs/seer.md``; arXiv 2410.13276)::

    o_t = Σ_s softmax_s(scale · q_t · k_s) v_s    over keys s ≤ t whose block (s // block) is kept
                                                  in row t // block of block_mask

Design
------
*A row walks a compacted list, never the whole row.* Before the attention kernel, a small kernel
(``_compact_kernel``, one program per block-row) turns the boolean mask into, per block-row, the
ascending list of kept key blocks and its length (``indices [B, H, nq, nq]`` int32, ``counts
[B, H, nq]``): a prefix sum of the row's mask (``tl.cumsum``) gives each kept block its slot. No
``nonzero``, no host synchronisation, and the attention program then runs exactly ``counts[row]``
iterations: a row that keeps 10 % of its blocks costs 10 % of a dense row — a loop that tested
every block would still pay ``O(T / block)`` per row however sparse the mask. Entries above the
diagonal are ignored (the attention is causal).

*Causal masking only in the diagonal block.* A key block left of the diagonal is entirely visible
to every query of the row, and it is a full block (only the last block of the sequence is
partial, and it is only ever its own row's diagonal), so the walk over the off-diagonal list loads
and multiplies without any mask. The diagonal block, when kept, is the last entry of the ascending
list; it is handled once, after the loop, with the causal mask and the sequence-end mask.

*Launch order for the L2.* The query tiles of one kv head are the fastest grid axis (heaviest
first; the query heads that share the kv head side by side): the programs resident at one time
are neighbouring block-rows of one or two kv heads, whose kept blocks come out of that head's keys
and values (16 MB at T = 32k, D = 128, 16-bit), which stay in the 50 MB L2 and are read from DRAM
about once. With the head fastest, the same programs would come from every
head and fetch their blocks from DRAM each time: 64 × 64 tiles do 64 FLOPs per byte fetched,
which caps them near 200 TFLOP/s at the H100's 3 TB/s.

*GQA without copies.* ``k, v`` have ``Hkv`` heads dividing ``H``; query head ``h`` reads kv head
``h // (H // Hkv)`` through its address, and the heads that share one kv head are launched next to
each other, so they read its tiles from the L2.

*Online softmax in base 2*: ``s = (scale·log2 e) q kᵀ``, running row max ``m`` and sum ``l``,
``acc = acc·2^(m − m') + 2^(s − m') v``; the output is ``acc / l`` and the log-sum-exp (natural
log) ``lse = (m + log2 l) · ln 2``. Query tiles run heaviest first (the last block-rows keep the
most blocks), which keeps the tail of the launch short.

*Tiles.* A program owns ``block_m`` query rows of one block-row (``block_m ≤ block``: the rows
of a program share one list); a key tile is one kept block by default. ``Config.block_n`` can
instead gather two or more kept blocks of the row into one wider tile (their keys need not be
adjacent: each key column's block comes from the list), or walk a block in parts. On the H100
both lost to one block per tile (``docs/benchmarks/block_sparse_perf_log.md``, run 2): 64 × 64
tiles with 4 warps, two programs per multiprocessor, for blocks of 64; 128 × 128 tiles with 8
warps for blocks of 128. Tiles that would not fit in shared memory (wide fp32 ones) are narrowed
on the host.

*Rows that see nothing.* When a row keeps its diagonal block, every query sees at least itself.
The mask is not checked on the host (that would cost a synchronisation per call); a block-row whose
kept blocks hold no key at all (nothing kept) gets ``o = 0`` and ``lse = −inf`` — never NaN.

Inference only: there is no backward pass. Inputs that require a gradient while autograd is on are
refused (``ValueError``), rather than silently detached: a caller that trains through this call
would otherwise get no gradient and no warning. Use it under ``torch.no_grad()`` /
``torch.inference_mode()``, or on detached tensors.

Dtypes: fp16 and bf16 (products in the input dtype, accumulation in fp32), fp32 (three-pass tf32
products on the GPU, about fp32's accuracy). Under Triton's CPU interpreter bf16 is computed in
fp32 and rounded back (the interpreter's bf16 is wrong). Any ``T``: the last partial block is
loaded under a mask.

Shapes: ``q [B, H, T, K]``, ``k [B, Hkv, T, K]``, ``v [B, Hkv, T, V]``, ``block_mask`` bool
``[B, H, nq, nq]`` with ``nq = ceil(T / block)`` (any strides: an ``expand``-ed mask is read
in place); ``K, V ≤ 256``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels import _triton
from kernels._triton import INTERPRETER, check_attention_tensors, check_device, next_power_of_2

__all__ = ["attention", "compact", "Config", "DEFAULT_CONFIG", "config_for", "BLOCKS"]

#: Block sizes the kernels accept (the key tile equals the block).
BLOCKS = (16, 32, 64, 128)

_LN2 = math.log(2.0)
_LOG2E = 1.0 / _LN2


@dataclass(frozen=True)
class Config:
    """Launch settings of the attention kernel (results do not depend on them beyond rounding).

    Attributes:
        block_m: query rows per program; a power of two, at least 16. Clipped to ``block`` (a
            program never straddles two block-rows: each has its own list), so it divides it.
        block_n: keys per tile (``None``: the block). Wider than the block, ``block_n / block``
            kept blocks are gathered into one tile (their rows need not be adjacent); narrower,
            each block is walked in ``block / block_n`` parts. A power of two from 16 to 256.
        num_warps: warps per program.
        num_stages: software-pipelining depth of the key-block loop.
    """

    block_m: int = 128
    block_n: int | None = None
    num_warps: int = 8
    num_stages: int = 3


#: The setting for blocks of 128 (128 query rows per program, 8 warps): the fastest of the H100
#: sweep (``docs/benchmarks/block_sparse_perf_log.md``, run 2).
DEFAULT_CONFIG = Config()

_BY_BLOCK = {
    16: Config(block_m=16, num_warps=2, num_stages=3),
    32: Config(block_m=32, num_warps=4, num_stages=3),
    64: Config(block_m=64, num_warps=4, num_stages=3),
    128: DEFAULT_CONFIG,
}

#: Shared memory one program may plan for (an H100 block may have up to 227 KiB).
_SMEM_BUDGET = 200 * 1024


def _fit(block_m: int, block_n: int, K: int, V: int, dtype: torch.dtype) -> tuple[int, int]:
    """Tiles that fit on chip: the compiler stages the query tile and two buffers of key and value
    tiles in shared memory (what it allocated for sm_90 at every 16-bit setting compiled; fp32's
    three-pass products take about a third more, counted as 6 bytes an element); wide fp32 tiles
    would not fit, so the key tile, then the query tile, is halved until they do."""
    e = 6 if dtype == torch.float32 else torch.finfo(dtype).bits // 8
    bk, bv = max(16, next_power_of_2(K)), max(16, next_power_of_2(V))
    while e * (block_m * bk + 2 * block_n * (bk + bv)) > _SMEM_BUDGET and max(block_m, block_n) > 16:
        if block_n > 16:
            block_n //= 2
        else:
            block_m //= 2
    return block_m, block_n


def config_for(block: int) -> Config:
    """The default for a block size (what ``config=None`` uses): one block-row per program and one
    block per key tile, with warps for the tile (64 rows and 4 warps for blocks of 64, 128 rows and
    8 warps for 128: the fastest of the H100 sweep, where wider or narrower key tiles lost)."""
    return _BY_BLOCK[check_block(block)]


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


def kv_head_major_grid(n_tiles: int, B: int, H: int, Hkv: int) -> tuple[int, int]:
    """The launch grid that ``kv_head_major_program`` decodes: ``n_tiles`` query tiles per head."""
    return (n_tiles * (H // Hkv), B * Hkv)


@triton.jit
def kv_head_major_program(H, GROUP):
    """This program's ``(query tile, batch, query head, kv head, batch · H + head)`` in the launch
    order that keeps a head's keys and values in the L2: axis 0 walks the query tiles of one kv head
    (heaviest, i.e. last, first), the ``GROUP`` query heads that share it side by side; axis 1 is
    (batch, kv head). Programs running together then read one head's keys and values."""
    pid_g = tl.program_id(0)
    pid_m = tl.num_programs(0) // GROUP - 1 - pid_g // GROUP
    b = tl.program_id(1) // (H // GROUP)
    hk = tl.program_id(1) % (H // GROUP)
    h = hk * GROUP + pid_g % GROUP
    return pid_m, b, h, hk, b * H + h


@triton.jit
def _compact_kernel(
    MASK, IDX, CNT,
    smb, smh, smi, smj,
    H, NQB,
    CHUNK: tl.constexpr,
):  # fmt: skip
    """One block-row ``i`` of ``(b, h)``: the kept blocks ``j ≤ i`` in ascending order at the front
    of ``IDX``'s row, the others after them (descending), and their number in ``CNT``. Every
    element of the row is written: the row is a permutation of ``0 .. NQB − 1``."""
    pid_bh = tl.program_id(0)
    i = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    mrow = MASK + b.to(tl.int64) * smb + h.to(tl.int64) * smh + i.to(tl.int64) * smi
    orow = IDX + (pid_bh.to(tl.int64) * NQB + i) * NQB
    kept_before = 0
    for c0 in range(0, NQB, CHUNK):
        cols = c0 + tl.arange(0, CHUNK)
        inside = cols < NQB
        m = tl.load(mrow + cols.to(tl.int64) * smj, mask=inside, other=0)
        keep = ((m != 0) & (cols <= i) & inside).to(tl.int32)
        kept_incl = kept_before + tl.cumsum(keep, 0)
        # kept: slot (kept so far) − 1 from the front; dropped: from the back
        slot = tl.where(keep != 0, kept_incl - 1, NQB - (cols + 1 - kept_incl))
        tl.store(orow + slot, cols, mask=inside)
        kept_before += tl.sum(keep, 0)
    tl.store(CNT + pid_bh.to(tl.int64) * NQB + i, kept_before)


@triton.jit
def _tile(q, k_base, v_base, cols, skt, svt, kmask, vmask, m_i, l_i, acc, offs_m, T, qk_scale,
          DIAGONAL: tl.constexpr, POSITIVE: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """Fold the keys ``cols`` into the running ``(m, l, acc)``, scores in base-2 units
    (``qk_scale = scale · log2 e``). Off the diagonal the keys are whole and all visible: no mask
    but the head width's."""
    if DIAGONAL:
        col_in = cols < T
        kt = tl.load(k_base + cols[None, :] * skt, mask=kmask[:, None] & col_in[None, :], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION)
        s = tl.where((cols[None, :] <= offs_m[:, None]) & col_in[None, :], s, float("-inf"))
        vt = tl.load(v_base + cols[:, None] * svt, mask=col_in[:, None] & vmask[None, :], other=0.0)
    else:
        kt = tl.load(k_base + cols[None, :] * skt, mask=kmask[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION)
        vt = tl.load(v_base + cols[:, None] * svt, mask=vmask[None, :], other=0.0)
    if POSITIVE:  # max(c·s) = c·max(s): one fused multiply-add per score
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.exp2(s * qk_scale - m_new[:, None])
    else:
        s = s * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _attention_kernel(
    Q, K, V, O, LSE, IDX, CNT,
    sqb, sqh, sqt,
    skb, skh, skt,
    svb, svh, svt,
    sob, soh, sot,
    H, T, NQB, GROUP, qk_scale,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PER: tl.constexpr, SUB: tl.constexpr,
    HEAD_K: tl.constexpr, HEAD_V: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    STORE_LSE: tl.constexpr, POSITIVE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One tile of ``BLOCK_M`` query rows inside block-row ``qb``. Key tiles of ``BLOCK_N`` tokens:
    ``PER`` kept blocks gathered side by side (``BLOCK_N = PER · BLOCK``), or the ``SUB`` parts of
    one block in turn (``BLOCK_N = BLOCK / SUB``)."""
    pid_m, b, h, hk, pid_bh = kv_head_major_program(H, GROUP)
    start_m = pid_m * BLOCK_M
    qb = start_m // BLOCK

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = tl.arange(0, BLOCK_V)
    kmask = offs_k < HEAD_K
    vmask = offs_v < HEAD_V
    row_in = offs_m < T

    q_ptrs = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m.to(tl.int64)[:, None] * sqt + offs_k[None, :]
    q = tl.load(q_ptrs, mask=row_in[:, None] & kmask[None, :], other=0.0)
    # offsets inside one head stay in int32 (T · D < 2^31); the head's base pointer carries the rest
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + offs_k[:, None]
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + offs_v[None, :]

    row = IDX + (pid_bh.to(tl.int64) * NQB + qb) * NQB
    cnt = tl.load(CNT + pid_bh.to(tl.int64) * NQB + qb)
    last = tl.load(row + tl.maximum(cnt - 1, 0))
    has_diag = (cnt > 0) & (last == qb)
    n_off = cnt - has_diag.to(tl.int32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)

    # off-diagonal kept blocks, whole and wholly visible: PER of them per key tile (or 1/SUB of one)
    SEG: tl.constexpr = BLOCK_N // PER
    slot = offs_n // SEG
    within = offs_n % SEG
    for t in range(0, (n_off // PER) * SUB):
        if PER == 1:
            cols = tl.load(row + t // SUB) * BLOCK + (t % SUB) * BLOCK_N + offs_n
        else:
            cols = tl.load(row + t * PER + slot) * BLOCK + within  # each column's kept block
        m_i, l_i, acc = _tile(q, k_base, v_base, cols, skt, svt, kmask, vmask, m_i, l_i, acc, offs_m, T, qk_scale,
                              DIAGONAL=False, POSITIVE=POSITIVE, PRECISION=PRECISION)  # fmt: skip
    if PER > 1:  # the blocks left over when PER does not divide their number, one at a time
        one = tl.arange(0, BLOCK)
        for e in range((n_off // PER) * PER, n_off):
            cols = tl.load(row + e) * BLOCK + one
            m_i, l_i, acc = _tile(q, k_base, v_base, cols, skt, svt, kmask, vmask, m_i, l_i, acc, offs_m, T, qk_scale,
                                  DIAGONAL=False, POSITIVE=POSITIVE, PRECISION=PRECISION)  # fmt: skip

    # the diagonal block: causal, and cut at the end of the sequence
    if has_diag:
        DN: tl.constexpr = BLOCK // SUB
        for part in tl.static_range(SUB):
            cols = qb * BLOCK + part * DN + tl.arange(0, DN)
            m_i, l_i, acc = _tile(q, k_base, v_base, cols, skt, svt, kmask, vmask, m_i, l_i, acc, offs_m, T, qk_scale,
                                  DIAGONAL=True, POSITIVE=POSITIVE, PRECISION=PRECISION)  # fmt: skip

    seen = l_i > 0.0
    o = acc / tl.where(seen, l_i, 1.0)[:, None]
    o_ptrs = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m.to(tl.int64)[:, None] * sot + offs_v[None, :]
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=row_in[:, None] & vmask[None, :])
    if STORE_LSE:
        lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
        tl.store(LSE + pid_bh.to(tl.int64) * T + offs_m, lse, mask=row_in)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _launch_kw(cfg: Config) -> dict:
    return {} if INTERPRETER else dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _precision(dtype: torch.dtype) -> str:
    """fp32 operands: three tf32 passes (about fp32's accuracy); ignored for 16-bit operands."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def compact(block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block-row, the kept key blocks ``j ≤ i`` in ascending order, and how many there are.

    Args:
        block_mask: bool ``[B, H, nq, nq]`` (any strides); entries above the diagonal are ignored.

    Returns:
        ``(indices, counts)``: int32 ``[B, H, nq, nq]`` whose row ``i`` starts with its
        ``counts[b, h, i]`` kept blocks in ascending order (the rest of the row holds the dropped
        blocks), and int32 ``counts [B, H, nq]``. Computed on the device, without synchronising.
    """
    _check_mask(block_mask, None)
    B, H, nq, _ = block_mask.shape
    return _compact(block_mask, B, H, nq)


def _compact(block_mask, B, H, nq):
    dev = block_mask.device
    # int32 buffers: ``_triton.empty`` would fill them with NaN under poisoned_outputs(), which an
    # integer cannot hold; the kernel writes every element of both (each row is a permutation).
    idx = torch.empty(B, H, nq, nq, device=dev, dtype=torch.int32)
    cnt = torch.empty(B, H, nq, device=dev, dtype=torch.int32)
    m = block_mask.view(torch.uint8)
    chunk = min(1024, max(16, next_power_of_2(nq)))
    _triton.launch(_compact_kernel, (B * H, nq), m, idx, cnt, *m.stride(), H, nq, CHUNK=chunk)
    return idx, cnt


def _check_mask(block_mask, nq) -> None:
    if not isinstance(block_mask, torch.Tensor):
        raise TypeError(f"block_mask must be a torch tensor, got {type(block_mask).__name__}")
    if block_mask.dtype != torch.bool:
        raise TypeError(f"block_mask must be a bool tensor, got {block_mask.dtype}")
    if block_mask.ndim != 4 or block_mask.shape[-1] != block_mask.shape[-2]:
        raise ValueError(f"block_mask must have shape [B, H, nq, nq], got {tuple(block_mask.shape)}")
    if nq is not None and block_mask.shape[-1] != nq:
        raise ValueError(f"block_mask must have nq = ceil(T / block) = {nq} block-rows and columns, got {tuple(block_mask.shape)}")
    check_device("block_mask", block_mask)


def _check_compacted(pair, shape, device) -> None:
    """``(indices, counts)`` as ``compact`` returns them for ``shape = (B, H, nq)``."""
    B, H, nq = shape
    if len(pair) != 2 or not all(isinstance(x, torch.Tensor) for x in pair):
        raise TypeError("block_mask given as a tuple must be (indices, counts) from kernels.block_sparse.compact")
    idx, cnt = pair
    if idx.dtype != torch.int32 or cnt.dtype != torch.int32:
        raise TypeError(f"compacted block_mask must hold int32 indices and counts, got {idx.dtype} and {cnt.dtype}")
    if tuple(idx.shape) != (B, H, nq, nq) or tuple(cnt.shape) != (B, H, nq):
        raise ValueError(f"compacted block_mask must have shapes {(B, H, nq, nq)} and {(B, H, nq)}, "
                         f"got {tuple(idx.shape)} and {tuple(cnt.shape)}")  # fmt: skip
    if not (idx.is_contiguous() and cnt.is_contiguous()) or idx.device != device or cnt.device != device:
        raise ValueError(f"compacted block_mask must be contiguous and on {device}")


def check_inputs(q, k, v, *extra) -> tuple[int, int, int, int, int, int]:
    """Check ``q [B, H, T, K]``, ``k [B, Hkv, T, K]``, ``v [B, Hkv, T, V]`` (GQA: ``Hkv`` divides
    ``H``); ``(B, H, Hkv, T, K, V)``. ``extra``: further ``(name, tensor)`` on the same device."""
    check_attention_tensors(q, k, v, *extra)
    B, H, T, K = q.shape
    Hkv = k.shape[1]
    V = v.shape[-1]
    if T < 1:
        raise ValueError(f"the sequence length must be at least 1, got T={T}")
    if tuple(k.shape) != (B, Hkv, T, K) or Hkv < 1 or H % Hkv:
        raise ValueError(f"k must have shape [B, Hkv, T, K] = [{B}, Hkv, {T}, {K}] with Hkv dividing H = {H}, got {tuple(k.shape)}")
    if tuple(v.shape[:3]) != (B, Hkv, T):
        raise ValueError(f"v must have batch, kv heads and length {(B, Hkv, T)} like k, got {tuple(v.shape[:3])}")
    if not (1 <= K <= 256 and 1 <= V <= 256):
        raise ValueError(f"head widths must lie in 1..256, got K={K} and V={V}")
    return B, H, Hkv, T, K, V


def check_block(block) -> int:
    if isinstance(block, bool) or not isinstance(block, int) or block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
    return block


def refuse_autograd(*tensors) -> None:
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise ValueError(
            "q, k or v requires a gradient, but these kernels have no backward pass (inference only): "
            "call them under torch.no_grad() or torch.inference_mode(), or pass detached tensors"
        )


def _unit_stride_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    block: int = 64,
    scale: float | None = None,
    return_lse: bool = False,
    config: Config | None = None,
):
    r"""Causal softmax attention over the kept key blocks of each query block (forward only).

    Args:
        q: ``[B, H, T, K]`` queries (fp32, fp16 or bf16; CUDA, or CPU under the interpreter).
        k: ``[B, Hkv, T, K]`` keys, ``Hkv`` dividing ``H`` (query head ``h`` reads kv head
            ``h // (H // Hkv)``); same dtype and device.
        v: ``[B, Hkv, T, V]`` values.
        block_mask: bool ``[B, H, nq, nq]``, ``nq = ceil(T / block)``: ``block_mask[b, h, i, j]``
            keeps key block ``j`` for query block ``i``. Entries above the diagonal are ignored.
            Keep the diagonal (every query then sees itself); a block-row that keeps nothing gets
            zeros (and ``lse = −inf``). Or the pair ``compact(block_mask)`` returns, to reuse one
            compaction across calls.
        block: tokens per block: 16, 32, 64 or 128.
        scale: multiplies ``q kᵀ`` (default ``K ** -0.5``).
        return_lse: also return the natural-log log-sum-exp of each row's kept scores.
        config: launch settings (``Config``); ``None`` takes ``config_for(block)``.

    Returns:
        ``o [B, H, T, V]`` in the dtype of ``v`` — or ``(o, lse)`` with fp32 ``lse [B, H, T]``.

    Raises:
        ValueError: if ``q``, ``k`` or ``v`` requires a gradient while autograd is on (no backward).
    """
    compacted = isinstance(block_mask, tuple)
    if compacted:
        B, H, Hkv, T, K, V = check_inputs(q, k, v)
    else:
        _check_mask(block_mask, None)
        B, H, Hkv, T, K, V = check_inputs(q, k, v, ("block_mask", block_mask))
    block = check_block(block)
    nq = triton.cdiv(T, block)
    if compacted:
        _check_compacted(block_mask, (B, H, nq), q.device)
    elif tuple(block_mask.shape) != (B, H, nq, nq):
        raise ValueError(f"block_mask must have shape [B, H, nq, nq] = {(B, H, nq, nq)}, got {tuple(block_mask.shape)}")
    scale = _triton.check_scale(scale, default=K**-0.5)
    _triton.check_flag("return_lse", return_lse)
    cfg = config_for(block) if config is None else _triton.check_config(config, Config)
    bm, bn = cfg.block_m, cfg.block_n
    if isinstance(bm, bool) or not isinstance(bm, int) or bm < 16 or bm & (bm - 1):
        raise ValueError(f"config.block_m must be a power of two ≥ 16, got {bm!r}")
    if bn is not None and (isinstance(bn, bool) or not isinstance(bn, int) or not 16 <= bn <= 256 or bn & (bn - 1)):
        raise ValueError(f"config.block_n must be None or a power of two in 16..256, got {bn!r}")
    refuse_autograd(q, k, v)

    if _triton.interpreter_upcasts(q.dtype):
        out = attention(q.float(), k.float(), v.float(), block_mask, block=block, scale=scale,
                        return_lse=True, config=config)  # fmt: skip
        o, lse = out[0].to(v.dtype), out[1]
        return (o, lse) if return_lse else o

    idx, cnt = block_mask if compacted else _compact(block_mask, B, H, nq)
    return _attend(q, k, v, idx, cnt, block=block, scale=scale, return_lse=return_lse, cfg=cfg)


def _attend(q, k, v, idx, cnt, *, block, scale, return_lse, cfg):
    """The attention kernel on a compacted mask (``compact``); inputs checked by the caller."""
    B, H, T, K = q.shape
    Hkv, V = k.shape[1], v.shape[-1]
    nq = idx.shape[-1]
    q, k, v = (_unit_stride_last(x) for x in (q, k, v))
    block_m, block_n = _fit(min(cfg.block_m, block), block if cfg.block_n is None else cfg.block_n, K, V, q.dtype)
    per, sub = max(1, block_n // block), max(1, block // block_n)
    o = _triton.empty(B, H, T, V, device=q.device, dtype=v.dtype)
    lse = _triton.empty(B, H, T, device=q.device, dtype=torch.float32) if return_lse else o
    grid = kv_head_major_grid(triton.cdiv(T, block_m), B, H, Hkv)
    _triton.launch(
        _attention_kernel, grid,
        q, k, v, o, lse, idx, cnt,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        H, T, nq, H // Hkv, float(scale) * _LOG2E,
        BLOCK=block, BLOCK_M=block_m, BLOCK_N=block_n, PER=per, SUB=sub,
        HEAD_K=K, HEAD_V=V, BLOCK_K=max(16, next_power_of_2(K)), BLOCK_V=max(16, next_power_of_2(V)),
        STORE_LSE=return_lse, POSITIVE=scale >= 0, PRECISION=_precision(q.dtype),
        **_launch_kw(cfg),
    )  # fmt: skip
    return (o, lse) if return_lse else o
