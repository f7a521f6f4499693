"""A heartbeat that arrives after the report of a run it could not list yet (server replicas
behind a load balancer answer a node's requests in any order; a paused replica answers
late: bench/faults/failover.py saw it) must not fail the running job. The heartbeat says
when the node listed its jobs (``listed_at``); one listed before the job started is no
proof that it is gone. A heartbeat without ``listed_at`` (an older worker) is read as
before."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gpuq.scheduler.lifecycle import rules
from gpuq.wire.states import JobState
from tests.api.conftest import Api


@pytest.fixture
def alice(api: Api) -> dict[str, str]:
    return api.user("alice", "lab1")


def _running(api: Api, alice: dict[str, str]) -> tuple[int, dict]:
    h = api.node("gpu01", gpus=4)
    api.clock.advance(1)
    job = api.submit(alice)
    api.cycle()
    api.clock.advance(1)
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job['id']}/events", h, json={"state": "RUNNING"})
    assert api.job(job["id"])["state"] == "RUNNING"
    return job["id"], h


def test_a_heartbeat_listed_before_the_job_started_does_not_fail_it(
        api: Api, alice: dict[str, str]) -> None:
    job_id, h = _running(api, alice)
    started = api.clock()
    api.clock.advance(10)  # it arrives late
    listed = (started - timedelta(seconds=1)).isoformat()
    reply = api.ok("POST", "/v1/nodes/gpu01/heartbeat", h,
                   json={"jobs": [], "listed_at": listed})
    assert reply["launch"] == [] and reply["kill"] == []
    assert api.job(job_id)["state"] == "RUNNING"
    # A heartbeat listed well after the start, without the job: the node lost it.
    listed = (started + timedelta(seconds=5)).isoformat()
    api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"jobs": [], "listed_at": listed})
    job = api.job(job_id)
    assert job["state"] == "NODE_FAIL" and "no longer has the job" in job["reason"]


def test_a_heartbeat_without_listed_at_is_read_as_before(
        api: Api, alice: dict[str, str]) -> None:
    job_id, h = _running(api, alice)
    api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"jobs": []})
    assert api.job(job_id)["state"] == "NODE_FAIL"


@pytest.mark.parametrize(("listed_after_start_s", "fails"), [
    (None, True), (-30.0, False), (0.0, False),
    (rules.LISTED_AFTER_START_MARGIN_S - 0.1, False),
    (rules.LISTED_AFTER_START_MARGIN_S, True), (60.0, True)])
def test_the_rule(listed_after_start_s: float | None, fails: bool) -> None:
    facts = rules.Facts(id=1, state=JobState.RUNNING, attempt=1, requeue=True,
                        cancel_requested=False, preempt_requested=False)
    out = rules.seen_in_heartbeat(facts, seen=None, node="n1", waited_s=100,
                                  resend_after_s=20, listed_after_start_s=listed_after_start_s)
    if fails:
        assert isinstance(out, rules.Change) and out.state == JobState.NODE_FAIL
    else:
        assert out is None
