"""Metrics on a tiny schedule whose figures are worked out by hand."""

from __future__ import annotations

import pytest

from gpuq.scheduler.sim import build_nodes, parse_nodes
from gpuq.scheduler.sim.engine import SimResult
from gpuq.scheduler.sim.metrics import summarize
from gpuq.scheduler.sim.series import bin_average, busy_gpus, percentile, queue_length
from gpuq.scheduler.sim.windows import fairness, water_fill, window_shares
from tests.sim.builders import make_record

TOP_OF = {"a": ("a", 1), "b": ("b", 1)}


def schedule() -> SimResult:
    # One GPU. Account a runs two jobs back to back; b's job, submitted at 0 like them,
    # starts only at 25 (the GPU idles from 20 to 25).
    records = [make_record(1, account="a", submit=0, start=0, end=10),
               make_record(2, account="a", submit=0, start=10, end=20),
               make_record(3, account="b", submit=0, start=25, end=35)]
    return SimResult(records, build_nodes(parse_nodes("1x1")), "fifo")


def test_utilization_waits_completion() -> None:
    result = schedule()
    metrics = summarize(result, window_shares(result.records, TOP_OF, 100, 100), TOP_OF)
    assert metrics["makespan_s"] == 35
    assert metrics["gpu_hours"] == pytest.approx(30 / 3600, abs=1e-3)
    assert metrics["gpu_utilization"] == pytest.approx(30 / 35, abs=1e-6)
    assert metrics["wait_s"] == {"mean": pytest.approx(35 / 3, abs=1e-3), "p50": 10,
                                 "p95": 23.5, "max": 25}
    assert metrics["completion_s"]["mean"] == pytest.approx(65 / 3, abs=1e-3)


def test_shares_targets_and_jain_over_the_whole_run() -> None:
    result = schedule()
    metrics = summarize(result, window_shares(result.records, TOP_OF, 100, 100), TOP_OF)
    # Used: a 20, b 10 GPU-s. Asked (pending or running): a 30, b 35: both want more than
    # half of the 30 used, so each one's target is 1/2. Shares 2/3 and 1/3.
    fair = metrics["fairness"]
    assert fair["windows"] == 1
    assert fair["overall_share_mad"] == fair["share_mad"] == pytest.approx(1 / 6, abs=1e-6)
    # Jain over used/target = (4/3, 2/3): 2² / (2 · (16/9 + 4/9)) = 0.9
    assert fair["overall_jain_index"] == fair["jain_index"] == pytest.approx(0.9, abs=1e-6)
    a, b = metrics["accounts"]
    assert (a["account"], a["share"], a["target"]) == ("a", pytest.approx(2 / 3, abs=1e-6),
                                                       0.5)
    assert (b["account"], b["share"], b["target"]) == ("b", pytest.approx(1 / 3, abs=1e-6),
                                                       0.5)


def test_sliding_windows() -> None:
    result = schedule()
    shares = window_shares(result.records, TOP_OF, window_s=10, step_s=10)
    assert shares.ends == [10, 20, 30, 35]
    # [0,10) and [10,20): a runs, b waits: shares 1/0 against targets 1/2 each.
    # [20,30) and [30,35): only b asks, and gets it all.
    assert [w.mad for w in shares.windows] == [0.5, 0.5, 0, 0]
    assert [w.jain for w in shares.windows] == [0.5, 0.5, 1, 1]
    assert shares.windows[2].targets == {"b": 1.0}
    metrics = summarize(result, shares, TOP_OF)
    assert metrics["fairness"]["share_mad"] == 0.25
    assert metrics["fairness"]["jain_index"] == 0.75
    assert metrics["accounts"][0]["mean_abs_deviation"] == 0.5   # a: active in 2 windows


def test_water_filling() -> None:
    # 100 to divide 3:1; b asks for only 10, so a gets the rest.
    assert water_fill(100, {"a": 500, "b": 10}, {"a": 1, "b": 3}) == {"a": 90, "b": 10}
    assert water_fill(100, {"a": 500, "b": 500}, {"a": 1, "b": 3}) == {"a": 25, "b": 75}
    # Zero shares get only what the others leave.
    assert water_fill(100, {"a": 30, "z": 500}, {"a": 1, "z": 0}) == {"a": 30, "z": 70}
    assert water_fill(100, {"a": 500, "z": 500}, {"a": 1, "z": 0}) == {"a": 100, "z": 0}


def test_jain_index() -> None:
    f = fairness({"a": 30, "b": 10}, {"a": 100, "b": 100}, {"a": 1, "b": 1})
    assert f is not None
    assert f.jain == pytest.approx(0.8)   # ratios 1.5, 0.5: 2² / (2 · 2.5)
    equal = fairness({"a": 10, "b": 10, "c": 10}, {"a": 99, "b": 99, "c": 99},
                     {"a": 1, "b": 1, "c": 1})
    assert equal is not None and equal.jain == pytest.approx(1.0) and equal.mad == 0
    assert fairness({"a": 0}, {"a": 5}, {"a": 1}) is None  # nothing used: no figure


def test_time_series_and_percentiles() -> None:
    records = schedule().records
    assert busy_gpus(records, 0, 5, 7) == [1, 1, 1, 1, 0, 1, 1]
    assert queue_length(records, 0, 5, 7) == [2, 2, 1, 1, 1, 0, 0]
    assert queue_length(records, 0, 7, 2) == [2, pytest.approx((3 * 2 + 4 * 1) / 7)]
    assert bin_average([(2, 1), (3, -1)], 0, 10, 1) == [0.1]
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
