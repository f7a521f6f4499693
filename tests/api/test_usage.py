"""Usage: billed GPU-seconds charged while jobs run, decaying with the half-life;
imported history."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gpuq.scheduler.db.models import Membership, UsageRecord, User
from tests.api.conftest import Api

DAY = 86400.0


@pytest.fixture
def alice(api: Api) -> dict[str, str]:
    api.node("gpu01", gpus=4, model="A100-80GB")  # billed 4.8 per GPU-second
    api.ctx.settings.node_down_after_s = 1e9  # the node sends no heartbeats here
    return api.user("alice", "lab1")


def usage(api: Api, user: str = "alice") -> float:
    with api.ctx.transaction() as s:
        uid = s.scalar(select(User.id).where(User.name == user))
        return sum(m.usage for m in s.scalars(select(Membership)
                                              .where(Membership.user_id == uid)))


def _running(api: Api, headers: dict[str, str], gpus: int) -> int:
    job = api.submit(headers, gpus=gpus)
    api.cycle()
    node = api.ok("POST", "/v1/admin/tokens", api.admin, 201,
                  json={"role": "node", "node": "gpu01"})
    h = {"Authorization": f"Bearer {node['token']}"}
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job['id']}/events", h, json={"state": "RUNNING"})
    return job["id"]


def test_running_jobs_charge_as_they_run(api: Api, alice: dict) -> None:
    _running(api, alice, gpus=2)
    api.cycle()
    start = usage(api)
    api.clock.advance(100)
    api.cycle()
    # 2 GPUs x 100 s x 4.8, decayed by a hair over 100 s.
    assert usage(api) - start == pytest.approx(2 * 100 * 4.8, rel=1e-3)


def test_usage_halves_every_half_life(api: Api, alice: dict) -> None:
    job_id = _running(api, alice, gpus=1)
    api.cycle()
    api.clock.advance(1000)
    api.cycle()
    node = api.ok("POST", "/v1/admin/tokens", api.admin, 201,
                  json={"role": "node", "node": "gpu01"})
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job_id}/events",
           {"Authorization": f"Bearer {node['token']}"},
           json={"state": "COMPLETED", "exit_code": 0})
    api.cycle()  # charges the end
    after = usage(api)
    assert after == pytest.approx(1000 * 4.8, rel=1e-3)
    api.clock.advance(api.ctx.settings.usage_half_life_s)
    api.cycle()
    assert usage(api) == pytest.approx(after / 2, rel=1e-6)
    with api.ctx.transaction() as s:
        billed = sum(r.billed_seconds for r in s.scalars(select(UsageRecord)))
    assert billed == pytest.approx(1000 * 4.8, rel=1e-6)


def test_an_ended_job_is_charged_to_its_end_only(api: Api, alice: dict) -> None:
    job_id = _running(api, alice, gpus=4)
    api.cycle()
    api.clock.advance(50)
    node = api.ok("POST", "/v1/admin/tokens", api.admin, 201,
                  json={"role": "node", "node": "gpu01"})
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job_id}/events",
           {"Authorization": f"Bearer {node['token']}"},
           json={"state": "FAILED", "exit_code": 1})
    api.clock.advance(500)  # long after the end: nothing more is charged
    api.cycle()
    assert usage(api) == pytest.approx(4 * 50 * 4.8, rel=1e-3)


def test_import_json_and_csv(api: Api, alice: dict) -> None:
    api.user("bob", "lab2")
    now = api.clock()
    week_ago = (now.timestamp() - api.ctx.settings.usage_half_life_s)
    from datetime import UTC, datetime

    end = datetime.fromtimestamp(week_ago, UTC).isoformat()
    out = api.ok("POST", "/v1/admin/usage/import", api.admin, json=[
        {"user": "alice", "account": "lab1", "billed_seconds": 1000.0, "end_time": end},
        {"user": "bob", "account": "lab2", "billed_seconds": 300.0}])
    assert out["imported"] == 2
    assert out["decayed_billed_seconds"] == pytest.approx(500.0 + 300.0)
    assert usage(api, "alice") == pytest.approx(500.0)
    csv = "user,account,billed_seconds\nbob,lab2,100\n"
    api.ok("POST", "/v1/admin/usage/import", {**api.admin, "Content-Type": "text/csv"},
           content=csv)
    assert usage(api, "bob") == pytest.approx(400.0)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([{"user": "alice", "account": "lab9", "billed_seconds": 1}], "not a member"),
        ([{"user": "alice", "account": "lab1", "billed_seconds": -1}], "greater than"),
        ([{"user": "alice", "account": "lab1"}], "billed_seconds"),
        ([{"user": "alice", "account": "lab1", "billed_seconds": 1,
           "end_time": "2026-01-01T00:00:00"}], "time zone"),
    ],
)
def test_bad_imports_change_nothing(api: Api, alice: dict, body: list, words: str) -> None:
    ok = {"user": "alice", "account": "lab1", "billed_seconds": 50}
    r = api.client.post("/v1/admin/usage/import", headers=api.admin, json=[ok, *body])
    assert r.status_code == 422 and words in r.text, r.text
    assert usage(api) == 0.0  # the valid first record was not kept either


def test_import_is_admin_only(api: Api, alice: dict) -> None:
    r = api.client.post("/v1/admin/usage/import", headers=alice, json=[])
    assert r.status_code == 403
    r = api.client.post("/v1/admin/usage/import", headers=api.admin, content=b"{not json",
                        )
    assert r.status_code == 422 and "cannot read the body as JSON" in r.text


def test_shares_may_be_parent(api: Api) -> None:
    api.account("dept", shares=10)
    api.ok("POST", "/v1/admin/accounts", api.admin, 201,
           json={"name": "team", "parent": "dept", "shares": "parent"})
    accts = {a["name"]: a for a in api.ok("GET", "/v1/admin/accounts", api.admin)}
    assert accts["team"]["shares"] == "parent" and accts["dept"]["shares"] == 10
