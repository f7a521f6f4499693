"""Each service benchmark, run tiny (``--smoke --json``), so that it never rots: it runs,
prints one JSON object with its figures, and the figures are sane. Not timing targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def smoke(module: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", module, "--smoke", "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def sane_ms(s: dict[str, Any], n: int) -> None:
    assert s["n"] >= n
    assert 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"] < 60_000


@pytest.mark.usefixtures("pg_url", "redis_url")  # skip (or fail in CI) without the services
def test_submit() -> None:
    r = smoke("bench.submit")
    assert r["benchmark"] == "submit" and r["machine"]["cpus"] >= 1
    assert [lv["clients"] for lv in r["levels"]] == [1, 4]
    for lv in r["levels"]:
        assert lv["accepted"] > 0 and lv["errors"] == 0 and lv["per_s"] > 0
        sane_ms(lv["latency"], 1)
    assert r["array"]["jobs"] == 50 and r["array"]["seconds"] > 0
    assert set(r["met"]) == {"submits_per_s", "array_s"}
    assert r["target"]["submits_per_s"] == 1000


@pytest.mark.usefixtures("pg_url", "redis_url")
def test_dispatch() -> None:
    r = smoke("bench.dispatch")
    assert [x["deployment"] for x in r["results"]] == ["redis", "up"]
    for x in r["results"]:
        for key in ("total", "dispatch", "start"):
            sane_ms(x[key], 3)
    assert set(r["met"]) == {"p50_ms", "p99_ms", "jobs", "up_p50_ms"}
    assert r["target"]["p50_ms"] == 50 and r["target"]["p99_ms"] == 200
    assert r["target"]["up_p50_ms"] == 35


@pytest.mark.usefixtures("pg_url", "redis_url")
def test_load() -> None:
    r = smoke("bench.load")
    assert r["nodes"] == 3 and r["pending"] == 50
    assert r["heartbeat"]["errors"] == 0 and r["list"]["errors"] == 0
    sane_ms(r["heartbeat"], 3)
    sane_ms(r["list"], 2)
    lag = r["loop_lag_s"]
    assert lag["probes"] >= 1 and lag["seen"] == lag["probes"]
    assert set(r["met"]) == {"api_p99_ms", "loop_keeps_up"}


@pytest.mark.usefixtures("pg_url", "redis_url")
def test_cli() -> None:
    r = smoke("bench.cli")
    assert r["benchmark"] == "cli" and r["gpuq"].endswith("gpuq")
    assert list(r["commands"]) == ["--help", "submit", "q", "show", "cancel"]
    for s in (r["python_start"], *r["commands"].values()):
        assert s["n"] == 3 and 0 < s["min_ms"] <= s["p50_ms"] <= s["max_ms"] < 60_000
        assert 0 < s["cpu_p50_ms"] < 60_000
    assert r["loop"]["submits"] == 10 and r["loop"]["per_s"] > 0
    assert set(r["met"]) == {"median_ms", "loop_per_s"}
    assert r["target"] == {"median_ms": 60, "loop_per_s": 15}


@pytest.mark.usefixtures("pg_url", "redis_url")
def test_release() -> None:
    r = smoke("bench.release")
    assert r["benchmark"] == "release" and r["gpus"] == 8 and r["met"] == {}
    assert [res["queue"] for res in r["results"]] == ["arrays", "single jobs"]
    for res in r["results"]:
        assert res["pending"] == 300
        sane_ms(res["release"], 8)  # a release is a GPU's end, then its next job's start
        assert set(res["split"]) == {"end -> DISPATCHED", "DISPATCHED -> start"}
    assert r["target"]["10000"] == {"p50_ms": 50.0, "p99_ms": 200.0}


@pytest.mark.usefixtures("pg_url", "redis_url")
def test_arrays() -> None:
    r = smoke("bench.arrays")
    assert r["benchmark"] == "arrays"
    s, p = r["submit"], r["pass"]
    assert s["elements"] == 100 and s["repeat"] == 3 and s["huge"]["elements"] == 1000
    assert 0 < s["server_ms"]["p50"] <= s["server_ms"]["max"] < 60_000
    assert 0 < s["end_to_end_ms"]["p50"] <= s["end_to_end_ms"]["max"] < 60_000
    assert s["queue_lines"] >= 1
    assert p["single"]["pending"] == 5 and p["arrays"]["pending"] == 500
    assert p["single"]["pass_ms_p50"] > 0 and p["ratio"] > 0
    assert set(r["met"]) == {"server_ms", "end_to_end_ms", "huge", "pass_ratio"}
    assert r["target"]["server_ms"] == 50 and r["target"]["end_to_end_ms"] == 100


def test_policy_cycle() -> None:
    r = smoke("bench.policy_cycle")
    assert r["benchmark"] == "policy_cycle" and r["machine"]["cpus"] >= 1
    assert r["results"] and all(x["median_s"] > 0 for x in r["results"])
    assert r["met"] == {}  # a smoke run's size is not the target's


def test_policy_cycle_at_the_target_size_says_met_or_not() -> None:
    """The target's size in a measuring child, one cycle: each target has a verdict, and
    the exit status is 0 only when both are met."""
    out = subprocess.run([sys.executable, "-m", "bench.policy_cycle", "--sizes", "100000",
                          "--runs", "1", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(r["met"]) == {"median_s", "peak_rss_mb"}
    assert out.returncode == (0 if all(r["met"].values()) else 1)
    [one] = r["results"]
    assert one["pending"] == 100_000 and one["runs"] == 1 and one["peak_rss_mb"] > 0


def test_sim() -> None:
    r = smoke("bench.sim")
    assert r["benchmark"] == "sim" and r["trace"] == "lanl-cm5-1994" and r["met"] == {}
    assert [(x["policy"], x["jobs"]) for x in r["results"]] == [
        ("fifo", 1500), ("fairshare+backfill", 1500), ("fairshare+backfill", 2000)]
    for x in r["results"]:
        assert 0 < x["cpu_s"] < 120 and 0 < x["policy_calls"] <= x["event_times"]
        assert 0 < x["gpu_utilization"] <= 1
    assert r["target"]["full_cpu_s"] == 30 and r["target"]["compare_jobs"] == 27_000
