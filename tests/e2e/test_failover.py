"""Fail-over (bench/faults/failover.py, its smoke run): two `gpuq server` replicas on one
PostgreSQL, workers behind a load balancer, submits with idempotency keys through either
replica; the replica seen holding the loop's lock is killed with SIGKILL, mid-cycle. The
other replica's loop takes over within 10 s, and no acknowledged submit is lost,
duplicated, or run twice."""

from __future__ import annotations

import uuid

import pytest

from bench.faults.failover import SMOKE, TARGET_TAKEOVER_S, run_scenario

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_a_replica_killed_mid_cycle_loses_nothing_and_the_other_takes_over(
        pg_url: str, redis_url: str) -> None:
    broker = redis_url.rsplit("/", 1)[0] + f"/{uuid.uuid4().int % 15 + 1}"
    r = run_scenario(SMOKE, database_url=pg_url, broker_url=broker)
    detail = f"figures: {r}"
    (rd,) = r["rounds"]
    assert rd["takeover_s"] is not None and rd["takeover_s"] < TARGET_TAKEOVER_S, detail
    assert rd["dispatch_resumed_s"] is not None and \
        rd["dispatch_resumed_s"] < TARGET_TAKEOVER_S, detail
    s, runs = r["submits"], r["runs"]
    assert s["acknowledged"] >= 10 and s["unacknowledged"] == 0, detail
    assert s["refused"] == 0, detail
    assert s["lost"] == 0 and s["duplicates"] == 0, detail
    assert s["stored"] == s["acknowledged"], detail
    assert s["failed_over"] > 0, "no submit met the killed replica: " + detail
    assert runs["double_runs"] == 0 and runs["double_dispatches"] == 0, detail
    assert runs["unfinished"] == 0 and runs["completed"] == runs["jobs"], detail
    assert runs["never_ran"] == 0 and runs["not_completed"] == [], detail
    assert all(r["met"].values()), detail
