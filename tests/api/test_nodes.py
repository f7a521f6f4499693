"""Worker calls: register, heartbeat reconciliation, job-state reports, log shipping."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api


@pytest.fixture
def alice(api: Api) -> dict[str, str]:
    return api.user("alice", "lab1")


def test_register_and_list(api: Api, alice: dict[str, str]) -> None:
    api.node("gpu01", gpus=2, model="H100-80GB")
    (node,) = api.ok("GET", "/v1/nodes", alice)
    assert node["name"] == "gpu01" and node["state"] == "UP"
    assert [(g["index"], g["model"], g["job_id"]) for g in node["gpus"]] == [
        (0, "H100-80GB", None), (1, "H100-80GB", None)]


def test_reregister_updates_inventory(api: Api, alice: dict[str, str]) -> None:
    h = api.node("gpu01", gpus=4)
    api.ok("POST", "/v1/nodes/gpu01/register", h, json={
        "cpus": 8, "memory_mib": 1000, "gpu_backend": "simulated",
        "gpus": [{"index": 0, "uuid": "GPU-x", "model": "T4-16GB", "memory_mib": 16000}]})
    (node,) = api.ok("GET", "/v1/nodes", alice)
    assert [g["model"] for g in node["gpus"]] == ["T4-16GB"]


def test_bad_inventory_is_422(api: Api) -> None:
    h = api.node("gpu01")
    r = api.client.post("/v1/nodes/gpu01/register", headers=h, json={
        "gpu_backend": "quantum", "gpus": []})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "gpu_backend"]
    r = api.client.post("/v1/nodes/gpu01/register", headers=h, json={
        "gpu_backend": "simulated",
        "gpus": [{"index": 0, "uuid": "a", "model": "T4", "memory_mib": 1}] * 2})
    assert r.status_code == 409


def _dispatched(api: Api, alice: dict[str, str], **spec: object) -> tuple[int, dict]:
    h = api.node("gpu01", gpus=4)
    api.clock.advance(1)
    job = api.submit(alice, **spec)
    api.cycle()
    assert api.job(job["id"])["state"] == "DISPATCHED"
    return job["id"], h


def test_launch_spec(api: Api, alice: dict[str, str]) -> None:
    job_id, h = _dispatched(api, alice, gpus=2, environment={"A": "1"})
    spec = api.ok("GET", f"/v1/nodes/gpu01/jobs/{job_id}", h)
    assert spec["gpu_indices"] == [0, 1]
    assert spec["gpu_uuids"] == ["GPU-gpu01-0", "GPU-gpu01-1"]
    assert spec["environment"] == {"A": "1"} and spec["user"] == "alice"


def test_state_reports_are_idempotent(api: Api, alice: dict[str, str]) -> None:
    job_id, h = _dispatched(api, alice)
    url = f"/v1/nodes/gpu01/jobs/{job_id}/events"
    assert api.ok("POST", url, h, json={"state": "RUNNING"}) == {"state": "RUNNING"}
    assert api.ok("POST", url, h, json={"state": "RUNNING"}) == {"state": "RUNNING"}
    done = {"state": "FAILED", "exit_code": 3}
    assert api.ok("POST", url, h, json=done) == {"state": "FAILED"}
    assert api.ok("POST", url, h, json=done) == {"state": "FAILED"}
    # A late RUNNING after the end changes nothing.
    assert api.ok("POST", url, h, json={"state": "RUNNING"}) == {"state": "FAILED"}
    job = api.job(job_id)
    assert job["exit_code"] == 3 and job["reason"] == "exit code 3"
    assert [e["new_state"] for e in job["events"]] == ["PENDING", "DISPATCHED", "RUNNING",
                                                       "FAILED"]
    (node,) = api.ok("GET", "/v1/nodes", alice)
    assert all(g["job_id"] is None for g in node["gpus"])


def test_job_that_ends_before_running_was_seen(api: Api, alice: dict[str, str]) -> None:
    job_id, h = _dispatched(api, alice)
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job_id}/events", h,
           json={"state": "COMPLETED", "exit_code": 0})
    assert api.job(job_id)["state"] == "COMPLETED"


def test_heartbeat_resends_a_lost_launch(api: Api, alice: dict[str, str]) -> None:
    job_id, h = _dispatched(api, alice)
    reply = api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"jobs": []})
    assert reply == {"launch": [], "kill": []}  # not yet: give the message time
    api.clock.advance(api.ctx.settings.dispatch_resend_after_s + 1)
    reply = api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"jobs": []})
    assert reply == {"launch": [job_id], "kill": []}


def test_heartbeat_marks_running_and_kills_unknown(api: Api, alice: dict[str, str]) -> None:
    job_id, h = _dispatched(api, alice)
    reply = api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"jobs": [
        {"job_id": job_id, "state": "RUNNING"}, {"job_id": 4242, "state": "RUNNING"}]})
    assert reply == {"launch": [], "kill": [{"job_id": 4242, "attempt": 1, "grace_s": None}]}
    assert api.job(job_id)["state"] == "RUNNING"


def test_heartbeat_kills_a_job_the_db_says_is_over(api: Api, alice: dict[str, str]) -> None:
    job_id, h = _dispatched(api, alice)
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job_id}/events", h, json={"state": "RUNNING"})
    api.ok("POST", f"/v1/jobs/{job_id}/cancel", alice)
    reply = api.ok("POST", "/v1/nodes/gpu01/heartbeat", h,
                   json={"jobs": [{"job_id": job_id, "state": "RUNNING"}]})
    assert reply["kill"] == [{"job_id": job_id, "attempt": 1, "grace_s": None}]


def test_heartbeat_without_a_running_job_fails_it(api: Api, alice: dict[str, str]) -> None:
    job_id, h = _dispatched(api, alice)
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job_id}/events", h, json={"state": "RUNNING"})
    api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"jobs": []})
    job = api.job(job_id)
    assert job["state"] == "NODE_FAIL" and "no longer has the job" in job["reason"]


def test_heartbeat_confirms_cancel_of_a_job_never_started(api: Api,
                                                          alice: dict[str, str]) -> None:
    job_id, h = _dispatched(api, alice)
    api.ok("POST", f"/v1/jobs/{job_id}/cancel", alice)
    api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"jobs": []})
    assert api.job(job_id)["state"] == "CANCELLED"


def test_missed_heartbeats_end_jobs_that_do_not_requeue(api: Api,
                                                        alice: dict[str, str]) -> None:
    job_id, h = _dispatched(api, alice, requeue=False)
    api.clock.advance(api.ctx.settings.node_down_after_s + 1)
    api.cycle()
    (node,) = api.ok("GET", "/v1/nodes", alice)
    assert node["state"] == "DOWN" and "no heartbeat" in node["state_reason"]
    assert api.job(job_id)["state"] == "NODE_FAIL"
    # It comes back with its next heartbeat, and the dead job is killed if it still runs.
    reply = api.ok("POST", "/v1/nodes/gpu01/heartbeat", h,
                   json={"jobs": [{"job_id": job_id, "state": "RUNNING"}]})
    assert reply["kill"] == [{"job_id": job_id, "attempt": 1, "grace_s": None}]
    assert api.ok("GET", "/v1/nodes", alice)[0]["state"] == "UP"


def test_a_requeued_job_runs_elsewhere_and_the_duplicate_is_killed(
        api: Api, alice: dict[str, str]) -> None:
    job_id, h1 = _dispatched(api, alice, gpus=4)
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job_id}/events", h1, json={"state": "RUNNING"})
    h2 = api.node("gpu02", gpus=4)
    api.clock.advance(api.ctx.settings.node_down_after_s - 5)
    api.ok("POST", "/v1/nodes/gpu02/heartbeat", h2, json={"jobs": []})
    api.clock.advance(10)  # gpu01 is silent past the limit, gpu02 is not
    api.cycle()  # gpu01 DOWN: the job is requeued and, in the same cycle, dispatched again
    job = api.job(job_id)
    states = [(e["old_state"], e["new_state"]) for e in job["events"]]
    assert states[-4:] == [("RUNNING", "NODE_FAIL"), ("NODE_FAIL", "REQUEUED"),
                           ("REQUEUED", "PENDING"), ("PENDING", "DISPATCHED")]
    assert "requeued" in job["events"][-3]["reason"]
    # ... to the node still alive, as attempt 2
    assert (job["state"], job["node"], job["attempt"]) == ("DISPATCHED", "gpu02", 2)
    spec = api.ok("GET", f"/v1/nodes/gpu02/jobs/{job_id}", h2)
    assert spec["attempt"] == 2
    # gpu01 comes back still running attempt 1: that duplicate is killed.
    reply = api.ok("POST", "/v1/nodes/gpu01/heartbeat", h1,
                   json={"jobs": [{"job_id": job_id, "attempt": 1, "state": "RUNNING"}]})
    assert reply["kill"] == [{"job_id": job_id, "attempt": 1, "grace_s": None}]
    # Its late reports change nothing, and the old node cannot read the job any more.
    r = api.client.post(f"/v1/nodes/gpu01/jobs/{job_id}/events", headers=h1,
                        json={"attempt": 1, "state": "FAILED", "exit_code": 1})
    assert r.status_code == 404
    assert api.job(job_id)["state"] == "DISPATCHED"


def test_reports_about_an_earlier_attempt_are_ignored(api: Api,
                                                      alice: dict[str, str]) -> None:
    job_id, h = _dispatched(api, alice, gpus=4)
    api.clock.advance(api.ctx.settings.node_down_after_s + 1)
    api.cycle()  # DOWN: requeued
    assert api.job(job_id)["state"] == "PENDING"
    api.ok("POST", "/v1/nodes/gpu01/register", h, json={
        "gpu_backend": "simulated", "gpus": [{"index": i, "uuid": f"GPU-gpu01-{i}",
                                              "model": "A100-80GB", "memory_mib": 81920}
                                             for i in range(4)]})
    api.cycle()  # back, and the job goes there again as attempt 2
    assert api.job(job_id)["attempt"] == 2
    url = f"/v1/nodes/gpu01/jobs/{job_id}"
    assert api.ok("POST", f"{url}/events", h, json={"attempt": 1, "state": "COMPLETED",
                                                      "exit_code": 0}) == {"state": "DISPATCHED"}
    r = api.client.post(f"{url}/log?offset=0&attempt=1", headers=h, content=b"old run\n")
    assert r.status_code == 409 and r.json()["stale"] is True
    api.ok("POST", f"{url}/log?offset=0&attempt=2", h, content=b"new run\n")
    assert api.client.get(f"/v1/jobs/{job_id}/log", headers=alice).content == b"new run\n"
    assert api.ok("POST", f"{url}/events", h, json={"attempt": 2, "state": "COMPLETED",
                                                      "exit_code": 0}) == {"state": "COMPLETED"}


def test_log_shipping_offsets(api: Api, alice: dict[str, str]) -> None:
    job_id, h = _dispatched(api, alice)
    url = f"/v1/nodes/gpu01/jobs/{job_id}/log"
    assert api.ok("POST", f"{url}?offset=0", h, content=b"abc") == {"size": 3}
    assert api.ok("POST", f"{url}?offset=1", h, content=b"bcdef") == {"size": 6}  # overlap
    r = api.client.post(f"{url}?offset=10", headers=h, content=b"zz")  # a gap
    assert r.status_code == 409 and r.json()["size"] == 6
    assert api.client.get(f"/v1/jobs/{job_id}/log", headers=alice).content == b"abcdef"


def test_log_is_truncated_past_the_limit(api: Api, alice: dict[str, str]) -> None:
    api.ctx.logs.max_bytes = 8
    job_id, h = _dispatched(api, alice)
    url = f"/v1/nodes/gpu01/jobs/{job_id}/log"
    assert api.ok("POST", f"{url}?offset=0", h, content=b"0123456789") == {"size": 10}
    assert api.ok("POST", f"{url}?offset=10", h, content=b"more") == {"size": 14}
    body = api.client.get(f"/v1/jobs/{job_id}/log", headers=alice).content
    assert body.startswith(b"01234567") and b"truncated" in body and b"more" not in body


def test_gpu_samples_are_kept_every_interval_health_at_once(api: Api) -> None:
    """A GPU's sample is stored at most every gpu_sample_interval_s (10 s by default);
    a change of health is stored (and seen) at the very heartbeat that reports it."""
    h = api.node("gpu01", gpus=1)

    def beat(watts: float, healthy: bool = True) -> dict:
        api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"jobs": [], "gpus": [
            {"index": 0, "power_w": watts, "utilization_pct": 50.0, "healthy": healthy,
             "health_reason": None if healthy else "XID 79"}]})
        (node,) = api.ok("GET", "/v1/nodes", api.admin)
        return node["gpus"][0]

    first = beat(100.0)
    assert first["sample"]["power_w"] == 100.0 and first["sampled_at"] is not None
    api.clock.advance(5)
    assert beat(200.0)["sample"]["power_w"] == 100.0  # within the interval: kept
    sick = beat(200.0, healthy=False)
    assert not sick["healthy"] and sick["health_reason"] == "XID 79"
    api.clock.advance(5)
    later = beat(300.0, healthy=False)
    assert later["sample"]["power_w"] == 300.0 and later["sampled_at"] > first["sampled_at"]


def _full_beats(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the heartbeats that went through the full reconciliation."""
    from gpuq.scheduler.services import heartbeats as svc

    calls: list[int] = []
    full = svc.reconcile

    def counted(*args: object, **kw: object) -> object:
        calls.append(1)
        return full(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(svc, "reconcile", counted)
    return calls


def _running(api: Api, alice: dict[str, str]) -> tuple[int, dict]:
    job_id, h = _dispatched(api, alice, gpus=2)
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job_id}/events", h, json={"state": "RUNNING"})
    return job_id, h


def test_a_steady_heartbeat_writes_only_the_beat_and_due_samples(
        api: Api, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import select

    from gpuq.scheduler.db.models import JobSample, Node

    job_id, h = _running(api, alice)
    full = _full_beats(monkeypatch)
    before = api.job(job_id)

    def beat(watts: float, *, sample: bool = False) -> dict:
        run: dict = {"job_id": job_id, "state": "RUNNING"}
        if sample:
            run["sample"] = {"utilization_pct": 80.0, "power_w": watts, "energy_j": watts,
                             "gpus": [{"index": 0, "utilization_pct": 80.0},
                                      {"index": 1, "utilization_pct": 80.0}]}
        return api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={
            "jobs": [run], "gpus": [{"index": i, "power_w": watts} for i in range(4)]})

    def seen() -> tuple:
        with api.ctx.transaction() as s:
            node = s.scalar(select(Node).where(Node.name == "gpu01"))
            rows = s.scalars(select(JobSample.time).where(JobSample.job_id == job_id)).all()
            return (node.last_heartbeat_at, [g.last_sample.get("power_w") for g in node.gpus],
                    len(rows))

    api.clock.advance(1)
    assert beat(100.0) == {"launch": [], "kill": []}
    at, watts, _ = seen()
    assert at == api.clock() and watts == [100.0] * 4  # never sampled before: due
    api.clock.advance(2)
    beat(200.0)
    at, watts, _ = seen()
    assert at == api.clock() and watts == [100.0] * 4  # within the interval: kept
    api.clock.advance(api.ctx.settings.gpu_sample_interval_s)
    beat(300.0)
    assert seen()[1] == [300.0] * 4
    after = api.job(job_id)
    assert after == before and full == []  # the job is untouched, all steady

    # Job samples: totals every beat, a row at most every job_sample_interval_s.
    beat(400.0, sample=True)
    api.clock.advance(1)
    beat(500.0, sample=True)
    assert seen()[2] == 1
    api.clock.advance(api.ctx.settings.job_sample_interval_s)
    beat(600.0, sample=True)
    assert seen()[2] == 2 and full == []
    acc = api.job(job_id)["accounting"]
    assert acc["energy_kwh"] == round(600.0 / 3.6e6, 6) and acc["utilization_peak_pct"] == 80.0
    assert api.job(job_id)["state"] == "RUNNING"


@pytest.mark.parametrize("case", ["new job", "missing job", "cancel", "dispatched now running",
                                  "gpu unhealthy", "foreign process", "ended report"])
def test_a_heartbeat_that_is_not_steady_is_reconciled(
        api: Api, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    if case == "dispatched now running":
        job_id, h = _dispatched(api, alice, gpus=2)
    else:
        job_id, h = _running(api, alice)
    full = _full_beats(monkeypatch)
    jobs = [{"job_id": job_id, "state": "RUNNING"}]
    gpus: list[dict] = [{"index": i} for i in range(4)]
    if case == "new job":
        jobs.append({"job_id": 4242, "state": "RUNNING"})
    elif case == "missing job":
        jobs = []
    elif case == "cancel":
        api.ok("POST", f"/v1/jobs/{job_id}/cancel", alice)
    elif case == "gpu unhealthy":
        gpus[3] = {"index": 3, "healthy": False, "health_reason": "XID 79"}
    elif case == "foreign process":
        gpus[3] = {"index": 3, "foreign_processes": [{"pid": 7, "user": "bob"}]}
    elif case == "ended report":
        jobs = [{"job_id": job_id, "state": "COMPLETED"}]
    reply = api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"jobs": jobs, "gpus": gpus})
    assert full == [1]
    job = api.job(job_id)
    (node,) = api.ok("GET", "/v1/nodes", alice)
    if case == "new job":
        assert reply["kill"] == [{"job_id": 4242, "attempt": 1, "grace_s": None}]
    elif case == "missing job":
        assert job["state"] == "NODE_FAIL" and reply == {"launch": [], "kill": []}
    elif case == "cancel":
        assert reply["kill"] == [{"job_id": job_id, "attempt": 1, "grace_s": None}]
    elif case == "dispatched now running":
        assert job["state"] == "RUNNING" and reply == {"launch": [], "kill": []}
    elif case == "gpu unhealthy":
        assert not node["gpus"][3]["healthy"] and node["gpus"][3]["health_reason"] == "XID 79"
    elif case == "foreign process":
        assert node["gpus"][3]["foreign_processes"][0]["pid"] == 7
    else:
        assert job["state"] == "RUNNING" and reply == {"launch": [], "kill": []}
    if case in ("gpu unhealthy", "foreign process", "ended report"):
        assert job["state"] == "RUNNING" and reply == {"launch": [], "kill": []}
    # The next identical beat is steady again where nothing is left to reconcile.
    if case in ("dispatched now running", "gpu unhealthy", "foreign process"):
        api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"jobs": jobs, "gpus": gpus})
        assert full == [1]


def test_registration_stores_the_limits_the_worker_enforces(api: Api,
                                                            alice: dict[str, str]) -> None:
    h = api.node("gpu01", gpus=1)
    (node,) = api.ok("GET", "/v1/nodes", alice)
    assert node["enforcement"] is None  # an older worker's registration says nothing
    said = "memory,cpu (cgroup v1 memory,cpu); not devices: no device node for GPU(s) 0"
    body = {"gpu_backend": "simulated", "enforcement": said,
            "gpus": [{"index": 0, "uuid": "GPU-x", "model": "T4-16GB", "memory_mib": 16000}]}
    api.ok("POST", "/v1/nodes/gpu01/register", h, json=body)
    (node,) = api.ok("GET", "/v1/nodes", alice)
    assert node["enforcement"] == said
    r = api.client.post("/v1/nodes/gpu01/register", headers=h,
                        json=dict(body, enforcement="x" * 257))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "enforcement"]


def test_an_out_of_memory_report_ends_the_job_and_frees_its_gpus(
        api: Api, alice: dict[str, str]) -> None:
    job_id, h = _dispatched(api, alice, memory_mib=10)
    url = f"/v1/nodes/gpu01/jobs/{job_id}/events"
    api.ok("POST", url, h, json={"state": "RUNNING"})
    reason = ("out of memory: the job's cgroup hit its 10 MiB limit (--mem); the kernel "
              "killed 1 process")
    # In a heartbeat first (the worker's list of its runs), then its report.
    api.ok("POST", "/v1/nodes/gpu01/heartbeat", h,
           json={"jobs": [{"job_id": job_id, "state": "OUT_OF_MEMORY"}]})
    done = {"state": "OUT_OF_MEMORY", "exit_code": 137, "reason": reason}
    assert api.ok("POST", url, h, json=done) == {"state": "OUT_OF_MEMORY"}
    job = api.job(job_id)
    assert (job["state"], job["exit_code"], job["reason"]) == ("OUT_OF_MEMORY", 137, reason)
    assert job["ended_at"] is not None
    (node,) = api.ok("GET", "/v1/nodes", alice)
    assert all(g["job_id"] is None for g in node["gpus"])
    assert [j["id"] for j in api.ok("GET", "/v1/jobs?state=OUT_OF_MEMORY", alice)] == [job_id]
