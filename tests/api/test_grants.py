"""Grants through the admin API: validation, the exact overcommit check, list/get/update/
revoke, state over time, and the service functions the scheduling loop calls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpuq.scheduler.db.models import Grant
from gpuq.scheduler.domain import grants_in_effect as in_effect
from gpuq.scheduler.services import grants as grant_service
from tests.api.conftest import Api, audit_entries

T0 = datetime(2026, 1, 1, tzinfo=UTC)  # the ManualClock's start


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


@pytest.fixture
def cluster(api: Api) -> Api:
    """gpu01: 4 A100-80GB; gpu02: 4 H100-80GB; accounts lab1, lab2 (with users)."""
    api.node("gpu01", gpus=4, model="A100-80GB")
    api.node("gpu02", gpus=4, model="H100-80GB")
    api.user("alice", "lab1")
    api.user("bob", "lab2")
    return api


def grant(api: Api, status: int = 201, **kw: Any) -> Any:
    body = {"account": "lab1", "kind": "reservation", "gpus": 1, "end": at(240), **kw}
    return api.ok("POST", "/v1/admin/grants", api.admin, status, json=body)


def refused(api: Api, **kw: Any) -> Any:
    r = api.client.post("/v1/admin/grants", headers=api.admin,
                        json={"account": "lab1", "kind": "reservation", "gpus": 1,
                              "end": at(240), **kw})
    return r


def test_create_and_read(cluster: Api) -> None:
    api = cluster
    g = grant(api, gpus=2, gpu_model="A100-80GB", nodes=["gpu01", "gpu01"], note="paper",
              start=at(24))
    assert {k: g[k] for k in ("id", "account", "kind", "gpus", "gpu_model", "nodes", "note",
                              "state", "shares", "gpu_hours", "created_by", "revoked_at")} == {
        "id": 1, "account": "lab1", "kind": "reservation", "gpus": 2,
        "gpu_model": "A100-80GB", "nodes": ["gpu01"], "note": "paper", "state": "scheduled",
        "shares": None, "gpu_hours": None, "created_by": "admin", "revoked_at": None}
    assert g["start"] == "2026-01-02T00:00:00Z" and g["end"] == "2026-01-11T00:00:00Z"
    assert g["state_reason"] == "starts at 2026-01-02T00:00Z"
    assert g["usage"]["reserved_gpu_hours"] == 0.0
    s = grant(api, kind="share", gpus=None, shares=50, gpu_hours=100)
    assert (s["state"], s["start"], s["shares"]) == ("active", "2026-01-01T00:00:00Z", 50)
    assert s["usage"]["budget_left_gpu_hours"] == 100
    assert api.ok("GET", f"/v1/admin/grants/{g['id']}", api.admin) == g
    assert api.client.get("/v1/admin/grants/99", headers=api.admin).status_code == 404


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"account": "nolab"}, "account", "no account named 'nolab'"),
    ({"nodes": ["gpu01", "gpu09", "gpu08"]}, "nodes", "gpu09, gpu08"),
    ({"gpu_model": "V100"}, "gpu_model", "models there: A100-80GB, H100-80GB"),
    ({"gpu_model": "H100-80GB", "nodes": ["gpu01"]}, "gpu_model", "models there: A100-80GB"),
    ({"gpus": 9}, "gpus", "only 8 GPUs"),
    ({"gpus": 5, "gpu_model": "A100-80GB"}, "gpus", "at most 4"),
    ({"gpus": 0}, "gpus", "greater than or equal to 1"),
    ({"start": at(-5), "end": at(-1)}, "end", "in the past"),
    ({"end": at(-1)}, "end", "must be after the start"),
    ({"end": "2026-02-01T00:00:00"}, "end", "time zone"),
    ({"kind": "discount"}, "kind", "share"),
    ({"note": "x" * 513}, "note", "512"),
])
def test_each_validation_error_names_its_field(cluster: Api, body: dict, field: str,
                                               words: str) -> None:
    r = refused(cluster, **body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"][:2] == ["body", field], detail
    assert words in detail[0]["msg"], detail


@pytest.mark.parametrize(("body", "words"), [
    ({"start": at(5), "end": at(4)}, "'end' must be after 'start'"),
    ({"kind": "share", "gpus": None}, "'shares'"),
    ({"kind": "share", "shares": 5, "gpus": 2}, "takes no gpus"),
    ({"kind": "reservation", "gpus": None}, "'gpus'"),
    ({"kind": "reservation", "shares": 3}, "takes no shares"),
])
def test_cross_field_errors_name_the_fields(cluster: Api, body: dict, words: str) -> None:
    r = refused(cluster, **body)
    assert r.status_code == 422 and words in r.text, r.text


def test_a_retired_account_gets_no_grant(cluster: Api) -> None:
    api = cluster
    api.account("old")
    api.ok("DELETE", "/v1/admin/accounts/old", api.admin)
    r = refused(api, account="old")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "account"]
    assert "retired" in r.text


def test_overcommit_is_refused_with_the_conflicting_grants(cluster: Api) -> None:
    api = cluster
    g1 = grant(api, gpus=3, gpu_model="A100-80GB")
    g2 = grant(api, gpus=1, nodes=["gpu01"], account="lab2")
    grant(api, gpus=4, gpu_model="H100-80GB", start=at(300), end=at(400))  # later: no conflict
    r = refused(api, gpus=1, gpu_model="A100-80GB", start=at(48))
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert detail["conflicts"] == [g1["id"], g2["id"]]
    msg = detail["message"]
    assert f"conflicts with grants {g1['id']}, {g2['id']}" in msg
    assert "at 2026-01-03T00:00Z" in msg and "A100-80GB" in msg
    # Any model still fits: the H100s are free until hour 300.
    grant(api, gpus=4, start=at(48), end=at(300))
    r = refused(api, gpus=1, start=at(48), end=at(300))
    assert r.status_code == 409
    assert set(r.json()["detail"]["conflicts"]) >= {g1["id"], g2["id"]}


def test_touching_windows_do_not_conflict(cluster: Api) -> None:
    api = cluster
    grant(api, gpus=8, start=at(10), end=at(20))
    grant(api, gpus=8, start=at(20), end=at(30))
    grant(api, gpus=8, start=at(1), end=at(10))
    assert refused(api, gpus=1, start=at(19), end=at(21)).status_code == 409


def test_only_live_reservations_count(cluster: Api) -> None:
    api = cluster
    g = grant(api, gpus=8, end=at(10))
    grant(api, kind="share", gpus=None, shares=100)  # share grants reserve nothing
    assert refused(api, gpus=1, end=at(5)).status_code == 409
    api.ok("POST", f"/v1/admin/grants/{g['id']}/revoke", api.admin, json={"reason": "r"})
    grant(api, gpus=8, end=at(5))


def test_exact_check_beats_per_model_counting(cluster: Api) -> None:
    """4 GPUs of any model, then 4 A100s: the first goes to the H100s (a per-model count
    would say 8 > 4 A100s); a 9th GPU of any kind does not fit anywhere."""
    api = cluster
    anymodel = grant(api, gpus=4)
    grant(api, gpus=4, gpu_model="A100-80GB")
    r = refused(api, gpus=1, gpu_model="H100-80GB")
    assert r.status_code == 409
    assert anymodel["id"] in r.json()["detail"]["conflicts"]


def test_update_and_revoke(cluster: Api) -> None:
    api = cluster
    g = grant(api, gpus=4, gpu_model="A100-80GB", end=at(10))
    other = grant(api, gpus=4, gpu_model="A100-80GB", start=at(10), end=at(20))
    # Moving the end later runs the check again.
    r = api.client.patch(f"/v1/admin/grants/{g['id']}", headers=api.admin,
                         json={"end": at(11)})
    assert r.status_code == 409 and r.json()["detail"]["conflicts"] == [other["id"]]
    u = api.ok("PATCH", f"/v1/admin/grants/{g['id']}", api.admin,
               json={"end": at(8), "note": "shorter"})
    assert (u["end"], u["note"]) == (at(8), "shorter")
    r = api.client.patch(f"/v1/admin/grants/{g['id']}", headers=api.admin,
                         json={"gpu_hours": 3})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "gpu_hours"]
    r = api.client.patch(f"/v1/admin/grants/{g['id']}", headers=api.admin,
                         json={"end": at(-1)})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "end"]
    v = api.ok("POST", f"/v1/admin/grants/{other['id']}/revoke", api.admin,
               json={"reason": "project cancelled"})
    assert (v["state"], v["state_reason"]) == ("revoked", "revoked by admin: project cancelled")
    assert v["revoked_at"] == "2026-01-01T00:00:00Z"
    again = api.ok("POST", f"/v1/admin/grants/{other['id']}/revoke", api.admin,
                   json={"reason": "twice"})
    assert again["state_reason"] == "revoked by admin: project cancelled"
    assert len(audit_entries(api, action="grant.revoke")) == 1
    r = api.client.patch(f"/v1/admin/grants/{other['id']}", headers=api.admin,
                         json={"note": "x"})
    assert r.status_code == 409 and "revoked" in r.text
    api.ok("PATCH", f"/v1/admin/grants/{g['id']}", api.admin, json={"end": at(30)})
    api.clock.advance(31 * 3600)
    r = api.client.patch(f"/v1/admin/grants/{g['id']}", headers=api.admin, json={"note": "x"})
    assert r.status_code == 409 and "expired (end reached)" in r.text
    r = api.client.post(f"/v1/admin/grants/{g['id']}/revoke", headers=api.admin,
                        json={"reason": "x"})
    assert r.status_code == 409
    r = api.client.post(f"/v1/admin/grants/{g['id']}/revoke", headers=api.admin, json={})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "reason"]


def test_list_filters(cluster: Api) -> None:
    api = cluster
    a = grant(api, gpus=1)
    b = grant(api, gpus=1, account="lab2", start=at(5))
    c = grant(api, kind="share", gpus=None, shares=3, account="lab2")
    api.ok("POST", f"/v1/admin/grants/{a['id']}/revoke", api.admin, json={"reason": "r"})

    def ids(**params: Any) -> list[int]:
        return [g["id"] for g in api.ok("GET", "/v1/admin/grants", api.admin, params=params)]

    assert ids() == [a["id"], b["id"], c["id"]]
    assert ids(account="lab2") == [b["id"], c["id"]]
    assert ids(kind="share") == [c["id"]]
    assert ids(state="revoked") == [a["id"]]
    assert ids(state="scheduled") == [b["id"]]
    assert ids(state="active", account="lab2") == [c["id"]]
    api.clock.advance(5 * 3600)
    assert ids(state="active") == [b["id"], c["id"]]
    r = api.client.get("/v1/admin/grants", headers=api.admin, params={"state": "sleepy"})
    assert r.status_code == 422
    r = api.client.get("/v1/admin/grants", headers=api.admin, params={"account": "nolab"})
    assert r.status_code == 422 and "no account named" in r.text


def test_state_follows_the_clock(cluster: Api) -> None:
    api = cluster
    g = grant(api, start=at(1), end=at(2))

    def state() -> tuple[str, str]:
        out = api.ok("GET", f"/v1/admin/grants/{g['id']}", api.admin)
        return out["state"], out["state_reason"]

    assert state() == ("scheduled", "starts at 2026-01-01T01:00Z")
    api.clock.advance(3600)
    assert state() == ("active", "in its window until 2026-01-01T02:00Z")
    api.clock.advance(3600)
    assert state() == ("expired", "end reached")


# --- what the loop calls ----------------------------------------------------------------


def stored(api: Api, grant_id: int) -> tuple[str, str]:
    with api.ctx.transaction() as s:
        row = s.get(Grant, grant_id)
        assert row is not None
        return row.state, row.state_reason


def refresh(api: Api) -> None:
    with api.ctx.transaction() as s:
        grant_service.refresh_states(s, api.clock(), api.ctx.settings)


def test_refresh_states_activates_and_expires_and_audits_as_gpuq(cluster: Api) -> None:
    api = cluster
    g = grant(api, start=at(1), end=at(3))
    refresh(api)
    assert stored(api, g["id"])[0] == "scheduled"
    assert audit_entries(api, actor="gpuq") == []
    api.clock.advance(3600)
    refresh(api)
    refresh(api)  # twice changes nothing more
    assert stored(api, g["id"]) == ("active", "in its window until 2026-01-01T03:00Z")
    api.clock.advance(2 * 3600)
    refresh(api)
    assert stored(api, g["id"]) == ("expired", "end reached")
    entries = audit_entries(api, actor="gpuq")
    assert [(e["action"], e["target"], e["token_id"]) for e in entries] == [
        ("grant.expire", f"grant:{g['id']}", None), ("grant.activate", f"grant:{g['id']}", None)]
    assert (entries[0]["before"]["state"], entries[0]["after"]["state"]) == ("active",
                                                                            "expired")


def test_a_grant_that_starts_and_ends_between_cycles_expires(cluster: Api) -> None:
    api = cluster
    g = grant(api, start=at(1), end=at(2))
    api.clock.advance(5 * 3600)
    refresh(api)
    assert stored(api, g["id"])[0] == "expired"
    assert [e["action"] for e in audit_entries(api, actor="gpuq")] == ["grant.expire"]


def test_loop_views(cluster: Api) -> None:
    api = cluster
    s1 = grant(api, kind="share", gpus=None, shares=10, end=at(5))
    grant(api, kind="share", gpus=None, shares=5, start=at(2), end=at(6))
    grant(api, kind="share", gpus=None, shares=7, account="lab2", start=at(3), end=at(4))
    r1 = grant(api, gpus=2, gpu_model="A100-80GB", nodes=["gpu01"], end=at(5))
    r2 = grant(api, gpus=3, account="lab2", start=at(1), end=at(8))
    revoked = grant(api, gpus=1, start=at(0.5), end=at(9))
    api.ok("POST", f"/v1/admin/grants/{revoked['id']}/revoke", api.admin, json={"reason": "r"})

    def views(hours: float) -> tuple[Any, Any, Any]:
        now = T0 + timedelta(hours=hours)
        with api.ctx.transaction() as s:
            return (in_effect.share_boosts(s, now), in_effect.reservations(s, now),
                    in_effect.next_change(s, now))

    assert views(0) == ({"lab1": 10}, [(r1["id"], "lab1", 2, "A100-80GB", ("gpu01",))],
                        T0 + timedelta(hours=1))
    boosts, reserved, nxt = views(3)
    assert boosts == {"lab1": 15, "lab2": 7}
    assert [r[0] for r in reserved] == [r1["id"], r2["id"]]
    assert reserved[1] == (r2["id"], "lab2", 3, None, ())
    assert nxt == T0 + timedelta(hours=4)
    assert views(5)[0] == {"lab1": 5}
    assert views(8) == ({}, [], None)
    del s1


# --- usage ------------------------------------------------------------------------------


def add_usage(api: Api, *, user: str, account: str, start: float, end: float, gpus: int,
              weight: float = 1.0, job_id: int | None = None) -> None:
    from sqlalchemy import select

    from gpuq.scheduler.db.models import Account, UsageRecord, User

    with api.ctx.transaction() as s:
        uid = s.scalar(select(User.id).where(User.name == user))
        aid = s.scalar(select(Account.id).where(Account.name == account))
        seconds = (end - start) * 3600
        s.add(UsageRecord(job_id=job_id, user_id=uid, account_id=aid,
                          start=T0 + timedelta(hours=start), end=T0 + timedelta(hours=end),
                          gpu_seconds=gpus * seconds, billed_seconds=gpus * seconds * weight,
                          gpu_model="A100-80GB"))


def test_usage_against_hand_computed_figures(cluster: Api) -> None:
    """Window [1 h, 5 h), read at 4.5 h. Records (hours):
    qlab      alice [0, 2]  2 GPUs weight 2: half in the window: 2 GPU-h, 4 billed
    qlab-sub  carol [2, 3]  1 GPU           : all in the window: 1 GPU-h, 1 billed
    lab2      bob   [2, 3]  4 GPUs          : another account: nothing
    qlab      alice [4, 6]  1 GPU           : [4, 4.5] of it:  0.5 GPU-h, 0.5 billed
    qlab      alice imported (no length)    : not usage in a window
    => 3.5 GPU-hours, 5.5 billed; reservation of 2 GPUs: 2 x 3.5 h = 7 reserved GPU-hours.
    The job behind the first and last records used 2 kWh over its 3 GPU-hours (6 h of
    GPU-time: 4 + 2), 2.5 GPU-h of them in the window: 2 x 2.5 / 6 = 0.8333 kWh."""
    api = cluster
    api.account("qlab")
    api.account("qlab-sub", parent="qlab")
    alice_q = api.user("carol", "qlab-sub")
    del alice_q
    api.ok("POST", "/v1/admin/users/alice/accounts", api.admin, 201, json={"account": "qlab"})
    job = api.submit(api.user("dave", "qlab"))["id"]
    share = grant(api, account="qlab", kind="share", gpus=None, shares=5, gpu_hours=10,
                  start=at(1), end=at(5))
    res = grant(api, account="qlab", gpus=2, start=at(1), end=at(5))
    add_usage(api, user="alice", account="qlab", start=0, end=2, gpus=2, weight=2, job_id=job)
    add_usage(api, user="carol", account="qlab-sub", start=2, end=3, gpus=1)
    add_usage(api, user="bob", account="lab2", start=2, end=3, gpus=4)
    add_usage(api, user="alice", account="qlab", start=4, end=6, gpus=1, job_id=job)
    add_usage(api, user="alice", account="qlab", start=2, end=2, gpus=9)
    with api.ctx.transaction() as s:
        from gpuq.scheduler.db.models import Job

        row = s.get(Job, job)
        assert row is not None
        row.gpu_energy_j = 2 * 3.6e6
        res_row = s.get(Grant, res["id"])
        assert res_row is not None
        res_row.borrowed_gpu_seconds = 5400.0
        res_row.preemptions = 2
    api.clock.advance(4.5 * 3600)
    u = api.ok("GET", f"/v1/admin/grants/{share['id']}", api.admin)["usage"]
    assert u["gpu_hours"] == pytest.approx(3.5)
    assert u["billed_gpu_hours"] == pytest.approx(5.5)
    assert u["budget_gpu_hours"] == 10
    assert u["budget_left_gpu_hours"] == pytest.approx(4.5)
    assert u["reserved_gpu_hours"] is None
    assert u["energy_kwh"] == pytest.approx(2 * 2.5 / 6)
    r = api.ok("GET", f"/v1/admin/grants/{res['id']}", api.admin)["usage"]
    assert r["gpu_hours"] == pytest.approx(3.5)
    assert r["reserved_gpu_hours"] == pytest.approx(7.0)
    assert r["budget_gpu_hours"] is None
    assert r["borrowed_gpu_hours"] == pytest.approx(1.5)
    assert r["preemptions"] == 2
    # After the end, the figures stop at the end.
    api.clock.advance(10 * 3600)
    r = api.ok("GET", f"/v1/admin/grants/{res['id']}", api.admin)["usage"]
    assert r["gpu_hours"] == pytest.approx(2 + 1 + 1)
    assert r["reserved_gpu_hours"] == pytest.approx(8.0)


def test_a_share_grants_budget_runs_out(cluster: Api) -> None:
    api = cluster
    g = grant(api, kind="share", gpus=None, shares=9, gpu_hours=3)
    add_usage(api, user="alice", account="lab1", start=0, end=1, gpus=2)  # 2 billed
    api.clock.advance(3600)
    refresh(api)
    assert stored(api, g["id"])[0] == "active"
    with api.ctx.transaction() as s:
        assert in_effect.share_boosts(s, api.clock()) == {"lab1": 9}
    add_usage(api, user="alice", account="lab1", start=1, end=2, gpus=1, weight=1.5)  # 1.5
    api.clock.advance(3600)
    refresh(api)
    assert stored(api, g["id"]) == ("expired", "budget of 3 billed GPU-hours used up")
    with api.ctx.transaction() as s:
        assert in_effect.share_boosts(s, api.clock()) == {}
        assert in_effect.next_change(s, api.clock()) is not None  # its end still counts
    out = api.ok("GET", f"/v1/admin/grants/{g['id']}", api.admin)
    assert out["state"] == "expired" and out["usage"]["budget_left_gpu_hours"] == 0
    entry = audit_entries(api, action="grant.expire")[0]
    assert entry["actor"] == "gpuq"
    assert entry["after"]["state_reason"] == "budget of 3 billed GPU-hours used up"


def test_two_reservations_at_once_are_checked_one_after_the_other(cluster: Api) -> None:
    """Two admins creating reservations at the same moment cannot both get the last GPUs:
    the second check waits for the first transaction and then sees its grant."""
    import threading

    from gpuq.scheduler.errors import Overcommitted
    from gpuq.scheduler.services.audit import Actor
    from gpuq.wire.grants import GrantCreate

    api = cluster
    body = GrantCreate(account="lab1", kind="reservation", gpus=5,
                       end=T0 + timedelta(hours=10))
    results: list[object] = []

    def second() -> None:
        try:
            with api.ctx.transaction() as s2:
                grant_service.create_grant(s2, body, actor=Actor("bob"), now=api.clock())
            results.append("created")
        except Overcommitted as e:
            results.append(e.conflicts)

    with api.ctx.transaction() as s:
        first = grant_service.create_grant(s, body, actor=Actor("admin"), now=api.clock())
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waiting for this transaction
    thread.join(30)
    assert results == [[first.id]]
