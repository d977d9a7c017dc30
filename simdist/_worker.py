"""The loop each rank runs inside a ``simdist.Pool`` (imported once by the fork server, then forked).

A rank joins the process group, says it is ready, then serves tasks until told to stop: each task
is ``(fn, args)`` pickled by the parent; the rank resets its message accounting, runs
``fn(rank, world_size, *args)``, moves tensors in the result to the CPU, and answers
``("ok", result)`` or ``("error", exception, traceback_text)``. Everything crosses the pipe as plain
``pickle`` bytes (tensors are copied, never shared through file descriptors), so a rank that dies
later cannot invalidate a result the parent already holds.

The rank also writes what it is doing into a small shared status board (``"running"``, or the
collective it waits in) with a counter that grows at every change (its progress), which is how the
parent notices a hang and names the hung rank.

A rank never outlives its caller: it leads its own process group (so a subprocess it starts is
in it), and a watchdog thread waits on a *lifeline*, a pipe whose other end only the caller holds.
When the caller dies, however (SIGKILL included), the pipe reaches end-of-file and the watchdog
removes the run's temporary folder and kills the rank's whole process group. (The ranks are
children of the fork server, not of the caller, so a parent-death signal alone would never fire;
once the ranks are gone, the fork server and the resource tracker see their own pipes close and exit.)
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import pickle
import shutil
import signal
import sys
import threading
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

# Imported here so the fork server loads them once and every rank starts with them warm.
import reference.lightning  # noqa: F401
import reference.linear_attention  # noqa: F401
import reference.softmax_attention  # noqa: F401
from simdist import accounting

#: Environment every rank gets: NVLink SHARP (multicast) off, as the lent machines require.
NCCL_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}

STATUS_WIDTH = 64  # bytes per rank on the status board: an 8-byte progress counter, then the text
_COUNTER = 8


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the parent dies, so no rank outlives its launcher."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def set_status(board, rank: int, text: str) -> None:
    """Write ``text`` as this rank's status and advance its progress counter."""
    if board is None:
        return
    data = text.encode("utf-8", "replace")[: STATUS_WIDTH - _COUNTER - 1]
    start = rank * STATUS_WIDTH
    count = read_progress(board, rank) + 1
    board[start : start + STATUS_WIDTH] = (
        count.to_bytes(_COUNTER, "little") + data + b"\0" * (STATUS_WIDTH - _COUNTER - len(data))
    )


def read_status(board, rank: int) -> str:
    start = rank * STATUS_WIDTH + _COUNTER
    raw = bytes(board[start : (rank + 1) * STATUS_WIDTH])
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def read_progress(board, rank: int) -> int:
    """How many times this rank's status has changed (entering or leaving a collective, a task)."""
    start = rank * STATUS_WIDTH
    return int.from_bytes(bytes(board[start : start + _COUNTER]), "little")


def _own_process_group() -> None:
    """Lead a process group of our own: what this rank starts can then be stopped with it."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass


def _watch_lifeline(lifeline, directories) -> None:
    """When the caller's end of ``lifeline`` closes (the caller died), remove ``directories`` (the
    run's, and the caller's ``multiprocessing`` folder, which only its exit would have removed) and
    kill this rank's process group (this rank and everything it started)."""

    def watch():
        try:
            lifeline.poll(None)  # nothing is ever sent: this returns at end-of-file
        except (OSError, EOFError, ValueError):
            pass
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)
        try:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        finally:
            os._exit(1)

    threading.Thread(target=watch, name="simdist-lifeline", daemon=True).start()


def stack_path(directory: str, rank: int) -> str:
    return os.path.join(directory, f"stack-{rank}.txt")


def where(stack_text: str) -> str:
    """One line from a faulthandler dump: the innermost frame of user code, and whether the rank sits
    inside ``torch.distributed`` (waiting for a peer) or not (busy, or hung, by itself)."""
    frames = [line.strip() for line in stack_text.splitlines() if line.strip().startswith("File ")]
    if not frames:
        return "no stack available"
    in_dist = any("torch/distributed" in f or "simdist/comm.py" in f for f in frames)
    internal = ("torch/", "simdist/comm.py", "simdist/accounting.py", "simdist/_worker.py", "multiprocessing/")
    user = next((f for f in frames if not any(part in f for part in internal)), frames[0])
    user = user.replace("File ", "", 1)
    return ("waiting in torch.distributed, called from " if in_dist else "busy outside communication at ") + user


def to_cpu(obj):
    """Tensors (detached, on the CPU) inside lists, tuples and dicts; everything else unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, list):
        return [to_cpu(x) for x in obj]
    if isinstance(obj, tuple):
        items = [to_cpu(x) for x in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, dict):
        return {key: to_cpu(x) for key, x in obj.items()}
    return obj


def _error_message(exc: BaseException, rank: int):
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        payload = pickle.dumps(exc)
        pickle.loads(payload)
    except Exception:  # an exception that does not survive pickling travels as its text
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    return ("error", exc, text)


def main(rank: int, world_size: int, backend: str, store_path: str, timeout_s: float, conn, board, threads: int,
         lifeline=None, leftovers=()):  # fmt: skip
    """Entry point of one rank (a ``multiprocessing`` target)."""
    _die_with_parent()
    _own_process_group()
    if lifeline is not None:
        _watch_lifeline(lifeline, (os.path.dirname(store_path), *leftovers))
    # Ctrl-C (or a Jupyter kernel's shutdown) interrupts the parent, which stops the ranks itself;
    # a rank interrupted halfway through a collective would only leave its peers hanging.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for key, value in NCCL_ENV.items():
        os.environ[key] = value
    if os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if threads > 0:
        torch.set_num_threads(threads)
    accounting.set_status_hook(lambda text: set_status(board, rank, text))
    if hasattr(signal, "SIGUSR1"):  # the parent asks for our Python stack before it kills a hung run
        stack_file = open(stack_path(os.path.dirname(store_path), rank), "w+")
        faulthandler.register(signal.SIGUSR1, file=stack_file, all_threads=True)
    try:
        set_status(board, rank, "joining the process group")
        store = dist.FileStore(store_path, world_size)
        kwargs = dict(store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
        if backend == "nccl":
            torch.cuda.set_device(rank)
            kwargs["device_id"] = torch.device("cuda", rank)
        dist.init_process_group(backend, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then the rank exits
        conn.send_bytes(pickle.dumps(_error_message(exc, rank)))
        return
    conn.send_bytes(pickle.dumps(("ready", os.getpid(), None)))
    set_status(board, rank, "idle")
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):  # the parent went away
            break
        if message == b"stop":
            break
        try:
            fn, args = pickle.loads(message)
            accounting.reset()
            set_status(board, rank, "running")
            result = to_cpu(fn(rank, world_size, *args))
            reply = ("ok", result, None)
            payload = pickle.dumps(reply)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
            payload = pickle.dumps(_error_message(exc, rank))
        set_status(board, rank, "idle")
        try:
            conn.send_bytes(payload)
        except (BrokenPipeError, OSError):
            break
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass
