r"""LASP-1 (arXiv 2404.02882): causal linear attention over ``W`` ranks by a ring of point-to-point messages.

Rank ``r`` holds the contiguous chunk ``r`` of the sequence (``C_r`` tokens). The state of all earlier
chunks reaches it along a chain (``docs/sequence_parallel.md``)::

    forward   rank r:  P_r  = receive from r-1            (zeros on rank 0)
                       O_r  = [(Q_r K_rᵀ) ⊙ D] V_r  +  Λ Q_r P_r          (intra + inter)
                       send λ^{C_r} P_r + M_r to r+1,  M_r = (λ^{C_r} Λ⁻¹ K_r)ᵀ V_r
    backward  rank r:  dS_r = receive from r+1            (zeros on rank W-1)
                       dP_r = (Λ Q_r)ᵀ dO_r + λ^{C_r} dS_r  → send to r-1
                       dK_r, dV_r += (λ^{C-j} V_r) dS_rᵀ, (λ^{C-j} K_r) dS_r;  dQ_r += Λ dO_r P_rᵀ

``W-1`` messages forward and ``W-1`` backward, each of ``B·H·K·V`` state elements, and every one
waits for the previous: ``2(W-1)`` **sequential** steps per iteration. The head of each chain
(rank 0 forward, rank ``W-1`` backward) sends before doing anything else; every other rank posts its
receive and computes the intra-chunk work (in the backward the intra gradients) while the state
travels, so it only waits for what it cannot do without the state.

Only the causal form exists here: bidirectional attention needs the sum of *every* chunk's state on
every rank, which a chain delivers in ``2(W-1)`` steps and LASP-2's single AllGather in one — use
``simdist.lasp2.attention(..., causal=False)``.

**Two schedules, one result.** On the CPU ranks (and CUDA without the kernel) the rank overlaps, as
above: it computes ``intra`` and ``M_r`` while ``P_r`` travels, then adds ``Λ Q_r P_r``
(``simdist.local``'s split pieces). On CUDA with ``kernels.lightning`` (``simdist.kernel_path``) it
runs **state first**: compute only what must be sent (``M_r`` forward, ``scale·(ΛQ_r)ᵀ dO_r``
backward — one product over the chunk each, and only on ranks that send one), forward the combined
state as soon as the incoming one arrives, and *then* run the kernel once with
``initial_state = P_r``, which yields ``O_r`` whole; its backward, fed ``dS_r`` as the gradient of
its final state, yields ``dQ_r, dK_r, dV_r`` whole (the ``M_r`` path included). Why not overlap on
the GPU: one CUDA stream runs kernels in the order they are launched, and NCCL's send waits for
everything launched before it, so a send queued after the intra kernel would leave only when that
kernel ends — the chain would advance one *kernel* per hop instead of one *message* per hop. And
the split form's extra passes (``inter``, ``dQ += Λ dO Pᵀ``, the ``M`` path of ``dK, dV``) read and
write whole chunks, which costs more than the ~40 µs message they would hide. A rank also lets its
state *leave* before it launches the kernel (it waits for the send on the stream): launched beside
a kernel that fills every multiprocessor, NCCL's send kernel waited for free SMs, and each hop cost
a fraction of a kernel instead of a message (measured on 4 H200s: 0.5–1.5 ms per hop at 256k tokens
per GPU). So on GPUs a hop costs a message plus one tiny ``λ^C P + M``, and the local work costs
the kernel plus one state product per direction.
"""

from __future__ import annotations

import torch

from simdist import _layout, accounting, comm, kernel_path, local

__all__ = ["attention"]


class _Lasp1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rates, scale, layout):
        r, W = layout.rank, layout.world_size
        group = layout.group
        sd = local.state_dtype(q.dtype)
        B, H, C, K = q.shape
        V = v.shape[-1]
        f = local.factors(rates, C, sd, q.device)
        P = torch.zeros(B, H, K, V, dtype=sd, device=q.device)
        with accounting.span("compute", "M"):
            M = local.chunk_state(k, v, f)
        send = recv = None
        if r == 0 and W > 1:  # the head of the chain needs nothing: its state leaves at once
            send = comm.isend(M, 1, group=group, label="KV")
        elif r > 0:  # post the receive; the intra-chunk work overlaps it
            recv = comm.irecv(P, r - 1, group=group, label="KV")
        o_intra, ctx.graph = local.intra_forward(q, k, v, rates, scale)
        if recv is not None:
            recv.wait()
            if r < W - 1:
                with accounting.span("compute", "state"):
                    S = local.advance(P, M, rates, C)
                send = comm.isend(S, r + 1, group=group, label="KV")
        with accounting.span("compute", "inter"):
            o = o_intra + local.inter(q, P, f, scale)
        if send is not None:
            send.wait()
        ctx.save_for_backward(q, k, v, P)
        ctx.f, ctx.rates, ctx.scale, ctx.layout = f, rates, scale, layout
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, P = ctx.saved_tensors
        f, rates, scale, layout = ctx.f, ctx.rates, ctx.scale, ctx.layout
        r, W, group = layout.rank, layout.world_size, layout.group
        do = do.contiguous()
        with accounting.span("compute", "dM"):
            dP = local.grad_incoming(q, do, f, scale)  # this chunk's own part of dP_r
        send = recv = None
        if r == W - 1 and W > 1:  # the tail of the chain: its dP leaves at once
            send = comm.isend(dP, r - 1, group=group, label="dKV")
        elif r < W - 1:
            dS = torch.zeros_like(P)
            recv = comm.irecv(dS, r + 1, group=group, label="dKV")
        dq, dk, dv = local.intra_backward(ctx.graph, do, P, f, scale)
        if recv is not None:
            recv.wait()
            if r > 0:
                with accounting.span("compute", "state"):
                    dP = local.advance(dS, dP, rates, q.shape[2])  # dP_own + λ^C dS
                send = comm.isend(dP, r - 1, group=group, label="dKV")
            with accounting.span("compute", "dK dV from the state"):
                dk_s, dv_s = local.grad_chunk_state(k, v, dS, f)
                dk, dv = dk + dk_s, dv + dv_s
        if send is not None:
            send.wait()
        ctx.graph = None
        return dq, dk, dv, None, None, None


class _Lasp1Kernel(torch.autograd.Function):
    """The state-first schedule of the kernel path (see the module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, rates, scale, layout):
        r, W, group = layout.rank, layout.world_size, layout.group
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, H, C, K = q.shape
        V = v.shape[-1]
        send = recv = P = None
        if r > 0:  # posted first: on a GPU a receive queued after M would start only when M is done
            P = torch.zeros(B, H, K, V, dtype=torch.float32, device=q.device)
            recv = comm.irecv(P, r - 1, group=group, label="KV")
        if r < W - 1:  # only a rank with a successor needs its own state
            with accounting.span("compute", "M"):
                M = kernel_path.chunk_state(k, v, rates)
        if r == 0 and W > 1:  # the head of the chain: its state leaves at once
            send = comm.isend(M, 1, group=group, label="KV")
        elif r > 0:
            recv.wait()
            if r < W - 1:  # pass the state on before the local work
                with accounting.span("compute", "state"):
                    S = local.advance(P, M, rates, C)
                send = comm.isend(S, r + 1, group=group, label="KV")
        if send is not None:
            # The state must be on its way before the kernel takes every multiprocessor: queued
            # beside it, NCCL's send kernel waited for free SMs (0.5–1.5 ms per hop at 256k tokens,
            # measured on 4 H200s). On a GPU this wait holds back the stream, not the host.
            send.wait()
        o, ctx.graph = kernel_path.forward(q, k, v, rates, scale, P)
        ctx.rates, ctx.scale, ctx.layout = rates, scale, layout
        return o

    @staticmethod
    def backward(ctx, do):
        qd, _, _, _, final = ctx.graph  # (q, k, v, o, final state) of kernel_path.forward
        rates, scale, layout = ctx.rates, ctx.scale, ctx.layout
        r, W, group = layout.rank, layout.world_size, layout.group
        C = qd.shape[2]
        do = do.contiguous()
        send = recv = dS = None
        if r < W - 1:
            dS = torch.zeros(final.shape, dtype=torch.float32, device=do.device)
            recv = comm.irecv(dS, r + 1, group=group, label="dKV")
        if r > 0:  # only a rank with a predecessor sends a state gradient
            with accounting.span("compute", "dM"):
                dP = kernel_path.grad_incoming(qd.detach(), do, rates, scale)
        if r == W - 1 and W > 1:  # the tail of the chain: its dP leaves at once
            send = comm.isend(dP, r - 1, group=group, label="dKV")
        elif r < W - 1:
            recv.wait()
            if r > 0:
                with accounting.span("compute", "state"):
                    dP = local.advance(dS, dP, rates, C)  # dP_own + λ^C dS
                send = comm.isend(dP, r - 1, group=group, label="dKV")
        if send is not None:
            send.wait()  # as in the forward: the state gradient leaves before the kernel fills the GPU
        dq, dk, dv = kernel_path.backward(ctx.graph, do, dS)
        ctx.graph = None
        return dq, dk, dv, None, None, None


def _causal_only(causal, decay):
    """LASP-1's rule on its options, checked inside the handshake (so every rank hears of a breach)."""
    if not causal:
        raise ValueError(
            "simdist.lasp1.attention: LASP-1 is the causal ring; bidirectional attention needs every chunk's state on "
            "every rank, which one AllGather gives: use simdist.lasp2.attention(..., causal=False)"
        )


def attention(q, k, v, *, decay=None, causal: bool = True, scale: float = 1.0, group=None, lengths=None):
    r"""Causal linear attention (Lightning decay optional) of this rank's chunk, by the LASP-1 ring.

    Every rank of ``group`` calls it with its own contiguous chunk, in rank order along the sequence.

    Args:
        q: ``[B, H, C_r, K]`` this rank's queries (``C_r`` may differ between ranks).
        k: ``[B, H, C_r, K]``; v: ``[B, H, C_r, V]``.
        decay: ``[H]`` rates ``λ`` in ``(0, 1]`` (a tensor or a sequence; not differentiated), or
            ``None`` for plain linear attention (``λ = 1``). The same on every rank.
        causal: must be ``True`` (see the module docstring; ``lasp2`` has the bidirectional form).
        scale: multiplies ``q`` (default 1.0).
        group: the process group (``None``: the default group).
        lengths: every rank's chunk length, declared; checked against the chunks the ranks hold by the
            handshake, which names a rank that declares other lengths (see ``simdist._layout``).

    Returns:
        ``o: [B, H, C_r, V]``, this chunk's rows of the one-device output; differentiable in q, k, v.

    Raises:
        ValueError: bad or disagreeing input, ``causal=False`` included, on every rank (a rank whose
            own input is bad raises its error; the others raise one naming it).
    """
    layout, lam = _layout.handshake(
        "simdist.lasp1.attention", "lasp1", q, k, v, decay, causal, scale, group, lengths=lengths, options=_causal_only
    )
    scheme = _Lasp1Kernel if kernel_path.applies(q) else _Lasp1
    return scheme.apply(q, k, v, local.rates(lam), float(scale), layout)
