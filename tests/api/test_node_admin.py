"""What the scheduler learns from its nodes and admins: drains, GPU health, GPUs held by
processes gpuq did not start, per-job samples, the Unix account a job runs as."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api


@pytest.fixture
def alice(api: Api) -> dict[str, str]:
    return api.user("alice", "lab1")


def _gpu(index: int, **kw: object) -> dict:
    return {"index": index, **kw}


def test_drain_stops_new_jobs_and_resume_restarts_them(api: Api, alice: dict) -> None:
    h = api.node("gpu01", gpus=4)
    running = api.submit(alice, gpus=2)
    api.cycle()
    node = api.ok("POST", "/v1/admin/nodes/gpu01/drain", api.admin,
                  json={"reason": "replacing GPU 3"})
    assert (node["state"], node["drain"], node["drain_reason"]) == ("DRAIN", True,
                                                                    "replacing GPU 3")
    waiting = api.submit(alice, gpus=1)
    api.cycle()
    assert api.job(waiting["id"])["state"] == "PENDING"
    assert "node DRAIN" in api.job(waiting["id"])["reason"]
    # The running job is untouched, and the drain outlives the node going down and back.
    assert api.job(running["id"])["state"] == "DISPATCHED"
    api.clock.advance(api.ctx.settings.node_down_after_s + 1)
    api.cycle()
    api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"jobs": []})
    assert api.ok("GET", "/v1/nodes", alice)[0]["state"] == "DRAIN"
    node = api.ok("POST", "/v1/admin/nodes/gpu01/resume", api.admin)
    assert (node["state"], node["drain"]) == ("UP", False)
    api.cycle()
    assert api.job(waiting["id"])["state"] == "DISPATCHED"


def test_drain_needs_an_admin_a_reason_and_a_known_node(api: Api, alice: dict) -> None:
    api.node("gpu01")
    r = api.client.post("/v1/admin/nodes/gpu01/drain", headers=alice, json={"reason": "x"})
    assert r.status_code == 403
    r = api.client.post("/v1/admin/nodes/gpu01/drain", headers=api.admin, json={})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "reason"]
    r = api.client.post("/v1/admin/nodes/gpu09/drain", headers=api.admin,
                        json={"reason": "x"})
    assert r.status_code == 404 and r.json()["detail"] == "no node gpu09"


def test_a_gpu_held_by_a_foreign_process_is_not_given_out(api: Api, alice: dict) -> None:
    h = api.node("gpu01", gpus=2)
    hand_run = {"pid": 4321, "user": "bob", "command": "python train.py",
                "used_memory_mib": 12000.0}
    api.ok("POST", "/v1/nodes/gpu01/heartbeat", h,
           json={"gpus": [_gpu(0, foreign_processes=[hand_run]), _gpu(1)]})
    (node,) = api.ok("GET", "/v1/nodes", alice)
    assert node["gpus"][0]["foreign_processes"] == [hand_run]
    a = api.submit(alice, gpus=1)
    b = api.submit(alice, gpus=1)
    api.cycle()
    assert api.job(a["id"])["gpu_indices"] == [1]
    assert api.job(b["id"])["state"] == "PENDING"
    # Bob's process ends: the GPU is free again.
    api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"gpus": [_gpu(0), _gpu(1)]})
    api.cycle()
    assert api.job(b["id"])["gpu_indices"] == [0]


def test_an_unhealthy_gpu_is_taken_out_and_shown(api: Api, alice: dict) -> None:
    h = api.node("gpu01", gpus=2)
    api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"gpus": [
        _gpu(0, healthy=False, health_reason="XID 79: GPU has fallen off the bus"), _gpu(1)]})
    (node,) = api.ok("GET", "/v1/nodes", alice)
    assert node["gpus"][0]["healthy"] is False
    assert node["gpus"][0]["health_reason"].startswith("XID 79")
    jobs = [api.submit(alice, gpus=1) for _ in range(2)]
    api.cycle()
    assert [api.job(j["id"])["gpu_indices"] for j in jobs] == [[1], []]
    # A 2-GPU job still fits the node once the GPU is repaired: it is accepted, and waits.
    assert api.submit(alice, gpus=2)["state"] == "PENDING"


def test_job_samples_are_kept_for_accounting(api: Api, alice: dict) -> None:
    from sqlalchemy import select

    from gpuq.scheduler.db.models import JobSample

    h = api.node("gpu01", gpus=2)
    job = api.submit(alice, gpus=2)
    api.cycle()
    for t, energy in enumerate([100.0, 400.0, 900.0]):
        api.ok("POST", "/v1/nodes/gpu01/heartbeat", h, json={"jobs": [{
            "job_id": job["id"], "attempt": 1, "state": "RUNNING",
            "sample": {"utilization_pct": 90.0, "memory_used_mib": 1000.0 * (t + 1),
                       "power_w": 600.0, "energy_j": energy}}]})
        api.clock.advance(30)
    out = api.job(job["id"])
    assert out["gpu_energy_j"] == 900.0 and out["max_gpu_memory_mib"] == 3000.0
    with api.ctx.transaction() as s:
        rows = s.scalars(select(JobSample).where(JobSample.job_id == job["id"])).all()
        # One row a minute at most: the beats at 0 s and 60 s, not the one at 30 s.
        assert [r.energy_j for r in rows] == [100.0, 900.0]


def test_unix_user_mapping_is_the_admins(api: Api, alice: dict) -> None:
    h = api.node("gpu01", gpus=1)
    job = api.submit(alice)
    api.cycle()
    assert api.ok("GET", f"/v1/nodes/gpu01/jobs/{job['id']}", h)["unix_user"] == "alice"
    u = api.ok("PATCH", "/v1/admin/users/alice", api.admin, json={"unix_user": "asmith"})
    assert u["unix_user"] == "asmith"
    assert api.ok("GET", f"/v1/nodes/gpu01/jobs/{job['id']}", h)["unix_user"] == "asmith"
    r = api.client.patch("/v1/admin/users/alice", headers=api.admin,
                         json={"unix_user": "root; rm -rf /"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "unix_user"]
    assert api.client.patch("/v1/admin/users/alice", headers=alice,
                            json={"unix_user": "root"}).status_code == 403
    # Users cannot choose it when they submit either.
    r = api.client.post("/v1/jobs", headers=alice, json={"command": ["id"], "workdir": "/",
                                                         "unix_user": "root"})
    assert r.status_code == 422
    api.ok("POST", "/v1/admin/users", api.admin, 201,
           json={"name": "bob", "account": "lab1", "unix_user": "bsmith"})
    users = {u["name"]: u for u in api.ok("GET", "/v1/admin/users", api.admin)}
    assert users["bob"]["unix_user"] == "bsmith" and users["alice"]["unix_user"] == "asmith"
