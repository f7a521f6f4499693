"""Reservation grants, borrowing and preemption through the API and the scheduling loop
(a real database, the real policy, a manual clock; the node is played by hand)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.api.conftest import Api


def _grant(api: Api, status: int = 201, **body: Any) -> Any:
    start = api.clock().isoformat()
    end = (api.clock() + timedelta(days=30)).isoformat()
    return api.ok("POST", "/v1/admin/grants", api.admin, status,
                  json={"start": start, "end": end, **body})


def _run(api: Api, h: dict[str, str], job_id: int, node: str = "gpu01") -> None:
    job = api.job(job_id)
    assert job["state"] == "DISPATCHED", job
    api.ok("POST", f"/v1/nodes/{node}/jobs/{job_id}/events", h,
           json={"state": "RUNNING", "attempt": job["attempt"]})


def _end(api: Api, h: dict[str, str], job_id: int, state: str = "CANCELLED",
         node: str = "gpu01", exit_code: int | None = 143) -> Any:
    job = api.job(job_id)
    return api.ok("POST", f"/v1/nodes/{node}/jobs/{job_id}/events", h,
                  json={"state": state, "attempt": job["attempt"], "exit_code": exit_code})


def _borrowers(api: Api, ids: list[int]) -> dict[int, int]:
    out = {}
    for i in ids:
        job = api.job(i)
        if job["borrowed_grant"] is not None:
            out[i] = job["borrowed_gpus"]
    return out


def _full_of_borrowers(api: Api) -> tuple[dict[str, str], dict[str, str], dict[str, str],
                                          list[int], int]:
    """One 4-GPU node; qlab holds a reservation of 2 GPUs; four 1-GPU jobs of another lab
    fill the node."""
    h = api.node("gpu01", gpus=4)
    grantee = api.user("gina", "qlab")
    other = api.user("olaf", "biglab")
    grant = _grant(api, account="qlab", kind="reservation", gpus=2, note="award 2027")
    assert grant["state"] == "active"
    ids = [api.submit(other, gpus=1, time_limit_s=7200)["id"] for _ in range(4)]
    api.cycle()
    for i in ids:
        _run(api, h, i)
    api.cycle()
    return h, grantee, other, ids, grant["id"]


def test_borrowers_fill_idle_reserved_gpus_but_never_hold_more_than_them(api: Api) -> None:
    h, grantee, other, ids, gid = _full_of_borrowers(api)
    assert all(api.job(i)["state"] == "RUNNING" for i in ids), "nothing stays idle"
    borrowed = _borrowers(api, ids)
    assert sum(borrowed.values()) == 2, borrowed  # exactly the idle reserved GPUs
    some = next(iter(borrowed))
    assert any("borrowing" in e["reason"] for e in api.job(some)["events"])


def test_a_grantee_job_preempts_borrowers_and_starts_on_their_gpus(api: Api) -> None:
    h, grantee, other, ids, gid = _full_of_borrowers(api)
    borrowed = set(_borrowers(api, ids))
    api.dispatcher.calls.clear()
    mine = api.submit(grantee, gpus=2, time_limit_s=3600)["id"]
    api.cycle()
    kills = {j for kind, node, j in api.dispatcher.calls if kind == "kill"}
    assert kills == borrowed, "exactly the borrowers are preempted"
    job = api.job(mine)
    assert job["state"] == "PENDING" and job["reason"].startswith("Preempting"), job
    assert job["claim"] is not None and sorted(job["claim"]["victims"]) == sorted(borrowed)
    for v in borrowed:
        victim = api.job(v)
        assert victim["preempt_requested"] and victim["state"] == "RUNNING"
    # A late higher-priority job of another lab does not take the GPUs being freed.
    late = api.submit(other, gpus=1)["id"]
    # The victims' node stops them (SIGTERM, grace period, SIGKILL) and reports.
    for v in sorted(borrowed):
        out = _end(api, h, v)
        assert out["state"] == "PENDING"  # PREEMPTED, then requeued
    api.cycle()
    job = api.job(mine)
    assert job["state"] == "DISPATCHED" and sorted(job["gpu_indices"]) == sorted(
        job["claim"]["gpus"] if job["claim"] else job["gpu_indices"])
    assert api.job(late)["state"] == "PENDING"
    for v in borrowed:
        victim = api.job(v)
        states = [(e["old_state"], e["new_state"]) for e in victim["events"]]
        assert ("RUNNING", "PREEMPTED") in states and ("PREEMPTED", "REQUEUED") in states
        assert ("REQUEUED", "PENDING") in states
        assert victim["state"] == "PENDING" and victim["preemptions"] == 1
        assert victim["submitted_at"] == api.job(v)["submitted_at"]  # keeps its age
    grant = api.ok("GET", f"/v1/admin/grants/{gid}", api.admin)
    assert grant["usage"]["preemptions"] == 2


def test_a_borrower_that_asked_not_to_be_requeued_ends_preempted(api: Api) -> None:
    h = api.node("gpu01", gpus=2)
    grantee = api.user("gina", "qlab")
    other = api.user("olaf", "biglab")
    _grant(api, account="qlab", kind="reservation", gpus=2)
    b = api.submit(other, gpus=2, requeue=False)["id"]
    api.cycle()
    _run(api, h, b)
    api.cycle()
    assert api.job(b)["borrowed_gpus"] == 2
    mine = api.submit(grantee, gpus=1)["id"]
    api.cycle()
    assert api.job(b)["preempt_requested"]
    # The job checkpoints and exits 0 on SIGTERM: the worker reports the run it signalled
    # as CANCELLED, whatever its exit code; it was preempted.
    assert _end(api, h, b, exit_code=0)["state"] == "PREEMPTED"
    api.cycle()
    assert api.job(mine)["state"] == "DISPATCHED"
    assert api.job(b)["state"] == "PREEMPTED"


def test_a_borrower_that_ends_by_itself_before_the_signal_is_what_it_reports(
        api: Api) -> None:
    """Preemption was requested, but the run ended on its own before the worker signalled
    it (the kill arrived to find nothing running): COMPLETED or FAILED stand, and the job
    is not run again nor counted as a preemption; its GPUs go to the grantee."""
    h, grantee, other, ids, gid = _full_of_borrowers(api)
    borrowed = sorted(_borrowers(api, ids))
    mine = api.submit(grantee, gpus=2, time_limit_s=3600)["id"]
    api.cycle()
    assert all(api.job(v)["preempt_requested"] for v in borrowed)
    done, failed = borrowed
    assert _end(api, h, done, state="COMPLETED", exit_code=0)["state"] == "COMPLETED"
    assert _end(api, h, failed, state="FAILED", exit_code=3)["state"] == "FAILED"
    for v in borrowed:
        job = api.job(v)
        assert job["preemptions"] == 0 and job["attempt"] == 1, job
        assert "PREEMPTED" not in [e["new_state"] for e in job["events"]]
    api.cycle()
    assert api.job(mine)["state"] == "DISPATCHED"
    grant = api.ok("GET", f"/v1/admin/grants/{gid}", api.admin)
    assert grant["usage"]["preemptions"] == 2  # the grant asked for them


def test_preemptible_qos_jobs_are_preempted_by_normal_jobs(api: Api) -> None:
    h = api.node("gpu01", gpus=2)
    alice = api.user("alice", "lab1")
    bob = api.user("bob", "lab2")
    scav = api.submit(alice, gpus=2, qos="preemptible")["id"]
    api.cycle()
    _run(api, h, scav)
    assert api.job(scav)["qos"] == "preemptible"
    api.dispatcher.calls.clear()
    normal = api.submit(bob, gpus=1)["id"]
    api.cycle()
    assert ("kill", "gpu01", scav) in api.dispatcher.calls
    _end(api, h, scav)
    api.cycle()
    assert api.job(normal)["state"] == "DISPATCHED"


def test_preemptible_jobs_never_preempt(api: Api) -> None:
    h = api.node("gpu01", gpus=1)
    alice = api.user("alice", "lab1")
    first = api.submit(alice, gpus=1, qos="preemptible")["id"]
    api.cycle()
    _run(api, h, first)
    api.dispatcher.calls.clear()
    api.submit(alice, gpus=1, qos="preemptible")
    api.cycle()
    assert not [c for c in api.dispatcher.calls if c[0] == "kill"]


def test_high_qos_needs_an_admins_permission(api: Api) -> None:
    api.node("gpu01", gpus=1)
    alice = api.user("alice", "lab1")
    r = api.client.post("/v1/jobs", headers=alice,
                        json={"command": ["true"], "workdir": "/tmp", "qos": "high"})
    assert r.status_code == 403 and r.json()["detail"][0]["loc"] == ["body", "qos"], r.text
    api.ok("PATCH", "/v1/admin/users/alice", api.admin, json={"allowed_qos": ["high"]})
    assert api.submit(alice, qos="high")["qos"] == "high"


def test_jobs_inherit_their_accounts_default_qos(api: Api) -> None:
    api.node("gpu01", gpus=1)
    api.ok("POST", "/v1/admin/accounts", api.admin, 201,
           json={"name": "scavengers", "default_qos": "preemptible"})
    api.ok("POST", "/v1/admin/accounts", api.admin, 201,
           json={"name": "night", "parent": "scavengers"})
    carl = api.user("carl", "night")
    assert api.submit(carl)["qos"] == "preemptible"
    assert api.submit(carl, qos="normal")["qos"] == "normal"


def test_a_share_grant_moves_the_fairshare_factor_until_its_end(api: Api) -> None:
    api.node("gpu01", gpus=2)
    api.user("alice", "lab1")
    api.user("bob", "lab2")
    for user, account in (("alice", "lab1"), ("bob", "lab2")):
        api.ok("POST", "/v1/admin/usage/import", api.admin,
               json=[{"user": user, "account": account, "billed_seconds": 36000}])

    def shares() -> dict[str, Any]:
        rows = api.ok("GET", "/v1/fairshare", api.admin)
        return {r["name"]: r for r in rows if r["user"] is None}

    before = shares()
    assert before["lab1"]["raw_shares"] == 1
    end = api.clock() + timedelta(hours=2)
    api.ok("POST", "/v1/admin/grants", api.admin, 201,
           json={"account": "lab1", "kind": "share", "shares": 3, "end": end.isoformat()})
    during = shares()
    assert during["lab1"]["raw_shares"] == 4
    assert during["lab1"]["norm_shares"] > before["lab1"]["norm_shares"]
    users = {r["user"]: r["fairshare"] for r in api.ok("GET", "/v1/fairshare", api.admin)
             if r["user"]}
    assert users["alice"] > users["bob"], users  # same usage, larger target
    api.clock.advance(3 * 3600)
    api.cycle()
    assert shares()["lab1"]["raw_shares"] == 1


def test_a_share_grant_stops_at_its_budget(api: Api) -> None:
    h = api.node("gpu01", gpus=2, model="TEST-GPU")  # no billing weight: billed = GPU-hours
    alice = api.user("alice", "lab1")
    end = api.clock() + timedelta(days=10)
    g = api.ok("POST", "/v1/admin/grants", api.admin, 201,
               json={"account": "lab1", "kind": "share", "shares": 9, "gpu_hours": 1.5,
                     "end": end.isoformat()})

    def lab1_shares() -> Any:
        rows = api.ok("GET", "/v1/fairshare", api.admin)
        return next(r["raw_shares"] for r in rows if r["name"] == "lab1" and r["user"] is None)

    assert lab1_shares() == 10
    job = api.submit(alice, gpus=2, time_limit_s=7200)["id"]
    api.cycle()
    _run(api, h, job)
    api.clock.advance(1800)  # 2 GPUs x 0.5 h = 1 GPU-hour: under the budget
    api.ok("POST", "/v1/nodes/gpu01/heartbeat", h,
           json={"jobs": [{"job_id": job, "attempt": 1, "state": "RUNNING"}]})
    api.cycle()
    api.cycle()
    grant = api.ok("GET", f"/v1/admin/grants/{g['id']}", api.admin)
    assert grant["state"] == "active" and abs(grant["usage"]["gpu_hours"] - 1.0) < 0.01
    assert lab1_shares() == 10
    api.clock.advance(1800)  # 2 GPU-hours: over the 1.5 budget
    api.ok("POST", "/v1/nodes/gpu01/heartbeat", h,
           json={"jobs": [{"job_id": job, "attempt": 1, "state": "RUNNING"}]})
    api.cycle()
    api.cycle()
    grant = api.ok("GET", f"/v1/admin/grants/{g['id']}", api.admin)
    assert grant["state"] == "expired" and "budget" in grant["state_reason"], grant
    assert lab1_shares() == 1


def test_a_scheduled_grant_activates_and_expires_on_its_own(api: Api) -> None:
    api.node("gpu01", gpus=2)
    api.user("alice", "lab1")
    start = api.clock() + timedelta(hours=1)
    g = api.ok("POST", "/v1/admin/grants", api.admin, 201,
               json={"account": "lab1", "kind": "reservation", "gpus": 1,
                     "start": start.isoformat(),
                     "end": (start + timedelta(hours=1)).isoformat()})
    assert g["state"] == "scheduled"
    api.clock.advance(3600)
    result = api.cycle()
    assert api.ok("GET", f"/v1/admin/grants/{g['id']}", api.admin)["state"] == "active"
    assert result.next_grant_change == start + timedelta(hours=1)
    api.clock.advance(3600)
    api.cycle()
    assert api.ok("GET", f"/v1/admin/grants/{g['id']}", api.admin)["state"] == "expired"
    audit = api.ok("GET", "/v1/admin/audit?action=grant", api.admin)
    assert {a["action"] for a in audit if a["actor"] == "gpuq"} >= {"grant.activate",
                                                                     "grant.expire"}
