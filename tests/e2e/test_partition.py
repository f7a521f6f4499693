"""Issue 16, items 3 and 4, with real processes: a node cut off from the scheduler stops its
jobs before they run elsewhere (no job runs twice at once), and the scheduler's database
away for longer than the node timeout stops, requeues and fails no job.

The scenarios are ``bench.faults.partition`` and ``bench.faults.db_outage`` (their scripts
print the same figures); short timeouts: heartbeat 0.5 s, fence 3 s + grace 1 s (+ margin
1.5 s), node down after 6 s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.faults import db_outage, partition

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def check_no_double_run(r: dict[str, Any]) -> None:
    assert r["ok"], r["broken"]
    assert r["jobs"] == 2 and r["double_runs"] == 0 and r["overlap_s"] == 0
    for job in r["per_job"]:
        (first,), (second,) = job["first"], job["second"]
        # The first copy (pid seen gone in /proc) before the second one started.
        assert first["ended"] is not None and first["ended"] < second["started"], job
        assert job["fenced"].startswith("NODE_FAIL: fenced: no contact with the scheduler")
        assert (job["attempt"], job["state"]) == (2, "RUNNING") and job["node"].startswith("w2")
    # Fenced after the fence (3 s) and its grace at most, down after the node timeout (6 s).
    settings = r["settings"]
    assert r["first_copies_gone_s"] < settings["fence_after_s"] + settings["fence_grace_s"] + 1
    assert r["node_down_s"] >= settings["node_down_after_s"] - settings["heartbeat_interval_s"]
    assert r["second_copies_started_s"] > r["first_copies_gone_s"]


def test_a_stopped_daemon_s_jobs_are_fenced_before_they_run_elsewhere(
        tmp_path: Path, pg_url: str, redis_url: str) -> None:
    """SIGSTOP of worker 1's daemon past the node timeout (its supervisors run on)."""
    check_no_double_run(partition.run_scenario("stop", n_jobs=2, database_url=pg_url,
                                               redis_url=redis_url, tmp=tmp_path))


def test_a_node_cut_off_by_the_network_fences_its_jobs(
        tmp_path: Path, pg_url: str, redis_url: str) -> None:
    """A proxy between worker 1 and the server stops carrying anything (nothing refused)."""
    check_no_double_run(partition.run_scenario("cut", n_jobs=2, database_url=pg_url,
                                               redis_url=redis_url, tmp=tmp_path))


def test_a_database_outage_longer_than_the_node_timeout_costs_no_job(
        tmp_path: Path, pg_url: str, redis_url: str) -> None:
    r = db_outage.run_scenario(n_jobs=2, database_url=pg_url, redis_url=redis_url,
                               tmp=tmp_path)
    assert r["ok"], r["broken"]
    assert r["outage_s"] > r["settings"]["node_down_after_s"]
    assert set(r["answers_during"]) == {"503"} and r["error_text_shown"] == 0
    assert (r["requeued"], r["ended"], r["failed_no_requeue"]) == (0, 0, 0)
    assert (r["job_processes_gone"], r["job_processes_restarted"]) == (0, 0)
    assert r["node_fail_events"] == 0 and r["node_state"] == "UP"
