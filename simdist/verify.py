"""Check a distributed attention against one device: outputs and gradients, one chunk per rank.

The tests, the lesson and the GPU check all use this module, and so can coursework that points it at
its own implementation (any picklable ``fn(q, k, v, *, decay, causal, scale)`` that takes this rank's
chunk)::

    cases = [verify.Case("lasp2", *verify.problem(B=1, H=2, T=10, K=4, V=3, seed=0), decay=[0.5, 0.9])]
    with simdist.Pool(4) as pool:
        for case, got in zip(cases, verify.run(pool, cases)):
            print(verify.errors(got, verify.one_device(case)))   # relative errors of o, dq, dk, dv

A ``Case`` holds the *whole* problem as float64 NumPy arrays (small: every rank receives it) and the
chunk lengths; each rank slices its chunk, runs the algorithm forward and backward with the given
``dO``, and returns its rows of ``o, dq, dk, dv`` and its accounting record. ``one_device`` computes
the same quantities on the full sequence with the ``reference`` package and autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from simdist import accounting, lasp1, lasp2, lasp2h, ring

__all__ = ["Case", "problem", "split_lengths", "rank_run", "run", "one_device", "errors", "prefix_run", "ALGORITHMS"]

ALGORITHMS = {
    "lasp1": lasp1.attention,
    "lasp2": lasp2.attention,
    "lasp2h": lasp2h.attention,
    "ring": ring.attention,
}
SOFTMAX = ("lasp2h", "ring")


@dataclass
class Case:
    """One problem: the algorithm (a name in ``ALGORITHMS`` or a picklable callable) and global arrays.

    ``q, k: [B, H, T, K]``, ``v, do: [B, H, T, V]`` float64; ``decay: [H]`` or ``None``;
    ``lengths``: every rank's chunk length (``None``: split ``T`` as evenly as possible).
    """

    algorithm: object
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    do: np.ndarray
    decay: object = None
    causal: bool = True
    scale: float | None = 1.0
    lengths: list | None = None
    options: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.algorithm if isinstance(self.algorithm, str) else getattr(self.algorithm, "__qualname__", "fn")


def problem(B: int, H: int, T: int, K: int, V: int, *, seed: int = 0):
    """``(q, k, v, do)``: standard normal float64 arrays of the given sizes."""
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((B, H, T, K)),
        rng.standard_normal((B, H, T, K)),
        rng.standard_normal((B, H, T, V)),
        rng.standard_normal((B, H, T, V)),
    )


def split_lengths(T: int, W: int) -> list:
    """``W`` chunk lengths summing to ``T``, as even as possible (the first ``T mod W`` one longer)."""
    return [T // W + (1 if r < T % W else 0) for r in range(W)]


def _bounds(lengths):
    out, at = [], 0
    for c in lengths:
        out.append((at, at + c))
        at += c
    return out


def rank_run(rank: int, world_size: int, cases, dtype: str = "float64", device: str | None = None):
    """What each rank runs: its chunk of every case, forward and backward. Returns one dict per case."""
    tdtype = getattr(torch, dtype)
    if device is None:
        device = f"cuda:{torch.cuda.current_device()}" if torch.distributed.get_backend() == "nccl" else "cpu"
    results = []
    for case in cases:
        lengths = case.lengths or split_lengths(case.q.shape[2], world_size)
        start, stop = _bounds(lengths)[rank]
        q, k, v, do = (
            torch.from_numpy(np.ascontiguousarray(x[:, :, start:stop])).to(device=device, dtype=tdtype) for x in (case.q, case.k, case.v, case.do)
        )
        q.requires_grad_()
        k.requires_grad_()
        v.requires_grad_()
        fn = ALGORITHMS[case.algorithm] if isinstance(case.algorithm, str) else case.algorithm
        kwargs = dict(causal=case.causal, scale=case.scale, **case.options)
        if case.name not in SOFTMAX:
            kwargs["decay"] = None if case.decay is None else torch.as_tensor(np.asarray(case.decay, dtype=np.float64))
        accounting.reset()
        o = fn(q, k, v, **kwargs)
        (o * do).sum().backward()
        results.append(
            {
                "o": o.detach().cpu(),
                "dq": q.grad.cpu(),
                "dk": k.grad.cpu(),
                "dv": v.grad.cpu(),
                "record": accounting.snapshot(),
            }
        )
    return results


def run(pool, cases, *, dtype: str = "float64", device: str | None = None, timeout: float | None = None):
    """Run every case on every rank of ``pool``; return per case the assembled ``o, dq, dk, dv`` and the records."""
    per_rank = pool.run(rank_run, list(cases), dtype, device, timeout=timeout)
    out = []
    for i in range(len(cases)):
        parts = [per_rank[r][i] for r in range(len(per_rank))]
        got = {name: torch.cat([p[name] for p in parts], dim=2).double().numpy() for name in ("o", "dq", "dk", "dv")}
        got["records"] = [p["record"] for p in parts]
        out.append(got)
    return out


def one_device(case: Case) -> dict:
    """The same quantities on one device: ``reference`` on the full sequence, gradients by autograd."""
    from reference import lightning, linear_attention, softmax_attention

    q, k, v = (torch.from_numpy(np.array(x)).requires_grad_() for x in (case.q, case.k, case.v))
    if case.name in SOFTMAX:
        o = softmax_attention.naive(q, k, v, causal=case.causal, scale=case.scale)
    elif not case.causal:
        o = linear_attention.parallel(q, k, v, scale=case.scale, causal=False)
    else:
        decay = np.ones(q.shape[1]) if case.decay is None else np.asarray(case.decay, dtype=np.float64)
        o = lightning.parallel(q, k, v, decay, scale=case.scale)
    (o * torch.from_numpy(case.do)).sum().backward()
    return {"o": o.detach().numpy(), "dq": q.grad.numpy(), "dk": k.grad.numpy(), "dv": v.grad.numpy()}


def errors(got: dict, want: dict) -> dict:
    """Relative errors ``‖got − want‖ / ‖want‖`` of ``o, dq, dk, dv``."""
    out = {}
    for name in ("o", "dq", "dk", "dv"):
        denom = np.linalg.norm(want[name])
        diff = np.linalg.norm(np.asarray(got[name], dtype=np.float64) - want[name])
        out[name] = float(diff / denom) if denom > 0 else float(diff)
    return out


def prefix_run(rank: int, world_size: int, q, k, v, decay, lengths, prefix: str):
    """Each rank's LASP-2 forward with the ``"exclusive"`` (right) or ``"inclusive"`` (erratum) prefix."""
    start, stop = _bounds(lengths)[rank]
    chunk = [torch.from_numpy(np.ascontiguousarray(x[:, :, start:stop])) for x in (q, k, v)]
    return lasp2.forward_with_prefix(*chunk, decay=decay, prefix=prefix)
