"""The audit log: every admin change, with who, what, before and after; and its filters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from tests.api.conftest import Api, audit_entries, bearer, last_audit

END = "2026-02-01T00:00:00Z"


def _setup(api: Api) -> None:
    api.node("gpu01", gpus=4)
    api.account("physics")
    api.account("lab1")
    api.ok("POST", "/v1/admin/users", api.admin, 201, json={"name": "alice", "account": "lab1"})


def _grant(api: Api, **kw: Any) -> dict[str, Any]:
    body = {"account": "lab1", "kind": "reservation", "gpus": 2, "end": END, **kw}
    return api.ok("POST", "/v1/admin/grants", api.admin, 201, json=body)


# Each case: do the change; then (action, target, what before must hold, what after must).
Case = Callable[[Api], tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]]


def account_create(api: Api) -> Any:
    api.account("qlab", parent="physics", shares=3)
    return "account.create", "account:qlab", None, {"parent": "physics", "shares": 3}


def account_update(api: Api) -> Any:
    api.ok("PATCH", "/v1/admin/accounts/lab1", api.admin, json={"parent": "physics",
                                                                "shares": 9})
    return ("account.update", "account:lab1", {"parent": "root", "shares": 1},
            {"parent": "physics", "shares": 9})


def account_retire(api: Api) -> Any:
    api.account("old")
    api.ok("DELETE", "/v1/admin/accounts/old", api.admin)
    return "account.retire", "account:old", {"retired": False}, {"retired": True}


def user_create(api: Api) -> Any:
    api.ok("POST", "/v1/admin/users", api.admin, 201, json={"name": "bob", "account": "lab1"})
    return "user.create", "user:bob", None, {"name": "bob", "default_account": "lab1"}


def user_update(api: Api) -> Any:
    api.ok("PATCH", "/v1/admin/users/alice", api.admin,
           json={"disabled": True, "allowed_qos": ["high"]})
    return ("user.update", "user:alice", {"disabled": False, "allowed_qos": []},
            {"disabled": True, "allowed_qos": ["high"]})


def membership_create(api: Api) -> Any:
    api.ok("POST", "/v1/admin/users/alice/accounts", api.admin, 201,
           json={"account": "physics", "shares": 4})
    return ("membership.create", "user:alice/account:physics", None,
            {"user": "alice", "account": "physics", "shares": 4})


def membership_update(api: Api) -> Any:
    api.ok("PATCH", "/v1/admin/users/alice/accounts/lab1", api.admin, json={"shares": 6})
    return ("membership.update", "user:alice/account:lab1", {"shares": 1}, {"shares": 6})


def membership_delete(api: Api) -> Any:
    api.ok("POST", "/v1/admin/users/alice/accounts", api.admin, 201, json={"account": "physics"})
    api.ok("DELETE", "/v1/admin/users/alice/accounts/physics", api.admin)
    return ("membership.delete", "user:alice/account:physics", {"account": "physics"}, None)


def token_create(api: Api) -> Any:
    tok = api.ok("POST", "/v1/admin/tokens", api.admin, 201,
                 json={"role": "user", "user": "alice", "expires_in_s": 600})
    entry = last_audit(api, "token.create")
    assert tok["token"] not in str(entry)
    assert not {"token", "token_hash", "secret"} & set(entry["after"])
    return ("token.create", f"token:{tok['id']}", None,
            {"user": "alice", "expires_at": "2026-01-01T00:10:00Z", "revoked": False})


def token_revoke(api: Api) -> Any:
    tok = api.ok("POST", "/v1/admin/tokens", api.admin, 201, json={"role": "user",
                                                                    "user": "alice"})
    api.ok("DELETE", f"/v1/admin/tokens/{tok['id']}", api.admin)
    return "token.revoke", f"token:{tok['id']}", {"revoked": False}, {"revoked": True}


def node_drain(api: Api) -> Any:
    api.ok("POST", "/v1/admin/nodes/gpu01/drain", api.admin, json={"reason": "new fans"})
    return ("node.drain", "node:gpu01", {"drain": False},
            {"drain": True, "drain_reason": "new fans"})


def node_resume(api: Api) -> Any:
    api.ok("POST", "/v1/admin/nodes/gpu01/drain", api.admin, json={"reason": "new fans"})
    api.ok("POST", "/v1/admin/nodes/gpu01/resume", api.admin)
    return "node.resume", "node:gpu01", {"drain": True}, {"drain": False}


def usage_import(api: Api) -> Any:
    api.ok("POST", "/v1/admin/usage/import", api.admin,
           json=[{"user": "alice", "account": "lab1", "billed_seconds": 3600}])
    return "usage.import", "usage:import", None, {"records": 1, "billed_seconds": 3600.0}


def grant_create(api: Api) -> Any:
    g = _grant(api, note="deadline")
    return ("grant.create", f"grant:{g['id']}", None,
            {"account": "lab1", "gpus": 2, "state": "active", "note": "deadline"})


def grant_update(api: Api) -> Any:
    g = _grant(api)
    api.ok("PATCH", f"/v1/admin/grants/{g['id']}", api.admin,
           json={"end": "2026-02-08T00:00:00Z", "note": "extended"})
    return ("grant.update", f"grant:{g['id']}", {"end": END, "note": ""},
            {"end": "2026-02-08T00:00:00Z", "note": "extended"})


def grant_revoke(api: Api) -> Any:
    g = _grant(api)
    api.ok("POST", f"/v1/admin/grants/{g['id']}/revoke", api.admin, json={"reason": "done"})
    return ("grant.revoke", f"grant:{g['id']}", {"state": "active"},
            {"state": "revoked", "state_reason": "revoked by admin: done"})


def grant_activate(api: Api) -> Any:
    g = _grant(api, start="2026-01-02T00:00:00Z")
    api.clock.advance(86400)
    api.cycle()
    return ("grant.activate", f"grant:{g['id']}", {"state": "scheduled"}, {"state": "active"})


def grant_expire(api: Api) -> Any:
    g = _grant(api, end="2026-01-01T01:00:00Z")
    api.cycle()
    api.clock.advance(3600)
    api.cycle()
    return ("grant.expire", f"grant:{g['id']}", {"state": "active"},
            {"state": "expired", "state_reason": "end reached"})


CASES: list[Case] = [
    account_create, account_update, account_retire, user_create, user_update,
    membership_create, membership_update, membership_delete, token_create, token_revoke,
    node_drain, node_resume, usage_import, grant_create, grant_update, grant_revoke,
    grant_activate, grant_expire,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_every_admin_change_is_audited(api: Api, case: Case) -> None:
    _setup(api)
    action, target, before, after = case(api)
    entry = last_audit(api, action)
    assert entry["target"] == target
    system = action in ("grant.activate", "grant.expire")
    assert entry["actor"] == ("gpuq" if system else "admin")
    assert (entry["token_id"] is None) == system
    for want, got in ((before, entry["before"]), (after, entry["after"])):
        if want is None:
            assert got is None
        else:
            assert got is not None and {k: got.get(k) for k in want} == want, entry


def test_every_action_in_the_contract_is_covered() -> None:
    contract = {"account.create", "account.update", "account.retire", "user.create",
                "user.update", "membership.create", "membership.update", "membership.delete",
                "token.create", "token.revoke", "node.drain", "node.resume", "grant.create",
                "grant.update", "grant.revoke", "grant.activate", "grant.expire",
                "usage.import"}
    assert {c.__name__.replace("_", ".", 1) for c in CASES} == contract


def test_the_actor_is_the_user_behind_the_token(api: Api) -> None:
    ops = api.user("ops", "lab1", admin=True)
    token_id = next(t["id"] for t in api.ok("GET", "/v1/admin/tokens", api.admin)
                    if t["user"] == "ops")
    api.ok("POST", "/v1/admin/accounts", ops, 201, json={"name": "qlab"})
    entry = last_audit(api, "account.create")
    assert (entry["actor"], entry["token_id"], entry["target"]) == ("ops", token_id,
                                                                   "account:qlab")


def test_a_refused_change_writes_nothing(api: Api) -> None:
    _setup(api)
    before = audit_entries(api)
    r = api.client.patch("/v1/admin/accounts/physics", headers=api.admin,
                         json={"parent": "physics"})
    assert r.status_code == 422
    r = api.client.post("/v1/admin/grants", headers=api.admin,
                        json={"account": "lab1", "kind": "reservation", "gpus": 5, "end": END})
    assert r.status_code == 422
    assert audit_entries(api) == before


def test_filters(api: Api) -> None:
    _setup(api)  # account.create x2, user.create, token.create (node)
    api.clock.advance(3600)
    t1 = api.clock()
    g = _grant(api)
    api.ok("PATCH", f"/v1/admin/grants/{g['id']}", api.admin, json={"note": "n"})
    api.clock.advance(3600)
    api.account("qlab", parent="physics")
    ops = api.user("ops", "lab1", admin=True)
    api.ok("POST", f"/v1/admin/grants/{g['id']}/revoke", ops, json={"reason": "r"})

    everything = audit_entries(api)
    times = [e["time"] for e in everything]
    assert times == sorted(times, reverse=True)  # newest first
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids, reverse=True)
    assert [e["action"] for e in audit_entries(api, action="grant")] == [
        "grant.revoke", "grant.update", "grant.create"]
    assert [e["action"] for e in audit_entries(api, action="grant.update")] == ["grant.update"]
    assert audit_entries(api, action="gran") == []  # a prefix is a whole object name
    assert [e["action"] for e in audit_entries(api, actor="ops")] == ["grant.revoke"]
    assert {e["action"] for e in audit_entries(api, target="account:qlab")} == {
        "account.create"}
    assert {e["target"] for e in audit_entries(api, target=f"grant:{g['id']}")} == {
        f"grant:{g['id']}"}
    window = audit_entries(api, since=t1.isoformat(),
                           until=(t1 + timedelta(seconds=3600)).isoformat())
    assert [e["action"] for e in window] == ["grant.update", "grant.create"]
    assert len(audit_entries(api, limit=2)) == 2
    assert audit_entries(api, limit=2) == everything[:2]
    r = api.client.get("/v1/admin/audit", headers=api.admin, params={"limit": 1001})
    assert r.status_code == 422
    r = api.client.get("/v1/admin/audit", headers=api.admin, params={"limit": 0})
    assert r.status_code == 422


def test_audit_log_needs_an_admin(api: Api) -> None:
    alice = api.user("alice", "lab1")
    assert api.client.get("/v1/admin/audit", headers=alice).status_code == 403
    assert api.client.get("/v1/admin/audit",
                          headers=bearer("gpuq_nope")).status_code == 401
