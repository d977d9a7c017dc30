r"""Message accounting: every message and collective each rank makes, and a timeline to plot.

Every communication in ``simdist`` goes through ``simdist.comm``, which records an ``Event`` here:
the operation, whether it carries data or a small validation handshake (``kind="meta"``), the peer
or the group, the bytes this rank sends and receives, and three wall times — when it was posted,
when the rank started waiting for it, and when it completed. Local work is recorded as ``Span``
records with ``with accounting.span("compute", "intra"):``. Each process keeps its own log; ``snapshot()``
returns it as a picklable ``Record``, and ``simdist.Pool`` resets it before every task.

From the records of all ranks, ``summarize`` counts calls and bytes per rank and ``critical_path``
counts **sequential steps**: the longest chain of messages in which each one could only be sent
after the previous one arrived. It is computed from the happened-before order the logs record
(a message is sent after whatever its sender had already received; a collective completes after
every member entered it), so it is measured, not assumed. LASP-1's ring gives ``2(W-1)`` steps per
forward and backward; LASP-2's two AllGathers give 2 whatever ``W``.

Bytes: for a point-to-point message, exactly what travels. For an AllGather of ``n`` bytes per rank,
each rank receives ``(W-1)·n`` (any algorithm must deliver that) and, in the ring algorithm gloo
and NCCL use on one host, also forwards ``(W-1)·n``; a reduce-scatter of ``W`` blocks of ``n``
bytes likewise. Wall times are host times: on CUDA, set ``accounting.CUDA_SYNC = True`` to
synchronise at span boundaries if the timeline matters (the benchmark times with CUDA events).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = [
    "Event",
    "Span",
    "Record",
    "reset",
    "snapshot",
    "span",
    "summarize",
    "critical_path",
    "table",
    "plot_timeline",
]

#: Synchronise CUDA at every span boundary (only for timelines on GPUs; it serialises the stream).
CUDA_SYNC = False


@dataclass
class Event:
    """One communication call on one rank."""

    index: int  # order in which this rank posted it
    op: str  # "send", "recv", "all_gather", "reduce_scatter", "all_reduce"
    kind: str  # "data" or "meta" (the small handshake that validates shapes across ranks)
    label: str  # what travels, e.g. "KV" or "dM"
    peer: int | None  # global rank of the other end of a point-to-point message
    group: tuple | None  # global ranks of a collective's group
    bytes_sent: int
    bytes_recv: int
    t_post: float
    done_before: int  # how many of this rank's events had completed when this one was posted
    t_wait: float | None = None
    t_end: float | None = None
    done_index: int | None = None  # completion order on this rank


@dataclass
class Span:
    """A stretch of wall time on one rank: ``kind`` is ``"compute"`` or ``"comm"`` (blocked waiting
    for a communication to complete; ``meta`` marks the handshake)."""

    kind: str
    label: str
    t0: float
    t1: float
    meta: bool = False


@dataclass
class Record:
    """Everything one rank recorded since the last ``reset``."""

    rank: int
    world_size: int
    events: list = field(default_factory=list)
    spans: list = field(default_factory=list)


class _Log:
    def __init__(self):
        self.events: list[Event] = []
        self.spans: list[Span] = []
        self.completed = 0


_log = _Log()
_status_hook = None


def set_status_hook(fn) -> None:
    """``fn(text)`` is told what the rank is doing (used by the pool to name a hung rank)."""
    global _status_hook
    _status_hook = fn


def _status(text: str) -> None:
    if _status_hook is not None:
        _status_hook(text)


def _now() -> float:
    if CUDA_SYNC:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    return time.perf_counter()  # CLOCK_MONOTONIC: one clock for every process of the host


def reset() -> None:
    """Forget everything recorded so far on this rank."""
    global _log
    _log = _Log()


def snapshot() -> Record:
    """This rank's record (picklable: return it from a ``Pool.run`` function)."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return Record(rank=rank, world_size=world, events=list(_log.events), spans=list(_log.spans))


@contextmanager
def span(kind: str, label: str):
    """Record the wall time of the enclosed block as a ``Span`` (kind ``"compute"`` for local work)."""
    t0 = _now()
    try:
        yield
    finally:
        _log.spans.append(Span(kind, label, t0, _now()))


def begin(op, kind, label, *, peer=None, group=None, bytes_sent=0, bytes_recv=0) -> Event:
    """Record that a communication was posted (called by ``simdist.comm``)."""
    event = Event(
        index=len(_log.events),
        op=op,
        kind=kind,
        label=label,
        peer=peer,
        group=tuple(group) if group is not None else None,
        bytes_sent=int(bytes_sent),
        bytes_recv=int(bytes_recv),
        t_post=_now(),
        done_before=_log.completed,
    )
    _log.events.append(event)
    return event


@contextmanager
def waiting(event: Event):
    """Wrap the wait for ``event``: records the wait span and the completion order."""
    event.t_wait = _now()
    _status(f"in {event.op} '{event.label}' ({event.kind})")
    try:
        yield
    finally:
        event.t_end = _now()
        event.done_index = _log.completed
        _log.completed += 1
        _log.spans.append(Span("comm", f"{event.op} {event.label}", event.t_wait, event.t_end, event.kind == "meta"))
        _status("running")


# --------------------------------------------------------------------------------------------
# Analysis of the records of all ranks
# --------------------------------------------------------------------------------------------


def summarize(records) -> list[dict]:
    """Per rank: point-to-point messages, collectives, bytes (data and handshake apart), times.

    Returns one dict per rank with keys ``rank``, ``p2p_sent``, ``p2p_recv``, ``collectives``,
    ``bytes_sent``, ``bytes_recv`` (data only), ``meta_calls``, ``meta_bytes``, ``compute_s``
    (time in compute spans) and ``wait_s`` (time blocked in communication).
    """
    rows = []
    for rec in sorted(records, key=lambda r: r.rank):
        data = [e for e in rec.events if e.kind == "data"]
        meta = [e for e in rec.events if e.kind == "meta"]
        rows.append(
            {
                "rank": rec.rank,
                "p2p_sent": sum(e.op == "send" for e in data),
                "p2p_recv": sum(e.op == "recv" for e in data),
                "collectives": sum(e.group is not None for e in data),
                "bytes_sent": sum(e.bytes_sent for e in data),
                "bytes_recv": sum(e.bytes_recv for e in data),
                "meta_calls": len(meta),
                "meta_bytes": sum(e.bytes_recv for e in meta),
                "compute_s": sum(s.t1 - s.t0 for s in rec.spans if s.kind == "compute"),
                "wait_s": sum(s.t1 - s.t0 for s in rec.spans if s.kind == "comm"),
            }
        )
    return rows


def critical_path(records, *, kind: str = "data") -> int:
    """The number of sequential communication steps: the longest chain of dependent messages.

    A point-to-point message counts one step more than the deepest step its sender had completed
    when it posted it; a collective one more than the deepest step of any member on entry. Events of
    another ``kind`` (the handshake) carry dependencies but count zero. Messages between a pair of
    ranks match in order (first send to first receive), collectives of a group in order.
    """
    by_rank = {rec.rank: sorted(rec.events, key=lambda e: e.index) for rec in records}
    # Pair every receive with its send, and every collective with its peers on the other ranks.
    sends: dict[tuple, list] = {}
    recvs: dict[tuple, list] = {}
    colls: dict[tuple, dict[int, list]] = {}
    for rank, events in by_rank.items():
        for e in events:
            if e.op == "send":
                sends.setdefault((rank, e.peer), []).append((rank, e.index))
            elif e.op == "recv":
                recvs.setdefault((e.peer, rank), []).append((rank, e.index))
            elif e.group is not None:
                colls.setdefault(e.group, {}).setdefault(rank, []).append((rank, e.index))
    match: dict[tuple, list] = {}
    for pair, rlist in recvs.items():
        slist = sends.get(pair, [])
        for i, r in enumerate(rlist):
            if i < len(slist):
                match[r] = [slist[i]]
    members_of: dict[tuple, list] = {}
    for group, per_rank in colls.items():
        for i in range(max(len(v) for v in per_rank.values())):
            members = [per_rank[g][i] for g in per_rank if i < len(per_rank[g])]
            for m in members:
                members_of[m] = members
    step = {(rank, e.index): 0 for rank, events in by_rank.items() for e in events}
    event_of = {(rank, e.index): e for rank, events in by_rank.items() for e in events}

    def before(key) -> int:
        """Deepest step this rank had completed when it posted event ``key``."""
        rank, _ = key
        limit = event_of[key].done_before
        return max((step[(rank, e.index)] for e in by_rank[rank] if e.done_index is not None and e.done_index < limit), default=0)

    for _ in range(sum(len(v) for v in by_rank.values()) + 1):  # relax to the fixed point
        changed = False
        for key, e in event_of.items():
            weight = 1 if e.kind == kind else 0
            if e.op == "recv":
                value = max([before(key)] + [step[s] for s in match.get(key, [])])
            elif e.group is not None:
                value = max(before(m) for m in members_of.get(key, [key])) + weight
            else:
                value = before(key) + weight
            if value != step[key]:
                step[key] = value
                changed = True
        if not changed:
            break
    return max(step.values(), default=0)


def table(records) -> str:
    """A Markdown table of ``summarize(records)`` plus the critical path."""
    rows = summarize(records)
    head = "| rank | p2p sent | p2p recv | collectives | data bytes sent | data bytes recv | handshakes | compute ms | waiting ms |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['rank']} | {r['p2p_sent']} | {r['p2p_recv']} | {r['collectives']} | {r['bytes_sent']:,} | "
            f"{r['bytes_recv']:,} | {r['meta_calls']} | {1e3 * r['compute_s']:.1f} | {1e3 * r['wait_s']:.1f} |"
        )
    lines.append(f"\nsequential communication steps (critical path): {critical_path(records)}")
    return "\n".join(lines)


def plot_timeline(records, ax=None, *, title: str | None = None):
    """Draw each rank's compute and communication spans on one time axis (and P2P messages as arrows).

    Compute is blue, waiting on data communication orange, the handshake grey; an arrow runs from a
    send's post time on the sender to the receive's completion on the receiver.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.6 + 0.5 * len(records)))
    records = sorted(records, key=lambda r: r.rank)
    t_all = [s.t0 for r in records for s in r.spans] + [e.t_post for r in records for e in r.events]
    t0 = min(t_all) if t_all else 0.0
    ms = lambda t: 1e3 * (t - t0)  # noqa: E731
    colors = {"compute": "tab:blue", "comm": "tab:orange"}
    for rec in records:
        y = rec.rank
        for s in rec.spans:
            color = "0.6" if s.meta else colors.get(s.kind, "tab:gray")
            ax.broken_barh([(ms(s.t0), max(ms(s.t1) - ms(s.t0), 1e-3))], (y - 0.35, 0.7), facecolors=color)
    # arrows for point-to-point messages
    sends = {}
    for rec in records:
        for e in sorted(rec.events, key=lambda e: e.index):
            if e.op == "send":
                sends.setdefault((rec.rank, e.peer), []).append(e)
    seen = {}
    for rec in records:
        for e in sorted(rec.events, key=lambda e: e.index):
            if e.op == "recv" and e.t_end is not None:
                i = seen.get((e.peer, rec.rank), 0)
                seen[(e.peer, rec.rank)] = i + 1
                lst = sends.get((e.peer, rec.rank), [])
                if i < len(lst):
                    s = lst[i]
                    ax.annotate(
                        "", xy=(ms(e.t_end), rec.rank), xytext=(ms(s.t_post), e.peer),
                        arrowprops=dict(arrowstyle="->", color="tab:red", lw=0.8, alpha=0.7),
                    )
    ax.set_yticks([r.rank for r in records])
    ax.set_yticklabels([f"rank {r.rank}" for r in records])
    ax.invert_yaxis()
    ax.set_xlabel("wall time (ms)")
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color="tab:blue", label="compute"), Patch(color="tab:orange", label="waiting on data"), Patch(color="0.6", label="handshake")],
        loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False,
    )
    if title:
        ax.set_title(title)
    return ax
