r"""A tiny Llama-style language model whose attention is any algorithm of the package (``docs/tiny_lm.md``).

The decoder: byte embedding (vocabulary 256) → ``n_layers`` blocks → RMSNorm → linear head. Each
block is pre-norm, Llama style::

    x = x + Attention_l(RMSNorm(x))        grouped-query attention: H query heads, Hkv kv heads
    x = x + SwiGLU(RMSNorm(x))             W_down (silu(x W_gate) ⊙ x W_up)

Layer ``l``'s attention is ``config.attention[l]``, one of

* ``"softmax"`` — RoPE on q and k (``reference.rope``), causal softmax (scale ``D^-1/2``);
* ``"linear"`` — causal linear attention, no decay (``reference.linear_attention``);
* ``"lightning"`` — linear attention with TNL's fixed per-head decays (``reference.lightning``,
  ``tnl_decay(H, l, L)``);
* ``"gla"`` — linear attention with GLA's data-dependent low-rank gate (``reference.gla.gate``,
  ``τ = 16``).

The linear family takes no RoPE (the decay or gate, and causality, carry position, as in TNL and
GLA), scales ``q`` by ``D^-1/2`` and normalises each head's output with an RMSNorm before the
output projection (TNL's SRMSNorm, GLA's per-head norm): without it the output of a running sum
grows with the position. ``hybrid(kind, L)`` builds LASP-2's "1/4 hybrid": the last layer of every
four is softmax.

Shapes (head-first): ``q: [B, H, T, D]``, ``k, v: [B, Hkv, T, D]``; query head ``h`` reads kv head
``h // (H // Hkv)``. Parameters are initialised from a local ``torch.Generator`` (``seed=``): building
a model never touches torch's global random state.

Hooks for the sparse attentions:

* ``forward(tokens, capture=[])`` appends one dict per layer: ``q_pre, k_pre`` (before RoPE),
  ``q, k`` (after RoPE; equal to ``q_pre, k_pre`` in linear-family layers), ``v``.
* ``forward(tokens, attention_override={l: fn})`` replaces layer ``l``'s attention by
  ``fn(q, k, v, *, q_pre, k_pre, layer) -> o: [B, H, T, D]`` (kv heads not expanded).
* ``decode_step(tokens, cache, decode_override={l: fn})`` replaces a softmax layer's attention
  over its KV cache by ``fn(q: [B, H, D], k_cache: [B, Hkv, S, D], v_cache, *, layer) -> [B, H, D]``.

Sequence parallelism: ``forward(chunk, start=a, sequence_parallel=True)`` on every rank of a
``torch.distributed`` group runs each rank's chunk of every sequence, linear-family layers through
``simdist.lasp2.attention`` and softmax layers through ``simdist.lasp2h.attention``
(``sequence_parallel_step`` is one training step; equal to one device, ``tests/test_model_distributed.py``).

``python -m reference.model train ...`` trains one model on the standard-library corpus
(``reference.data``); ``python -m reference.model table2 ...`` runs LASP-2's Table 2 in miniature.
``pretrained()`` loads the committed checkpoint (``reference/checkpoints/README.md``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reference import gla, lightning, linear_attention, rope
from reference._arrays import check_positive_int

__all__ = [
    "ATTENTION_KINDS",
    "Config",
    "hybrid",
    "parse_attention",
    "TinyLM",
    "Cache",
    "pretrained",
    "save",
    "load",
    "bits_per_byte",
    "mqar_accuracy",
    "generate",
    "TrainConfig",
    "train",
    "step_gradients",
    "sequence_parallel_step",
    "TABLE2_ROWS",
    "Table2Budget",
    "table2_row",
    "plot_table2",
    "CHECKPOINT_DIR",
]

ATTENTION_KINDS = ("softmax", "linear", "lightning", "gla")
LINEAR_FAMILY = ("linear", "lightning", "gla")
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def hybrid(kind: str, n_layers: int, *, every: int = 4) -> tuple:
    """LASP-2's hybrid pattern: ``kind`` everywhere except the last layer of every ``every``, which is softmax.

    ``hybrid("gla", 4) == ("gla", "gla", "gla", "softmax")``; ``hybrid("gla", 8)`` has softmax at
    layers 3 and 7.
    """
    if kind not in LINEAR_FAMILY:
        raise ValueError(f"kind must be one of {LINEAR_FAMILY}, got {kind!r}")
    n_layers = check_positive_int("n_layers", n_layers)
    every = check_positive_int("every", every)
    return tuple("softmax" if l % every == every - 1 else kind for l in range(n_layers))


def parse_attention(spec: str, n_layers: int) -> tuple:
    """A command-line spec as a per-layer tuple.

    ``"softmax"``, ``"linear"``, ``"lightning"``, ``"gla"``: every layer; ``"hybrid-gla"`` (or any
    linear kind): ``hybrid(kind, n_layers)``; a comma list (``"gla,gla,gla,softmax"``): as written.
    """
    if not isinstance(spec, str):
        raise TypeError(f"attention spec must be a string, got {spec!r}")
    if spec in ATTENTION_KINDS:
        return (spec,) * n_layers
    if spec.startswith("hybrid-"):
        return hybrid(spec[len("hybrid-") :], n_layers)
    kinds = tuple(s.strip() for s in spec.split(","))
    if len(kinds) != n_layers or any(k not in ATTENTION_KINDS for k in kinds):
        raise ValueError(
            f"attention spec must be one of {ATTENTION_KINDS}, 'hybrid-<linear kind>' or a comma list of "
            f"{n_layers} kinds, got {spec!r}"
        )
    return kinds


@dataclasses.dataclass(frozen=True)
class Config:
    """The model's shape. Defaults: the committed checkpoint's (about 0.6 M parameters).

    Attributes:
        vocab: bytes, 256.
        d_model: residual width ``d``.
        n_layers: ``L``.
        n_heads: query heads ``H``.
        n_kv_heads: key/value heads ``Hkv`` (grouped-query attention; divides ``H``).
        head_dim: ``D`` (even: RoPE turns channel pairs).
        ffn_hidden: SwiGLU's hidden width.
        attention: per-layer kinds, ``len == n_layers``, each in ``ATTENTION_KINDS`` (see ``hybrid``).
        rope_base: RoPE's ``base``.
        rope_layout: ``"half"`` or ``"interleaved"`` (``reference.rope``).
        max_len: the longest sequence ``forward`` and a decoding cache accept.
        norm_eps: RMSNorm's ε.
        gla_gate_rank: the rank of GLA's gate projection (16 in the paper).
        gla_tau: GLA's temperature τ (16).
        init_std: standard deviation of the initial weights (the output projections are scaled
            down by ``sqrt(2 L)``, GPT-2 style).
    """

    vocab: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 32
    ffn_hidden: int = 256
    attention: tuple = ("softmax",) * 4
    rope_base: float = 10000.0
    rope_layout: str = "half"
    max_len: int = 1024
    norm_eps: float = 1e-6
    gla_gate_rank: int = 16
    gla_tau: float = 16.0
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_hidden", "max_len", "gla_gate_rank"):
            check_positive_int(name, getattr(self, name))
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads must divide n_heads = {self.n_heads}, got {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (RoPE turns channel pairs), got {self.head_dim}")
        attention = tuple(self.attention) if isinstance(self.attention, (list, tuple)) else self.attention
        if not isinstance(attention, tuple) or len(attention) != self.n_layers or any(a not in ATTENTION_KINDS for a in attention):
            raise ValueError(
                f"attention must be a tuple of n_layers = {self.n_layers} kinds among {ATTENTION_KINDS}, got {self.attention!r}"
            )
        object.__setattr__(self, "attention", attention)
        if self.rope_layout not in rope.LAYOUTS:
            raise ValueError(f"rope_layout must be one of {rope.LAYOUTS}, got {self.rope_layout!r}")
        for name in ("rope_base", "norm_eps", "gla_tau", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")

    @property
    def groups(self) -> int:
        """Query heads per kv head, ``H // Hkv``."""
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["attention"] = list(self.attention)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        d = dict(d)
        d["attention"] = tuple(d["attention"])
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def _linear(n_in: int, n_out: int, *, bias: bool = False) -> nn.Linear:
    # skip_init builds the layer without running its default initialisation, which would draw from
    # torch's global generator; TinyLM initialises every parameter from its own generator instead.
    return torch.nn.utils.skip_init(nn.Linear, n_in, n_out, bias=bias)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + ε) · w`` over the last axis (arXiv 1910.07467)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    """``W_down (silu(x W_gate) ⊙ x W_up)`` (arXiv 2002.05202)."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate = _linear(d, hidden)
        self.up = _linear(d, hidden)
        self.down = _linear(hidden, d)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


def expand_kv(x, groups: int):
    """``[B, Hkv, T, D] → [B, Hkv·groups, T, D]``: kv head ``j`` serves query heads ``j·groups .. j·groups+groups-1``."""
    return x if groups == 1 else torch.repeat_interleave(x, groups, dim=1)


class Attention(nn.Module):
    """One layer's grouped-query attention of kind ``kind`` (see the module docstring)."""

    def __init__(self, config: Config, layer: int):
        super().__init__()
        c = config
        self.config, self.layer, self.kind = c, layer, c.attention[layer]
        H, Hkv, D = c.n_heads, c.n_kv_heads, c.head_dim
        self.q_proj = _linear(c.d_model, H * D)
        self.k_proj = _linear(c.d_model, Hkv * D)
        self.v_proj = _linear(c.d_model, Hkv * D)
        self.o_proj = _linear(H * D, c.d_model)
        self.scale = D**-0.5
        if self.kind in LINEAR_FAMILY:
            self.out_norm = RMSNorm(D, c.norm_eps)
        if self.kind == "lightning":
            # Fixed, not learned (TNL); float64 NumPy so every dtype and device gets the same rates.
            self.decay = lightning.tnl_decay(H, layer, c.n_layers)
        if self.kind == "gla":
            self.gate_down = _linear(c.d_model, c.gla_gate_rank)  # W₁
            self.gate_up = _linear(c.gla_gate_rank, H * D, bias=True)  # W₂, b

    # -- pieces shared by the full pass and decoding --

    def _project(self, x):
        B, T, _ = x.shape
        c = self.config

        def heads(t, n):
            return t.reshape(B, T, n, c.head_dim).transpose(1, 2)

        return heads(self.q_proj(x), c.n_heads), heads(self.k_proj(x), c.n_kv_heads), heads(self.v_proj(x), c.n_kv_heads)

    def _rotate(self, x, positions):
        return rope.apply(x, positions, base=self.config.rope_base, layout=self.config.rope_layout)

    def log_alpha(self, x):
        """GLA's gate ``[B, H, T, D]`` for the normalised input ``x: [B, T, d]``."""
        c = self.config
        w2 = self.gate_up.weight.T.reshape(c.gla_gate_rank, c.n_heads, c.head_dim)
        b = self.gate_up.bias.reshape(c.n_heads, c.head_dim)
        return gla.gate(x, self.gate_down.weight.T, w2, b, tau=c.gla_tau)

    def _finish(self, o):
        """``o: [B, H, T, D]`` → ``[B, T, d]`` (per-head norm first in the linear family)."""
        if self.kind in LINEAR_FAMILY:
            o = self.out_norm(o)
        B, H, T, D = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * D))

    # -- the full pass --

    def attend(self, q, k, v, x, *, parallel=None):
        """This layer's own attention: ``q: [B, H, T, D]``, ``k, v: [B, Hkv, T, D]`` → ``[B, H, T, D]``.

        ``parallel``: ``None`` (one device), or ``("group", group)`` — this rank's chunk of the
        sequence through LASP-2 (linear family) or LASP-2H (softmax) over ``group``.
        """
        g = self.config.groups
        k, v = expand_kv(k, g), expand_kv(v, g)
        if parallel is not None:
            from simdist import lasp2, lasp2h  # only the sequence-parallel path needs torch.distributed

            group = parallel[1]
            if self.kind == "softmax":
                return lasp2h.attention(q, k, v, causal=True, scale=self.scale, group=group)
            if self.kind == "linear":
                return lasp2.attention(q, k, v, scale=self.scale, group=group)
            if self.kind == "lightning":
                return lasp2.attention(q, k, v, decay=self.decay, scale=self.scale, group=group)
            return lasp2.attention(q, k, v, log_alpha=self.log_alpha(x), scale=self.scale, group=group)
        if self.kind == "softmax":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        # The chunked forms: on a CPU 3-4x faster than the parallel ones at T = 512 (matrix products
        # of 64 x 64 blocks instead of a T x T mask), and linear in T.
        if self.kind == "linear":
            o, _ = linear_attention.chunked(q, k, v, scale=self.scale, chunk_size=64)
        elif self.kind == "lightning":
            o, _ = lightning.chunked(q, k, v, self.decay, scale=self.scale, chunk_size=64)
        else:
            o, _ = gla.chunked(q, k, v, self.log_alpha(x), scale=self.scale, chunk_size=64, sub_chunk=16)
        return o

    def forward(self, x, positions, *, override=None, capture=None, parallel=None):
        q_pre, k_pre, v = self._project(x)
        if self.kind == "softmax":
            q, k = self._rotate(q_pre, positions), self._rotate(k_pre, positions)
        else:
            q, k = q_pre, k_pre
        if capture is not None:
            capture.append({"q_pre": q_pre, "k_pre": k_pre, "q": q, "k": k, "v": v})
        if override is not None:
            o = override(q, k, v, q_pre=q_pre, k_pre=k_pre, layer=self.layer)
            if tuple(o.shape) != tuple(q.shape):
                raise ValueError(f"attention_override[{self.layer}] must return o of shape {tuple(q.shape)}, got {tuple(o.shape)}")
        else:
            o = self.attend(q, k, v, x, parallel=parallel)
        return self._finish(o)

    # -- one decoding step --

    def new_state(self, B: int, dtype, device) -> dict:
        c = self.config
        if self.kind == "softmax":
            empty = torch.zeros(B, c.n_kv_heads, 0, c.head_dim, dtype=dtype, device=device)
            return {"k": empty, "v": empty.clone()}
        return {"state": torch.zeros(B, c.n_heads, c.head_dim, c.head_dim, dtype=dtype, device=device)}

    def step(self, x, position: int, state: dict, *, override=None):
        """``x: [B, 1, d]`` at ``position``; updates ``state`` in place (new tensors) and returns ``[B, 1, d]``."""
        q_pre, k_pre, v = self._project(x)  # [B, H, 1, D], [B, Hkv, 1, D]
        g = self.config.groups
        if self.kind == "softmax":
            q, k = self._rotate(q_pre, [position]), self._rotate(k_pre, [position])
            state["k"] = torch.cat([state["k"], k], dim=2)
            state["v"] = torch.cat([state["v"], v], dim=2)
            if override is not None:
                o = override(q[:, :, 0], state["k"], state["v"], layer=self.layer)
                if tuple(o.shape) != tuple(q[:, :, 0].shape):
                    raise ValueError(
                        f"decode_override[{self.layer}] must return o of shape {tuple(q[:, :, 0].shape)}, got {tuple(o.shape)}"
                    )
                o = o[:, :, None]
            else:
                # One query over every cached key: no mask (the cache holds only the past and now).
                scores = (q * self.scale) @ expand_kv(state["k"], g).transpose(-1, -2)  # [B, H, 1, S]
                o = torch.softmax(scores, dim=-1) @ expand_kv(state["v"], g)
            return self._finish(o)
        if override is not None:
            raise ValueError(f"decode_override applies to softmax layers; layer {self.layer} is {self.kind!r}")
        k, v = expand_kv(k_pre, g), expand_kv(v, g)
        S = state["state"]
        if self.kind == "lightning":
            lam = torch.as_tensor(self.decay, dtype=S.dtype, device=S.device)[:, None, None]
            S = lam * S
        elif self.kind == "gla":
            S = torch.exp(self.log_alpha(x))[:, :, 0, :, None] * S  # row k of the state decays by α_k
        S = S + k.transpose(-1, -2) @ v  # + k_tᵀ v_t
        state["state"] = S
        return self._finish((q_pre * self.scale) @ S)


class Block(nn.Module):
    def __init__(self, config: Config, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = SwiGLU(config.d_model, config.ffn_hidden)

    def forward(self, x, positions, *, override=None, capture=None, parallel=None):
        x = x + self.attn(self.attn_norm(x), positions, override=override, capture=capture, parallel=parallel)
        return x + self.ffn(self.ffn_norm(x))

    def step(self, x, position, state, *, override=None):
        x = x + self.attn.step(self.attn_norm(x), position, state, override=override)
        return x + self.ffn(self.ffn_norm(x))


@dataclasses.dataclass
class Cache:
    """Decoding state: ``position`` (tokens consumed so far) and one dict per layer.

    Softmax layers: ``{"k": [B, Hkv, S, D], "v": [B, Hkv, S, D]}`` — keys after RoPE. Linear-family
    layers: ``{"state": [B, H, D, D]}`` — the recurrent state, a fixed size whatever ``S``.
    """

    position: int
    layers: list


class TinyLM(nn.Module):
    """The decoder (see the module docstring). ``TinyLM(config, seed=0)``; float32 unless converted (``.double()``)."""

    def __init__(self, config: Config | None = None, *, seed: int = 0):
        super().__init__()
        config = Config() if config is None else config
        if not isinstance(config, Config):
            raise TypeError(f"config must be a reference.model.Config, got {type(config).__name__}")
        self.config = config
        self.embed = torch.nn.utils.skip_init(nn.Embedding, config.vocab, config.d_model)
        self.blocks = nn.ModuleList(Block(config, l) for l in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = _linear(config.d_model, config.vocab)
        self.reset_parameters(seed=seed)

    @torch.no_grad()
    def reset_parameters(self, *, seed: int = 0):
        """Normal(0, init_std) weights from a local generator; output projections ÷ sqrt(2L); norms 1; biases 0.

        GLA's gate bias starts at 3 (``σ(3)^(1/16) ≈ 0.997``: the gates start near 1, remembering).
        """
        g = torch.Generator().manual_seed(int(seed))
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("gate_up.bias"):
                p.fill_(3.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                s = std / math.sqrt(2 * self.config.n_layers) if name.endswith(("o_proj.weight", "down.weight")) else std
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * s)

    @property
    def dtype(self):
        return self.head.weight.dtype

    @property
    def device(self):
        return self.head.weight.device

    def _check_tokens(self, tokens, rank: int, layout: str):
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch integer tensor {layout}, got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
            raise TypeError(f"tokens must have an integer dtype, got {tokens.dtype}")
        if tokens.ndim != rank:
            raise ValueError(f"tokens must have shape {layout}, got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.vocab):
            raise ValueError(f"tokens must lie in 0..{self.config.vocab - 1}, got {int(tokens.min())}..{int(tokens.max())}")
        return tokens.long()

    def _check_override(self, name: str, override, kinds=None):
        if override is None:
            return {}
        if not isinstance(override, dict):
            raise TypeError(f"{name} must be a dict {{layer index: function}}, got {type(override).__name__}")
        for layer, fn in override.items():
            if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not 0 <= layer < self.config.n_layers:
                raise ValueError(f"{name} keys must be layer indices in 0..{self.config.n_layers - 1}, got {layer!r}")
            if not callable(fn):
                raise TypeError(f"{name}[{layer}] must be callable, got {type(fn).__name__}")
            if kinds is not None and self.config.attention[layer] not in kinds:
                raise ValueError(f"{name}[{layer}]: layer {layer} is {self.config.attention[layer]!r}, needs one of {kinds}")
        return override

    def forward(self, tokens, *, attention_override=None, capture=None, start: int = 0, sequence_parallel=None):
        """Logits ``[B, T, 256]`` for ``tokens: [B, T]`` (integers in 0..255).

        Args:
            tokens: ``[B, T]`` int64 (any integer dtype), ``start + T ≤ config.max_len``.
            attention_override: ``{layer: fn}``; ``fn(q, k, v, *, q_pre, k_pre, layer) -> o: [B, H, T, D]``
                replaces that layer's attention (q after RoPE ``[B, H, T, D]``, k, v ``[B, Hkv, T, D]``).
            capture: a list; each layer appends ``{"q_pre", "k_pre", "q", "k", "v"}`` (see the module docstring).
            start: the position of ``tokens[:, 0]`` in its sequence (RoPE's positions are
                ``start .. start + T - 1``); non-zero for a rank's chunk under ``sequence_parallel``.
            sequence_parallel: ``None`` (one device), or a ``torch.distributed`` process group (``True``:
                the default group) whose ranks each hold a contiguous chunk of every sequence, in rank
                order: linear-family layers run through ``simdist.lasp2.attention``, softmax layers through
                ``simdist.lasp2h.attention``; every other part of the model is per token. Returns this
                chunk's logits, which equal the one-device logits' rows (``tests/test_model_distributed.py``).
        """
        tokens = self._check_tokens(tokens, 2, "[B, T]")
        T = tokens.shape[1]
        if isinstance(start, bool) or not isinstance(start, numbers.Integral) or start < 0:
            raise ValueError(f"start must be a non-negative integer, got {start!r}")
        if not 1 <= T or start + T > self.config.max_len:
            raise ValueError(f"tokens must have 1..max_len = {self.config.max_len} positions (from start = {start}), got {T}")
        parallel = None
        if sequence_parallel is not None and sequence_parallel is not False:
            parallel = ("group", None if sequence_parallel is True else sequence_parallel)
        override = self._check_override("attention_override", attention_override)
        if capture is not None and not isinstance(capture, list):
            raise TypeError(f"capture must be a list (or None), got {type(capture).__name__}")
        positions = np.arange(start, start + T)
        x = self.embed(tokens)
        for l, block in enumerate(self.blocks):
            x = block(x, positions, override=override.get(l), capture=capture, parallel=parallel)
        return self.head(self.norm(x))

    def new_cache(self, batch_size: int) -> Cache:
        """An empty decoding cache for ``batch_size`` sequences, in the model's dtype and device."""
        batch_size = check_positive_int("batch_size", batch_size)
        return Cache(0, [b.attn.new_state(batch_size, self.dtype, self.device) for b in self.blocks])

    def decode_step(self, tokens, cache: Cache, *, decode_override=None):
        """Feed one token per sequence, ``tokens: [B]``; returns the next-token logits ``[B, 256]`` and advances ``cache``.

        Step by step this computes exactly what ``forward`` computes for the whole sequence
        (``tests/test_model.py``): softmax layers attend over their cache of post-RoPE keys and values,
        linear-family layers update their recurrent state.

        Args:
            tokens: ``[B]`` integers in 0..255.
            cache: from ``new_cache(B)``; updated in place.
            decode_override: ``{layer: fn}`` for softmax layers;
                ``fn(q: [B, H, D], k_cache: [B, Hkv, S, D], v_cache: [B, Hkv, S, D], *, layer) -> o: [B, H, D]``.
        """
        tokens = self._check_tokens(tokens, 1, "[B]")
        if not isinstance(cache, Cache) or len(cache.layers) != self.config.n_layers:
            raise TypeError("cache must come from this model's new_cache(batch_size)")
        first = next(iter(cache.layers[0].values()))
        if first.shape[0] != tokens.shape[0]:
            raise ValueError(f"tokens must have the cache's batch size {first.shape[0]}, got {tokens.shape[0]}")
        if cache.position >= self.config.max_len:
            raise ValueError(f"the cache is full: max_len = {self.config.max_len} positions")
        override = self._check_override("decode_override", decode_override, kinds=("softmax",))
        x = self.embed(tokens)[:, None, :]
        for l, block in enumerate(self.blocks):
            x = block.step(x, cache.position, cache.layers[l], override=override.get(l))
        cache.position += 1
        return self.head(self.norm(x))[:, 0]


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def save(model: TinyLM, path, *, meta: dict | None = None) -> None:
    """Write ``{"config", "state_dict", "meta"}`` with ``torch.save`` (float32 weights)."""
    state = {k: v.detach().to(torch.float32).cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"config": model.config.to_dict(), "state_dict": state, "meta": dict(meta or {})}, path)


def load(path) -> TinyLM:
    """Load a checkpoint written by ``save`` (``weights_only=True``: nothing but tensors and plain data is unpickled)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = TinyLM(Config.from_dict(blob["config"]))
    model.load_state_dict(blob["state_dict"])
    model.meta = blob.get("meta", {})
    return model


def pretrained(attention: str = "softmax") -> TinyLM:
    """The committed model trained on the standard-library corpus, in eval mode with gradients off.

    ``attention="softmax"`` is the checkpoint the sparse lessons use (seq_len 512, H=4, Hkv=2,
    D=32; how it was made: ``reference/checkpoints/README.md``). ``model.meta`` holds the command,
    the held-out bits per byte and the training time.
    """
    path = CHECKPOINT_DIR / f"tiny_lm_{attention}.pt"
    if not path.exists():
        have = sorted(p.stem.removeprefix("tiny_lm_") for p in CHECKPOINT_DIR.glob("tiny_lm_*.pt"))
        raise ValueError(f"no committed checkpoint for attention={attention!r}; there are: {have}")
    model = load(path)
    model.eval()
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------------------------
# One training step, on one device or sequence-parallel
# --------------------------------------------------------------------------------------------


def step_gradients(model: TinyLM, tokens):
    """Mean next-byte cross-entropy of ``tokens: [B, T + 1]`` and every parameter's gradient (one device).

    Returns ``(loss: float, {name: gradient})``; the model's ``.grad`` fields are overwritten.
    """
    model.zero_grad(set_to_none=True)
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def sequence_parallel_step(rank: int, world_size: int, config: dict, state: dict, tokens, lengths, *, dtype=torch.float64):
    """One sequence-parallel training step on this rank: run it on every rank of the default group.

    Rank ``r`` builds the model from ``config`` (``Config.to_dict()``) and ``state`` (a state dict),
    takes its chunk of ``lengths[r]`` positions of every sequence of ``tokens: [B, T + 1]``
    (``T = sum(lengths)``, chunks in rank order), and runs ``forward(chunk, start=…,
    sequence_parallel=True)``. Its loss is its tokens' summed cross-entropy over all ``B · T``
    tokens, so the ranks' losses add up to the one-device mean; the loss and the parameter gradients
    are then all-reduced, as a data-parallel step would. ``simdist.launch(sequence_parallel_step, W,
    args=(...))`` returns every rank's ``(loss, {name: gradient}, chunk logits)``: each equals
    ``step_gradients`` on one device (``tests/test_model_distributed.py``).
    """
    import torch.distributed as dist

    model = TinyLM(Config.from_dict(config)).to(dtype)
    model.load_state_dict(state)
    start = sum(lengths[:rank])
    inputs = tokens[:, start : start + lengths[rank]]
    targets = tokens[:, start + 1 : start + lengths[rank] + 1]
    logits = model(inputs, start=start, sequence_parallel=True)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum") / (tokens.shape[0] * sum(lengths))
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(g)
        grads[name] = g
    return float(total), grads, logits.detach()


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def bits_per_byte(model: TinyLM, data: np.ndarray, *, seq_len: int = 512, max_windows: int | None = 32, batch_size: int = 8) -> float:
    """Mean cross-entropy in bits per byte over non-overlapping windows of ``data`` (uint8 ``[N]``).

    Windows of ``seq_len + 1`` bytes are taken at a stride of ``seq_len`` (all of them with
    ``max_windows=None``, else ``max_windows`` of them spread evenly over ``data``); every byte after
    the first of a window is predicted once, with the window as its context. Deterministic.
    """
    seq_len = check_positive_int("seq_len", seq_len)
    n = (len(data) - 1) // seq_len
    if n < 1:
        raise ValueError(f"data must hold more than seq_len = {seq_len} bytes, got {len(data)}")
    starts = np.arange(n) * seq_len
    if max_windows is not None and check_positive_int("max_windows", max_windows) < n:
        starts = starts[np.linspace(0, n - 1, max_windows).round().astype(np.int64)]  # spread over all of data
    windows = np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    n = len(windows)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, n, batch_size):
        w = torch.from_numpy(windows[s : s + batch_size]).to(model.device)
        logits = model(w[:, :-1])
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), w[:, 1:].reshape(-1), reduction="sum"))
        count += w[:, 1:].numel()
    model.train(was_training)
    return total / count / math.log(2)


@torch.no_grad()
def mqar_accuracy(model: TinyLM, tokens: np.ndarray, answers: np.ndarray, *, batch_size: int = 32) -> float:
    """Fraction of MQAR answers predicted exactly (argmax at the position before each answer).

    ``tokens: [N, L]`` and ``answers: [N, L]`` bool from ``reference.data.mqar``.
    """
    was_training = model.training
    model.eval()
    right, total = 0, 0
    for s in range(0, len(tokens), batch_size):
        t = torch.from_numpy(tokens[s : s + batch_size].astype(np.int64)).to(model.device)
        a = torch.from_numpy(answers[s : s + batch_size]).to(model.device)
        pred = model(t[:, :-1]).argmax(-1)
        hit = (pred == t[:, 1:]) & a[:, 1:]
        right += int(hit.sum())
        total += int(a[:, 1:].sum())
    model.train(was_training)
    return right / max(total, 1)


@torch.no_grad()
def generate(model: TinyLM, prompt: bytes, n: int, *, temperature: float = 0.8, seed: int = 0) -> bytes:
    """Continue ``prompt`` by ``n`` bytes with the decoding cache (sampling from a local generator)."""
    if not prompt:
        raise ValueError("prompt must hold at least one byte")
    g = torch.Generator().manual_seed(int(seed))
    cache = model.new_cache(1)
    for b in prompt[:-1]:
        model.decode_step(torch.tensor([b]), cache)
    out, last = [], prompt[-1]
    for _ in range(n):
        logits = model.decode_step(torch.tensor([last]), cache)[0].double().cpu()
        if temperature <= 0:
            last = int(logits.argmax())
        else:
            last = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g))
        out.append(last)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: AdamW, linear warm-up then cosine decay to ``lr / 10``, gradients clipped at 1.

    ``steps × batch_size × seq_len`` bytes are seen, sampled with ``np.random.default_rng(data_seed)``.
    The defaults are the two-minute CPU run of ``docs/tiny_lm.md`` (``python -m reference.model train``).
    """

    steps: int = 100
    batch_size: int = 16
    seq_len: int = 512
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.1
    seed: int = 0
    data_seed: int = 1


def _lr_at(step: int, tc: TrainConfig) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    progress = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(config: Config, tc: TrainConfig = TrainConfig(), *, data=None, progress: bool = True, model: TinyLM | None = None):
    """Train a ``TinyLM(config, seed=tc.seed)`` (or continue ``model``) for ``tc.steps`` steps on ``data``.

    Args:
        config: the model (ignored when ``model`` is given).
        tc: the run's hyper-parameters.
        data: uint8 ``[N]`` training bytes (default: the corpus's training split), or MQAR's
            ``(tokens, answers)`` from ``reference.data.mqar`` (rows sampled; loss on the answers only).
        progress: a ``tqdm.auto`` bar showing the loss.
        model: continue training this model instead of building one.

    Returns:
        ``(model, losses)``: the trained model (train mode) and the per-step training loss (nats per byte).

    Deterministic on the CPU for a fixed thread count: initialisation and batches come from seeded
    local generators, and no operation used here is non-deterministic on the CPU.
    """
    from tqdm.auto import tqdm

    from reference import data as corpus_data

    if data is None:
        data = corpus_data.corpus("train")
    model = TinyLM(config, seed=tc.seed) if model is None else model
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name.endswith("norm.weight") else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr,
        betas=(0.9, 0.95),
    )
    rng = np.random.default_rng(tc.data_seed)
    losses = []
    bar = tqdm(range(tc.steps), disable=not progress, desc=f"train {'/'.join(sorted(set(model.config.attention)))}")
    for step in bar:
        if isinstance(data, tuple):  # MQAR: the loss counts the recalled values only
            rows = rng.integers(0, data[0].shape[0], size=tc.batch_size)
            batch = torch.from_numpy(data[0][rows].astype(np.int64)).to(model.device)
            targets = torch.where(torch.from_numpy(data[1][rows]).to(model.device), batch, -100)[:, 1:]
        else:
            batch = corpus_data.sample_batch(data, batch_size=tc.batch_size, seq_len=tc.seq_len, rng=rng)
            batch = torch.from_numpy(batch).to(model.device)
            targets = batch[:, 1:]
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, tc)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == tc.steps - 1:
            bar.set_postfix(bits_per_byte=f"{losses[-1] / math.log(2):.3f}")
    return model, losses


# --------------------------------------------------------------------------------------------
# LASP-2's Table 2 in miniature
# --------------------------------------------------------------------------------------------

TABLE2_ROWS = ("softmax", "linear", "lightning", "gla", "hybrid-linear", "hybrid-lightning", "hybrid-gla")

# LASP-2 (arXiv 2502.07563), Table 2: Linear-Llama3-1B trained on 50B tokens at 16K sequence length,
# loss (nats per token, Llama 3 tokenizer), pure linear / 1/4 hybrid. Quoted for comparison only.
PAPER_TABLE2 = {
    "softmax": {"model": "Llama3 + Ring Attention", "loss": 2.759},
    "linear": {"model": "basic linear attention", "pure": 2.892, "hybrid": 2.824},
    "lightning": {"model": "Lightning Attention", "pure": 2.862, "hybrid": 2.758},
    "retention": {"model": "Retention", "pure": 2.867, "hybrid": 2.759},
    "gla": {"model": "GLA", "pure": 2.845, "hybrid": 2.754},
    "based": {"model": "Based", "pure": 2.754, "hybrid": 2.751},
}


@dataclasses.dataclass(frozen=True)
class Table2Budget:
    """The one budget every row gets: the same model shape, steps, tokens, seeds and evaluation."""

    lm: TrainConfig = TrainConfig(steps=200, batch_size=8, seq_len=256, lr=5e-3, warmup=20)
    mqar: TrainConfig = TrainConfig(steps=600, batch_size=32, seq_len=4 * 8 - 1, lr=3e-3, warmup=20)
    mqar_pairs: int = 8
    mqar_train: int = 20_000
    mqar_eval: int = 500
    eval_windows: int = 64


def table2_row(spec: str, budget: Table2Budget = Table2Budget(), *, progress: bool = True, device: str = "cpu") -> dict:
    """Train one row of the miniature Table 2: held-out bits per byte and MQAR accuracy of ``spec``."""
    import time

    from reference import data as corpus_data

    attention = parse_attention(spec, Config().n_layers)
    config = Config(attention=attention)
    start, cpu = time.perf_counter(), time.process_time()
    model, losses = train(config, budget.lm, progress=progress, model=TinyLM(config, seed=budget.lm.seed).to(device))
    lm_seconds, lm_cpu = time.perf_counter() - start, time.process_time() - cpu
    bpb = bits_per_byte(model, corpus_data.corpus("held_out"), seq_len=budget.lm.seq_len, max_windows=budget.eval_windows)
    train_set = corpus_data.mqar(budget.mqar_train, num_pairs=budget.mqar_pairs, rng=10)
    eval_set = corpus_data.mqar(budget.mqar_eval, num_pairs=budget.mqar_pairs, rng=11)
    start, cpu = time.perf_counter(), time.process_time()
    mqar_model, mqar_losses = train(config, budget.mqar, data=train_set, progress=progress, model=TinyLM(config, seed=budget.mqar.seed).to(device))
    mqar_seconds, mqar_cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "attention": spec,
        "layers": list(attention),
        "parameters": sum(p.numel() for p in model.parameters()),
        "held_out_bits_per_byte": bpb,
        "train_bits_per_byte_last10": float(np.mean(losses[-10:]) / math.log(2)),
        "train_curve_bits_per_byte": [round(x / math.log(2), 4) for x in losses],
        "mqar_accuracy": mqar_accuracy(mqar_model, *eval_set),
        "mqar_final_loss": float(np.mean(mqar_losses[-10:])),
        "lm_seconds": lm_seconds,
        "lm_cpu_seconds": lm_cpu,
        "mqar_seconds": mqar_seconds,
        "mqar_cpu_seconds": mqar_cpu,
    }


def plot_table2(payload: dict, axes=None):
    """Two panels: held-out bits per byte and MQAR accuracy per row; the paper's Table 2 losses beside them."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    rows = payload["rows"]
    names = [r["attention"] for r in rows]
    colours = ["#444444" if n == "softmax" else ("#1f77b4" if n.startswith("hybrid") else "#ff7f0e") for n in names]
    y = np.arange(len(rows))
    axes[0].barh(y, [r["held_out_bits_per_byte"] for r in rows], color=colours)
    axes[0].set(yticks=y, yticklabels=names, xlabel="held-out bits per byte (lower is better)", title="tiny LM, one budget")
    lo = min(r["held_out_bits_per_byte"] for r in rows)
    axes[0].set_xlim(lo - 0.3, max(r["held_out_bits_per_byte"] for r in rows) + 0.1)
    axes[0].invert_yaxis()
    axes[1].barh(y, [r["mqar_accuracy"] for r in rows], color=colours)
    chance = 1 / 64  # values are drawn from 64 bytes: guessing gets 1/64
    axes[1].axvline(chance, color="k", ls=":", lw=1)
    axes[1].text(chance, len(rows) - 0.4, " chance", fontsize=8, va="bottom")
    axes[1].set(yticks=y, yticklabels=names, xlabel="MQAR accuracy", xlim=(0, 1), title=f"MQAR, {payload['budget']['mqar_pairs']} pairs")
    axes[1].invert_yaxis()
    paper = payload["paper_table2"]
    labels, values, pc = ["softmax"], [paper["softmax"]["loss"]], ["#444444"]
    for key in ("linear", "lightning", "retention", "gla", "based"):
        labels += [key, f"hybrid-{key}"]
        values += [paper[key]["pure"], paper[key]["hybrid"]]
        pc += ["#ff7f0e", "#1f77b4"]
    yp = np.arange(len(labels))
    axes[2].barh(yp, values, color=pc)
    axes[2].set(yticks=yp, yticklabels=labels, xlim=(2.7, 2.9), xlabel="loss (nats per token)", title="LASP-2 Table 2 (1B, 50B tokens, 16K)")
    axes[2].invert_yaxis()
    return axes


def _table2_command(args, argv) -> int:
    import json
    import os
    import subprocess
    import sys
    import tempfile

    base = Table2Budget()
    budget = Table2Budget(
        lm=dataclasses.replace(base.lm, steps=args.steps, lr=args.lr, batch_size=args.batch_size, seq_len=args.seq_len),
        mqar=dataclasses.replace(base.mqar, steps=args.mqar_steps, lr=args.mqar_lr, batch_size=args.mqar_batch_size, seq_len=4 * args.mqar_pairs - 1),
        mqar_pairs=args.mqar_pairs,
    )
    rows_wanted = TABLE2_ROWS if args.only is None else tuple(args.only.split(","))
    if args.jobs <= 1:
        rows = [table2_row(spec, budget, progress=not args.no_progress, device=args.device) for spec in rows_wanted]
    else:
        # One process per row, each pinned to its own `threads` cores, so the rows do not share cores.
        cores = sorted(os.sched_getaffinity(0))
        with tempfile.TemporaryDirectory() as tmp:
            procs = []
            for i, spec in enumerate(rows_wanted):
                mine = cores[(i * args.threads) % len(cores) :][: args.threads]
                row_argv = [a for a in argv if a not in ("--no-progress",)]
                row_argv = row_argv[row_argv.index("table2") + 1 :]
                cmd = [sys.executable, "-m", "reference.model", "--threads", str(args.threads), "--no-progress", "--device", args.device, "table2",
                       *row_argv, "--jobs", "1", "--only", spec, "--out", os.path.join(tmp, f"{i}.json")]
                procs.append(subprocess.Popen(["taskset", "-c", ",".join(map(str, mine)), *cmd]))
            if any(p.wait() for p in procs):
                raise SystemExit("a table2 row failed")
            rows = [json.load(open(os.path.join(tmp, f"{i}.json")))["rows"][0] for i in range(len(rows_wanted))]
    payload = {
        "what": "LASP-2 Table 2 in miniature: the same budget for every attention (reference/model.py, docs/tiny_lm.md)",
        "command": _command(argv),
        **_environment(),
        "device": args.device if args.device == "cpu" else f"{args.device} ({torch.cuda.get_device_name(args.device)})",
        "rows_ran_in_parallel": f"{args.jobs} processes, each pinned to {args.threads} cores" if args.jobs > 1 else False,
        "config": {k: v for k, v in Config().to_dict().items() if k != "attention"},
        "budget": dataclasses.asdict(budget),
        "rows": rows,
        "paper_table2": PAPER_TABLE2,
    }
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=1)
    if args.only is None:
        import matplotlib

        matplotlib.use("Agg")  # the command line owns its process
        import matplotlib.pyplot as plt

        plot_table2(payload)
        plt.savefig(os.path.splitext(args.out)[0] + ".png", dpi=110)
    for r in rows:
        print(f"{r['attention']:>18}  {r['held_out_bits_per_byte']:.3f} bits/byte  MQAR {r['mqar_accuracy']:.3f}  ({r['lm_seconds']:.0f}+{r['mqar_seconds']:.0f} s)")
    return 0


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _command(argv) -> str:
    return "python -m reference.model " + " ".join(argv)


def _environment() -> dict:
    import datetime
    import os
    import platform

    from reference import data as corpus_data

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads",
        "corpus": corpus_data.corpus_info(),
    }


def _train_command(args, argv) -> int:
    import time

    from reference import data as corpus_data

    config = Config(attention=parse_attention(args.attention, Config().n_layers))
    model = TinyLM(config, seed=args.seed).to(args.device)
    tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, warmup=args.warmup, seed=args.seed)
    corpus_data.corpus("train"), corpus_data.corpus("held_out")  # read once, outside the timing
    start = time.perf_counter()
    model, losses = train(config, tc, progress=not args.no_progress, model=model)
    if args.device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    bpb = bits_per_byte(model, corpus_data.corpus("held_out"), seq_len=tc.seq_len, max_windows=args.eval_windows)
    print(f"held-out bits per byte: {bpb:.4f} after {tc.steps} steps in {seconds:.1f} s of training ({torch.get_num_threads()} threads)")
    if args.out:
        meta = {
            "command": _command(argv),
            "held_out_bits_per_byte": bpb,
            "eval_windows": args.eval_windows,
            "train_seconds": seconds,
            "train": dataclasses.asdict(tc),
            "device": args.device if args.device == "cpu" else f"{args.device} ({torch.cuda.get_device_name(args.device)})",
            "final_train_bits_per_byte": float(np.mean(losses[-10:]) / math.log(2)),
            **_environment(),
        }
        save(model, args.out, meta=meta)
        print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    import argparse
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m reference.model", description="Train the tiny LM; LASP-2's Table 2 in miniature.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for this process (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs)")
    parser.add_argument("--device", default="cpu", help="where to train (default cpu; e.g. cuda)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one model on the standard-library corpus")
    p.add_argument("--attention", default="softmax", help="softmax | linear | lightning | gla | hybrid-<kind> | a comma list")
    defaults = TrainConfig()
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--seq-len", type=int, default=defaults.seq_len)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--warmup", type=int, default=defaults.warmup)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--eval-windows", type=int, default=64, help="held-out windows of seq_len bytes to evaluate")
    p.add_argument("--out", help="write the checkpoint here")
    t = sub.add_parser("table2", help="LASP-2's Table 2 in miniature: every attention under one budget")
    t.add_argument("--out", required=True, help="the JSON to write (a .png beside it)")
    t.add_argument("--steps", type=int, default=Table2Budget().lm.steps, help="language-model steps per row")
    t.add_argument("--mqar-steps", type=int, default=Table2Budget().mqar.steps, help="MQAR steps per row")
    t.add_argument("--lr", type=float, default=Table2Budget().lm.lr)
    t.add_argument("--batch-size", type=int, default=Table2Budget().lm.batch_size)
    t.add_argument("--seq-len", type=int, default=Table2Budget().lm.seq_len)
    t.add_argument("--mqar-lr", type=float, default=Table2Budget().mqar.lr)
    t.add_argument("--mqar-batch-size", type=int, default=Table2Budget().mqar.batch_size)
    t.add_argument("--mqar-pairs", type=int, default=Table2Budget().mqar_pairs)
    t.add_argument("--only", help="a comma list of rows (default: all of TABLE2_ROWS)")
    t.add_argument("--jobs", type=int, default=1, help="rows in parallel, each pinned to its own --threads cores (Linux)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # the command line owns its process
    if args.command == "train":
        return _train_command(args, argv)
    return _table2_command(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
