"""The benchmark's machinery runs end to end on gloo CPU ranks (the GPU run is the lead's; this keeps it honest)."""

from __future__ import annotations

import json

from simdist import costmodel
from simdist.bench import schemes as bench


def test_bench_runs_records_and_plots_on_cpu_ranks(tmp_path):
    payload = bench.run([2], [32, 64], list(bench.METHODS), backend="gloo", heads=1, dim=4, dtype="float32", warmup=1, reps=2, max_seconds=30, probe_bytes=2**20, log=lambda *_: None)
    rows = payload["results"]
    assert {(r["method"], r["chunk"]) for r in rows} == {(m, c) for m in bench.METHODS for c in (32, 64)}
    assert all(r["status"] == "ok" and r["ms"] > 0 and r["tokens"] == 2 * r["chunk"] for r in rows)
    by = {(r["method"], r["chunk"]): r for r in rows}
    # the accounting's counts travel into the JSON: LASP-1 a chain, LASP-2 two collectives, local none
    assert by["lasp1", 64]["sequential_steps"] == 2 and by["lasp1", 64]["p2p_messages"] == 2
    assert by["lasp2", 64]["collectives_per_rank"] == 2 and by["local", 64]["bytes_recv_per_rank"] == 0
    assert by["lasp2h", 64]["bytes_recv_per_rank"] == 2 * by["lasp2h", 32]["bytes_recv_per_rank"]
    assert set(payload["probes"]["2"]) == {"p2p_latency_s", "p2p_bandwidth_Bps", "allgather_latency_s", "allgather_bandwidth_Bps"}
    paths = bench.write(payload, "simdist_test", tmp_path)
    assert json.loads(paths[0].read_text())["environment"]["backend"] == "gloo" and paths[1].stat().st_size > 0
    fitted = costmodel.fit(paths[0])  # the refit reads what the benchmark writes
    assert fitted.alpha_p2p == payload["probes"]["2"]["p2p_latency_s"] and fitted.linear_tokens_per_s > 0


def test_library_plotting_returns_figures_and_leaves_the_backend_alone(tmp_path):
    """A notebook's inline backend must survive the library's plots (a switch to Agg silenced Lesson 05's
    figure on the site): the plotting functions return figures, and nothing calls ``matplotlib.use``."""
    import inspect
    import pathlib

    import matplotlib
    import matplotlib.figure

    payload = json.loads((pathlib.Path(bench.RESULTS_DIR) / "simdist_nccl.json").read_text())
    before = matplotlib.get_backend()
    fig = bench.plot(payload)
    assert isinstance(fig, matplotlib.figure.Figure) and matplotlib.get_backend() == before
    from kernels.bench import common

    for module in (bench, costmodel, common):
        assert "matplotlib.use(" not in inspect.getsource(module), module.__name__


def test_timeline_refuses_without_two_gpus(capsys):
    """``python -m simdist.bench.timeline`` profiles NCCL ranks; without GPUs it says so and stops."""
    import pytest
    import torch

    from simdist.bench import timeline

    if torch.cuda.device_count() >= 2:
        pytest.skip("GPUs are here: the timeline would run")
    with pytest.raises(SystemExit) as stopped:
        timeline.main([])
    assert stopped.value.code == 2 and "needs at least 2 GPUs" in capsys.readouterr().err
