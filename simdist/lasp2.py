r"""LASP-2 (arXiv 2502.07563): linear attention over ``W`` ranks with one AllGather each way.

Rank ``r`` holds the contiguous chunk ``r`` (``C_r`` tokens; lengths may differ). Instead of passing
the state along a chain, every rank publishes its chunk's own state and gathers everyone's
(``docs/sequence_parallel.md``).

**Causal (Algorithm 2), with decay.** ``M_s = (λ^{C_s} Λ⁻¹ K_s)ᵀ V_s`` is chunk ``s``'s own decayed
state. After the AllGather, rank ``r`` forms the **exclusive** decayed prefix — the state of chunks
``0..r-1`` only::

    P_0 = 0,   P_r = λ^{C_{r-1}} P_{r-1} + M_{r-1}      (equal chunks: Σ_{s<r} λ^{C(r-1-s)} M_s)
    O_r = [(Q_r K_rᵀ) ⊙ D] V_r + Λ Q_r P_r

(An *inclusive* prefix, ``M_{1:t}``, a common misreading of the paper's example (``docs/errata.md``, erratum 2), would count the chunk's own
tokens twice — once in the intra term, once undecayed-by-position in the prefix — and let a token
see later tokens of its chunk. ``tests/test_lasp.py`` pins that.) Backward: ``dM_r = (Λ Q_r)ᵀ dO_r``
(the gradient w.r.t. ``P_r``); AllGather; exclusive decayed *suffix*
``G_{W-1} = 0, G_r = λ^{C_{r+1}} G_{r+1} + dM_{r+1}`` is the gradient w.r.t. ``M_r``, giving
``dK_r += (λ^{C_r-j} V_r) G_rᵀ``, ``dV_r += (λ^{C_r-j} K_r) G_r``, and ``dQ_r += Λ dO_r P_rᵀ``.

**Bidirectional (Algorithm 1), no decay.** ``M_r = K_rᵀ V_r``; AllGather; ``O_r = Q_r Σ_s M_s``.
Backward: ``dM_r = Q_rᵀ dO_r``; AllGather; ``dK_r = V_r (Σ dM)ᵀ``, ``dV_r = K_r Σ dM``.

Two collectives per iteration whatever ``W`` (LASP-1 needs ``2(W-1)`` sequential messages). Each
rank still *receives* ``W-1`` states per collective: LASP-2 saves steps and waiting, not bytes.

**Two schedules, one result.** On the CPU ranks (and CUDA without the kernel) the gathers are
posted before the intra-chunk work, which runs while they travel; ``Λ Q_r P_r`` and the
gradients' state terms are added after (``simdist.local``'s split pieces). On CUDA with
``kernels.lightning`` (``simdist.kernel_path``) the causal form runs **state first**: ``M_r`` (one
product over the chunk), the AllGather, ``P_r``, then one kernel call with ``initial_state = P_r``
gives ``O_r`` whole; backward, ``dM_r``, the AllGather, ``G_r``, then the kernel's backward fed
``G_r`` as the gradient of its final state (``λ^{C_r} P_r + M_r``) gives ``dQ_r, dK_r, dV_r`` whole.
The gather is not hidden, but it costs one latency (tens of µs on NVLink), while the overlapped
form's extra passes over the chunk (``Λ Q P``, ``Λ dO Pᵀ``, the ``G`` terms of ``dK, dV``) cost more
and grow with ``C``. ``M_{W-1}`` and ``dM_0`` are never used by any rank, so those ranks send zeros
instead of computing them. The bidirectional form is a few small products and stays as written.
"""

from __future__ import annotations

import torch

from simdist import _layout, accounting, comm, kernel_path, local

__all__ = ["attention", "exclusive_prefix", "exclusive_suffix", "inclusive_prefix", "forward_with_prefix", "gated_prefix"]


def exclusive_prefix(states, lengths, rank: int, rates):
    """``P_rank = Σ_{s<rank} λ^{C_{s+1} + … + C_{rank-1}} M_s`` by the scan ``P_s = λ^{C_{s-1}} P_{s-1} + M_{s-1}``.

    ``rates``: the decay as ``simdist.local.rates`` gives it (``None``: no decay); the same scan on
    both paths."""
    P = torch.zeros_like(states[0])
    for s in range(rank):
        P = local.advance(P, states[s], rates, lengths[s])
    return P


def inclusive_prefix(states, lengths, rank: int, rates):
    """The erratum: ``λ^{C_rank} P_rank + M_rank``, the state *including* chunk ``rank`` itself.

    What ``O_t = Q_t M_{1:t} + O_t,intra`` computes (the misreading of ``docs/errata.md``, erratum 2). Wrong: chunk ``rank``'s own
    tokens are already in the intra term. Kept only to show the difference (``forward_with_prefix``).
    """
    P = exclusive_prefix(states, lengths, rank, rates)
    return local.advance(P, states[rank], rates, lengths[rank])


def forward_with_prefix(q, k, v, *, decay=None, scale: float = 1.0, group=None, prefix: str = "exclusive"):
    """LASP-2's causal forward (no gradient) with a choice of prefix, to see the erratum happen.

    ``prefix="exclusive"`` is ``attention``'s forward; ``"inclusive"`` uses ``inclusive_prefix`` and
    returns a different, wrong output on every rank (rank 0 included: its own chunk enters its prefix).
    """

    def known_prefix(causal, decay):  # checked inside the handshake, like every option
        if prefix not in ("exclusive", "inclusive"):
            raise ValueError(f"simdist.lasp2.forward_with_prefix: prefix must be 'exclusive' or 'inclusive', got {prefix!r}")

    layout, lam = _layout.handshake(
        "simdist.lasp2.forward_with_prefix", "lasp2", q, k, v, decay, True, scale, group, options=known_prefix
    )
    rates = local.rates(lam)
    f = local.factors(rates, q.shape[2], local.state_dtype(q.dtype), q.device)
    with torch.no_grad():
        M = local.chunk_state(k, v, f)
        states = comm.all_gather(M, group=group, label="M") if layout.world_size > 1 else [M]
        scan = exclusive_prefix if prefix == "exclusive" else inclusive_prefix
        P = scan(states, layout.lengths, layout.rank, rates)
        return local.intra(q, k, v, rates, float(scale)) + local.inter(q, P, f, float(scale))


def exclusive_suffix(grads, lengths, rank: int, rates):
    """``G_rank`` by the reverse scan ``G_{W-1} = 0``, ``G_s = λ^{C_{s+1}} G_{s+1} + dM_{s+1}``."""
    G = torch.zeros_like(grads[0])
    for s in range(len(grads) - 1, rank, -1):
        G = local.advance(G, grads[s], rates, lengths[s])
    return G


class _Lasp2Causal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rates, scale, layout):
        r, W, group = layout.rank, layout.world_size, layout.group
        f = local.factors(rates, q.shape[2], local.state_dtype(q.dtype), q.device)
        with accounting.span("compute", "M"):
            M = local.chunk_state(k, v, f)
        if W > 1:
            gather, states = comm.all_gather(M, group=group, label="M", async_op=True)
        o_intra, ctx.graph = local.intra_forward(q, k, v, rates, scale)
        if W > 1:
            gather.wait()
        else:
            states = [M]
        with accounting.span("compute", "prefix + inter"):
            P = exclusive_prefix(states, layout.lengths, r, rates)
            o = o_intra + local.inter(q, P, f, scale)
        ctx.save_for_backward(q, k, v, P)
        ctx.f, ctx.scale, ctx.layout, ctx.rates = f, scale, layout, rates
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, P = ctx.saved_tensors
        f, scale, layout, rates = ctx.f, ctx.scale, ctx.layout, ctx.rates
        r, W, group = layout.rank, layout.world_size, layout.group
        do = do.contiguous()
        with accounting.span("compute", "dM"):
            dM = local.grad_incoming(q, do, f, scale)
        if W > 1:
            gather, grads = comm.all_gather(dM, group=group, label="dM", async_op=True)
        dq, dk, dv = local.intra_backward(ctx.graph, do, P, f, scale)
        if W > 1:
            gather.wait()
            with accounting.span("compute", "suffix"):
                G = exclusive_suffix(grads, layout.lengths, r, rates)
                dk_s, dv_s = local.grad_chunk_state(k, v, G, f)
                dk, dv = dk + dk_s, dv + dv_s
        ctx.graph = None
        return dq, dk, dv, None, None, None


class _Lasp2Kernel(torch.autograd.Function):
    """The state-first schedule of the kernel path (see the module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, rates, scale, layout):
        r, W, group, lengths = layout.rank, layout.world_size, layout.group, layout.lengths
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, H, C, K = q.shape
        V = v.shape[-1]
        P = None
        if W > 1:
            with accounting.span("compute", "M"):
                if r < W - 1:
                    M = kernel_path.chunk_state(k, v, rates)
                else:  # no rank reads the last chunk's state
                    M = torch.zeros(B, H, K, V, dtype=torch.float32, device=q.device)
            states = comm.all_gather(M, group=group, label="M")
            if r > 0:
                with accounting.span("compute", "prefix"):
                    P = exclusive_prefix(states, lengths, r, rates)
        o, ctx.graph = kernel_path.forward(q, k, v, rates, scale, P)
        ctx.rates, ctx.scale, ctx.layout = rates, scale, layout
        return o

    @staticmethod
    def backward(ctx, do):
        qd, _, _, _, final = ctx.graph  # (q, k, v, o, final state) of kernel_path.forward
        rates, scale, layout = ctx.rates, ctx.scale, ctx.layout
        r, W, group, lengths = layout.rank, layout.world_size, layout.group, layout.lengths
        do = do.contiguous()
        G = None
        if W > 1:
            with accounting.span("compute", "dM"):
                if r > 0:
                    dM = kernel_path.grad_incoming(qd.detach(), do, rates, scale)
                else:  # no rank reads the first chunk's dM
                    dM = torch.zeros(final.shape, dtype=torch.float32, device=do.device)
            grads = comm.all_gather(dM, group=group, label="dM")
            if r < W - 1:
                with accounting.span("compute", "suffix"):
                    G = exclusive_suffix(grads, lengths, r, rates)
        dq, dk, dv = kernel_path.backward(ctx.graph, do, G)
        ctx.graph = None
        return dq, dk, dv, None, None, None


class _Lasp2Bidirectional(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, layout):
        W, group = layout.world_size, layout.group
        # 16-bit inputs: products on their own dtype (tensor cores), states and sums in fp32; the
        # state is rounded to the input dtype only as an operand, as kernels.lightning does
        with accounting.span("compute", "M"):
            M = local.gram(k, v)
        if W > 1:
            gather, states = comm.all_gather(M, group=group, label="M", async_op=True)
            gather.wait()
            total = torch.stack(states).sum(0)
        else:
            total = M
        with accounting.span("compute", "Q M"):
            o = q @ (total * scale).to(q.dtype)
        ctx.save_for_backward(q, k, v, total)
        ctx.scale, ctx.layout = scale, layout
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, total = ctx.saved_tensors
        scale, layout = ctx.scale, ctx.layout
        W, group = layout.world_size, layout.group
        do = do.contiguous()
        with accounting.span("compute", "dM"):
            dM = local.gram(q, do) * scale
        if W > 1:
            gather, grads = comm.all_gather(dM, group=group, label="dM", async_op=True)
        with accounting.span("compute", "dQ"):
            dq = do @ (total * scale).transpose(-1, -2).to(q.dtype)
        if W > 1:
            gather.wait()
            dtotal = torch.stack(grads).sum(0)
        else:
            dtotal = dM
        with accounting.span("compute", "dK dV"):
            dk = v @ dtotal.transpose(-1, -2).to(k.dtype)
            dv = k @ dtotal.to(v.dtype)
        return dq, dk, dv, None, None


def _no_bidirectional_decay(causal, decay):
    """LASP-2's rule on its options, checked inside the handshake (so every rank hears of a breach)."""
    if not causal and decay is not None:
        raise ValueError(
            "simdist.lasp2.attention: bidirectional (causal=False) attention has no decay in LASP-2 (Algorithm 1); "
            "pass decay=None, or causal=True for Lightning decay"
        )


def attention(q, k, v, *, decay=None, causal: bool = True, scale: float = 1.0, group=None, lengths=None, log_alpha=None):
    r"""Linear attention of this rank's chunk by LASP-2: causal with optional decay, or bidirectional.

    Every rank of ``group`` calls it with its own contiguous chunk, in rank order along the sequence.

    Args:
        q: ``[B, H, C_r, K]`` this rank's queries (``C_r`` may differ between ranks).
        k: ``[B, H, C_r, K]``; v: ``[B, H, C_r, V]``.
        decay: ``[H]`` rates ``λ`` in ``(0, 1]`` (tensor or sequence; not differentiated), or ``None``
            (``λ = 1``). The same on every rank. Not allowed with ``causal=False``.
        causal: ``True`` — Algorithm 2 (masked); ``False`` — Algorithm 1, every token sees every token.
        scale: multiplies ``q`` (default 1.0).
        group: the process group (``None``: the default group).
        lengths: every rank's chunk length, declared; checked against the chunks the ranks hold by the
            handshake, which names a rank that declares other lengths (see ``simdist._layout``).
        log_alpha: GLA's gates for this chunk, ``[B, H, C_r, K]``, finite and ``≤ 0`` (causal only,
            not with ``decay``): chunk states decay per key row (``gated_prefix``) and the local work
            is ``reference.gla.chunked`` under autograd. Differentiable in ``log_alpha`` too.

    Returns:
        ``o: [B, H, C_r, V]``, this chunk's rows of the one-device output; differentiable in q, k, v.

    Raises:
        ValueError: bad or disagreeing input, a decay with ``causal=False`` included, on every rank (a
            rank whose own input is bad raises its error; the others raise one naming it).
    """
    if log_alpha is not None:
        return _gla_attention(q, k, v, log_alpha, decay, causal, scale, group, lengths)
    layout, lam = _layout.handshake(
        "simdist.lasp2.attention", "lasp2", q, k, v, decay, causal, scale, group, lengths=lengths, options=_no_bidirectional_decay
    )
    if not causal:
        return _Lasp2Bidirectional.apply(q, k, v, float(scale), layout)
    scheme = _Lasp2Kernel if kernel_path.applies(q) else _Lasp2Causal
    return scheme.apply(q, k, v, local.rates(lam), float(scale), layout)


# --------------------------------------------------------------------------------------------
# GLA's gates (log_alpha=): a diagonal decay per key row instead of one scalar per head
# --------------------------------------------------------------------------------------------


class _GatedPrefix(torch.autograd.Function):
    r"""``P_r`` from every chunk's own state ``M_s`` and summed gate ``log γ_s``: one AllGather each way.

    With gates the scalar ``λ^{C_s}`` of the decayed scan becomes ``Diag(γ_s)``, ``γ_s = exp(b_s)``
    with ``b_s`` the chunk's ``log_alpha`` summed over its tokens, per key channel (``[B, H, K]``)::

        P_0 = 0,   P_{s+1} = Diag(γ_s) P_s + M_s                      (the exclusive prefix)

    Backward: every rank's ``dP_t`` is gathered; the reverse scan ``Ĝ_{W-1} = dP_{W-1}``,
    ``Ĝ_t = dP_t + Diag(γ_t) Ĝ_{t+1}`` gives ``dM_r = Ĝ_{r+1}`` and
    ``d log γ_r = γ_r ⊙ Σ_v (P_r ⊙ Ĝ_{r+1})`` (zero on the last rank, whose state no rank reads).
    """

    @staticmethod
    def forward(ctx, M, log_gamma, layout):
        r, W, group = layout.rank, layout.world_size, layout.group
        if W > 1:
            # one message: the state and its chunk's gate side by side, [B, H, K, V + 1]
            rows = comm.all_gather(torch.cat([M, log_gamma[..., None]], dim=-1), group=group, label="M, gates")
            states, gates = [x[..., :-1] for x in rows], [x[..., -1] for x in rows]
        else:
            states, gates = [M], [log_gamma]
        with accounting.span("compute", "gated prefix"):
            P = torch.zeros_like(M)
            for s in range(r):
                P = torch.exp(gates[s])[..., None] * P + states[s]
        ctx.save_for_backward(P, log_gamma)
        ctx.gates, ctx.layout = gates, layout
        return P

    @staticmethod
    def backward(ctx, dP):
        P, log_gamma = ctx.saved_tensors
        layout, gates = ctx.layout, ctx.gates
        r, W, group = layout.rank, layout.world_size, layout.group
        ctx.gates = None
        if W == 1:
            return torch.zeros_like(P), torch.zeros_like(log_gamma), None
        grads = comm.all_gather(dP.contiguous(), group=group, label="dP")
        with accounting.span("compute", "gated suffix"):
            G = torch.zeros_like(P)
            for t in range(W - 1, r, -1):
                G = grads[t] + torch.exp(gates[t])[..., None] * G
        return G, torch.exp(log_gamma) * (P * G).sum(-1), None


def gated_prefix(M, log_gamma, layout):
    """``P_rank`` for GLA's gates (see ``_GatedPrefix``); differentiable in ``M: [B, H, K, V]`` and ``log_gamma: [B, H, K]``."""
    return _GatedPrefix.apply(M, log_gamma, layout)


def _gla_attention(q, k, v, log_alpha, decay, causal, scale, group, lengths):
    """LASP-2 with GLA's gates: the chunk's own state, the gated prefix, then ``reference.gla.chunked`` from it."""
    from reference import gla

    def options(causal_, decay_):
        # runs inside the handshake, so a rank whose gates are bad is named on every rank
        if not causal_:
            raise ValueError("simdist.lasp2.attention: log_alpha (GLA's gates) needs causal=True")
        if decay_ is not None:
            raise ValueError("simdist.lasp2.attention: pass decay or log_alpha, not both")
        if not isinstance(log_alpha, torch.Tensor) or tuple(log_alpha.shape) != tuple(k.shape):
            got = tuple(log_alpha.shape) if isinstance(log_alpha, torch.Tensor) else type(log_alpha).__name__
            raise ValueError(f"simdist.lasp2.attention: log_alpha must be a tensor of k's shape [B, H, C, K] = {tuple(k.shape)}, got {got}")
        if log_alpha.dtype != q.dtype or log_alpha.device != q.device:
            raise TypeError(f"simdist.lasp2.attention: log_alpha must have q's dtype and device, got {log_alpha.dtype} on {log_alpha.device}")
        if not bool(torch.isfinite(log_alpha).all()) or bool((log_alpha > 0).any()):
            raise ValueError("simdist.lasp2.attention: log_alpha must be finite and ≤ 0 (gates in (0, 1])")

    layout, _ = _layout.handshake(
        "simdist.lasp2.attention", "lasp2", q, k, v, decay, causal, scale, group, lengths=lengths, options=options
    )
    with accounting.span("compute", "M"):
        b = torch.cumsum(log_alpha, dim=2)  # [B, H, C, K], from the chunk start
        log_gamma = b[:, :, -1]  # [B, H, K]
        M = (k * torch.exp(log_gamma[:, :, None] - b)).transpose(-1, -2) @ v  # every exponent ≤ 0
    P = gated_prefix(M, log_gamma, layout)
    o, _ = gla.chunked(q, k, v, log_alpha, scale=float(scale), initial_state=P)
    return o
