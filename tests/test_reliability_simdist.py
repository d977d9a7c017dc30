"""Reliability of the simdist schemes and runtime (issue "Reliability").

* Poisoned tokens: a NaN in token t's k leaves every earlier row of LASP-1 and LASP-2 bit for bit
  unchanged (CPU ranks, the split path).
* Every rank checks what it was told: lengths= that disagree with the chunks the ranks hold fail on
  every rank, naming the rank that declared them; lengths= on one rank only no longer skips the
  handshake there (which aborted the others).
* Options checked by type: ``group=`` must be a ProcessGroup or None; decays of strings name
  ``decay``; the world size is bounded.
* No orphans: killing the caller of ``launch`` (SIGKILL or SIGTERM) leaves no process of the run
  (ranks, a subprocess a rank started, the fork server, the resource tracker) and no temporary folder.
* The right rank is blamed: one rank hung outside communication while the others wait in a
  collective is named, by default within 30 s (here with ``hang_timeout=3``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import simdist
from simdist import lasp1, lasp2, lasp2h

SCHEMES = {"lasp1": lasp1.attention, "lasp2": lasp2.attention, "lasp2h": lasp2h.attention}


def pool(W: int = 3):
    return simdist.shared_pool(W, timeout=120)


def _inputs(C=4, T=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = T or C
    return tuple(torch.randn(1, 2, T, 3, generator=g, dtype=torch.float64) for _ in range(3))


# --------------------------------------------------------------------------------------------
# Poisoned tokens through the schemes
# --------------------------------------------------------------------------------------------


def poisoned_run(rank, world_size, name, t, value):
    """Each rank takes its chunk of one sequence (4 tokens each); token t's k is set to ``value`` (or not)."""
    q, k, v = _inputs(T=4 * world_size)
    if t is not None:
        k[..., t, :] = value
    sl = slice(4 * rank, 4 * rank + 4)
    kwargs = {"decay": [0.9, 0.5]} if name != "lasp2h" else {}
    return SCHEMES[name](q[..., sl, :].contiguous(), k[..., sl, :].contiguous(), v[..., sl, :].contiguous(), **kwargs)


@pytest.mark.parametrize("name", ["lasp1", "lasp2"])
def test_a_poisoned_key_changes_no_earlier_row_of_the_schemes(name):
    p = pool(3)
    t = 9  # rank 2's second token
    clean = torch.cat(p.run(poisoned_run, name, None, 0.0), dim=2)
    for value in (float("nan"), float("inf")):
        bad = torch.cat(p.run(poisoned_run, name, t, value), dim=2)
        assert torch.equal(bad[..., :t, :], clean[..., :t, :]), f"{name}: k[{t}] = {value} reached an earlier row"


# --------------------------------------------------------------------------------------------
# Every rank checks what it was told
# --------------------------------------------------------------------------------------------


def lengths_run(rank, world_size, name, told):
    """Every rank holds 4 tokens; ``told(rank)`` is what this rank is told the lengths are."""
    q, k, v = _inputs()
    kwargs = {"lengths": told[rank]} if told[rank] is not None else {}
    return SCHEMES[name](q, k, v, **kwargs)


@pytest.mark.parametrize("name", ["lasp1", "lasp2", "lasp2h"])
def test_wrong_lengths_on_one_rank_fail_on_every_rank_naming_it(name):
    p = pool(3)
    # rank 1 is told its neighbours hold 3 and 5 tokens: its own entry is right, the others' are not
    told = [None, [3, 4, 5], None]
    with pytest.raises(simdist.RankError) as info:
        p.run(lengths_run, name, told, timeout=60)
    errors = info.value.exceptions
    assert sorted(errors) == [0, 1, 2], "every rank must raise"
    for e in errors.values():
        assert isinstance(e, ValueError) and "rank [1] passed lengths=" in str(e) and "[4, 4, 4]" in str(e), str(e)


@pytest.mark.parametrize("name", ["lasp2", "lasp2h"])
def test_lengths_on_one_rank_only_is_checked_not_skipped(name):
    """Right lengths on rank 0 alone: every rank still meets in the handshake, and the result is right."""
    p = pool(3)
    plain = p.run(lengths_run, name, [None, None, None])
    told = p.run(lengths_run, name, [[4, 4, 4], None, None])
    assert all(torch.equal(a, b) for a, b in zip(plain, told))


def wrong_own_length(rank, world_size, name):
    q, k, v = _inputs()
    return SCHEMES[name](q, k, v, lengths=[4, 4, 4] if rank != 2 else [4, 4, 3])


def test_a_rank_told_a_wrong_length_for_itself_is_named():
    p = pool(3)
    with pytest.raises(simdist.RankError) as info:
        p.run(wrong_own_length, "lasp2", timeout=60)
    errors = info.value.exceptions
    assert "lengths[2] = 3 but this rank's chunk has 4 tokens" in str(errors[2])
    assert all("rank [2] rejected its input" in str(errors[r]) for r in (0, 1))


# --------------------------------------------------------------------------------------------
# Options checked by type
# --------------------------------------------------------------------------------------------


def bad_option(rank, world_size, name, kwargs):
    q, k, v = _inputs()
    return SCHEMES[name](q, k, v, **kwargs)


@pytest.mark.parametrize(
    "name, kwargs, argument",
    [
        ("lasp2", {"group": "world"}, "group"),
        ("lasp1", {"group": 0}, "group"),
        ("lasp2", {"decay": ["a", "b"]}, "decay"),
        ("lasp2", {"decay": "0.9"}, "decay"),
        ("lasp1", {"causal": "yes"}, "causal"),
        ("lasp2h", {"lengths": "4,4,4"}, "lengths"),
        ("lasp2", {"lengths": [4.0, 4.0, 4.0]}, "lengths"),
        ("lasp2h", {"scale": "1"}, "scale"),
    ],
)
def test_bad_options_name_their_argument_on_every_rank(name, kwargs, argument):
    p = pool(3)
    with pytest.raises(simdist.RankError) as info:
        p.run(bad_option, name, kwargs, timeout=60)
    errors = info.value.exceptions
    assert sorted(errors) == [0, 1, 2]
    for e in errors.values():
        assert isinstance(e, (TypeError, ValueError)) and re.search(rf"\b{argument}\b", str(e)), str(e)


@pytest.mark.parametrize("W", [10**6, 10**9, 1 << 40])
def test_launch_bounds_the_world_size(W):
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="world_size"):
        simdist.launch(bad_option, W)
    assert time.monotonic() - t0 < 1.0  # refused before anything is started or allocated


@pytest.mark.parametrize("kwargs", [{"timeout": "60"}, {"hang_timeout": 0}, {"timeout": True}, {"grace": -1}])
def test_pool_options_are_checked(kwargs):
    with pytest.raises((TypeError, ValueError), match=next(iter(kwargs))):
        simdist.Pool(2, **kwargs)


# --------------------------------------------------------------------------------------------
# No orphans
# --------------------------------------------------------------------------------------------

CALLER = textwrap.dedent(
    """
    import subprocess, sys, time
    import simdist

    def hang(rank, world_size, marker):
        subprocess.Popen(["sleep", "300"])  # a subprocess of the rank: it must go too
        open(f"{marker}.{rank}", "w").close()
        time.sleep(300)

    if __name__ == "__main__":
        simdist.launch(hang, 2, args=(sys.argv[1],), timeout=200)
    """
)


def _session(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[1] == str(sid) and not line.split()[2].startswith("Z")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process table with ps")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_the_caller_leaves_no_process_and_no_folder(tmp_path, sig):
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    marker = str(tmp_path / "ready")
    private = tmp_path / "tmp"  # the run's own TMPDIR: other runs on this machine do not show up in it
    private.mkdir()
    env = {**os.environ, "TMPDIR": str(private),
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(script), marker], start_new_session=True, env=env, cwd=tmp_path)
    left = []
    try:
        deadline = time.monotonic() + 90
        while not all(os.path.exists(f"{marker}.{r}") for r in range(2)):
            assert proc.poll() is None and time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.1)
        os.kill(proc.pid, sig)
        proc.wait(10)
        time.sleep(5)
        left = _session(proc.pid)
        assert not left, "processes of the run outlived its caller:\n" + "\n".join(left)
        created = os.listdir(private)  # the run's simdist-* folder and multiprocessing's pymp-* folder
        assert not created, f"temporary folders outlived the caller: {created}"
    finally:
        for line in _session(proc.pid):
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except OSError:
                pass


# --------------------------------------------------------------------------------------------
# The right rank is blamed
# --------------------------------------------------------------------------------------------


def hang_outside(rank, world_size, bad):
    import torch.distributed as dist

    if rank == bad:
        time.sleep(3600)
    x = torch.ones(1)
    dist.all_reduce(x)
    return x


@pytest.mark.parametrize("bad", [0, 2])
def test_a_hung_rank_is_named_by_the_hang_timeout(bad):
    """The run's timeout is long (120 s); the peers waiting in a collective for 3 s is what names the hang."""
    with simdist.Pool(3, timeout=120, hang_timeout=3) as p:
        t0 = time.monotonic()
        with pytest.raises(simdist.RankError) as info:
            p.run(hang_outside, bad)
        elapsed = time.monotonic() - t0
        assert elapsed < 15, elapsed
        assert info.value.rank == bad and info.value.hung and bad in info.value.hung
        assert f"rank {bad} is the likely culprit" in str(info.value)


def test_the_default_hang_timeout_is_30_seconds_and_gloo_waits_longer():
    with simdist.Pool(2) as p:
        assert p.hang_timeout == 30.0
        assert p.collective_timeout > max(p.timeout, p.hang_timeout)


def unequal_work(rank, world_size, seconds):
    time.sleep(seconds if rank == 0 else 0.0)  # the others answer at once; nobody waits in a collective
    return rank


def test_a_long_computation_with_nobody_waiting_is_not_a_hang():
    with simdist.Pool(2, timeout=60, hang_timeout=1) as p:
        assert p.run(unequal_work, 3.0) == [0, 1]
