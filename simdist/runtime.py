"""Start ``W`` ranks in one process group, run a function in each, collect the results — safely.

``launch(fn, W)`` is the one-shot form; ``Pool(W)`` keeps the ranks alive between calls so a test
suite or a lesson pays the start-up once::

    with simdist.Pool(4) as pool:            # 4 gloo CPU processes, one process group
        outs = pool.run(my_module.fn, x)     # [fn(0, 4, x), fn(1, 4, x), fn(2, 4, x), fn(3, 4, x)]

What the runtime guarantees:

* Results come back in rank order, as CPU tensors or other picklable objects.
* A rank that raises makes ``run`` raise ``RankError`` naming the rank, with its traceback.
  A rank that dies (``os._exit``, a signal, a crash) ends the call at once with a ``RankError``
  naming it. A hang ends it too: when the ranks' progress counters (on a shared status board) stop
  for ``hang_timeout`` seconds (30 by default) while some rank waits in a collective, the rank busy
  outside any communication is named; a run that is merely long (every rank computing, or some
  done while the others compute) is stopped by ``timeout``. The process group's own collective
  timeout is longer than both, so a healthy rank waiting for the hung one never times out first
  and takes the blame.
* No orphans: each rank leads its own process group and watches a pipe only the caller holds; if
  the caller dies (even by SIGKILL), the ranks remove the run's temporary folder and kill their
  process groups (a subprocess a rank started included), and the fork server and resource tracker
  then exit by themselves. Teardown kills each rank's whole process group too.
* No rank outlives a failure: a pool whose ranks may be inconsistent (a death, a hang, a failure on
  only some ranks) is torn down at once and silently replaced by fresh ranks on the next ``run``
  (``pool.restarts`` counts this). An error raised by *every* rank (bad input, detected everywhere)
  keeps the pool, after a quick health check.
* Ranks rendezvous through a file store in a fresh temporary directory: no fixed port, nothing to
  collide with another run. Every wait has a timeout.

Processes come from a ``forkserver`` that imports torch once, so starting 4 ranks costs a tenth of
a second after the first pool (a plain ``spawn`` would re-import torch in every rank, seconds each).
The function must be picklable: a function defined at module level (not a lambda, not a function
defined inside a notebook cell; put it in a module).

**From a script, start the ranks under** ``if __name__ == "__main__":``. Every rank imports the
script again (as ``__mp_main__``, to find the functions defined in it); a call to ``launch`` or
``Pool`` at the script's top level would then run again inside each rank, which refuses to start
processes while it is still starting itself and dies. The parent sees its ranks die while starting
and raises ``LaunchError`` with this hint::

    import simdist

    def fn(rank, world_size):
        return rank

    if __name__ == "__main__":
        print(simdist.launch(fn, 4))
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
import weakref
from multiprocessing import connection
from multiprocessing import util as mp_util

from simdist import _worker

__all__ = ["launch", "Pool", "shared_pool", "RankError", "LaunchError"]

BACKENDS = ("gloo", "nccl")

#: Ranks one machine may simulate: a process each, and a status board row each.
MAX_WORLD_SIZE = 256


class LaunchError(RuntimeError):
    """The ranks could not be started or could not join the process group."""


#: Added to a ``LaunchError`` when a rank died while starting, the mark of an unguarded script.
GUARD_HINT = (
    "if you called launch (or Pool) from a script, put the call under `if __name__ == '__main__':` "
    "(every rank imports the script again, and an unguarded call runs again inside each rank)"
)


def _main_is_a_file() -> bool:
    """Whether ``__main__`` is a file the ranks re-import (a script, ``python -m``), not a notebook or a REPL."""
    return bool(getattr(sys.modules.get("__main__"), "__file__", None))


class RankError(RuntimeError):
    """A run failed on one or more ranks.

    Attributes:
        rank: the rank the failure is attributed to (the one that died, raised first, or hung).
        exceptions: ``{rank: exception}`` for every rank that raised.
        tracebacks: ``{rank: formatted traceback}`` for those ranks.
        exit_codes: ``{rank: exit code}`` for every rank that died (negative: killed by that signal).
        hung: ranks that gave no answer before the timeout.
        pids: the process ids of the ranks (all of them are gone when this is raised, unless the pool
            was kept because every rank raised the same way).
    """

    def __init__(self, message, *, rank, exceptions=None, tracebacks=None, exit_codes=None, hung=(), pids=()):
        super().__init__(message)
        self.rank = rank
        self.exceptions = dict(exceptions or {})
        self.tracebacks = dict(tracebacks or {})
        self.exit_codes = dict(exit_codes or {})
        self.hung = list(hung)
        self.pids = list(pids)


def _context():
    """A ``forkserver`` context whose server has imported torch and simdist (``spawn`` elsewhere)."""
    try:
        ctx = mp.get_context("forkserver")
    except ValueError:  # no fork server on this platform
        return mp.get_context("spawn")
    ctx.set_forkserver_preload(["simdist._worker"])
    return ctx


_LIVE_POOLS: "weakref.WeakSet[Pool]" = weakref.WeakSet()


@atexit.register
def _close_all_pools() -> None:
    for pool in list(_LIVE_POOLS):
        pool.close()


def _describe_exit(code) -> str:
    if code is None:
        return "exited"
    if code < 0:
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _health_check(rank: int, world_size: int):
    """A tiny collective on every rank: does the group still work end to end?"""
    import torch
    import torch.distributed as dist

    x = torch.ones(1)
    if dist.get_backend() == "nccl":
        x = x.cuda()
    dist.all_reduce(x)
    return float(x.item())


class Pool:
    """``world_size`` ranks in one process group, reused across ``run`` calls.

    Args:
        world_size: number of ranks ``W`` (processes).
        backend: ``"gloo"`` (CPU processes) or ``"nccl"`` (one GPU per rank, rank ``r`` on
            ``cuda:r``; needs ``W`` visible GPUs).
        timeout: default seconds a ``run`` may take.
        hang_timeout: default seconds the ranks may make no progress while some of them wait in a
            collective before the run is declared hung and the busy rank named (30 s; raise it for
            GPU work of more than that between two collectives).
        start_timeout: seconds the ranks may take to start and join the group (default
            ``max(60, timeout)``).
        threads: torch threads per rank (default: the CPU cores divided among the ranks).
        grace: seconds to wait for the other ranks' answers once one rank has failed.

    Use as a context manager, or call ``close()``. A pool whose ranks failed in a way that may leave
    them inconsistent is torn down immediately and restarted on the next ``run``.
    """

    def __init__(
        self,
        world_size: int,
        *,
        backend: str = "gloo",
        timeout: float = 120.0,
        start_timeout: float | None = None,
        threads: int | None = None,
        grace: float = 3.0,
        hang_timeout: float = 30.0,
    ):
        _check_world_size(world_size)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        timeout = _seconds("timeout", timeout)
        hang_timeout = _seconds("hang_timeout", hang_timeout)
        grace = _seconds("grace", grace, zero_ok=True)
        if start_timeout is not None:
            start_timeout = _seconds("start_timeout", start_timeout)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        if backend == "nccl":
            import torch

            available = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if available < world_size:
                raise ValueError(f"backend 'nccl' puts one GPU on each rank: {world_size} ranks need {world_size} GPUs, {available} visible")
        self.world_size = world_size
        self.backend = backend
        self.timeout = float(timeout)
        self.start_timeout = float(start_timeout) if start_timeout is not None else max(60.0, self.timeout)
        cores = os.cpu_count() or 1
        self.threads = threads if threads is not None else max(1, cores // world_size)
        self.grace = float(grace)
        self.hang_timeout = float(hang_timeout)
        #: The process group's own timeout for one collective: longer than any run or hang limit, so
        #: the parent names a hung rank before a healthy one, tired of waiting, raises and is blamed.
        self.collective_timeout = max(self.timeout, self.hang_timeout) + 60.0
        self.restarts = 0
        self._procs: list = []
        self._conns: list = []
        self._lifelines: list = []
        self._board = None
        self._tmpdir: str | None = None
        self._closed = False
        _LIVE_POOLS.add(self)
        self._start()

    # ------------------------------------------------------------------ life cycle

    @property
    def pids(self) -> list[int]:
        """Process ids of the current ranks (empty while the pool is down)."""
        return [p.pid for p in self._procs]

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def _start(self) -> None:
        ctx = _context()
        self._tmpdir = tempfile.mkdtemp(prefix="simdist-")
        store_path = os.path.join(self._tmpdir, "store")
        self._board = ctx.RawArray("c", self.world_size * _worker.STATUS_WIDTH)
        # multiprocessing's own folder of this process (the fork server's socket): removed at a normal
        # exit; after a kill, the ranks remove it with the run's folder
        leftovers = (mp_util.get_temp_dir(),) if ctx.get_start_method() == "forkserver" else ()
        procs, conns, lifelines = [], [], []
        for rank in range(self.world_size):
            parent_end, child_end = ctx.Pipe(duplex=True)
            life_r, life_w = ctx.Pipe(duplex=False)  # only this process holds life_w: see _worker
            proc = ctx.Process(
                target=_worker.main,
                args=(rank, self.world_size, self.backend, store_path, self.collective_timeout, child_end, self._board,
                      self.threads, life_r, leftovers),
                name=f"simdist-rank{rank}",
                daemon=True,
            )  # fmt: skip
            proc.start()
            child_end.close()
            life_r.close()
            procs.append(proc)
            conns.append(parent_end)
            lifelines.append(life_w)
        self._procs, self._conns, self._lifelines = procs, conns, lifelines
        deadline = time.monotonic() + self.start_timeout
        waiting = set(range(self.world_size))
        problems = []
        died = False  # a rank died before it reported: usually an unguarded script (see GUARD_HINT)
        while waiting and not problems:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            handles = {conns[r]: r for r in waiting} | {procs[r].sentinel: r for r in waiting}
            for handle in connection.wait(list(handles), timeout=left):
                rank = handles[handle]
                if rank not in waiting:
                    continue
                if handle is procs[rank].sentinel and not conns[rank].poll():
                    procs[rank].join(0.5)
                    problems.append(f"rank {rank} {_describe_exit(procs[rank].exitcode)} while starting")
                    died = True
                    waiting.discard(rank)
                    continue
                try:
                    status, value, text = pickle.loads(conns[rank].recv_bytes())
                except (EOFError, OSError):
                    problems.append(f"rank {rank} closed its pipe while starting")
                    died = True
                    waiting.discard(rank)
                    continue
                waiting.discard(rank)
                if status != "ready":
                    problems.append(f"rank {rank} could not join the {self.backend} process group:\n{text}")
        if waiting and not problems:
            problems.append(f"ranks {sorted(waiting)} did not join the {self.backend} process group within {self.start_timeout:g} s")
        if problems:
            self._teardown()
            if died and _main_is_a_file():
                problems.append(GUARD_HINT)
            raise LaunchError("\n".join(problems))

    def _teardown(self) -> None:
        """Stop every rank now (no goodbye): terminate, then kill whatever is left; remove the store."""
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + 2.0
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
        for proc in self._procs:  # what the ranks started (each rank leads its own process group)
            _kill_group(proc.pid)
        for conn in self._conns + self._lifelines:
            conn.close()
        self._procs, self._conns, self._lifelines = [], [], []
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def close(self) -> None:
        """Ask every rank to leave the group and exit; kill any that do not within a few seconds."""
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            try:
                conn.send_bytes(b"stop")
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 5.0
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        self._teardown()
        _LIVE_POOLS.discard(self)

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort; close() is the contract
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("up" if self._procs else "down (restarts on next run)")
        return f"Pool(world_size={self.world_size}, backend={self.backend!r}, {state}, restarts={self.restarts})"

    # ------------------------------------------------------------------ running

    def run(self, fn, *args, timeout: float | None = None, hang_timeout: float | None = None) -> list:
        """``[fn(rank, world_size, *args) for every rank]``, computed by the ranks in parallel.

        ``timeout`` and ``hang_timeout`` override the pool's for this run (see ``Pool``; a
        ``hang_timeout`` beyond ``collective_timeout`` lets the process group time out first).

        Raises:
            TypeError: ``fn`` or ``args`` cannot be pickled (define ``fn`` at module level).
            RankError: a rank raised, died, kept the others waiting for ``hang_timeout`` seconds,
                or the run did not finish within ``timeout`` seconds.
        """
        if self._closed:
            raise RuntimeError("this Pool is closed; create a new one")
        timeout = self.timeout if timeout is None else _seconds("timeout", timeout)
        hang_timeout = self.hang_timeout if hang_timeout is None else _seconds("hang_timeout", hang_timeout)
        try:
            message = pickle.dumps((fn, args))
        except Exception as err:
            raise TypeError(
                f"fn and its args must be picklable (fn a function defined at module level, not a lambda or a "
                f"notebook cell): {type(err).__name__}: {err}"
            ) from err
        if not self._procs:
            self.restarts += 1
            self._start()
        try:
            return self._run(fn, message, timeout, hang_timeout)
        except RankError:
            raise
        except BaseException:
            # Interrupted (Ctrl-C) or broken while the ranks were busy: their answers would arrive
            # during the next run and be taken for its own. Stop them; the next run starts fresh ones.
            self._teardown()
            raise

    def _progress(self) -> tuple:
        return tuple(_worker.read_progress(self._board, r) for r in range(self.world_size))

    def _hung(self, pending: set) -> bool:
        """After ``hang_timeout`` without progress anywhere: does some rank wait in a collective? Then
        it waits for a rank that is busy by itself (the culprit), or all pending ranks are stuck in
        collectives. Ranks that are all busy computing, or that have answered while the others
        compute, are not a hang (``timeout`` bounds those)."""
        statuses = {r: _worker.read_status(self._board, r) for r in pending}
        stacks = self._stacks(sorted(pending))
        return any(statuses[r].startswith("in ") or stacks.get(r, "").startswith("waiting") for r in pending)

    def _run(self, fn, message: bytes, timeout: float, hang_timeout: float | None = None) -> list:
        W = self.world_size
        for rank, conn in enumerate(self._conns):
            try:
                conn.send_bytes(message)
            except (BrokenPipeError, OSError):
                pass  # the rank is dead; its sentinel reports it below
        results: list = [None] * W
        errors: dict[int, tuple] = {}
        deaths: dict[int, int | None] = {}
        pending = set(range(W))
        deadline = time.monotonic() + timeout
        stop_at = deadline
        progress, last_change = self._progress(), time.monotonic()
        hang_timeout = self.hang_timeout if hang_timeout is None else hang_timeout
        while pending:
            now = time.monotonic()
            left = stop_at - now
            if left <= 0:
                break
            now_progress = self._progress()
            if now_progress != progress:
                progress, last_change = now_progress, now
            elif not (errors or deaths) and now - last_change > hang_timeout:
                if self._hung(pending):
                    raise self._failure(fn, timeout, errors, deaths, pending, waited=now - last_change)
                last_change = now  # every pending rank is busy computing: look again later
            handles = {self._conns[r]: r for r in pending} | {self._procs[r].sentinel: r for r in pending}
            for handle in connection.wait(list(handles), timeout=min(left, 0.25)):
                rank = handles[handle]
                if rank not in pending:
                    continue
                conn, proc = self._conns[rank], self._procs[rank]
                if handle is proc.sentinel and not conn.poll():
                    proc.join(0.5)
                    deaths[rank] = proc.exitcode
                    pending.discard(rank)
                    continue
                try:
                    status, value, text = pickle.loads(conn.recv_bytes())
                except (EOFError, OSError):
                    proc.join(0.5)
                    deaths[rank] = proc.exitcode
                    pending.discard(rank)
                    continue
                except Exception as err:  # a result that cannot be unpickled here
                    status, value, text = "error", err, f"could not unpickle the result of rank {rank}: {err!r}"
                pending.discard(rank)
                last_change = time.monotonic()
                if status == "ok":
                    results[rank] = value
                else:
                    errors[rank] = (value, text, time.monotonic())
            if (errors or deaths) and pending:
                stop_at = min(deadline, stop_at, time.monotonic() + self.grace)
        if not (errors or deaths or pending):
            return results
        raise self._failure(fn, timeout, errors, deaths, pending)

    def _stacks(self, ranks) -> dict:
        """Ask the given (live) ranks for their Python stacks (faulthandler on SIGUSR1); one line each."""
        if not hasattr(signal, "SIGUSR1") or not self._tmpdir:
            return {}
        asked = []
        for r in ranks:
            proc = self._procs[r]
            if proc.is_alive():
                try:
                    path = _worker.stack_path(self._tmpdir, r)
                    with open(path, "w"):
                        pass
                    os.kill(proc.pid, signal.SIGUSR1)
                    asked.append(r)
                except OSError:
                    pass
        out = {}
        deadline = time.monotonic() + 1.0
        for r in asked:
            path = _worker.stack_path(self._tmpdir, r)
            text = ""
            while time.monotonic() < deadline:
                try:
                    with open(path) as fh:
                        text = fh.read()
                except OSError:
                    text = ""
                if "File " in text:
                    time.sleep(0.05)  # let the dump finish
                    with open(path) as fh:
                        text = fh.read()
                    break
                time.sleep(0.02)
            out[r] = _worker.where(text)
        return out

    def _failure(self, fn, timeout, errors, deaths, pending, waited: float | None = None) -> RankError:
        W = self.world_size
        statuses = {r: _worker.read_status(self._board, r) for r in range(W)}
        stacks = self._stacks(sorted(pending))
        pids = self.pids
        name = getattr(fn, "__qualname__", repr(fn))
        lines = []
        if deaths:
            rank = min(deaths)
            for r in sorted(deaths):
                lines.append(f"rank {r} {_describe_exit(deaths[r])} while running {name} (it was: {statuses[r]})")
        elif errors:
            rank = min(errors, key=lambda r: errors[r][2])  # the first to fail is the likely cause
            exc = errors[rank][0]
            lines.append(f"rank {rank} raised {type(exc).__name__} in {name}: {exc}")
        else:
            # Nobody answered: the hung rank is the one busy outside any communication.
            busy = [r for r in sorted(pending) if not statuses[r].startswith("in ") and not stacks.get(r, "").startswith("waiting")]
            progress = self._progress()
            # without a busy rank (all stuck in collectives), the one that has done the least is behind
            rank = busy[0] if busy else min(sorted(pending), key=lambda r: progress[r])
            when = (f"for {waited:.0f} s without progress while the others waited (hang_timeout)" if waited is not None
                    else f"within {timeout:g} s")  # fmt: skip
            lines.append(
                f"no answer from rank{'s' if len(pending) > 1 else ''} {sorted(pending)} {when} "
                f"running {name}; rank {rank} is the likely culprit (hung outside any communication)"
                if busy
                else f"no answer from ranks {sorted(pending)} {when} running {name}; rank {rank} is the likely "
                f"culprit (the least progress; every pending rank waits in a collective)"
            )
        others = [r for r in sorted(errors) if r != rank]
        for r in others:
            lines.append(f"rank {r} raised {type(errors[r][0]).__name__}: {str(errors[r][0]).splitlines()[0] if str(errors[r][0]) else ''}")
        if pending and (errors or deaths):
            lines.append(f"ranks {sorted(pending)} gave no answer within {self.grace:g} s after that")
        lines.append("status of every rank at the end: " + "; ".join(f"rank {r}: {statuses[r] or '?'}" for r in range(W)))
        for r in sorted(stacks):
            lines.append(f"  rank {r}: {stacks[r]}")
        if rank in errors:
            lines.append(f"\ntraceback on rank {rank}:\n{errors[rank][1].rstrip()}")

        # Keep the ranks only if every one of them raised (the error was collective, like bad input
        # detected on every rank) and the group still answers a collective; otherwise replace them.
        keep = len(errors) == W and not deaths and not pending
        if keep:
            try:
                self._run_quietly(_health_check, min(10.0, self.timeout))
            except Exception:
                keep = False
        if not keep:
            self._teardown()
            lines.append("the ranks were stopped; the pool starts fresh ones on its next run")
        err = RankError(
            "\n".join(lines),
            rank=rank,
            exceptions={r: e[0] for r, e in errors.items()},
            tracebacks={r: e[1] for r, e in errors.items()},
            exit_codes=deaths,
            hung=sorted(pending),
            pids=pids,
        )
        if rank in errors:
            err.__cause__ = errors[rank][0]
        return err

    def _run_quietly(self, fn, timeout):
        message = pickle.dumps((fn, ()))
        for conn in self._conns:
            conn.send_bytes(message)
        deadline = time.monotonic() + timeout
        for rank, conn in enumerate(self._conns):
            left = deadline - time.monotonic()
            if left <= 0 or not conn.poll(left):
                raise TimeoutError(f"rank {rank} failed the health check")
            status, _, _ = pickle.loads(conn.recv_bytes())
            if status != "ok":
                raise RuntimeError(f"rank {rank} failed the health check")


def _check_world_size(world_size) -> int:
    if isinstance(world_size, bool) or not isinstance(world_size, int):
        raise TypeError(f"world_size must be a positive integer, got {world_size!r}")
    if not 1 <= world_size <= MAX_WORLD_SIZE:
        raise ValueError(
            f"world_size must lie in 1..{MAX_WORLD_SIZE} (one process per rank on this machine), got {world_size}"
        )
    return world_size


def _seconds(name: str, value, *, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not (value >= 0 if zero_ok else value > 0) or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a {'non-negative' if zero_ok else 'positive'} finite number of seconds, got {value!r}")
    return float(value)


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group ``pgid`` (a rank's: the rank leads it), if anything is left in it."""
    if not hasattr(os, "killpg") or pgid is None or pgid <= 1 or pgid == os.getpgrp():
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def launch(fn, world_size: int, *, backend: str = "gloo", args: tuple = (), timeout: float = 120.0,
           hang_timeout: float = 30.0) -> list:  # fmt: skip
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` fresh ranks; return the results in rank order.

    Args:
        fn: a picklable (module-level) function ``fn(rank, world_size, *args)``; it may use
            ``torch.distributed`` freely (the default group is initialised) and must return CPU
            tensors or picklable objects (tensors are moved to the CPU for it).
        world_size: number of ranks ``W``.
        backend: ``"gloo"`` (CPU processes) or ``"nccl"`` (rank ``r`` on ``cuda:r``).
        args: extra positional arguments, pickled to every rank.
        timeout: seconds the run may take (a rank still busy past it is named and killed). Start-up
            has its own limit, ``max(60, timeout)``.
        hang_timeout: seconds the ranks may make no progress while some wait in a collective before
            the busy rank is named (30 s by default; see ``Pool``).

    Raises:
        RankError: a rank raised (its traceback is in the message), died, or hung.
        LaunchError: the ranks could not start or join the group (from a script: call ``launch``
            under ``if __name__ == "__main__":``, see the module docstring).

    No rank outlives the call: when it returns or raises, every rank process (and whatever it
    started) has exited and been reaped, and the rendezvous directory is removed. Two helper
    processes of ``multiprocessing`` do stay, idle, as children of this process until it exits: the
    fork server (so that the next ``launch`` or ``Pool`` starts its ranks in a tenth of a second) and
    the resource tracker. If this process is killed, the ranks notice, remove the directory and kill
    themselves, and the two helpers exit after them.
    """
    _check_world_size(world_size)
    with Pool(world_size, backend=backend, timeout=timeout, start_timeout=max(timeout, 60.0), hang_timeout=hang_timeout) as pool:
        return pool.run(fn, *args, timeout=timeout)


_SHARED: dict = {}


def shared_pool(world_size: int, *, backend: str = "gloo", timeout: float = 120.0, hang_timeout: float = 30.0) -> Pool:
    """One long-lived ``Pool`` per ``(world_size, backend)`` for this process (closed at exit).

    What a test session or a notebook wants: the first call starts the ranks, later calls reuse them
    (a pool broken by a failure restarts its ranks by itself on the next ``run``).
    """
    key = (world_size, backend)
    pool = _SHARED.get(key)
    if pool is None or pool._closed:
        pool = _SHARED[key] = Pool(world_size, backend=backend, timeout=timeout, hang_timeout=hang_timeout)
    return pool
