"""simdist's runtime and accounting: ranks start, answer in order, fail loudly and leave nothing behind.

The functions the ranks run are defined at module level (they are pickled by reference). Each test
that breaks a pool uses its own small pool, so the shared pools of the algorithm suites stay warm.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import simdist
from simdist import accounting, comm

# --------------------------------------------------------------------------------------------
# Functions the ranks run
# --------------------------------------------------------------------------------------------


def whoami(rank, world_size, payload):
    x = torch.full((2,), float(rank), requires_grad=True) * 1.0
    return {"rank": rank, "W": world_size, "dist_rank": dist.get_rank(), "dist_W": dist.get_world_size(), "x": x, "payload": payload}


def pid(rank, world_size):
    return os.getpid()


def raise_on(rank, world_size, bad):
    if rank == bad:
        raise ValueError(f"boom from rank {rank}")
    x = torch.ones(1)
    dist.all_reduce(x)  # the others wait for the rank that raised
    return x


def raise_everywhere(rank, world_size):
    raise ValueError(f"bad input seen by rank {rank}")


def exit_on(rank, world_size, bad, code):
    if rank == bad:
        if code < 0:
            os.kill(os.getpid(), -code)
        os._exit(code)
    x = torch.ones(1)
    dist.all_reduce(x)
    return x


def hang_on(rank, world_size, bad):
    if rank == bad:
        time.sleep(3600)
    x = torch.ones(1)
    dist.all_reduce(x)
    return x


def sleep_for(rank, world_size, seconds):
    time.sleep(seconds)


def start_a_subprocess(rank, world_size):
    return subprocess.Popen(["sleep", "300"]).pid


def ring_pass(rank, world_size, hops_size):
    """A token goes once around the ring (W-1 sequential hops), then one AllGather."""
    x = torch.zeros(hops_size, dtype=torch.float64)
    if rank > 0:
        comm.irecv(x, rank - 1, label="token").wait()
    x += rank
    if rank < world_size - 1:
        comm.isend(x, rank + 1, label="token").wait()
    with accounting.span("compute", "work"):
        y = x * 2
    comm.all_gather(y, label="all")
    return accounting.snapshot()


def independent_sends(rank, world_size):
    """Every rank sends to its right neighbour at once: one step however many ranks."""
    x = torch.full((3,), float(rank), dtype=torch.float32)
    buf = torch.zeros(3, dtype=torch.float32)
    sent, got = comm.exchange(x, (rank + 1) % world_size, buf, (rank - 1) % world_size, label="x")
    sent.wait()
    got.wait()
    return accounting.snapshot(), buf


def gathers(rank, world_size, n):
    for i in range(n):
        comm.all_gather(torch.ones(4), label=f"g{i}")
    return accounting.snapshot()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def alive(pid_: int) -> bool:
    """Whether a process with this id exists and is not a zombie (reads /proc; no psutil needed)."""
    try:
        with open(f"/proc/{pid_}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid_, 0)
            return True
        except OSError:
            return False


def assert_all_gone(pids, within=5.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], "rank processes outlived the failure"


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def test_launch_returns_results_in_rank_order_and_leaves_no_process():
    out = simdist.launch(whoami, 3, args=("hello",), timeout=60)
    assert [o["rank"] for o in out] == [0, 1, 2]
    assert all(o["W"] == o["dist_W"] == 3 and o["dist_rank"] == o["rank"] for o in out)
    assert all(o["payload"] == "hello" for o in out)
    for o in out:  # tensors come back detached, on the CPU
        assert o["x"].device.type == "cpu" and not o["x"].requires_grad
        assert torch.equal(o["x"], torch.full((2,), float(o["rank"])))
    pids = simdist.launch(pid, 2, timeout=60)
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert_all_gone(pids)


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")
def test_a_subprocess_a_rank_started_goes_with_the_rank():
    """Each rank leads its own process group, and teardown kills the group: nothing a rank started survives."""
    children = simdist.launch(start_a_subprocess, 2, timeout=60)
    assert_all_gone(children)
    with simdist.Pool(2, timeout=30) as pool:
        children = pool.run(start_a_subprocess)
        assert all(alive(p) for p in children)  # alive while the pool is
    assert_all_gone(children)


def test_pool_reuses_its_ranks():
    pool = simdist.shared_pool(2)
    first = pool.run(pid)
    assert pool.run(pid) == first
    assert simdist.shared_pool(2) is pool


def test_bad_arguments():
    with pytest.raises(ValueError, match="world_size"):
        simdist.Pool(0)
    with pytest.raises(ValueError, match="backend"):
        simdist.Pool(1, backend="mpi")
    if torch.cuda.device_count() < 64:
        with pytest.raises(ValueError, match="GPU"):
            simdist.Pool(64, backend="nccl")
    pool = simdist.shared_pool(2)
    with pytest.raises(TypeError, match="picklable"):
        pool.run(lambda rank, W: rank)
    assert pool.run(pid) == pool.pids  # an unpicklable function does not hurt the pool


# --------------------------------------------------------------------------------------------
# Failures: named, bounded in time, nothing left running
# --------------------------------------------------------------------------------------------


def test_a_raising_rank_is_named_with_its_traceback():
    with simdist.Pool(3, timeout=30, grace=1.0) as pool:
        pids = pool.pids
        t0 = time.monotonic()
        with pytest.raises(simdist.RankError) as info:
            pool.run(raise_on, 1)
        assert time.monotonic() - t0 < 10
        err = info.value
        assert err.rank == 1
        assert isinstance(err.exceptions[1], ValueError)
        assert isinstance(err.__cause__, ValueError)
        assert "rank 1 raised ValueError" in str(err) and "boom from rank 1" in str(err)
        assert "raise_on" in err.tracebacks[1] and "raise_on" in str(err)  # the remote traceback
        assert "waiting in torch.distributed" in str(err)  # where the others were stuck
        assert_all_gone(pids)  # the others were blocked in a collective: the ranks are replaced
        assert pool.run(pid) != pids and pool.restarts == 1


def test_an_error_on_every_rank_keeps_the_pool():
    pool = simdist.shared_pool(2)
    before = pool.pids
    restarts = pool.restarts
    with pytest.raises(simdist.RankError) as info:
        pool.run(raise_everywhere)
    assert sorted(info.value.exceptions) == [0, 1]
    assert all(isinstance(e, ValueError) for e in info.value.exceptions.values())
    assert pool.pids == before and pool.restarts == restarts and pool.run(pid) == before


@pytest.mark.parametrize("code", [3, -signal.SIGKILL], ids=["os._exit(3)", "SIGKILL"])
def test_a_dying_rank_is_named(code):
    with simdist.Pool(3, timeout=30, grace=1.0) as pool:
        pids = pool.pids
        t0 = time.monotonic()
        with pytest.raises(simdist.RankError) as info:
            pool.run(exit_on, 2, code)
        assert time.monotonic() - t0 < 10
        assert info.value.rank == 2 and info.value.exit_codes == {2: code}
        assert "rank 2 exited with code 3" in str(info.value) if code > 0 else "rank 2 was killed by signal 9" in str(info.value)
        assert_all_gone(pids)
        assert len(pool.run(pid)) == 3 and pool.restarts == 1  # a fresh set of ranks


def test_a_hung_rank_is_named_after_the_timeout():
    with simdist.Pool(3, timeout=30) as pool:
        pids = pool.pids
        t0 = time.monotonic()
        with pytest.raises(simdist.RankError) as info:
            pool.run(hang_on, 1, timeout=2)
        elapsed = time.monotonic() - t0
        assert 2 <= elapsed < 10
        err = info.value
        assert err.rank == 1 and sorted(err.hung) == [0, 1, 2]
        assert "rank 1 is the likely culprit" in str(err)
        assert "rank 1: busy outside communication" in str(err) and "hang_on" in str(err)
        assert_all_gone(pids)


def test_an_interrupted_run_stops_the_ranks():
    """Ctrl-C while the ranks work: their late answers must not be taken for the next run's."""
    with simdist.Pool(2, timeout=30) as pool:
        pids = pool.pids

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        try:
            with pytest.raises(KeyboardInterrupt):
                pool.run(sleep_for, 30)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert_all_gone(pids)
        assert pool.run(pid) != pids and pool.restarts == 1


UNGUARDED = textwrap.dedent(
    """
    import simdist

    def fn(rank, world_size):
        return rank

    simdist.launch(fn, 2, timeout=30)  # no `if __name__ == "__main__":` guard
    """
)


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (field 6 of /proc/PID/stat), however they were reparented."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_unguarded_script_gets_the_guard_hint(tmp_path):
    """A script calling launch at top level: every rank re-imports it and dies; the error says why."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(simdist.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert time.monotonic() - t0 < 60
    assert proc.returncode != 0
    assert "simdist.runtime.LaunchError: rank " in err, err[-2000:]
    message = err[err.rindex("simdist.runtime.LaunchError: rank ") :]  # what died, then the hint
    assert "while starting" in message and "put the call under `if __name__ == '__main__':`" in message, message
    deadline = time.monotonic() + 5.0  # the script's ranks, fork server and resource tracker: all gone
    while session_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session_members(proc.pid) == [], "processes of the unguarded script outlived it"


# --------------------------------------------------------------------------------------------
# Accounting
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("W", [1, 2, 3, 4])
def test_accounting_counts_messages_bytes_and_sequential_steps(W):
    records = simdist.shared_pool(W).run(ring_pass, 5)
    rows = accounting.summarize(records)
    for row in rows:
        r = row["rank"]
        assert row["p2p_sent"] == (r < W - 1) and row["p2p_recv"] == (r > 0)
        assert row["collectives"] == 1
        assert row["bytes_sent"] == 40 * (r < W - 1) + (W - 1) * 40  # 5 float64 each
        assert row["bytes_recv"] == 40 * (r > 0) + (W - 1) * 40
        assert row["compute_s"] > 0
    # W-1 hops one after another, then the gather
    assert accounting.critical_path(records) == (W - 1) + 1
    # every compute span and every wait has start <= end, on one clock
    for rec in records:
        assert all(s.t0 <= s.t1 for s in rec.spans)
        assert all(e.t_post <= e.t_wait <= e.t_end for e in rec.events)


@pytest.mark.parametrize("W", [2, 4])
def test_concurrent_messages_are_one_step_and_gathers_add_up(W):
    out = simdist.shared_pool(W).run(independent_sends)
    records = [o[0] for o in out]
    assert accounting.critical_path(records) == 1
    assert [o[1][0].item() for o in out] == [float((r - 1) % W) for r in range(W)]
    records = simdist.shared_pool(W).run(gathers, 3)
    assert accounting.critical_path(records) == 3
    assert all(row["collectives"] == 3 for row in accounting.summarize(records))


def test_timeline_and_table_render():
    import matplotlib

    matplotlib.use("Agg")
    records = simdist.shared_pool(3).run(ring_pass, 4)
    ax = accounting.plot_timeline(records, title="ring pass")
    assert len(ax.get_yticks()) == 3
    text = accounting.table(records)
    assert "critical path): 3" in text and text.count("\n| ") == 3  # one row per rank
