"""The cost model's structure: what grows with W, what grows with N, and that it matches the measured counts."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

import simdist
from simdist import accounting, costmodel as cm, verify

HW, MODEL = cm.H100_NVLINK, cm.LINEAR_LLAMA3_1B


def test_sequential_steps_grow_with_W_for_the_rings_only():
    Ws = [1, 2, 4, 8, 64, 128]
    assert [cm.sequential_steps("lasp1", W) for W in Ws] == [0, 2, 6, 14, 126, 254]
    assert [cm.sequential_steps("lasp2", W) for W in Ws] == [0, 2, 2, 2, 2, 2]
    assert [cm.sequential_steps("ring", W) for W in Ws] == [0, 3, 7, 15, 127, 255]
    with pytest.raises(ValueError):
        cm.sequential_steps("lasp2", 0)


@pytest.mark.parametrize("W", [2, 3, 4])
def test_model_step_counts_are_the_measured_ones(W):
    """The counts the model assumes are the critical paths simdist.accounting measures on real ranks."""
    q, k, v, do = verify.problem(1, 1, 3 * W, 2, 2, seed=0)
    batch = [verify.Case(name, q, k, v, do, decay=[0.5] if name != "ring" else None) for name in ("lasp1", "lasp2", "ring")]
    for case, got in zip(batch, verify.run(simdist.shared_pool(W), batch)):
        assert accounting.critical_path(got["records"]) == cm.sequential_steps(case.name, W)


def test_bytes_lasp_states_do_not_grow_with_N_and_ring_kv_does():
    for W in (8, 64):
        small, large = (cm.bytes_per_rank(m, MODEL, N, W) for m in ("lasp2",) for N in (2**19, 2**21))
        assert small == large
        assert cm.bytes_per_rank("ring", MODEL, 2**21, W) == 4 * cm.bytes_per_rank("ring", MODEL, 2**19, W)
        # LASP-2 saves steps, not bytes: each rank receives W-1 states where LASP-1's receives one
        assert cm.bytes_per_rank("lasp2", MODEL, 2**20, W) == (W - 1) * cm.bytes_per_rank("lasp1", MODEL, 2**20, W)


def test_exposed_communication_structure():
    t = lambda m, N, W, hw=HW: cm.iteration_time(m, hw, MODEL, N, W, overlap=False)["comm"]  # noqa: E731
    # LASP-1: a chain of messages that grows with W, not with the chunk
    assert t("lasp1", 2**20, 16) < t("lasp1", 2**20, 64) and math.isclose(t("lasp1", 2**20, 64), t("lasp1", 2**22, 64))
    # LASP-2: independent of N; grows with W only through the bandwidth term
    assert math.isclose(t("lasp2", 2**20, 64), t("lasp2", 2**22, 64))
    no_bw = dataclasses.replace(HW, beta_intra=math.inf, beta_inter=math.inf)
    assert math.isclose(t("lasp2", 2**20, 8, no_bw), t("lasp2", 2**20, 128, no_bw))  # pure latency: 2 steps
    assert t("lasp1", 2**20, 128, no_bw) > 60 * t("lasp2", 2**20, 128, no_bw)
    # Ring Attention: the traffic grows with the chunk
    assert t("ring", 2**22, 64) > 3 * t("ring", 2**20, 64)
    # one GPU communicates nothing; overlap only ever hides communication
    assert all(cm.iteration_time(m, HW, MODEL, 2**16, 1)["comm"] == 0 for m in cm.METHODS)
    assert all(cm.iteration_time(m, HW, MODEL, 2**20, 64)["comm"] <= t(m, 2**20, 64) for m in cm.METHODS)


def test_projection_and_paper_comparison():
    rows = cm.project(HW, MODEL, world_sizes=(8, 64), seq_lens=(2**19,))
    assert [r["W"] for r in rows] == [8, 64] and all(r["lasp2_tokens_per_s"] > 0 for r in rows)
    for r in rows:
        assert math.isclose(r["lasp2_over_lasp1"], r["lasp2_tokens_per_s"] / r["lasp1_tokens_per_s"] - 1)
    table = cm.paper_comparison()
    assert [(r["N"], r["paper_over_lasp1"], r["paper_over_ring"]) for r in table] == [(512 * 1024, 0.073, 0.178), (2048 * 1024, 0.152, 0.366)]


def test_implied_step_latency_round_trips():
    alpha = cm.implied_step_latency(0.152)
    assert 0 < alpha < 1e-2
    hw = dataclasses.replace(cm.A100_PAPER, alpha_p2p=alpha)
    t1 = cm.iteration_time("lasp1", hw, MODEL, 2048 * 1024, 64, overlap=False)["total"]
    t2 = cm.iteration_time("lasp2", hw, MODEL, 2048 * 1024, 64, overlap=False)["total"]
    assert math.isclose(t1 / t2 - 1, 0.152, rel_tol=1e-6)


def test_fit_reads_a_benchmark_json(tmp_path):
    payload = {
        "environment": {"device": "test GPU", "date": "today", "command": "python -m simdist.bench"},
        "config": {"H": 16, "K": 128},
        "probes": {"2": {"p2p_latency_s": 1e-5, "p2p_bandwidth_Bps": 2e11, "allgather_latency_s": 3e-5, "allgather_bandwidth_Bps": 1e11}, "4": {"error": "x"}},
        "results": [
            {"method": "local", "status": "ok", "chunk": 16384, "ms": 2.0},
            {"method": "local", "status": "ok", "chunk": 32768, "ms": 4.0},
            {"method": "lasp2", "status": "ok", "chunk": 16384, "ms": 3.0},
            {"method": "local", "status": "oom", "chunk": 65536},
        ],
    }
    path = tmp_path / "simdist_nccl.json"
    path.write_text(json.dumps(payload))
    hw = cm.fit(path)
    assert (hw.alpha_p2p, hw.alpha_coll, hw.beta_intra) == (1e-5, 3e-5, 2e11)
    assert math.isclose(hw.linear_tokens_per_s, 16384 / 2e-3)
    assert hw.beta_inter == HW.beta_inter and "simdist_nccl.json" in hw.source


def test_measured_overhead_is_set_beside_the_models_communication():
    hw = dataclasses.replace(HW, alpha_p2p=1e-5, alpha_coll=2e-5, beta_intra=1e11)
    payload = {
        "config": {"H": 16, "K": 128},
        "results": [
            {"W": 4, "method": "local", "status": "ok", "chunk": 16384, "ms": 2.0},
            {"W": 4, "method": "lasp1", "status": "ok", "chunk": 16384, "ms": 3.5},
            {"W": 4, "method": "lasp2", "status": "ok", "chunk": 16384, "ms": 2.5},
            {"W": 4, "method": "lasp2", "status": "ok", "chunk": 32768, "ms": 9.0},  # no local row: left out
            {"W": 4, "method": "ring", "status": "ok", "chunk": 16384, "ms": 90.0},  # not a linear scheme
            {"W": 1, "method": "lasp1", "status": "ok", "chunk": 16384, "ms": 2.0},
            {"W": 4, "method": "lasp1", "status": "oom", "chunk": 65536},
        ],
    }
    rows = cm.measured_against_model(payload, hw)
    assert [(r["W"], r["method"], r["chunk"]) for r in rows] == [(4, "lasp1", 16384), (4, "lasp2", 16384)]
    state = 16 * 128 * 128 * 4
    lasp1_chain = 3 * (1e-5 + state / 1e11)  # W-1 hops, nothing hidden, forward and backward
    lasp2_gather = 2e-5 + 3 * state / 1e11
    assert math.isclose(rows[0]["model_comm_ms"], round(2e3 * lasp1_chain, 4))
    assert math.isclose(rows[1]["model_comm_ms"], round(2e3 * lasp2_gather, 4))
    assert (rows[0]["measured_overhead_ms"], rows[1]["measured_overhead_ms"]) == (1.5, 0.5)
    assert math.isclose(rows[0]["measured_over_model"], 1.5 / rows[0]["model_comm_ms"], rel_tol=1e-2)


def test_projection_plot_draws():
    import matplotlib

    matplotlib.use("Agg")
    ax = cm.plot_projection()
    assert len(ax.lines) == 2 * 2 + 2 * 2  # two curves and two paper points per sequence length
