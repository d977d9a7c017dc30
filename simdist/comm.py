"""The only door to ``torch.distributed``: every message goes through here and is recorded.

Each function wraps one ``torch.distributed`` call and logs an ``accounting.Event`` (operation,
label, peer or group, bytes, post/wait/end times). The algorithms never call ``torch.distributed``
for communication themselves, so the counts in ``simdist.accounting`` cannot miss a message.

Ranks are *group* ranks (0..W-1 within ``group``); the wrappers translate to global ranks where
``torch.distributed`` wants them. Non-blocking calls return a ``Pending`` whose ``wait()`` records
how long the rank actually waited, which is what shows overlap in the timeline.

Facts this module relies on (gloo on CPU, NCCL on GPUs, torch 2.11 and 2.13): ``all_gather`` with a
list of output tensors, ``isend``/``irecv`` and ``reduce_scatter`` with a list of inputs work on both
backends; ``all_gather_into_tensor`` wants a concatenated output on gloo and is deprecated, so it is
not used.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from simdist import accounting

__all__ = ["Pending", "group_layout", "isend", "irecv", "exchange", "all_gather", "reduce_scatter", "nbytes"]


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def group_layout(group=None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process within ``group`` (the default group if ``None``).

    Raises ``RuntimeError`` when no process group is initialised and ``ValueError`` when this process
    is not a member of ``group``.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "simdist needs an initialised torch.distributed process group: run the function through "
            "simdist.launch / simdist.Pool, or call torch.distributed.init_process_group first"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of the group passed as group=")
    return rank, dist.get_world_size(group)


def _global(group, rank: int) -> int:
    if group is None or group is dist.group.WORLD:
        return rank
    return dist.get_global_rank(group, rank)


def _members(group) -> tuple:
    _, W = group_layout(group)
    return tuple(_global(group, r) for r in range(W))


class Pending:
    """A posted communication; ``wait()`` blocks until it completes and records the wait."""

    def __init__(self, work, event):
        self._work = work
        self._event = event
        self._done = False

    def wait(self) -> None:
        if self._done:
            return
        with accounting.waiting(self._event):
            if self._work is not None:
                self._work.wait()
        self._done = True


def isend(tensor: torch.Tensor, dst: int, *, group=None, label: str = "", kind: str = "data") -> Pending:
    """Post a send of ``tensor`` to group rank ``dst``."""
    tensor = tensor.contiguous()
    peer = _global(group, dst)
    event = accounting.begin("send", kind, label, peer=peer, bytes_sent=nbytes(tensor))
    work = dist.isend(tensor, dst=peer, group=group)
    pending = Pending(work, event)
    pending.tensor = tensor  # keep the buffer alive until the send completes
    return pending


def irecv(tensor: torch.Tensor, src: int, *, group=None, label: str = "", kind: str = "data") -> Pending:
    """Post a receive into ``tensor`` (contiguous, preallocated) from group rank ``src``."""
    if not tensor.is_contiguous():
        raise ValueError("irecv needs a contiguous buffer")
    peer = _global(group, src)
    event = accounting.begin("recv", kind, label, peer=peer, bytes_recv=nbytes(tensor))
    work = dist.irecv(tensor, src=peer, group=group)
    return Pending(work, event)


def exchange(send: torch.Tensor, dst: int, recv: torch.Tensor, src: int, *, group=None, label: str = "", kind: str = "data"):
    """Post a send to ``dst`` and a receive from ``src`` as one batch; returns ``(send_pending, recv_pending)``.

    Batched (``batch_isend_irecv``) so that two ranks sending to each other at once cannot deadlock
    on NCCL, where a lone send may wait for its receive. gloo returns one work per operation; NCCL
    (coalesced P2P, torch 2.x) returns a single work for the whole batch, which both handles share.
    """
    send = send.contiguous()
    if not recv.is_contiguous():
        raise ValueError("exchange needs a contiguous receive buffer")
    to, frm = _global(group, dst), _global(group, src)
    e_send = accounting.begin("send", kind, label, peer=to, bytes_sent=nbytes(send))
    e_recv = accounting.begin("recv", kind, label, peer=frm, bytes_recv=nbytes(recv))
    works = dist.batch_isend_irecv([dist.P2POp(dist.isend, send, to, group), dist.P2POp(dist.irecv, recv, frm, group)])
    if len(works) == 2:  # gloo: one work per operation
        w_send, w_recv = works
    elif len(works) == 1:  # NCCL (coalesced P2P): one work completes the send and the receive together
        w_send = w_recv = _Once(works[0])
    else:
        raise RuntimeError(f"batch_isend_irecv returned {len(works)} works for 2 operations")
    sent = Pending(w_send, e_send)
    sent.tensor = send
    return sent, Pending(w_recv, e_recv)


class _Once:
    """One work shared by several ``Pending`` handles: the first ``wait()`` waits, the others return."""

    def __init__(self, work):
        self._work = work
        self._done = False

    def wait(self) -> None:
        if not self._done:
            self._work.wait()
            self._done = True


def _complete(work, event, result, async_op: bool):
    """A collective's ending: ``(pending, result)`` when asynchronous, else wait and return ``result``."""
    pending = Pending(work, event)
    if async_op:
        return pending, result
    pending.wait()
    return result


def all_gather(tensor: torch.Tensor, *, group=None, label: str = "", kind: str = "data", async_op: bool = False):
    """Every rank's ``tensor`` (same shape everywhere), as a list in group-rank order.

    With ``async_op=True`` returns ``(pending, outputs)``: the outputs are valid after
    ``pending.wait()``.
    """
    rank, W = group_layout(group)
    tensor = tensor.contiguous()
    outputs = [torch.empty_like(tensor) for _ in range(W)]
    n = nbytes(tensor)
    event = accounting.begin("all_gather", kind, label, group=_members(group), bytes_sent=(W - 1) * n, bytes_recv=(W - 1) * n)
    if W == 1:
        outputs[0].copy_(tensor)
        work = None
    else:
        work = dist.all_gather(outputs, tensor, group=group, async_op=True)
    return _complete(work, event, outputs, async_op)


def reduce_scatter(inputs: list, *, group=None, label: str = "", kind: str = "data", async_op: bool = False):
    """``Σ_ranks inputs[r]`` on rank ``r``: ``inputs`` holds one tensor per group rank, same shapes.

    With ``async_op=True`` returns ``(pending, output)``.
    """
    rank, W = group_layout(group)
    if len(inputs) != W:
        raise ValueError(f"reduce_scatter needs one input per rank ({W}), got {len(inputs)}")
    inputs = [t.contiguous() for t in inputs]
    output = torch.empty_like(inputs[rank])
    n = nbytes(output)
    event = accounting.begin("reduce_scatter", kind, label, group=_members(group), bytes_sent=(W - 1) * n, bytes_recv=(W - 1) * n)
    if W == 1:
        output.copy_(inputs[0])
        work = None
    else:
        work = dist.reduce_scatter(output, inputs, group=group, async_op=True)
    return _complete(work, event, output, async_op)
