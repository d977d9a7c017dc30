"""Past one machine: the schemes on ranks that ``torchrun`` started (``env://`` rendezvous, the
default group), on the CPU with gloo — the path a multi-node job takes, minus the network.

``torchrun --standalone --nproc-per-node 3 -m simdist.torchrun`` runs LASP-1, LASP-2 (causal and
bidirectional), LASP-2H and Ring Attention on its three ranks, forward and backward, in float64, and
compares every output and gradient with one device (``simdist.verify``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from simdist import torchrun

ROOT = Path(__file__).resolve().parents[1]


def _torchrun() -> list[str]:
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def test_three_torchrun_ranks_equal_one_device():
    env = {name: value for name, value in os.environ.items() if name not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on the CPU even where a GPU is present
    command = [*_torchrun(), "--standalone", "--nproc-per-node", "3", "-m", "simdist.torchrun", "--backend", "gloo"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "3 ranks (gloo)" in lines[0], done.stdout
    table = {" ".join(line.split()[:2]) for line in lines[1:]}
    assert table == {"lasp1 causal", "lasp2 causal", "lasp2 bidirectional", "lasp2h causal", "ring causal"}, done.stdout


def test_the_benchmark_runs_on_torchrun_ranks(tmp_path):
    """``torchrun ... -m simdist.bench`` measures on the ranks torchrun started; rank 0 writes the JSON."""
    import json

    env = {name: value for name, value in os.environ.items() if name not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    command = [*_torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "simdist.bench", "--backend", "gloo",
               "--chunks", "32", "--methods", "local,lasp1,lasp2", "--heads", "1", "--dim", "4", "--dtype", "float32",
               "--warmup", "1", "--reps", "2", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    payload = json.loads((tmp_path / "simdist_gloo.json").read_text())
    assert payload["environment"]["launcher"].startswith("torchrun, 2 ranks")
    rows = {r["method"]: r for r in payload["results"]}
    assert set(rows) == {"local", "lasp1", "lasp2"} and all(r["status"] == "ok" for r in rows.values())
    assert rows["lasp1"]["p2p_messages"] == 2 and rows["lasp2"]["collectives_per_rank"] == 2


def test_init_explains_itself_outside_torchrun(monkeypatch):
    if dist.is_initialized():
        pytest.skip("a default group exists in this process")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert not torchrun.under_torchrun()
    with pytest.raises(RuntimeError, match="start the script with torchrun"):
        torchrun.init()
