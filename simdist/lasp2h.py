r"""LASP-2H (arXiv 2502.07563, §3.3): the softmax-attention layers of a hybrid model, by AllGather of K and V.

A hybrid model interleaves linear-attention layers (LASP-2) with ordinary softmax-attention layers
("1/4 hybrid": one in four). Softmax attention has no fixed-size state to pass around, so its layers
gather the keys and values themselves::

    forward   AllGather [K_s | V_s] from every rank s
              O_r = softmax(scale · Q_r K_{0..r}ᵀ + causal mask) V_{0..r}     (keys of chunks 0..r)
    backward  dQ_r locally; every rank holds partial dK_s, dV_s for each chunk s ≤ r it used
              reduce-scatter: rank s receives Σ_r (dK_s, dV_s) from every rank r

With the causal mask aligned to the *end* of the keys (query row ``i`` of the chunk sits at global
position ``start_r + i``, which is ``i + Tk - Tq`` for keys ``[0, end_r)``), rank ``r``'s output is
exactly its rows of one-device causal attention. ``causal=False`` uses every chunk's keys.

K and V travel as one tensor (``[K | V]`` along the last axis), and dK, dV as one, so a layer costs
two collectives per iteration, like LASP-2 — but their size grows with the sequence, ``(W-1)·C·(K+V)``
per rank, where LASP-2's states do not. Chunks of unequal length are padded to the longest for the
collectives (the padding never enters a softmax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from simdist import _layout, accounting, comm, local

__all__ = ["attention"]


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    return x if x.shape[2] == length else F.pad(x, (0, 0, 0, length - x.shape[2]))


class _Lasp2H(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, layout):
        r, W, group, lengths = layout.rank, layout.world_size, layout.group, layout.lengths
        K = k.shape[-1]
        Cmax = max(lengths)
        kv = torch.cat([k, v], dim=-1)
        if W > 1:
            gathered = comm.all_gather(_pad(kv, Cmax), group=group, label="KV")
        else:
            gathered = [kv]
        sources = list(range(r + 1)) if causal else list(range(W))
        with accounting.span("compute", "attention"), torch.enable_grad():
            keys = torch.cat([gathered[s][:, :, : lengths[s]] for s in sources], dim=2)
            qd = q.detach().requires_grad_()
            kd = keys[..., :K].detach().requires_grad_()
            vd = keys[..., K:].detach().requires_grad_()
            o = local.softmax(qd, kd, vd, causal=causal, scale=scale)
        ctx.graph = (qd, kd, vd, o)
        ctx.sources, ctx.layout = sources, layout
        return o.detach()

    @staticmethod
    def backward(ctx, do):
        qd, kd, vd, o = ctx.graph
        layout, sources = ctx.layout, ctx.sources
        r, W, group, lengths = layout.rank, layout.world_size, layout.group, layout.lengths
        with accounting.span("compute", "attention backward"):
            dq, dkeys, dvals = torch.autograd.grad(o, (qd, kd, vd), do.contiguous())
            dkv = torch.cat([dkeys, dvals], dim=-1)
        ctx.graph = None
        K = dkeys.shape[-1]
        if W == 1:
            mine = dkv
        else:
            Cmax = max(lengths)
            pieces, at = {}, 0
            for s in sources:
                pieces[s] = _pad(dkv[:, :, at : at + lengths[s]], Cmax)
                at += lengths[s]
            zeros = torch.zeros_like(pieces[sources[0]])
            contributions = [pieces.get(s, zeros) for s in range(W)]
            mine = comm.reduce_scatter(contributions, group=group, label="dKV")[:, :, : lengths[r]]
        return dq, mine[..., :K], mine[..., K:], None, None, None


def attention(q, k, v, *, causal: bool = True, scale: float | None = None, group=None, lengths=None):
    r"""Softmax attention of this rank's chunk of queries over the whole sequence, by LASP-2H.

    Every rank of ``group`` calls it with its own contiguous chunk, in rank order along the sequence.

    Args:
        q: ``[B, H, C_r, K]`` this rank's queries (``C_r`` may differ between ranks).
        k: ``[B, H, C_r, K]``; v: ``[B, H, C_r, V]``.
        causal: each token sees itself and every earlier token of the whole sequence; ``False``: all.
        scale: score temperature; ``None`` means ``K ** -0.5``.
        group: the process group (``None``: the default group).
        lengths: every rank's chunk length, declared; checked against the chunks the ranks hold by the
            handshake, which names a rank that declares other lengths (see ``simdist._layout``).

    Returns:
        ``o: [B, H, C_r, V]``, this chunk's rows of one-device softmax attention; differentiable in
        q, k, v (dK, dV of every chunk are summed back to its owner).
    """
    layout, _ = _layout.handshake(
        "simdist.lasp2h.attention", "lasp2h", q, k, v, None, causal, scale, group, lengths=lengths, allow_decay=False, scale_may_be_none=True
    )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _Lasp2H.apply(q, k, v, causal, scale, layout)
