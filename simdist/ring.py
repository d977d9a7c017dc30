r"""Ring Attention: softmax attention over ``W`` ranks by passing K and V around a ring (the baseline).

The scheme LASP-2's paper compares against (Liu et al., 2023; the causal form without load
balancing). Rank ``r`` keeps its queries and, for ``W`` steps, attends to the key/value chunk it
currently holds while passing that chunk on to ``r+1`` and receiving the next from ``r-1``::

    step t = 0..W-1:   src = (r - t) mod W
                       if src ≤ r (causal) or always:  (o_t, lse_t) = attention(Q_r, K_src, V_src)
                       O, LSE ← merge: LSE' = log(e^LSE + e^lse_t),  O' = e^{LSE-LSE'} O + e^{lse_t-LSE'} o_t

Only the diagonal block (``src = r``) needs the causal mask; later chunks are skipped (their keys
still travel: the ring does not know who needs what). The backward passes K and V around again,
together with an accumulator of ``dK, dV`` for the chunk travelling with them; each rank adds its
queries' contribution, computed from the *final* ``O`` and ``LSE`` (so every block's gradient is
exact), and after ``W`` hops the accumulator is home.

``W-1`` sequential messages forward and ``2W-1`` backward, each of ``C·(K+V)`` elements: traffic and
steps both grow with ``W``, and the wait can only be hidden behind one block's attention.

Block attention on CUDA with half precision uses PyTorch's flash-attention operator
``aten._scaled_dot_product_flash_attention`` and its backward, which return and take the
log-sum-exp the merge needs (public SDPA does not return it). The operator is private but its
schema has been the same from torch 2.1 through 2.13 — the one ``torch.distributed``'s own context
parallelism calls — and ``tests/test_lasp.py`` checks the call against the installed torch on
``meta`` tensors; it needs ``K = V`` and a head width that is a multiple of 8 (at most 256).
Elsewhere (CPU, float32/float64, other widths, ``USE_FLASH = False``) an explicit form in
float32/float64 that materialises each block's scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from simdist import _layout, accounting, comm, local

__all__ = ["attention", "USE_FLASH", "block_forward", "block_backward", "flash_forward", "flash_backward"]

#: Use ``aten._scaled_dot_product_flash_attention`` for CUDA fp16/bf16 blocks (set False to force the explicit form).
USE_FLASH = True


def _flash(q, v) -> bool:
    D = q.shape[-1]
    return USE_FLASH and q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and D == v.shape[-1] and D % 8 == 0 and D <= 256


def flash_forward(q, k, v, *, causal: bool, scale: float):
    """``(o, lse, saved)`` from ``aten._scaled_dot_product_flash_attention`` (``o`` in q's dtype)."""
    out, lse, cum_q, cum_k, max_q, max_k, seed, offset, _ = torch.ops.aten._scaled_dot_product_flash_attention(
        q, k, v, 0.0, causal, False, scale=scale
    )
    return out, lse, (cum_q, cum_k, max_q, max_k, seed, offset)


def flash_backward(do, q, k, v, o, lse, saved, *, causal: bool, scale: float):
    """``(dq, dk, dv)`` from ``aten._scaled_dot_product_flash_attention_backward``, given the final ``o`` and ``lse``."""
    cum_q, cum_k, max_q, max_k, seed, offset = saved
    return torch.ops.aten._scaled_dot_product_flash_attention_backward(
        do, q, k, v, o, lse, cum_q, cum_k, max_q, max_k, 0.0, causal, seed, offset, scale=scale
    )


def _mask(Tq: int, Tk: int, device) -> torch.Tensor:
    rows = torch.arange(Tq, device=device)[:, None] + (Tk - Tq)
    return rows >= torch.arange(Tk, device=device)[None, :]


def block_forward(q, k, v, *, causal: bool, scale: float):
    """``(o, lse, saved)`` of softmax attention of ``q`` over one block of keys.

    ``o`` in the state dtype (float32 for half inputs), ``lse: [B, H, Tq]`` float32/float64, and
    ``saved`` whatever the backward of this block needs besides the final ``O`` and ``LSE``.
    """
    if _flash(q, v):
        out, lse, saved = flash_forward(q, k.contiguous(), v.contiguous(), causal=causal, scale=scale)  # k, v: slices of [K | V]
        return out.float(), lse, saved
    sd = local.state_dtype(q.dtype)
    s = (q.to(sd) @ k.to(sd).transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(~_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.exp(s - lse[..., None]) @ v.to(sd)
    return o, lse, None


def block_backward(do, q, k, v, o, lse, saved, *, causal: bool, scale: float):
    """``(dq, dk, dv)`` of one block, given the *final* output ``o`` and log-sum-exp ``lse``."""
    if _flash(q, v):
        return flash_backward(do, q, k.contiguous(), v.contiguous(), o, lse, saved, causal=causal, scale=scale)
    sd = local.state_dtype(q.dtype)
    q_, k_, v_, do_, o_ = (x.to(sd) for x in (q, k, v, do, o))
    s = (q_ @ k_.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(~_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    p = torch.exp(s - lse.to(sd)[..., None])
    dv = p.transpose(-1, -2) @ do_
    dp = do_ @ v_.transpose(-1, -2)
    ds = p * (dp - (do_ * o_).sum(-1, keepdim=True))
    return ds @ k_ * scale, ds.transpose(-1, -2) @ q_ * scale, dv


def _merge(o, lse, o_b, lse_b):
    if o is None:
        return o_b, lse_b
    new = torch.logaddexp(lse, lse_b)
    return o * torch.exp(lse - new)[..., None] + o_b * torch.exp(lse_b - new)[..., None], new


def _exchange(send_buf, recv_buf, r, W, group, label):
    """Post send to ``r+1`` and receive from ``r-1`` as one batch (returns the two pending handles)."""
    return comm.exchange(send_buf, (r + 1) % W, recv_buf, (r - 1) % W, group=group, label=label)


class _Ring(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, layout):
        r, W, group, lengths = layout.rank, layout.world_size, layout.group, layout.lengths
        K = k.shape[-1]
        Cmax = max(lengths)
        cur = F.pad(torch.cat([k, v], dim=-1), (0, 0, 0, Cmax - k.shape[2]))
        o = lse = None
        saved = []
        for t in range(W):
            src = (r - t) % W
            if t < W - 1:
                nxt = torch.zeros_like(cur)
                handles = _exchange(cur, nxt, r, W, group, "KV")
            if not causal or src <= r:
                with accounting.span("compute", f"block {src}"):
                    ks, vs = cur[:, :, : lengths[src], :K], cur[:, :, : lengths[src], K:]
                    o_b, lse_b, extra = block_forward(q, ks, vs, causal=causal and src == r, scale=scale)
                    o, lse = _merge(o, lse, o_b, lse_b)
                saved.append(extra)
            else:
                saved.append(None)
            if t < W - 1:
                for h in handles:
                    h.wait()
                cur = nxt
        out = o.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.saved_blocks, ctx.causal, ctx.scale, ctx.layout = saved, causal, scale, layout
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, layout, saved = ctx.causal, ctx.scale, ctx.layout, ctx.saved_blocks
        r, W, group, lengths = layout.rank, layout.world_size, layout.group, layout.lengths
        K = k.shape[-1]
        Cmax = max(lengths)
        sd = local.state_dtype(q.dtype)
        do = do.contiguous()
        cur = F.pad(torch.cat([k, v], dim=-1), (0, 0, 0, Cmax - k.shape[2]))
        acc = torch.zeros(cur.shape, dtype=sd, device=cur.device)  # dK | dV of the chunk travelling with cur
        dq = torch.zeros(q.shape, dtype=sd, device=q.device)
        for t in range(W):
            src = (r - t) % W
            if t < W - 1:
                nxt = torch.zeros_like(cur)
                kv_handles = _exchange(cur, nxt, r, W, group, "KV")
            if not causal or src <= r:
                with accounting.span("compute", f"block {src} backward"):
                    ks, vs = cur[:, :, : lengths[src], :K], cur[:, :, : lengths[src], K:]
                    dq_b, dk_b, dv_b = block_backward(do, q, ks, vs, out, lse, saved[t], causal=causal and src == r, scale=scale)
                    dq += dq_b.to(sd)
                    acc[:, :, : lengths[src], :K] += dk_b.to(sd)
                    acc[:, :, : lengths[src], K:] += dv_b.to(sd)
            if W > 1:  # the accumulator moves on after this rank's contribution; W hops bring it home
                arrived = torch.zeros_like(acc)
                for h in _exchange(acc, arrived, r, W, group, "dKV"):
                    h.wait()
                acc = arrived
            if t < W - 1:
                for h in kv_handles:
                    h.wait()
                cur = nxt
        mine = acc[:, :, : lengths[r]]
        return dq.to(q.dtype), mine[..., :K].to(k.dtype), mine[..., K:].to(v.dtype), None, None, None


def attention(q, k, v, *, causal: bool = True, scale: float | None = None, group=None, lengths=None):
    r"""Softmax attention of this rank's chunk of queries over the whole sequence, by Ring Attention.

    Same contract as ``simdist.lasp2h.attention``: ``q, k: [B, H, C_r, K]``, ``v: [B, H, C_r, V]``
    (chunks in rank order, lengths may differ), ``causal``, ``scale`` (``None``: ``K ** -0.5``),
    ``group``, ``lengths``. Returns ``o: [B, H, C_r, V]``, differentiable in q, k, v.
    """
    layout, _ = _layout.handshake(
        "simdist.ring.attention", "ring", q, k, v, None, causal, scale, group, lengths=lengths, allow_decay=False, scale_may_be_none=True
    )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _Ring.apply(q, k, v, causal, scale, layout)
