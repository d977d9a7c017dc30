r"""Double Sparsity decoding in Triton: label scores, an exact top-k, sparse attention by split-K.

``decode(q, k_cache, v_cache, channels, *, top_k, scale=None)`` computes the same function as
``reference.double_sparsity.decode`` (``docs/double_sparsity.md``; arXiv 2408.07092): for one
decoding step of every query head ``h`` (kv head ``g = h // (H / Hkv)``, GQA)::

    ŝ = q_h[C_g] · K_g[:, C_g]ᵀ            label scores: the r heavy channels C_g only
    i = the top_k tokens of ŝ               all S tokens when S ≤ top_k (dense)
    o_h = softmax(scale · q_h · K_g[i]ᵀ) · V_g[i]

Each query head selects its own ``top_k`` tokens. Ties in ``ŝ`` go to the lower token index (the
set is then a function of the scores alone; the kernels never depend on the order of a sort).

Design (for the H100; what ``python -m kernels.bench double_sparsity`` measures)
---------------------------------------------------------------------------------
A decoding step at long context is a pass over memory: a dense step reads every key and value once
(``2·S·D`` elements per kv head), a sparse one reads the label cache (``S·r`` elements, 1/16 of the
keys' bits at the paper's setting) and ``top_k`` rows of keys and values. Everything here is
arranged so that those bytes are read once, at full bandwidth, and so that one step at ``B = 1``
fills all multiprocessors.

1. **Label cache** (``build_labels``): the heavy channels of the post-RoPE keys stored contiguously,
   ``[B, Hkv, S, r]``: one token's labels are one contiguous run of ``r`` elements (16–32 bytes),
   where gathering them from the full keys would touch a 32-byte sector per channel. In 16 bits
   (fp16), or in 8 bits (int8 with one fp16 scale per token and kv head, symmetric:
   ``round(x · 127 / max|x|)``). ``decode`` builds exact labels (the cache's own dtype) on the fly,
   to match the reference; a serving loop keeps them and calls ``decode_with_labels``.
2. **Scores and the first radix digit** (``_score_kernel``): one program per (query head, run of
   tokens) reads the labels of its kv head, computes fp32 scores (``q`` gathered at the channels
   on chip), writes them, and counts the first digit (top bits) of each score's order-preserving
   integer key into a per-row histogram (``tl.histogram`` on chip, then one atomic add per bin).
   The key is the fp32 score (32 bits, four 8-bit digits) or, with ``Config(score_dtype="float16")``,
   the score rounded to fp16 (16 bits, digits of 5, 5 and 6 bits): half the score bytes, one
   pass fewer, and small histograms (``tl.histogram`` issues about ``bins · log2(bins) / 32 +
   log2(bins)`` warp instructions per 32 keys: 256 bins cost about seven times 32; perf log,
   entry 3). The selection is then the exact
   top-k of the fp16-rounded scores, ties to the lower index — not the fp32 top-k where scores lie
   within fp16 rounding of the k-th (``Config.score_dtype``).
3. **Exact selection by radix select** (``_radix_kernel`` per later digit, ``_count_kernel``,
   ``_write_kernel``): each pass counts the next digit of the keys that still share the prefix
   found so far; with fp32 keys from the third digit on with one atomic add per matching key,
   since only a few keys in a thousand still match (fp16 keys count every digit by histogram;
   ``Config.atomic_from_pass``). The last program of a row to finish a pass (an arrival counter after
   the histogram atomics: the CUDA "last block" pattern) picks the pass's digit and writes the
   row's state — the key prefix and how many keys with it are still to take — so every program of
   the next launch loads two integers instead of re-deriving them. After the last digit the state
   is the exact k-th largest key ``τ`` and the number of keys equal to ``τ`` to take. Two parallel
   passes then write the indices: per block of tokens, the count of keys ``> τ`` and ``= τ``; then
   each block writes its keys ``> τ``, and its keys ``= τ`` while their rank among equal keys (by
   token index) is below the number still to take, at the offset the earlier blocks leave — so the
   indices come in increasing token order, deterministically. ``Config(select="torch")`` uses
   ``torch.topk(sorted=False)`` instead (ties as torch breaks them); the benchmark measures both.
4. **Sparse attention, split over the selected tokens** (``_attn_kernel``, ``_merge_kernel``):
   ``splits`` programs per query head each gather their share of the selected rows (one
   contiguous ``D``-element row of K and of V per index: whole 32-byte sectors; the next tile's
   indices are loaded one iteration ahead), run an online softmax in fp32 and write
   ``(m, l, acc)``; a second kernel merges the partial results by log-sum-exp. Without a
   ``config`` the split count is chosen so that ``B · H · splits`` is about four programs per
   multiprocessor (``B = 1, H = 32, top_k = 16k``: 16 splits of 1024 tokens).

Dense case: when ``S ≤ top_k`` steps 1–3 are skipped and step 4 reads every row.

What it costs (H100, S = 256k, B = 1, H = 32, D = 128, fp16, ``top_k = S/16``; run 5 of
``docs/benchmarks/double_sparsity_perf_log.md``): with fp16 score keys 0.272 ms a step with 8-bit
labels (r = 16) and 0.265 ms with 16-bit ones (r = 8), against 1.385 ms for dense SDPA (5.1× and
5.2×; 5.2× and 5.4× at B = 8); with the default fp32 keys 4.3–4.6×. The bytes allow about 10×.
The attention is near its share of the floor (0.119 ms for 268 MB); the selection is not (fp16
keys: scoring 69 µs, radix passes 48, writing 22, counting 9): its passes over the scores are
bound by latency, not bytes.

Inputs ``q, k_cache, v_cache`` are fp32, fp16 or bf16 (one dtype); products accumulate in fp32
(``q`` and every loaded row are converted to fp32 on chip: decoding is memory-bound, the tensor
cores have nothing to do at one query per head). Shapes: ``q [B, H, D]``, ``k_cache [B, Hkv, S, D]``,
``v_cache [B, Hkv, S, Dv]``, ``channels [Hkv, r]`` distinct indices into ``D``; ``D, Dv ≤ 256``.
Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (bf16 is computed in fp32
there).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from kernels import _triton
from kernels._triton import (
    check_config,
    check_device,
    check_flag,
    check_dtype,
    check_scale,
    interpreter_upcasts,
    launch,
    next_power_of_2,
)

__all__ = [
    "decode",
    "decode_with_labels",
    "build_labels",
    "append_labels",
    "select",
    "sparse_attention",
    "Labels",
    "Config",
    "DEFAULT_CONFIG",
]

#: Histogram bins kept per pass and row: a radix digit has at most 8 bits.
_BINS = 256
#: Tokens per block of the counting and writing kernels at most (two running counts share an int32).
_MAX_SELECT_BLOCK = 1 << 14
#: Radix digits (bits, from the top of the key) when ``Config.digits`` is ``None``: four bytes of
#: an fp32 key; for an fp16 key a 5-bit first digit (32 bins: the histogram's cost per key grows
#: with its bins) and two more.
_DEFAULT_DIGITS = {"float32": (8, 8, 8, 8), "float16": (5, 5, 6)}
_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class Config:
    """Launch settings (results do not depend on them beyond fp32 rounding in the softmax merge,
    except ``select`` and ``score_dtype``, which choose how ties break and which scores are ranked).

    The defaults are the settings the benchmark's sweep found fastest on the H100 at S = 256k,
    B = 1 (run 2 of ``docs/benchmarks/double_sparsity_perf_log.md``: 4 tiles per scoring program
    instead of 8, single-stage attention loop; the radix passes' layout per key width from runs
    3 and 4).

    Attributes:
        score_block: tokens per tile of the scoring kernel.
        score_tiles: tiles per program of that kernel (a program adds its histogram to the row's
            once, so more tiles mean fewer atomics; fewer mean more programs).
        radix_block, radix_tiles: tokens per tile and tiles per program of the later radix
            passes; ``None``: fp32 keys as the scoring kernel (four tiles of 1024), fp16 keys one
            tile of 4096, and one tile wherever ``radix_block`` is given alone (the passes read
            the scores from L2 and are bound by latency, not bytes: with fp16 keys the one-tile
            passes took 47 µs against 59 for four tiles, with fp32 keys 87 against 76; perf log,
            runs 3 and 4). On a GPU, fewer tiles per program (then tiles down to 1024 tokens)
            where the rows would leave multiprocessors idle.
        select_block: tokens per block of the counting and writing kernels (raised where a row
            would have more than 1024 blocks; at most 2**14, as the writing kernel packs two
            running counts into one int32).
        select: ``"radix"`` (this module's exact selection, ties to the lower index) or
            ``"torch"`` (``torch.topk(sorted=False)``, ties as torch breaks them).
        score_dtype: ``"float32"`` (default): the selection ranks the fp32 label scores.
            ``"float16"``: the scores are rounded to fp16 (to nearest, ties to even) and the
            selection is the exact top-k of the *rounded* scores, ties to the lower index — a
            different function: tokens whose fp32 scores differ but round to one fp16 value tie,
            so the set can differ from the fp32 one where scores lie within fp16 rounding
            (a relative 2⁻¹¹) of the k-th; scores beyond ±65504 saturate to ±inf. Half the score
            bytes, and a 16-bit key needs fewer radix digits (``docs/double_sparsity.md``).
        digits: radix digit widths (bits, from the top of the key; each 1–8, summing to the key's
            32 or 16 bits); ``None``: four bytes for fp32 keys, ``(5, 5, 6)`` for fp16 keys.
        atomic_from_pass: radix passes from this one on (1 ..; at or past the number of digits:
            none) count with one atomic add per key that still matches the prefix, instead of a
            histogram over every key of the tile (after a digit or two only a few keys in a
            thousand still match); ``None``: 2 for fp32 keys, none for fp16 keys (with their
            small histograms atomics were no faster: run 3 of the perf log).
        attn_block: selected rows per tile of the attention kernel.
        splits: programs per query head in the attention kernel; ``None`` sizes it to the GPU
            (about four programs per multiprocessor in all).
        num_warps: for the scoring, radix and selection kernels.
        attn_num_warps, attn_num_stages: for the attention kernel (stages: gathers in flight).
        attn_prefetch: the attention loop issues the next tile's gathers before it computes the
            current tile (two tiles of K and V in flight per program instead of one); off by
            default, not yet timed on a GPU (perf log, entry 4 and run 5).
    """

    score_block: int = 1024
    score_tiles: int = 4
    radix_block: int | None = None
    radix_tiles: int | None = None
    select_block: int = 2048
    select: str = "radix"
    score_dtype: str = "float32"
    digits: tuple | None = None
    atomic_from_pass: int | None = None
    attn_block: int = 64
    splits: int | None = None
    num_warps: int = 4
    attn_num_warps: int = 4
    attn_num_stages: int = 1
    attn_prefetch: bool = False

    def atomic_pass(self) -> int:
        """The first radix pass that counts with atomics (``atomic_from_pass`` or its default)."""
        if self.atomic_from_pass is not None:
            return self.atomic_from_pass
        return 2 if self.score_dtype == "float32" else len(self.key_digits())

    def radix_layout(self) -> tuple:
        """``(tokens per tile, tiles per program)`` of the later radix passes."""
        fp16 = self.score_dtype == "float16"
        block = self.radix_block if self.radix_block is not None else (4096 if fp16 else self.score_block)
        tiles = self.radix_tiles
        if tiles is None:
            tiles = self.score_tiles if (self.radix_block is None and not fp16) else 1
        return block, tiles

    def key_digits(self) -> tuple:
        """The radix digit widths in use (``digits``, or the default of ``score_dtype``)."""
        return tuple(self.digits) if self.digits is not None else _DEFAULT_DIGITS[self.score_dtype]

    def clipped(self, S: int, nsel: int) -> "Config":
        """Tiles no longer than the work (powers of two, at least 16): short caches launch small
        programs, not long masked ones."""
        block = min(self.score_block, max(16, next_power_of_2(S)))
        return replace(
            self,
            score_block=block,
            score_tiles=max(1, min(self.score_tiles, triton.cdiv(S, block))),
            select_block=min(self.select_block, max(16, next_power_of_2(S))),
            attn_block=min(self.attn_block, max(16, next_power_of_2(nsel))),
        )


DEFAULT_CONFIG = Config()


@dataclass(frozen=True)
class Labels:
    """A label cache: the heavy channels of the (post-RoPE) keys, one contiguous run per token.

    Attributes:
        values: ``[B, Hkv, S, r]``: fp32/fp16/bf16 labels, or int8 (then ``scale`` is given).
        scale: ``[B, Hkv, S]`` fp16 per-token dequantisation scale of int8 labels, else ``None``.
    """

    values: torch.Tensor
    scale: torch.Tensor | None = None

    @property
    def bits(self) -> int:
        return self.values.element_size() * 8

    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + (
            0 if self.scale is None else self.scale.numel() * self.scale.element_size()
        )


# --------------------------------------------------------------------------------------------
# Label cache
# --------------------------------------------------------------------------------------------


def build_labels(k: torch.Tensor, channels: torch.Tensor, *, bits: int | None = None) -> Labels:
    """The label cache of keys ``k [B, Hkv, S, D]`` at ``channels [Hkv, r]``.

    ``bits=None`` keeps the keys' dtype (exact labels: what ``decode`` uses); ``16`` stores fp16;
    ``8`` stores int8 with an fp16 scale per token and kv head (``max |x| / 127``, symmetric).
    Works on any ``S``: the labels of one new decoding step are ``build_labels(k_new, channels)``
    (written into a preallocated cache, or appended with ``append_labels``). Plain torch (the
    label cache is written once per token, outside the hot path).
    """
    if not isinstance(k, torch.Tensor) or k.ndim != 4:
        raise ValueError(f"k must be a [B, Hkv, S, D] tensor, got {getattr(k, 'shape', type(k).__name__)}")
    ch = _check_channels(channels, k.shape[1], k.shape[-1]).to(k.device)
    if bits not in (None, 8, 16):
        raise ValueError(f"bits must be None, 8 or 16, got {bits!r}")
    B, Hkv, S, _ = k.shape
    index = ch.to(torch.int64)[None, :, None, :].expand(B, Hkv, S, ch.shape[1])
    values = torch.gather(k, 3, index)
    if bits is None:
        return Labels(values.contiguous())
    if bits == 16:
        return Labels(values.to(torch.float16).contiguous())
    x = values.float()
    amax = x.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(torch.float16)
    quant = torch.round(x / scale.float()[..., None]).clamp_(-127, 127).to(torch.int8)
    return Labels(quant.contiguous(), scale.contiguous())


def append_labels(labels: Labels, k_new: torch.Tensor, channels: torch.Tensor) -> Labels:
    """``labels`` with the labels of ``k_new [B, Hkv, n, D]`` appended along ``S``, in their format
    (a serving loop would write into a preallocated cache instead of concatenating)."""
    new = build_labels(k_new, channels, bits=8 if labels.values.dtype == torch.int8 else None)
    values = torch.cat([labels.values, new.values.to(labels.values.dtype)], dim=2)
    scale = None if labels.scale is None else torch.cat([labels.scale, new.scale], dim=2)
    return Labels(values, scale)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _order_key(bits, KB: tl.constexpr):
    """An int32 whose signed order is the order of the scores: ``bits`` are an fp32 score's bits
    (``KB = 32``) or an fp16 score's, sign-extended (``KB = 16``); negatives get their magnitude bits
    flipped, and -0.0 (key -1) becomes +0.0's key 0, so that equal scores have equal keys. For
    ``KB = 16`` the key lies in ``-2**15 .. 2**15 - 1``."""
    key = bits ^ ((bits >> 31) & ((1 << (KB - 1)) - 1))
    return tl.where(key == -1, 0, key)


@triton.jit
def _load_keys(ptrs, mask, KB: tl.constexpr):
    """The order keys of the scores at ``ptrs`` (fp32 for ``KB = 32``, fp16 for ``KB = 16``)."""
    if KB == 32:
        bits = tl.load(ptrs, mask=mask, other=0.0).to(tl.int32, bitcast=True)
    else:
        bits = tl.load(ptrs, mask=mask, other=0.0).to(tl.int16, bitcast=True).to(tl.int32)
    return _order_key(bits, KB)


@triton.jit
def _pick(hist, k_rem, NB: tl.constexpr):
    """The digit ``d*`` holding the ``k_rem``-th largest of the keys a histogram counts — the
    largest ``d`` with ``#(digit ≥ d) ≥ k_rem`` — and how many keys of digit ``d*`` are still to
    take (the keys of larger digits are all taken)."""
    d = tl.arange(0, NB)
    ge = tl.cumsum(hist, 0, reverse=True)  # keys with digit ≥ d
    dstar = tl.max(tl.where(ge >= k_rem, d, -1), 0)
    return dstar, k_rem - tl.sum(tl.where(d > dstar, hist, 0), 0)


@triton.jit
def _finish_pass(hist_ptr, cnt_ptr, state_ptr, pref, k_rem, NPROG, PASS: tl.constexpr, SHIFT: tl.constexpr,
                 NB: tl.constexpr, KB: tl.constexpr):  # fmt: skip
    """Called by every program of a pass after adding its counts to the row's histogram; the last
    program of the row to arrive picks the pass's digit (bits ``SHIFT .. SHIFT + log2(NB)`` of the
    key) and writes the row's state ``(key prefix, keys still to take)`` for the next launch. (The
    CUDA "last block" pattern: each program's counts are added before its arrival is counted.)"""
    tl.debug_barrier()  # every thread's histogram atomics precede the arrival
    arrived = tl.atomic_add(cnt_ptr, 1)
    if arrived == NPROG - 1:
        bins = tl.arange(0, NB)
        hist = tl.atomic_add(hist_ptr + bins, tl.zeros([NB], dtype=tl.int32))  # read at L2: every count in
        dstar, k_left = _pick(hist, k_rem, NB)
        if PASS == 0:  # the first digit counts the sign-flipped top bits; the prefix is sign-extended
            found = ((dstar ^ (NB // 2)) << SHIFT) << (32 - KB)
            found = found >> (32 - KB)
        else:
            found = pref | (dstar << SHIFT)
        tl.store(state_ptr, found)
        tl.store(state_ptr + 1, k_left)


@triton.jit
def _score_kernel(
    q_ptr,  # [B, H, D]
    ch_ptr,  # [Hkv, r] int32
    lab_ptr,  # [B, Hkv, S, r]
    lsc_ptr,  # [B, Hkv, S] per-token scale (if HAS_SCALE)
    s_ptr,  # [B·H, S] out: label scores, fp32 (KB = 32) or rounded to fp16 (KB = 16)
    hist_ptr,  # [P, B·H, 256] int32, zeroed: digit histograms (this kernel counts digit 0)
    cnt_ptr,  # [P, B·H] int32, zeroed: programs arrived per pass and row
    state_ptr,  # [P, B·H, 2] int32 out: (key prefix, keys still to take) after each pass
    S,
    H,
    HKV,
    R,
    top_k,
    NPROG,
    D: tl.constexpr,
    RC: tl.constexpr,  # r
    RP: tl.constexpr,  # r padded to a power of two
    BLOCK: tl.constexpr,
    TILES: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HIST: tl.constexpr,
    KB: tl.constexpr,  # key bits: 32 (fp32 scores) or 16 (fp16 scores)
    W0: tl.constexpr,  # bits of the first digit
):
    NB: tl.constexpr = 1 << W0
    SHIFT: tl.constexpr = KB - W0
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    kvh = h // (H // HKV)
    row = b * H + h
    c = tl.arange(0, RP)
    cm = c < RC
    ch = tl.load(ch_ptr + kvh * RC + c, mask=cm, other=0)
    qc = tl.load(q_ptr + row.to(tl.int64) * D + ch, mask=cm, other=0.0).to(tl.float32)
    bk = (b * HKV + kvh).to(tl.int64) * S
    hist = tl.zeros([NB], dtype=tl.int32)
    outside = 0
    for i in range(TILES):
        t = (pid * TILES + i) * BLOCK + tl.arange(0, BLOCK)
        tm = t < S
        lab = tl.load(lab_ptr + (bk + t)[:, None] * RC + c[None, :], mask=tm[:, None] & cm[None, :], other=0)
        s = tl.sum(lab.to(tl.float32) * qc[None, :], axis=1)
        if HAS_SCALE:
            s = s * tl.load(lsc_ptr + bk + t, mask=tm, other=0.0).to(tl.float32)
        if KB == 16:  # the key is the fp16-rounded score (round to nearest even)
            s16 = s.to(tl.float16)
            tl.store(s_ptr + row.to(tl.int64) * S + t, s16, mask=tm)
            bits = s16.to(tl.int16, bitcast=True).to(tl.int32)
        else:
            tl.store(s_ptr + row.to(tl.int64) * S + t, s, mask=tm)
            bits = s.to(tl.int32, bitcast=True)
        if HIST:
            key = _order_key(bits, KB)
            hist += tl.histogram(tl.where(tm, ((key >> SHIFT) & (NB - 1)) ^ (NB // 2), 0), NB)
            outside += tl.sum((~tm).to(tl.int32), 0)
    if HIST:
        bins = tl.arange(0, NB)
        hist -= tl.where(bins == 0, outside, 0)  # tokens past S were counted in bin 0
        tl.atomic_add(hist_ptr + row * 256 + bins, hist, mask=hist > 0)
        _finish_pass(hist_ptr + row * 256, cnt_ptr + row, state_ptr + row * 2, 0, top_k, NPROG, 0, SHIFT, NB, KB)


@triton.jit
def _radix_kernel(
    s_ptr,  # [B·H, S] fp32 or fp16 scores
    hist_ptr,  # [P, B·H, 256] int32
    cnt_ptr,  # [P, B·H] int32
    state_ptr,  # [P, B·H, 2] int32: reads pass PASS - 1's, the last program writes pass PASS's
    S,
    R,
    NPROG,
    PASS: tl.constexpr,  # the digit this launch counts (1 ..)
    SHIFT: tl.constexpr,  # key bits below this digit
    W: tl.constexpr,  # bits of this digit
    ATOMIC: tl.constexpr,  # count with one atomic per matching key (few match) instead of tl.histogram
    BLOCK: tl.constexpr,
    TILES: tl.constexpr,
    KB: tl.constexpr,
):
    NB: tl.constexpr = 1 << W
    pid = tl.program_id(0)
    row = tl.program_id(1)
    prev = state_ptr + ((PASS - 1) * R + row) * 2
    pref = tl.load(prev)
    k_rem = tl.load(prev + 1)
    want = pref >> (SHIFT + W)  # the prefix found so far (arithmetic shifts on both sides)
    out = hist_ptr + (PASS * R + row) * 256
    hist = tl.zeros([NB], dtype=tl.int32)
    skipped = 0
    for i in range(TILES):
        t = (pid * TILES + i) * BLOCK + tl.arange(0, BLOCK)
        tm = t < S
        key = _load_keys(s_ptr + row.to(tl.int64) * S + t, tm, KB)
        keep = tm & ((key >> (SHIFT + W)) == want)
        digit = (key >> SHIFT) & (NB - 1)
        if ATOMIC:
            tl.atomic_add(out + digit, tl.full([BLOCK], 1, tl.int32), mask=keep)
        else:
            hist += tl.histogram(tl.where(keep, digit, 0), NB)
            skipped += tl.sum((~keep).to(tl.int32), 0)
    if not ATOMIC:
        bins = tl.arange(0, NB)
        hist -= tl.where(bins == 0, skipped, 0)
        tl.atomic_add(out + bins, hist, mask=hist > 0)
    _finish_pass(out, cnt_ptr + PASS * R + row, state_ptr + (PASS * R + row) * 2, pref, k_rem, NPROG, PASS, SHIFT,
                 NB, KB)  # fmt: skip


@triton.jit
def _count_kernel(
    s_ptr,  # [B·H, S] fp32 or fp16 scores
    state_ptr,  # [P, B·H, 2] int32, complete: the last pass's is (τ, keys = τ to take)
    cnt_ptr,  # [B·H, NBLK, 2] int32 out: keys > τ and keys = τ in each block
    S,
    R,
    NBLK,
    LAST,  # index of the last pass
    BLOCK: tl.constexpr,
    KB: tl.constexpr,
):
    blk = tl.program_id(0)
    row = tl.program_id(1)
    tau = tl.load(state_ptr + (LAST * R + row) * 2)  # the top_k-th largest key
    t = blk * BLOCK + tl.arange(0, BLOCK)
    tm = t < S
    key = _load_keys(s_ptr + row.to(tl.int64) * S + t, tm, KB)
    c = (row.to(tl.int64) * NBLK + blk) * 2
    tl.store(cnt_ptr + c, tl.sum((tm & (key > tau)).to(tl.int32), 0))
    tl.store(cnt_ptr + c + 1, tl.sum((tm & (key == tau)).to(tl.int32), 0))


@triton.jit
def _write_kernel(
    s_ptr,  # [B·H, S] fp32 or fp16 scores
    state_ptr,  # [P, B·H, 2] int32, complete
    cnt_ptr,  # [B·H, NBLK, 2] int32 from _count_kernel
    idx_ptr,  # [B·H, top_k] int32 out
    S,
    top_k,
    R,
    NBLK,
    LAST,
    BLOCK: tl.constexpr,
    NBLKP: tl.constexpr,  # NBLK padded to a power of two
    KB: tl.constexpr,
):
    """Each block writes its selected tokens in token order at the position the blocks before it
    leave: keys > τ all, keys = τ while their rank among equal keys (by token) is below k_eq."""
    blk = tl.program_id(0)
    row = tl.program_id(1)
    tau = tl.load(state_ptr + (LAST * R + row) * 2)
    k_eq = tl.load(state_ptr + (LAST * R + row) * 2 + 1)
    j = tl.arange(0, NBLKP)
    jm = j < NBLK
    c = (row.to(tl.int64) * NBLK + j) * 2
    gt_j = tl.load(cnt_ptr + c, mask=jm, other=0)
    eq_j = tl.load(cnt_ptr + c + 1, mask=jm, other=0)
    eq_before_j = tl.cumsum(eq_j, 0) - eq_j
    take_j = gt_j + tl.minimum(tl.maximum(k_eq - eq_before_j, 0), eq_j)
    earlier = j < blk
    base = tl.sum(tl.where(earlier, take_j, 0), 0)
    eq_left = tl.maximum(k_eq - tl.sum(tl.where(earlier, eq_j, 0), 0), 0)  # keys = τ this block may take
    t = blk * BLOCK + tl.arange(0, BLOCK)
    tm = t < S
    key = _load_keys(s_ptr + row.to(tl.int64) * S + t, tm, KB)
    gt = tm & (key > tau)
    eq = tm & (key == tau)
    # one scan for both running counts (keys > τ in the low 16 bits, keys = τ above them, under the
    # sign bit: BLOCK ≤ 2**14, _MAX_SELECT_BLOCK)
    both = tl.cumsum(gt.to(tl.int32) + (eq.to(tl.int32) << 16), 0)
    n_gt = both & 0xFFFF
    n_eq = both >> 16
    take = gt | (eq & (n_eq <= eq_left))  # the first eq_left keys = τ of the block, in token order
    pos = base + n_gt + tl.minimum(n_eq, eq_left) - 1
    tl.store(idx_ptr + row.to(tl.int64) * top_k + pos, t, mask=take)


@triton.jit
def _gather_rows(k_ptr, v_ptr, rows, nm, d, dm, e, em, D, DV):
    """The cache rows ``rows`` (absolute, int64) of k and v, masked by ``nm`` (the tile's valid slots)."""
    kk = tl.load(k_ptr + rows[:, None] * D + d[None, :], mask=nm[:, None] & dm[None, :], other=0.0)
    vv = tl.load(v_ptr + rows[:, None] * DV + e[None, :], mask=nm[:, None] & em[None, :], other=0.0)
    return kk, vv


@triton.jit
def _attn_tile(q, kk, vv, nm, m, l, acc):
    """One tile of the online softmax: rows ``kk, vv`` (masked by ``nm``) into ``(m, l, acc)``."""
    s = tl.sum(kk.to(tl.float32) * q[None, :], axis=1)
    s = tl.where(nm, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 0))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new)
    l = l * alpha + tl.sum(p, 0)
    acc = acc * alpha + tl.sum(p[:, None] * vv.to(tl.float32), axis=0)
    return m_new, l, acc


@triton.jit
def _attn_kernel(
    q_ptr,  # [B, H, D]
    k_ptr,  # [B, Hkv, S, D]
    v_ptr,  # [B, Hkv, S, DV]
    idx_ptr,  # [B·H, NSEL] int32 (unless DENSE)
    m_ptr,  # [B·H, NSPLIT] fp32 out: running max (log2 units)
    l_ptr,  # [B·H, NSPLIT] fp32 out: running sum
    acc_ptr,  # [B·H, NSPLIT, DV] fp32 out: unnormalised output
    qk_scale,  # scale · log2(e)
    S,
    NSEL,
    PER_SPLIT,
    NSPLIT,
    H,
    HKV,
    D: tl.constexpr,
    DP: tl.constexpr,
    DV: tl.constexpr,
    DVP: tl.constexpr,
    BN: tl.constexpr,
    DENSE: tl.constexpr,
    PREFETCH: tl.constexpr,  # issue the next tile's gathers before computing this one
):
    split = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    kvh = h // (H // HKV)
    row = b * H + h
    d = tl.arange(0, DP)
    dm = d < D
    q = tl.load(q_ptr + row.to(tl.int64) * D + d, mask=dm, other=0.0).to(tl.float32) * qk_scale
    e = tl.arange(0, DVP)
    em = e < DV
    head = (b * HKV + kvh).to(tl.int64) * S
    m = tl.max(tl.full([BN], float("-inf"), tl.float32), 0)
    l = tl.sum(tl.zeros([BN], tl.float32), 0)
    acc = tl.zeros([DVP], tl.float32)
    start = split * PER_SPLIT
    end = tl.minimum(start + PER_SPLIT, NSEL)
    irow = idx_ptr + row.to(tl.int64) * NSEL
    n_next = start + tl.arange(0, BN)
    if not DENSE:  # the next tile's indices are loaded one iteration ahead: one round trip per tile, not two
        t_next = tl.load(irow + n_next, mask=n_next < end, other=0)
    if PREFETCH:  # the first tile's rows before the loop; each iteration gathers the next tile's first
        nm_next = n_next < end
        if DENSE:
            t = n_next.to(tl.int64)
        else:
            t = t_next.to(tl.int64)
            t_next = tl.load(irow + n_next + BN, mask=n_next + BN < end, other=0)
        kk_next, vv_next = _gather_rows(k_ptr, v_ptr, head + t, nm_next, d, dm, e, em, D, DV)
        for j in range(start, end, BN):
            n = j + tl.arange(0, BN)
            nm = n < end
            kk = kk_next
            vv = vv_next
            n1 = n + BN
            nm1 = n1 < end
            if DENSE:
                t = n1.to(tl.int64)
            else:
                t = t_next.to(tl.int64)
                t_next = tl.load(irow + n1 + BN, mask=n1 + BN < end, other=0)
            kk_next, vv_next = _gather_rows(k_ptr, v_ptr, head + t, nm1, d, dm, e, em, D, DV)
            m, l, acc = _attn_tile(q, kk, vv, nm, m, l, acc)
    else:
        for j in range(start, end, BN):
            n = j + tl.arange(0, BN)
            nm = n < end
            if DENSE:
                t = n.to(tl.int64)
            else:
                t = t_next.to(tl.int64)
                n_next = n + BN
                t_next = tl.load(irow + n_next, mask=n_next < end, other=0)
            # both gathers issued before any arithmetic: twice the bytes in flight per program
            kk, vv = _gather_rows(k_ptr, v_ptr, head + t, nm, d, dm, e, em, D, DV)
            m, l, acc = _attn_tile(q, kk, vv, nm, m, l, acc)
    out = row.to(tl.int64) * NSPLIT + split
    tl.store(m_ptr + out, m)
    tl.store(l_ptr + out, l)
    tl.store(acc_ptr + out * DV + e, acc, mask=em)


@triton.jit
def _merge_kernel(
    m_ptr,
    l_ptr,
    acc_ptr,
    o_ptr,  # [B·H, D] out (D: the value width)
    NSPLIT,
    D: tl.constexpr,
    DP: tl.constexpr,
    SP: tl.constexpr,  # NSPLIT padded to a power of two
):
    row = tl.program_id(0)
    sp = tl.arange(0, SP)
    spm = sp < NSPLIT
    d = tl.arange(0, DP)
    dm = d < D
    base = row.to(tl.int64) * NSPLIT
    m = tl.load(m_ptr + base + sp, mask=spm, other=float("-inf"))
    l = tl.load(l_ptr + base + sp, mask=spm, other=0.0)
    mx = tl.max(m, 0)
    w = tl.where(spm, tl.exp2(m - mx), 0.0)
    acc = tl.load(acc_ptr + (base + sp)[:, None] * D + d[None, :], mask=spm[:, None] & dm[None, :], other=0.0)
    o = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, 0)
    tl.store(o_ptr + row.to(tl.int64) * D + d, o.to(o_ptr.dtype.element_ty), mask=dm)


@triton.jit
def _gather_rows_kernel(
    idx_ptr,  # [B·H, NSEL] int32
    k_ptr,  # [B, Hkv, S, D] source (device memory, or pinned host memory the GPU maps)
    v_ptr,
    ko_ptr,  # [B, H, NSEL, D] out
    vo_ptr,
    S,
    NSEL,
    H,
    HKV,
    NT,  # tiles per query head: cdiv(NSEL, BN)
    TOTAL,  # tiles in all: B · H · NT
    D: tl.constexpr,
    DP: tl.constexpr,
    BN: tl.constexpr,
):
    """The selected rows of each query head copied out contiguously (the offloaded decoder's fetch).

    A fixed number of programs loops over the tiles: reading host memory over PCIe is limited by
    the link, not by the multiprocessors, so a few programs keep it busy and leave the others to
    the compute stream."""
    d = tl.arange(0, DP)
    for tile in range(tl.program_id(0), TOTAL, tl.num_programs(0)):
        row = tile // NT
        j = tile % NT
        b = row // H
        kvh = (row % H) // (H // HKV)
        n = j * BN + tl.arange(0, BN)
        nm = n < NSEL
        lm = nm[:, None] & (d < D)[None, :]
        t = tl.load(idx_ptr + row.to(tl.int64) * NSEL + n, mask=nm, other=0).to(tl.int64)
        src = (b * HKV + kvh).to(tl.int64) * S * D + t[:, None] * D + d[None, :]
        dst = (row.to(tl.int64) * NSEL + n)[:, None] * D + d[None, :]
        kk = tl.load(k_ptr + src, mask=lm, other=0.0)
        vv = tl.load(v_ptr + src, mask=lm, other=0.0)
        tl.store(ko_ptr + dst, kk, mask=lm)
        tl.store(vo_ptr + dst, vv, mask=lm)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_channels(channels, Hkv: int, D: int) -> torch.Tensor:
    if not isinstance(channels, torch.Tensor):
        raise TypeError(f"channels must be a torch tensor of integer indices, got {type(channels).__name__}")
    if channels.dtype.is_floating_point or channels.dtype.is_complex or channels.dtype == torch.bool:
        raise TypeError(f"channels must hold integer channel indices, got {channels.dtype}")
    if channels.ndim != 2 or channels.shape[0] != Hkv or channels.shape[1] < 1:
        raise ValueError(f"channels must have shape [Hkv, r] = [{Hkv}, r ≥ 1], got {tuple(channels.shape)}")
    if channels.shape[1] > D:
        raise ValueError(f"channels may name at most D = {D} channels per kv head, got r = {channels.shape[1]}")
    if channels.device.type == "cpu":  # checked where it costs no device synchronisation
        lo, hi = int(channels.min()), int(channels.max())
        if lo < 0 or hi >= D:
            raise ValueError(f"channels must lie in 0..{D - 1}, got values in {lo}..{hi}")
        if channels.shape[1] > 1 and bool((channels.sort(dim=1).values.diff(dim=1) == 0).any()):
            raise ValueError("channels must not repeat a channel within a kv head (its label would count twice)")
    return channels


def _check_caches(q, k_cache, v_cache) -> tuple[int, int, int, int, int]:
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_device(name, x)
        check_dtype(name, x)
    if q.ndim != 3:
        raise ValueError(f"q must have 3 dimensions [B, H, D] (one decoding step), got shape {tuple(q.shape)}")
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
        if x.ndim != 4:
            raise ValueError(f"{name} must have 4 dimensions [B, Hkv, S, D], got shape {tuple(x.shape)}")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise TypeError(f"q, k_cache and v_cache must share one dtype, got {q.dtype}, {k_cache.dtype} and {v_cache.dtype}")
    if len({q.device, k_cache.device, v_cache.device}) != 1:
        raise ValueError(f"q, k_cache and v_cache must be on one device, got {q.device}, {k_cache.device}, {v_cache.device}")
    B, H, D = q.shape
    Bk, Hkv, S, Dk = k_cache.shape
    if Bk != B or Dk != D:
        raise ValueError(f"k_cache must have shape [B, Hkv, S, D] with B = {B}, D = {D}, got {tuple(k_cache.shape)}")
    if tuple(v_cache.shape[:3]) != (B, Hkv, S):
        raise ValueError(f"v_cache must have [B, Hkv, S] = {(B, Hkv, S)} like k_cache, got {tuple(v_cache.shape[:3])}")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"k_cache must have a number of kv heads dividing the {H} query heads, got {Hkv}")
    if S < 1:
        raise ValueError(f"the cache must hold at least one token, got S = {S}")
    if not (1 <= D <= 256 and 1 <= v_cache.shape[3] <= 256):
        raise ValueError(f"k_cache and v_cache head widths must lie in 1..256, got D = {D}, Dv = {v_cache.shape[3]}")
    return B, H, Hkv, S, D


def _check_top_k(top_k) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int, got {top_k!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    return top_k


def _check_config(config) -> Config:
    cfg = DEFAULT_CONFIG if config is None else check_config(config, Config)
    for field in ("score_block", "radix_block", "select_block", "attn_block"):
        size = getattr(cfg, field)
        if size is None and field == "radix_block":
            continue
        if not isinstance(size, int) or size < 16 or size & (size - 1):
            raise ValueError(f"config.{field} must be a power of two ≥ 16, got {size!r}")
    if cfg.select not in ("radix", "torch"):
        raise ValueError(f"config.select must be 'radix' or 'torch', got {cfg.select!r}")
    if cfg.splits is not None and (not isinstance(cfg.splits, int) or cfg.splits < 1):
        raise ValueError(f"config.splits must be None or a positive int, got {cfg.splits!r}")
    if cfg.score_dtype not in _DEFAULT_DIGITS:
        raise ValueError(f"config.score_dtype must be 'float32' or 'float16', got {cfg.score_dtype!r}")
    if cfg.digits is not None:
        bits = 32 if cfg.score_dtype == "float32" else 16
        digits = cfg.digits
        if (not isinstance(digits, (tuple, list)) or not digits or sum(digits) != bits
                or any(isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= 8 for w in digits)):  # fmt: skip
            raise ValueError(f"config.digits must be None or widths of 1..8 bits summing to {bits} "
                             f"(the {cfg.score_dtype} key), got {digits!r}")  # fmt: skip
    a = cfg.atomic_from_pass
    if a is not None and (isinstance(a, bool) or not isinstance(a, int) or a < 1):
        raise ValueError(f"config.atomic_from_pass must be None or a positive int, got {a!r}")
    rt = cfg.radix_tiles
    if rt is not None and (isinstance(rt, bool) or not isinstance(rt, int) or rt < 1):
        raise ValueError(f"config.radix_tiles must be None or a positive int, got {cfg.radix_tiles!r}")
    if not isinstance(cfg.score_tiles, int) or cfg.score_tiles < 1:
        raise ValueError(f"config.score_tiles must be a positive int, got {cfg.score_tiles!r}")
    check_flag("config.attn_prefetch", cfg.attn_prefetch)
    return cfg


def _check_labels(labels, B: int, Hkv: int, S: int, r: int, device) -> Labels:
    if isinstance(labels, torch.Tensor):
        labels = Labels(labels)
    if not isinstance(labels, Labels):
        raise TypeError(f"labels must be a kernels.double_sparsity.Labels or a tensor, got {type(labels).__name__}")
    v = labels.values
    check_device("labels", v)
    if tuple(v.shape) != (B, Hkv, S, r):
        raise ValueError(f"labels must have shape [B, Hkv, S, r] = {(B, Hkv, S, r)}, got {tuple(v.shape)}")
    if v.device != device:
        raise ValueError(f"labels must be on {device}, got {v.device}")
    if v.dtype == torch.int8:
        if labels.scale is None or tuple(labels.scale.shape) != (B, Hkv, S):
            raise ValueError(f"int8 labels need a per-token scale of shape {(B, Hkv, S)}, got "
                             f"{None if labels.scale is None else tuple(labels.scale.shape)}")  # fmt: skip
        if labels.scale.device != device or not labels.scale.is_floating_point():
            raise ValueError("the labels' scale must be a floating tensor on the labels' device")
    elif v.dtype not in _triton.SUPPORTED_DTYPES:
        raise TypeError(f"labels must be fp32, fp16, bf16 or int8 (with a scale), got {v.dtype}")
    return labels


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _empty_index(*shape: int, device) -> torch.Tensor:
    """An int32 buffer from the one allocation point (poisoned, its NaN bits read as an index far
    outside any cache: an unwritten slot cannot pass for a token)."""
    return _triton.empty(*shape, device=device, dtype=torch.float32).view(torch.int32)


def _select_radix(scores: torch.Tensor, work, top_k: int, cfg: Config) -> torch.Tensor:
    hist, cnt, state = work
    R, S = scores.shape
    nprog = triton.cdiv(S, cfg.radix_block * cfg.radix_tiles)
    KB = 32 if scores.dtype == torch.float32 else 16
    digits = cfg.key_digits()
    idx = _empty_index(R, top_k, device=scores.device)
    shift = KB - digits[0]
    for p, w in enumerate(digits[1:], start=1):
        shift -= w
        launch(
            _radix_kernel, (nprog, R),
            scores, hist, cnt, state, S, R, nprog, PASS=p, SHIFT=shift, W=w, ATOMIC=p >= cfg.atomic_pass(),
            BLOCK=cfg.radix_block, TILES=cfg.radix_tiles, KB=KB, num_warps=cfg.num_warps,
        )  # fmt: skip
    # at most 1024 blocks per row where S allows (the write kernel reads every block's counts), and
    # at most 2**14 tokens per block (the write kernel packs two running counts into one int32)
    block = min(max(cfg.select_block, next_power_of_2(triton.cdiv(S, 1024))), _MAX_SELECT_BLOCK)
    nblk = triton.cdiv(S, block)
    counts = _empty_index(R, nblk, 2, device=scores.device)
    last = len(digits) - 1
    launch(_count_kernel, (nblk, R), scores, state, counts, S, R, nblk, last, BLOCK=block, KB=KB,
           num_warps=cfg.num_warps)  # fmt: skip
    launch(
        _write_kernel, (nblk, R),
        scores, state, counts, idx, S, top_k, R, nblk, last, BLOCK=block, NBLKP=max(2, next_power_of_2(nblk)), KB=KB,
        num_warps=cfg.num_warps,
    )  # fmt: skip
    return idx


def _select(q, labels: Labels, channels: torch.Tensor, top_k: int, Hkv: int, cfg: Config) -> torch.Tensor:
    """``[B·H, top_k]`` int32 token indices per query head (``S > top_k``)."""
    B, H, D = q.shape
    S, r = labels.values.shape[2], labels.values.shape[3]
    R = B * H
    rblock, rtiles = cfg.radix_layout()
    cfg = cfg.clipped(S, top_k)
    rblock = min(rblock, max(16, next_power_of_2(S)))
    rtiles = max(1, min(rtiles, triton.cdiv(S, rblock)))
    if q.device.type == "cuda":  # at least ~4 programs per multiprocessor: fewer tiles per program at small B·H·S
        wanted = 4 * _sm_count(q.device)
        tiles = max(1, min(cfg.score_tiles, triton.cdiv(triton.cdiv(S, cfg.score_block) * R, wanted)))
        rtiles = max(1, min(rtiles, triton.cdiv(triton.cdiv(S, rblock) * R, wanted)))
        while rtiles == 1 and rblock > 1024 and triton.cdiv(S, rblock) * R < wanted:
            rblock //= 2
        cfg = replace(cfg, score_tiles=tiles)
    cfg = replace(cfg, radix_block=rblock, radix_tiles=rtiles)
    radix = cfg.select == "radix"
    fp16_keys = cfg.score_dtype == "float16"
    scores = _triton.empty(R, S, device=q.device, dtype=torch.float16 if fp16_keys else torch.float32)
    nprog = triton.cdiv(S, cfg.score_block * cfg.score_tiles)
    P = len(cfg.key_digits())
    if radix:  # histograms and arrival counters zeroed in one go; the states are written by the passes
        zeroed = torch.zeros(P * R * (_BINS + 1), device=q.device, dtype=torch.int32)
        work = (zeroed[: P * R * _BINS].view(P, R, _BINS), zeroed[P * R * _BINS :].view(P, R),
                _empty_index(P, R, 2, device=q.device))  # fmt: skip
    else:
        work = (scores, scores, scores)  # unused
    launch(
        _score_kernel, (nprog, H, B),
        q, channels, labels.values, labels.scale if labels.scale is not None else labels.values, scores, *work,
        S, H, Hkv, R, top_k, nprog, D=D, RC=r, RP=max(2, next_power_of_2(r)), BLOCK=cfg.score_block,
        TILES=cfg.score_tiles, HAS_SCALE=labels.scale is not None, HIST=radix, KB=16 if fp16_keys else 32,
        W0=cfg.key_digits()[0], num_warps=cfg.num_warps,
    )  # fmt: skip
    if radix:
        return _select_radix(scores, work, top_k, cfg)
    return torch.topk(scores, top_k, dim=-1, sorted=False).indices.to(torch.int32)


_SM_COUNT: dict = {}


def _sm_count(device) -> int:
    key = str(device)
    if key not in _SM_COUNT:
        _SM_COUNT[key] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SM_COUNT[key]


def _splits(BH: int, nsel: int, cfg: Config, device) -> tuple[int, int]:
    """(splits, tokens per split) for the attention kernel."""
    blocks = triton.cdiv(nsel, cfg.attn_block)
    if cfg.splits is not None:
        want = cfg.splits
    elif device.type == "cuda":
        want = triton.cdiv(4 * _sm_count(device), BH)
    else:
        want = 2
    want = max(1, min(want, blocks))
    per = triton.cdiv(blocks, want) * cfg.attn_block
    return triton.cdiv(nsel, per), per


def _attend(q, k_cache, v_cache, idx, nsel: int, scale: float, cfg: Config) -> torch.Tensor:
    """Sparse (``idx [B·H, nsel]``) or dense (``idx is None``: the first ``nsel`` rows) attention."""
    B, H, D = q.shape
    Hkv, S, Dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[3]
    R = B * H
    cfg = cfg.clipped(S, nsel)
    nsplit, per = _splits(R, nsel, cfg, q.device)
    m = _triton.empty(R, nsplit, device=q.device, dtype=torch.float32)
    l = _triton.empty(R, nsplit, device=q.device, dtype=torch.float32)
    acc = _triton.empty(R, nsplit, Dv, device=q.device, dtype=torch.float32)
    o = _triton.empty(B, H, Dv, device=q.device, dtype=q.dtype)
    DVP = max(16, next_power_of_2(Dv))
    launch(
        _attn_kernel, (nsplit, H, B),
        q, k_cache, v_cache, idx if idx is not None else m, m, l, acc, scale * _LOG2E, S, nsel, per, nsplit, H,
        Hkv, D=D, DP=max(16, next_power_of_2(D)), DV=Dv, DVP=DVP, BN=cfg.attn_block, DENSE=idx is None,
        PREFETCH=cfg.attn_prefetch,
        num_warps=cfg.attn_num_warps, num_stages=cfg.attn_num_stages,
    )  # fmt: skip
    launch(_merge_kernel, (R,), m, l, acc, o, nsplit, D=Dv, DP=DVP, SP=max(2, next_power_of_2(nsplit)), num_warps=4)
    return o


def gather_rows(idx: torch.Tensor, k_src: torch.Tensor, v_src: torch.Tensor, H: int, *, out=None, block: int = 32,
                programs: int | None = None):  # fmt: skip
    """``(k_sel, v_sel)``, each ``[B, H, n, D]``: rows ``idx [B·H, n]`` (int32) of the caches
    ``[B, Hkv, S, D]`` copied out contiguously, per query head. The sources may be pinned host
    memory (the GPU reads it over PCIe, one row per index); ``out`` reuses two preallocated
    ``[B, H, n, D]`` buffers; ``programs`` caps the programs (default: one per tile)."""
    B, Hkv, S, D = k_src.shape
    n = idx.shape[-1]
    if out is None:
        out = tuple(_triton.empty(B, H, n, D, device=idx.device, dtype=k_src.dtype) for _ in range(2))
    nt = triton.cdiv(n, block)
    total = B * H * nt
    grid = (total if programs is None else max(1, min(programs, total)),)
    launch(
        _gather_rows_kernel, grid,
        idx, k_src, v_src, out[0], out[1], S, n, H, Hkv, nt, total, D=D, DP=max(16, next_power_of_2(D)), BN=block,
        num_warps=4,
    )  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _prepare(q, k_cache, v_cache, channels, top_k, scale, config):
    B, H, Hkv, S, D = _check_caches(q, k_cache, v_cache)
    ch = _check_channels(channels, Hkv, D)
    top_k = _check_top_k(top_k)
    scale = check_scale(scale, default=D**-0.5)
    cfg = _check_config(config)
    ch = ch.to(device=q.device, dtype=torch.int32).contiguous()
    return (B, H, Hkv, S, D), ch, top_k, scale, cfg


def select(q, labels, channels, *, top_k: int, config: Config | None = None) -> torch.Tensor:
    """The ``top_k`` tokens of every query head by label score, ``[B, H, top_k]`` int32.

    ``q [B, H, D]``; ``labels`` a ``Labels`` (or a ``[B, Hkv, S, r]`` tensor) of ``channels [Hkv, r]``.
    With ``select="radix"`` (default) the indices come in increasing token order, ties in the score
    to the lower index. Needs ``S > top_k`` (with fewer tokens every token is selected).
    """
    check_device("q", q)
    check_dtype("q", q)
    if q.ndim != 3:
        raise ValueError(f"q must have 3 dimensions [B, H, D], got shape {tuple(q.shape)}")
    B, H, D = q.shape
    values = labels.values if isinstance(labels, Labels) else labels
    if not isinstance(values, torch.Tensor) or values.ndim != 4:
        raise ValueError("labels must hold a [B, Hkv, S, r] tensor")
    Hkv, S = values.shape[1], values.shape[2]
    ch = _check_channels(channels, Hkv, D)
    lab = _check_labels(labels, B, Hkv, S, ch.shape[1], q.device)
    top_k = _check_top_k(top_k)
    if top_k >= S:
        raise ValueError(f"select needs more tokens than top_k: S = {S}, top_k = {top_k}")
    cfg = _check_config(config)
    if interpreter_upcasts(q.dtype):
        q = q.float()
    if interpreter_upcasts(lab.values.dtype):
        lab = Labels(lab.values.float(), lab.scale)
    if lab.scale is not None and interpreter_upcasts(lab.scale.dtype):
        lab = Labels(lab.values, lab.scale.float())
    ch = ch.to(device=q.device, dtype=torch.int32).contiguous()
    idx = _select(q.contiguous(), lab, ch, top_k, Hkv, cfg)
    return idx.view(B, H, top_k)


def sparse_attention(q, k_cache, v_cache, idx, *, scale=None, config: Config | None = None) -> torch.Tensor:
    """``o [B, H, D]``: exact softmax attention of each query head over its rows ``idx [B, H, n]``
    (int32/int64 token indices, each in ``0..S-1``; not checked on the device) of its kv head."""
    B, H, Hkv, S, D = _check_caches(q, k_cache, v_cache)
    scale = check_scale(scale, default=D**-0.5)
    cfg = _check_config(config)
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"idx must be an int32 or int64 tensor, got {getattr(idx, 'dtype', type(idx).__name__)}")
    if idx.ndim != 3 or tuple(idx.shape[:2]) != (B, H) or idx.shape[2] < 1:
        raise ValueError(f"idx must have shape [B, H, n ≥ 1] with B, H = {B}, {H}, got {tuple(idx.shape)}")
    if idx.device != q.device:
        raise ValueError(f"idx must be on {q.device}, got {idx.device}")
    if interpreter_upcasts(q.dtype):
        o = sparse_attention(q.float(), k_cache.float(), v_cache.float(), idx, scale=scale, config=config)
        return o.to(q.dtype)
    n = idx.shape[2]
    idx = idx.reshape(B * H, n).to(torch.int32).contiguous()
    return _attend(q.contiguous(), k_cache.contiguous(), v_cache.contiguous(), idx, n, scale, cfg)


def decode_with_labels(q, k_cache, v_cache, labels, channels, *, top_k: int, scale=None,
                       config: Config | None = None) -> torch.Tensor:  # fmt: skip
    """One Double Sparsity decoding step from a kept label cache (what a serving loop calls).

    Args:
        q: ``[B, H, D]`` queries of this step (fp32, fp16 or bf16; CUDA, or CPU under the interpreter).
        k_cache, v_cache: ``[B, Hkv, S, D]`` post-RoPE keys and values, dtype of ``q``; ``Hkv`` divides ``H``.
        labels: the label cache of ``k_cache`` at ``channels`` (``build_labels``: exact, 16- or 8-bit).
        channels: ``[Hkv, r]`` integer heavy-channel indices per kv head.
        top_k: tokens attended per query head; all ``S`` when ``S ≤ top_k``.
        scale: multiplies ``q · k`` in the softmax (default ``D ** -0.5``); label scores are unscaled.
        config: launch settings (``Config``); ``None``: ``DEFAULT_CONFIG``, splits sized to the GPU.

    Returns:
        ``o: [B, H, D]`` in the dtype of ``q``.
    """
    (B, H, Hkv, S, D), ch, top_k, scale, cfg = _prepare(q, k_cache, v_cache, channels, top_k, scale, config)
    lab = _check_labels(labels, B, Hkv, S, ch.shape[1], q.device)
    if interpreter_upcasts(q.dtype):
        lab32 = Labels(lab.values.float() if lab.values.is_floating_point() else lab.values,
                       None if lab.scale is None else lab.scale.float())  # fmt: skip
        o = decode_with_labels(q.float(), k_cache.float(), v_cache.float(), lab32, ch, top_k=top_k, scale=scale,
                               config=config)  # fmt: skip
        return o.to(q.dtype)
    if interpreter_upcasts(lab.values.dtype) or (lab.scale is not None and interpreter_upcasts(lab.scale.dtype)):
        lab = Labels(lab.values.float() if lab.values.is_floating_point() else lab.values,
                     None if lab.scale is None else lab.scale.float())  # fmt: skip
    q, k_cache, v_cache = q.contiguous(), k_cache.contiguous(), v_cache.contiguous()
    if S <= top_k:
        return _attend(q, k_cache, v_cache, None, S, scale, cfg)
    lab = Labels(lab.values.contiguous(), None if lab.scale is None else lab.scale.contiguous())
    idx = _select(q, lab, ch, top_k, Hkv, cfg)
    return _attend(q, k_cache, v_cache, idx, top_k, scale, cfg)


def decode(q, k_cache, v_cache, channels, *, top_k: int, scale=None, config: Config | None = None) -> torch.Tensor:
    """One Double Sparsity decoding step (arXiv 2408.07092, Algorithm 1), the package's contract.

    ``q [B, H, D]``, ``k_cache, v_cache [B, Hkv, S, D]``, ``channels [Hkv, r]``: label scores
    ``q[C] · K[:, C]ᵀ`` per query head, its ``top_k`` tokens (all when ``S ≤ top_k``), exact softmax
    over those with ``scale`` (default ``D ** -0.5``). Returns ``o [B, H, D]`` in the dtype of ``q``.
    Builds exact labels (the cache's dtype) on the fly; ``decode_with_labels`` takes a kept label cache.
    """
    (B, H, Hkv, S, D), ch, top_k, scale, cfg = _prepare(q, k_cache, v_cache, channels, top_k, scale, config)
    if S <= top_k:  # every token: no labels needed
        if interpreter_upcasts(q.dtype):
            return _attend(q.float(), k_cache.float().contiguous(), v_cache.float().contiguous(), None, S, scale,
                           cfg).to(q.dtype)  # fmt: skip
        return _attend(q.contiguous(), k_cache.contiguous(), v_cache.contiguous(), None, S, scale, cfg)
    return decode_with_labels(q, k_cache, v_cache, build_labels(k_cache, ch), ch, top_k=top_k, scale=scale,
                              config=config)  # fmt: skip


def bytes_moved(B: int, H: int, Hkv: int, S: int, D: int, top_k: int, *, label_bytes_per_token: float,
                elem: int = 2) -> dict:  # fmt: skip
    """Bytes a perfect implementation moves for one step: dense (every K and V row once) and sparse
    (labels once, ``top_k`` rows of K and V per query head, and the fp32 scores written and read)."""
    dense = 2 * B * Hkv * S * D * elem + 2 * B * H * D * elem
    sel = min(top_k, S)
    sparse = B * Hkv * S * label_bytes_per_token + 2 * B * H * sel * D * elem + 2 * B * H * D * elem
    return {"dense": dense, "sparse": sparse, "sparse_with_scores": sparse + 2 * B * H * S * 4}



def record_benchmark_launches(*, S: int = 262144, B: int = 1, H: int = 32) -> list:
    """Every kernel launch of the benchmark's path (fp16 caches, ``D = 128``, ``top_k = S/16``; int8
    ``r = 16`` and fp16 ``r = 8`` labels, fp32 and fp16 score keys; sparse and dense attention, and
    the prefetching loop with tiles of 64 and 32 rows; the offload gather), recorded on ``meta``
    tensors instead of run: ``kernels.tools.compile_double_sparsity`` compiles them for the
    GPU without one (the interpreter accepts what the GPU compiler may reject)."""

    def meta(*shape, dtype=torch.float16):
        return torch.empty(*shape, device="meta", dtype=dtype)

    cfg = DEFAULT_CONFIG
    D, top_k = 128, S // 16
    q, k, v = meta(B, H, D), meta(B, H, S, D), meta(B, H, S, D)
    ch = meta(H, 16, dtype=torch.int32)
    with _triton.recorded_launches() as launches:
        idx = _select(q, Labels(meta(B, H, S, 16, dtype=torch.int8), meta(B, H, S)), ch, top_k, H, cfg)
        _select(q, Labels(meta(B, H, S, 8)), ch[:, :8], top_k, H, cfg)
        fp16_keys = replace(cfg, score_dtype="float16")  # rounded scores: 16-bit keys, three digits
        _select(q, Labels(meta(B, H, S, 16, dtype=torch.int8), meta(B, H, S)), ch, top_k, H, fp16_keys)
        _select(q, Labels(meta(B, H, S, 8)), ch[:, :8], top_k, H, fp16_keys)
        _attend(q, k, v, idx, top_k, 0.1, cfg)
        _attend(q, k, v, None, S, 0.1, cfg)
        _attend(q, k, v, idx, top_k, 0.1, replace(cfg, attn_prefetch=True))
        _attend(q, k, v, idx, top_k, 0.1, replace(cfg, attn_prefetch=True, attn_block=32))
        gather_rows(idx, k, v, H)
    return launches
