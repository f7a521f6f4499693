"""The fault scenarios of issue 16, items 3 and 4, run as their scripts run in CI
(``--smoke --json``): each runs, prints one JSON object with its figures, exits 0, and its
guarantees hold (the e2e tests, tests/e2e/test_partition.py, look closer)."""

from __future__ import annotations

import pytest

from tests.bench.test_bench_smoke import smoke

pytestmark = pytest.mark.usefixtures("pg_url", "redis_url")  # skip (or fail in CI) without


def test_partition() -> None:
    r = smoke("bench.faults.partition")
    assert r["benchmark"] == "partition" and r["ok"]
    (run,) = r["results"]
    assert (run["fault"], run["jobs"]) == ("stop", 2)
    assert (run["double_runs"], run["overlap_s"], run["first_copies_left"]) == (0, 0, 0)
    assert run["rerun_on_other_node"] == run["fenced"] == 2
    assert 0 < run["first_copies_gone_s"] < run["second_copies_started_s"]


def test_db_outage() -> None:
    r = smoke("bench.faults.db_outage")
    assert r["benchmark"] == "db_outage" and r["ok"]
    (run,) = r["results"]
    assert run["jobs"] == 2 and run["outage_s"] > run["settings"]["node_down_after_s"]
    assert set(run["answers_during"]) == {"503"}
    assert (run["requeued"], run["ended"], run["job_processes_gone"]) == (0, 0, 0)
