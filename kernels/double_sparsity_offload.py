r"""Double Sparsity with the KV cache offloaded to CPU memory: a multi-layer decoding step.

The paper's offloading scheme (arXiv 2408.07092, "Double Sparsity-Offload"; ``docs/double_sparsity.md``):
the keys and values of every layer stay in (pinned) CPU memory; only the label caches live on the
GPU; each layer brings over just the ``top_k`` rows per query head that its label scores select.
To hide the transfer, layer ``l + 1``'s query is *predicted* from layer ``l``'s input,

    q̂_{l+1} = W_q^{(l+1)} · norm_l(x_l),

its label scores and top-k run on a select stream, and its rows are fetched on a fetch stream
into the second of two GPU buffers while layer ``l`` computes (double buffering, ordered by CUDA
events; the selection of layer ``l + 1`` overlaps the fetch of layer ``l``). Layer ``l + 1``
then attends with its *true* query over the rows the predicted one selected. Layer 0 has no earlier
layer: its selection uses its own query.

``SyntheticDecoder`` is a stand-in model with random weights (per layer: RMSNorm, ``W_q``, attention
over the layer's cache, ``W_o``, residual; no MLP, and the caches are given rather than appended):
enough to measure the data movement the scheme is about, not a language model. The benchmark
(``python -m kernels.bench double_sparsity``) runs it at ``H = 32, D = 128``.

* ``sparse_step(model, x, caches, ...)`` — the same computation with every cache on the device:
  the oracle the offloaded step must equal (same kernels, same selection).
* ``OffloadedDecoder(model, caches, ...).step(x)`` — the offloaded step. On a CUDA device with
  pinned host caches the fetch is one Triton kernel that reads the selected rows straight from host
  memory (the GPU maps pinned memory; each row is one 256-byte read over PCIe) into the layer's
  buffer, with 32 programs looping over the rows — enough to keep the link busy, few enough to
  leave the multiprocessors to the other streams; on the CPU (tests, the interpreter) the same
  code runs in order on one stream.
* ``DenseOffloadedDecoder`` — the baseline the paper compares with (FlexGen-style): the whole cache
  of layer ``l + 1`` copied over while layer ``l`` computes, then dense attention.

Shapes: ``x [B, d_model]``; per layer ``k, v [B, Hkv, S, D]`` (host), ``labels`` a
``kernels.double_sparsity.Labels`` on the device, ``channels [Hkv, r]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import double_sparsity as ds

__all__ = ["SyntheticDecoder", "sparse_step", "OffloadedDecoder", "DenseOffloadedDecoder"]


@dataclass(frozen=True)
class SyntheticDecoder:
    """Per layer ``l``: ``h = rmsnorm(x) · norm_w[l]``, ``q = W_q[l] h`` (``[B, H, D]``), attention,
    ``x ← x + W_o[l] o``. Weights ``w_q [L, H·D, d_model]``, ``w_o [L, d_model, H·D]``, ``norm_w [L, d_model]``."""

    w_q: torch.Tensor
    w_o: torch.Tensor
    norm_w: torch.Tensor
    heads: int
    head_dim: int

    @classmethod
    def random(cls, layers: int, d_model: int, heads: int, head_dim: int, *, seed: int = 0, device="cpu",
               dtype=torch.float32) -> "SyntheticDecoder":  # fmt: skip
        g = torch.Generator().manual_seed(seed)
        hd = heads * head_dim
        w_q = torch.randn(layers, hd, d_model, generator=g) / d_model**0.5
        w_o = torch.randn(layers, d_model, hd, generator=g) / hd**0.5
        norm_w = 1 + 0.1 * torch.randn(layers, d_model, generator=g)
        return cls(*(t.to(device=device, dtype=dtype) for t in (w_q, w_o, norm_w)), heads, head_dim)

    @property
    def layers(self) -> int:
        return self.w_q.shape[0]

    def norm(self, l: int, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * self.norm_w[l]

    def query(self, l: int, h: torch.Tensor) -> torch.Tensor:
        """``W_q[l] · h`` as ``[B, H, D]`` (``h`` a normalised input)."""
        return (h @ self.w_q[l].T).view(h.shape[0], self.heads, self.head_dim)

    def output(self, l: int, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return x + o.reshape(x.shape[0], -1) @ self.w_o[l].T


def sparse_step(model: SyntheticDecoder, x, k_caches, v_caches, labels, channels, *, top_k: int,
                lookahead: bool = True, config: ds.Config | None = None) -> torch.Tensor:  # fmt: skip
    """One decoding step through every layer with all caches on ``x``'s device: the offloaded
    step's oracle. ``lookahead=True`` selects layer ``l ≥ 1``'s tokens with the query predicted from
    layer ``l − 1``'s input (as the offloaded step must); ``False`` with the layer's own query
    (then every layer is exactly ``kernels.double_sparsity.decode_with_labels``)."""
    predicted = None
    for l in range(model.layers):
        h = model.norm(l, x)
        q = model.query(l, h)
        q_sel = predicted if (lookahead and predicted is not None) else q
        if l + 1 < model.layers:
            predicted = model.query(l + 1, h)
        S = k_caches[l].shape[2]
        if S <= top_k:
            o = ds.decode_with_labels(q, k_caches[l], v_caches[l], labels[l], channels[l], top_k=top_k, config=config)
        else:
            idx = ds.select(q_sel, labels[l], channels[l], top_k=top_k, config=config)
            o = ds.sparse_attention(q, k_caches[l], v_caches[l], idx, config=config)
        x = model.output(l, x, o)
    return x


class _Trace:
    """CUDA-event timestamps per stream and operation (for the timeline figure), or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.spans: list = []
        self.t0 = None

    def start(self):
        if self.enabled:
            self.t0 = torch.cuda.Event(enable_timing=True)
            self.t0.record()

    def span(self, lane: str, label: str):
        trace = self

        class _Span:
            def __enter__(self):
                if trace.enabled:
                    self.a = torch.cuda.Event(enable_timing=True)
                    self.a.record()

            def __exit__(self, *exc):
                if trace.enabled:
                    b = torch.cuda.Event(enable_timing=True)
                    b.record()
                    trace.spans.append((lane, label, self.a, b))
                return False

        return _Span()

    def result(self) -> list:
        """``[(lane, label, start_ms, end_ms)]`` relative to ``start()`` (synchronises)."""
        if not self.enabled:
            return []
        torch.cuda.synchronize()
        return [(lane, label, self.t0.elapsed_time(a), self.t0.elapsed_time(b)) for lane, label, a, b in self.spans]


class OffloadedDecoder:
    """Double Sparsity decoding with every layer's K and V in host memory (see the module docstring).

    Args:
        model: a ``SyntheticDecoder`` on the compute device.
        k_caches, v_caches: per layer ``[B, Hkv, S, D]`` host tensors (pinned for a CUDA device; on a
            CPU device, any CPU tensors).
        labels, channels: per layer the label cache (on the device) and its ``[Hkv, r]`` channels.
        top_k: tokens fetched and attended per query head and layer (``< S``).
        config: ``kernels.double_sparsity.Config`` for the selection and attention kernels.
    """

    def __init__(self, model: SyntheticDecoder, k_caches, v_caches, labels, channels, *, top_k: int,
                 config: ds.Config | None = None, fetch_programs: int = 32):  # fmt: skip
        self.model, self.k, self.v, self.labels, self.channels = model, k_caches, v_caches, labels, channels
        self.top_k, self.config, self.fetch_programs = top_k, config, fetch_programs
        B, Hkv, S, D = k_caches[0].shape
        if S <= top_k:
            raise ValueError(f"offloading fetches top_k < S rows: got S = {S}, top_k = {top_k}")
        self.device = model.w_q.device
        self.cuda = self.device.type == "cuda"
        H = model.heads
        self.buffers = [
            tuple(torch.empty(B, H, top_k, D, device=self.device, dtype=k_caches[0].dtype) for _ in range(2))
            for _ in range(2)
        ]
        self.fetch_mode = "in order"
        if self.cuda:
            self.select_stream = torch.cuda.Stream(device=self.device)
            self.fetch_stream = torch.cuda.Stream(device=self.device)
            self.fetched = [torch.cuda.Event() for _ in range(model.layers)]
            self.freed = [torch.cuda.Event() for _ in range(2)]
            self.freed_recorded = [False, False]
            self.fetch_mode = "zero-copy" if self._zero_copy_works() else "staged"
            if self.fetch_mode == "staged":
                self.staging = [torch.empty(B * H * top_k, D, dtype=k_caches[0].dtype, pin_memory=True) for _ in range(2)]
        self.trace = _Trace(False)

    def _zero_copy_works(self) -> bool:
        """Whether the GPU reads the pinned host caches directly (the Triton launcher must accept a
        host pointer the GPU maps): a few rows gathered both ways must agree."""
        k = self.k[0]
        if not k.is_pinned():
            return False
        B, Hkv, S, D = k.shape
        H = self.model.heads
        idx = (torch.arange(B * H * 4, dtype=torch.int32) * 7919 % S).view(B * H, 4)
        try:
            got, _ = ds.gather_rows(idx.to(self.device), k, self.v[0], H, programs=self.fetch_programs)
            torch.cuda.synchronize(self.device)
        except Exception:
            return False
        kvh = torch.arange(H) // (H // Hkv)
        want = torch.stack([k[b, kvh[h], idx[b * H + h].long()] for b in range(B) for h in range(H)])
        return bool(torch.equal(got.cpu().view_as(want), want))

    def _select(self, l: int, q_sel: torch.Tensor, lane: str) -> torch.Tensor:
        with self.trace.span(lane, f"L{l} select"):
            return ds.select(q_sel, self.labels[l], self.channels[l], top_k=self.top_k, config=self.config)

    def _fetch(self, l: int, idx: torch.Tensor, lane: str) -> None:
        """Copy layer ``l``'s rows ``idx [B, H, top_k]`` into buffer ``l % 2``."""
        with self.trace.span(lane, f"L{l} fetch rows"):
            if self.fetch_mode != "staged":
                ds.gather_rows(idx.view(-1, self.top_k), self.k[l], self.v[l], self.model.heads,
                               out=self.buffers[l % 2], programs=self.fetch_programs)  # fmt: skip
            else:  # the host gathers the rows into pinned buffers, then one copy each (waits for idx)
                B, Hkv, S, D = self.k[l].shape
                H = self.model.heads
                kvh = torch.arange(H, device=idx.device) // (H // Hkv)
                rows = (torch.arange(B, device=idx.device)[:, None, None] * Hkv + kvh[None, :, None]) * S + idx
                rows = rows.reshape(-1).long().cpu()
                for src, stage, dst in zip((self.k[l], self.v[l]), self.staging, self.buffers[l % 2]):
                    torch.index_select(src.view(-1, D), 0, rows, out=stage)
                    dst.view(-1, D).copy_(stage, non_blocking=True)

    def _schedule_fetch(self, l: int, h: torch.Tensor, q_sel_fn) -> None:
        """Layer ``l``'s selection on the select stream once ``h`` is ready, then its fetch on the
        fetch stream once the selection is done and buffer ``l % 2`` is free. (Two streams: the
        next layer's selection runs while this layer's rows are still crossing PCIe.)"""
        if not self.cuda:
            self._fetch(l, self._select(l, q_sel_fn(h), "select stream"), "fetch stream")
            return
        main = torch.cuda.current_stream(self.device)
        ready = torch.cuda.Event()
        ready.record(main)
        h.record_stream(self.select_stream)
        with torch.cuda.stream(self.select_stream):
            self.select_stream.wait_event(ready)
            with self.trace.span("select stream", f"L{l} predict q"):
                q_sel = q_sel_fn(h)
            idx = self._select(l, q_sel, "select stream")
            chosen = torch.cuda.Event()
            chosen.record(self.select_stream)
        idx.record_stream(self.fetch_stream)
        with torch.cuda.stream(self.fetch_stream):
            self.fetch_stream.wait_event(chosen)
            if self.freed_recorded[l % 2]:
                self.fetch_stream.wait_event(self.freed[l % 2])  # the layer that last used this buffer is done
            self._fetch(l, idx, "fetch stream")
            self.fetched[l].record(self.fetch_stream)

    def step(self, x: torch.Tensor, *, trace: bool = False):
        """One decoding step through every layer: ``x [B, d_model]`` → the next hidden state.
        With ``trace=True`` (CUDA) returns ``(x, spans)``: per stream and operation, start and end in ms."""
        model, L = self.model, self.model.layers
        self.trace = _Trace(trace and self.cuda)
        self.trace.start()
        with self.trace.span("compute stream", "L0 norm"):
            h = model.norm(0, x)
        self._schedule_fetch(0, h, lambda h_: model.query(0, h_))
        for l in range(L):
            with self.trace.span("compute stream", f"L{l} q, norm"):
                if l > 0:
                    h = model.norm(l, x)
                q = model.query(l, h)
            if l + 1 < L:
                self._schedule_fetch(l + 1, h, lambda h_, n=l + 1: model.query(n, h_))  # q̂_{l+1} from x_l
            if self.cuda:
                torch.cuda.current_stream(self.device).wait_event(self.fetched[l])
            k_sel, v_sel = self.buffers[l % 2]
            with self.trace.span("compute stream", f"L{l} attention"):
                o = ds._attend(q.contiguous(), k_sel, v_sel, None, self.top_k, model.head_dim**-0.5,
                               ds._check_config(self.config))  # fmt: skip
            if self.cuda:
                self.freed[l % 2].record(torch.cuda.current_stream(self.device))
                self.freed_recorded[l % 2] = True
            with self.trace.span("compute stream", f"L{l} W_o"):
                x = model.output(l, x, o)
        return (x, self.trace.result()) if trace else x


class DenseOffloadedDecoder:
    """The baseline: every layer's whole K and V copied from pinned host memory (layer ``l + 1``'s
    on a side stream while layer ``l`` computes, two GPU buffers), then dense attention (torch SDPA)."""

    def __init__(self, model: SyntheticDecoder, k_caches, v_caches):
        self.model, self.k, self.v = model, k_caches, v_caches
        self.device = model.w_q.device
        self.buffers = [tuple(torch.empty_like(k_caches[0], device=self.device) for _ in range(2)) for _ in range(2)]
        self.side = torch.cuda.Stream(device=self.device)
        self.fetched = [torch.cuda.Event() for _ in range(model.layers)]
        self.freed = [torch.cuda.Event() for _ in range(2)]
        self.freed_recorded = [False, False]
        self.trace = _Trace(False)

    def _schedule_fetch(self, l: int) -> None:
        with torch.cuda.stream(self.side):
            if self.freed_recorded[l % 2]:
                self.side.wait_event(self.freed[l % 2])
            with self.trace.span("fetch stream", f"L{l} copy K, V"):
                self.buffers[l % 2][0].copy_(self.k[l], non_blocking=True)
                self.buffers[l % 2][1].copy_(self.v[l], non_blocking=True)
            self.fetched[l].record(self.side)

    def step(self, x: torch.Tensor, *, trace: bool = False):
        model, L = self.model, self.model.layers
        self.trace = _Trace(trace)
        self.trace.start()
        self._schedule_fetch(0)
        for l in range(L):
            if l + 1 < L:
                self._schedule_fetch(l + 1)
            with self.trace.span("compute stream", f"L{l} q, norm"):
                q = model.query(l, model.norm(l, x))
            torch.cuda.current_stream(self.device).wait_event(self.fetched[l])
            k, v = self.buffers[l % 2]
            with self.trace.span("compute stream", f"L{l} attention"):
                Hkv = k.shape[1]
                G = model.heads // Hkv
                kk, vv = (k, v) if G == 1 else (k.repeat_interleave(G, 1), v.repeat_interleave(G, 1))
                o = torch.nn.functional.scaled_dot_product_attention(q[:, :, None], kk, vv)[:, :, 0]
            self.freed[l % 2].record(torch.cuda.current_stream(self.device))
            self.freed_recorded[l % 2] = True
            with self.trace.span("compute stream", f"L{l} W_o"):
                x = model.output(l, x, o)
        return (x, self.trace.result()) if trace else x
