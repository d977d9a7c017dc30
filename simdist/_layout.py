"""Input checks that every rank agrees on: the handshake that turns a bad input into an error everywhere.

A check that fails on one rank only would leave the other ranks waiting forever in the next
collective. So each algorithm validates its local input *without raising yet*, then all ranks
exchange a fixed-size description of what they hold (one small AllGather, recorded as
``kind="meta"``): whether the local checks passed, ``B, H, K, V``, the chunk length, the dtype, the
options and a fingerprint of the decay. Then every rank raises the same error if anything disagrees
— or its own error, if its own input was bad, while the others name it. The handshake also tells
each rank every chunk's length, which LASP-2's decayed prefix and LASP-2H's gathers need (chunks of
unequal length are allowed).

Passing ``lengths=[C_0, …, C_{W-1}]`` declares the layout; it does not skip the handshake (one
rank skipping a collective the others enter would hang or abort them all). Every rank's declared
lengths are compared with the chunks the ranks really hold, and a rank that declares other lengths
than they are is named on every rank.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from simdist import comm

_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
_FIELDS = ["ok", "B", "H", "K", "V", "C", "dtype", "causal", "has_decay", "scale", "decay_fp1", "decay_fp2", "W", "algorithm",
           "has_lengths", "lengths_fp1", "lengths_fp2"]
_ALGORITHMS = ["lasp1", "lasp2", "lasp2h", "ring"]


@dataclass
class Layout:
    """Where this rank's chunk sits: ``rank``, ``W``, every chunk's length and start."""

    rank: int
    world_size: int
    lengths: list
    group: object = None

    @property
    def starts(self) -> list:
        out, acc = [], 0
        for c in self.lengths:
            out.append(acc)
            acc += c
        return out

    @property
    def total(self) -> int:
        return sum(self.lengths)


def _check_local(name, q, k, v, decay, causal, scale, *, allow_decay: bool, scale_may_be_none: bool, options=None):
    """Validate this rank's own inputs; return the normalised decay (float64 CPU tensor or None).

    ``options(causal, decay)``, if given, is the algorithm's own rule on its options (LASP-1 is causal
    only; LASP-2 has no decay when bidirectional): it raises ``ValueError`` and runs here, inside the
    handshake, so a rank that breaks the rule alone is named by the others instead of leaving them
    waiting in the handshake's collective."""
    for arg, x, layout in (("q", q, "[B, H, C, K]"), ("k", k, "[B, H, C, K]"), ("v", v, "[B, H, C, V]")):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch tensor {layout}, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"{name}: {arg} must have 4 dimensions {layout}, got shape {tuple(x.shape)}")
        if x.dtype not in _DTYPES:
            raise TypeError(f"{name}: {arg} must be float64, float32, float16 or bfloat16, got {x.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{name}: q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{name}: q, k and v must be on one device, got {q.device}, {k.device} and {v.device}")
    B, H, C, K = q.shape
    if tuple(k.shape) != (B, H, C, K):
        raise ValueError(f"{name}: k must have the shape of q {(B, H, C, K)}, got {tuple(k.shape)}")
    if tuple(v.shape[:3]) != (B, H, C):
        raise ValueError(f"{name}: v must have shape [B, H, C, V] with B, H, C = {(B, H, C)} like q, got {tuple(v.shape)}")
    if C < 1 or K < 1 or v.shape[3] < 1 or B < 1 or H < 1:
        raise ValueError(f"{name}: every rank needs a chunk of at least one token and non-empty dimensions, got q {tuple(q.shape)}, v {tuple(v.shape)}")
    if not isinstance(causal, bool):
        raise TypeError(f"{name}: causal must be True or False, got {causal!r}")
    if scale is None:
        if not scale_may_be_none:
            raise TypeError(f"{name}: scale must be a real number, got None")
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"{name}: scale must be a finite real number, got {scale!r}")
    if options is not None:
        options(causal, decay)
    if decay is None:
        return None
    if not allow_decay:
        raise ValueError(f"{name}: takes no decay")
    try:
        if isinstance(decay, torch.Tensor):
            lam = decay.detach().to("cpu", torch.float64)
        else:  # a sequence or a NumPy array: read as float64 (torch would round a list to float32)
            lam = torch.as_tensor(np.asarray(decay, dtype=np.float64))
    except Exception as err:
        raise TypeError(f"{name}: decay must be a tensor or sequence of shape [H] = [{H}], got {type(decay).__name__}") from err
    if lam.ndim != 1 or lam.shape[0] != H:
        raise ValueError(f"{name}: decay must have shape [H] = [{H}], got {tuple(lam.shape)}")
    if not bool(((lam > 0) & (lam <= 1)).all()):
        raise ValueError(f"{name}: decay must lie in (0, 1] for every head, got {lam.tolist()}")
    return lam


def _check_group(name, group) -> None:
    non_member = getattr(getattr(dist, "GroupMember", None), "NON_GROUP_MEMBER", None)  # new_group's answer
    if group is not None and group is not non_member and not isinstance(group, dist.ProcessGroup):  # off the group
        raise TypeError(f"{name}: group must be a torch.distributed ProcessGroup or None (the default group), got {group!r}")


def _check_lengths(name, lengths, rank: int, W: int, C: int):
    """``lengths`` (or None) as a list of ``W`` positive ints whose entry ``rank`` is this chunk's length."""
    if lengths is None:
        return None
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__len__"):
        raise TypeError(f"{name}: lengths must be a sequence of {W} chunk lengths (one per rank) or None, got {lengths!r}")
    values = list(lengths)
    if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in values):
        raise TypeError(f"{name}: lengths must hold integers, got {values!r}")
    values = [int(c) for c in values]
    if len(values) != W:
        raise ValueError(f"{name}: lengths must give one chunk length per rank ({W}), got {len(values)}: {values}")
    if min(values) < 1:
        raise ValueError(f"{name}: lengths must be positive, got {values}")
    if values[rank] != C:
        raise ValueError(f"{name}: lengths[{rank}] = {values[rank]} but this rank's chunk has {C} tokens")
    return values


def _lengths_fingerprint(values) -> tuple[float, float]:
    """Two sums that tell different lists of lengths apart (exact in float64 for any real layout)."""
    return float(sum(c * (i + 1) for i, c in enumerate(values))), float(sum(c * c * (i + 1) ** 3 for i, c in enumerate(values)))


def _meta_device(group):
    backend = dist.get_backend(group)
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def handshake(name, algorithm, q, k, v, decay, causal, scale, group, *, lengths=None, allow_decay=True, scale_may_be_none=False, options=None):
    """Validate locally, agree across ranks, return ``(Layout, decay as float64 CPU tensor or None)``.

    Raises the same ``ValueError`` on every rank when the ranks disagree, this rank's own error when
    its input is bad (the others raise one naming it), never hangs on a bad input. Every check of an
    algorithm's arguments belongs here (``options``: its rule on ``causal`` and ``decay``, see
    ``_check_local``): a check raised before the handshake would fail on its rank alone.
    """
    local_error = None
    lam = None
    _check_group(name, group)  # before anything collective: a bad group cannot be used to tell the others
    try:
        lam = _check_local(
            name, q, k, v, decay, causal, scale, allow_decay=allow_decay, scale_may_be_none=scale_may_be_none, options=options
        )
    except (TypeError, ValueError) as err:
        local_error = err
    try:
        rank, W = comm.group_layout(group)
    except RuntimeError:  # no process group at all: no peer can be left waiting; bad input first
        if local_error is not None:
            raise local_error from None
        raise
    declared = None
    if local_error is None:
        try:
            declared = _check_lengths(name, lengths, rank, W, int(q.shape[2]))
        except (TypeError, ValueError) as err:
            local_error = err

    if local_error is None:
        B, H, C, K = q.shape
        fp1 = fp2 = 0.0
        if lam is not None:
            logs = lam.log()
            fp1 = float(logs.sum())
            fp2 = float((logs * torch.arange(1, H + 1, dtype=torch.float64)).sum())
        fields = dict(ok=1, B=B, H=H, K=K, V=v.shape[3], C=C, dtype=_DTYPES.index(q.dtype), causal=int(causal),
                      has_decay=int(lam is not None), scale=float("nan") if scale is None else float(scale),
                      decay_fp1=fp1, decay_fp2=fp2, W=W, algorithm=_ALGORITHMS.index(algorithm),
                      has_lengths=int(declared is not None))  # fmt: skip
        fields["lengths_fp1"], fields["lengths_fp2"] = _lengths_fingerprint(declared) if declared is not None else (0.0, 0.0)
        row = [fields[name] for name in _FIELDS]
    else:
        row = [0] * len(_FIELDS)
    if W == 1:
        if local_error is not None:
            raise local_error
        return Layout(rank, W, [int(q.shape[2])], group), lam

    mine = torch.tensor(row, dtype=torch.float64, device=_meta_device(group))
    table = torch.stack(comm.all_gather(mine, group=group, label="shapes", kind="meta")).cpu()
    if local_error is not None:
        raise local_error
    rows = [dict(zip(_FIELDS, x)) for x in table.tolist()]  # one row per rank, read by field name
    bad = [r for r, x in enumerate(rows) if x["ok"] != 1]
    if bad:
        raise ValueError(f"{name}: rank{'s' if len(bad) > 1 else ''} {bad} rejected {'their' if len(bad) > 1 else 'its'} input (see that rank's error); every rank stops")

    def differs(field):
        values = [x[field] for x in rows]
        same = all((a == values[0]) or (math.isnan(a) and math.isnan(values[0])) for a in values)
        return None if same else values

    problems = []
    for field, what in (("algorithm", "algorithm"), ("W", "group size")):
        values = differs(field)
        if values is not None:
            shown = [_ALGORITHMS[int(x)] for x in values] if field == "algorithm" else [int(x) for x in values]
            problems.append(f"the ranks call different {what}s: " + ", ".join(f"rank {r}: {x}" for r, x in enumerate(shown)))
    for field, what in (("B", "batch B"), ("H", "heads H"), ("K", "key width K"), ("V", "value width V")):
        values = differs(field)
        if values is not None:
            problems.append(f"{what} differs across ranks: " + ", ".join(f"rank {r}: {int(x)}" for r, x in enumerate(values)))
    if differs("dtype") is not None:
        problems.append("dtype differs across ranks: " + ", ".join(f"rank {r}: {_DTYPES[int(x['dtype'])]}" for r, x in enumerate(rows)))
    if differs("causal") is not None:
        problems.append("causal differs across ranks: " + ", ".join(f"rank {r}: {bool(x['causal'])}" for r, x in enumerate(rows)))
    if differs("has_decay") is not None or differs("decay_fp1") is not None or differs("decay_fp2") is not None:
        problems.append("decay differs across ranks (every rank must pass the same decay, or all None)")
    if differs("scale") is not None:
        problems.append("scale differs across ranks: " + ", ".join(f"rank {r}: {x['scale']}" for r, x in enumerate(rows)))
    real = [int(x["C"]) for x in rows]
    fp_real = _lengths_fingerprint(real)
    wrong = [r for r, x in enumerate(rows) if x["has_lengths"] and (x["lengths_fp1"], x["lengths_fp2"]) != fp_real]
    if wrong:
        problems.append(
            f"rank{'s' if len(wrong) > 1 else ''} {wrong} passed lengths= that differ from the chunks the ranks hold, {real}"
        )
    if problems:
        raise ValueError(f"{name}: the ranks' inputs disagree: " + "; ".join(problems))
    return Layout(rank, W, real, group), lam
