"""Every auth boundary: user vs other user vs admin vs node token."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from gpuq.scheduler.db.models import ApiToken
from tests.api.conftest import Api, bearer


@pytest.fixture
def world(api: Api) -> dict[str, dict[str, str]]:
    n1 = api.node("gpu01", gpus=4)
    n2 = api.node("gpu02", gpus=4)
    alice = api.user("alice", "lab1")
    bob = api.user("bob", "lab1")
    return {"gpu01": n1, "gpu02": n2, "alice": alice, "bob": bob}


def test_no_token_and_bad_token_are_401(api: Api) -> None:
    assert api.client.get("/v1/jobs").status_code == 401
    r = api.client.get("/v1/jobs", headers=bearer("gpuq_not-a-real-token"))
    assert r.status_code == 401 and "invalid" in r.json()["detail"]
    assert api.client.get("/healthz").status_code == 200  # no token needed


def test_revoked_token_stops_working(api: Api, world: dict) -> None:
    tok = api.ok("POST", "/v1/admin/tokens", api.admin, 201, json={"role": "user",
                                                                    "user": "alice"})
    assert api.client.get("/v1/jobs", headers=bearer(tok["token"])).status_code == 200
    api.ok("DELETE", f"/v1/admin/tokens/{tok['id']}", api.admin)
    assert api.client.get("/v1/jobs", headers=bearer(tok["token"])).status_code == 401


def test_tokens_are_stored_only_as_hashes(api: Api, world: dict) -> None:
    tok = api.ok("POST", "/v1/admin/tokens", api.admin, 201, json={"role": "user",
                                                                    "user": "alice"})
    secret = tok["token"]
    with api.ctx.transaction() as s:
        rows = s.scalars(select(ApiToken)).all()
        stored = {r.token_hash for r in rows}
        assert all(secret not in (r.token_hash, r.prefix, r.description) for r in rows)
    assert hashlib.sha256(secret.encode()).hexdigest() in stored
    listed = api.ok("GET", "/v1/admin/tokens", api.admin)
    assert all("token" not in t for t in listed)


def test_users_cannot_touch_other_users_jobs(api: Api, world: dict) -> None:
    job = api.submit(world["alice"])
    bob = world["bob"]
    r = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=bob)
    assert r.status_code == 403 and "another user" in r.json()["detail"]
    assert api.client.get(f"/v1/jobs/{job['id']}/log", headers=bob).status_code == 403
    assert api.job(job["id"])["state"] == "PENDING"
    # ... but may see it in the queue, without its spec.
    seen = api.ok("GET", f"/v1/jobs/{job['id']}", bob)
    assert seen["command"] is None


def test_admin_can_cancel_anyones_job(api: Api, world: dict) -> None:
    job = api.submit(world["alice"])
    out = api.ok("POST", f"/v1/jobs/{job['id']}/cancel", api.admin)
    assert out["state"] == "CANCELLED"
    assert api.job(job["id"])["events"][-1]["reason"] == "cancelled by admin"
    assert api.client.get(f"/v1/jobs/{job['id']}/log", headers=api.admin).status_code == 200


@pytest.mark.parametrize("who", ["alice", "gpu01"])
@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", "/v1/admin/accounts", {"name": "x"}),
        ("GET", "/v1/admin/accounts", None),
        ("POST", "/v1/admin/users", {"name": "eve", "account": "lab1"}),
        ("GET", "/v1/admin/users", None),
        ("POST", "/v1/admin/tokens", {"role": "admin", "user": "alice"}),
        ("GET", "/v1/admin/tokens", None),
        ("DELETE", "/v1/admin/tokens/1", None),
    ],
)
def test_admin_routes_need_an_admin_token(api: Api, world: dict, who: str, method: str,
                                          url: str, body: dict | None) -> None:
    r = api.client.request(method, url, headers=world[who], json=body)
    assert r.status_code == 403, r.text
    assert "admin token" in r.json()["detail"]


def test_node_tokens_cannot_act_as_users(api: Api, world: dict) -> None:
    node = world["gpu01"]
    for method, url, body in [("GET", "/v1/jobs", None), ("GET", "/v1/nodes", None),
                              ("POST", "/v1/jobs", {"command": ["id"], "workdir": "/"}),
                              ("POST", "/v1/jobs/1/cancel", None)]:
        r = api.client.request(method, url, headers=node, json=body)
        assert r.status_code == 403, (url, r.text)


def test_user_tokens_cannot_make_worker_calls(api: Api, world: dict) -> None:
    job = api.submit(world["alice"])
    api.cycle()
    alice = world["alice"]
    calls = [
        ("POST", "/v1/nodes/gpu01/register", {"gpu_backend": "simulated"}),
        ("POST", "/v1/nodes/gpu01/heartbeat", {}),
        ("GET", f"/v1/nodes/gpu01/jobs/{job['id']}", None),
        ("POST", f"/v1/nodes/gpu01/jobs/{job['id']}/events", {"state": "COMPLETED"}),
    ]
    for method, url, body in calls:
        for h in (alice, api.admin):
            r = api.client.request(method, url, headers=h, json=body)
            assert r.status_code == 403, (url, r.text)
    r = api.client.post(f"/v1/nodes/gpu01/jobs/{job['id']}/log?offset=0", headers=alice,
                        content=b"forged")
    assert r.status_code == 403
    assert api.job(job["id"])["state"] == "DISPATCHED"


def test_node_tokens_only_work_for_their_own_node(api: Api, world: dict) -> None:
    job = api.submit(world["alice"])
    api.cycle()
    node = api.job(job["id"])["node"]
    other = "gpu02" if node == "gpu01" else "gpu01"
    intruder = world[other]
    for method, url, body in [
        ("POST", f"/v1/nodes/{node}/register", {"gpu_backend": "simulated"}),
        ("POST", f"/v1/nodes/{node}/heartbeat", {}),
        ("GET", f"/v1/nodes/{node}/jobs/{job['id']}", None),
        ("POST", f"/v1/nodes/{node}/jobs/{job['id']}/events", {"state": "FAILED"}),
    ]:
        r = api.client.request(method, url, headers=intruder, json=body)
        assert r.status_code == 403, (url, r.text)
    # Through its own name it only sees jobs assigned to it.
    r = api.client.get(f"/v1/nodes/{other}/jobs/{job['id']}", headers=intruder)
    assert r.status_code == 404
    assert api.job(job["id"])["state"] == "DISPATCHED"


def test_admin_tokens_only_for_admin_users(api: Api, world: dict) -> None:
    r = api.client.post("/v1/admin/tokens", headers=api.admin,
                        json={"role": "admin", "user": "alice"})
    assert r.status_code == 422 and "not an admin" in r.text
    api.user("root-ops", "ops", admin=True)
    listed = api.ok("GET", "/v1/admin/tokens", api.admin)
    assert any(t["role"] == "admin" and t["user"] == "root-ops" for t in listed)


def test_whoami(api: Api, world: dict) -> None:
    me = api.ok("GET", "/v1/whoami", world["alice"])
    assert me == {"role": "user", "user": "alice", "node": None, "admin": False,
                  "accounts": ["lab1"], "default_account": "lab1"}
    assert api.ok("GET", "/v1/whoami", world["gpu01"])["node"] == "gpu01"


def test_a_token_works_until_it_expires(api: Api, world: dict) -> None:
    tok = api.ok("POST", "/v1/admin/tokens", api.admin, 201,
                 json={"role": "user", "user": "alice", "expires_in_s": 3600})
    assert tok["expires_at"] == "2026-01-01T01:00:00Z" and tok["expired"] is False
    h = bearer(tok["token"])
    api.clock.advance(3599)
    assert api.client.get("/v1/jobs", headers=h).status_code == 200
    api.clock.advance(1)
    r = api.client.get("/v1/jobs", headers=h)
    assert r.status_code == 401
    assert r.json()["detail"] == ("token expired on 2026-01-01T01:00:00Z; ask an admin for "
                                  "a new one")
    listed = {t["id"]: t for t in api.ok("GET", "/v1/admin/tokens", api.admin)}
    assert listed[tok["id"]]["expired"] is True
    # Tokens without an expiry never expire.
    api.clock.advance(10 * 365 * 86400)
    assert api.client.get("/v1/jobs", headers=world["alice"]).status_code == 200


def test_expiry_is_at_least_a_minute(api: Api, world: dict) -> None:
    r = api.client.post("/v1/admin/tokens", headers=api.admin,
                        json={"role": "user", "user": "alice", "expires_in_s": 10})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "expires_in_s"]


def test_a_disabled_users_tokens_stop_working_until_re_enabled(api: Api, world: dict) -> None:
    job = api.submit(world["alice"])
    u = api.ok("PATCH", "/v1/admin/users/alice", api.admin, json={"disabled": True})
    assert u["disabled"] is True
    for method, url in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/whoami")]:
        r = api.client.request(method, url, headers=world["alice"],
                               json={"command": ["true"], "workdir": "/tmp"})
        assert r.status_code == 401, (url, r.text)
        assert r.json()["detail"] == "user alice is disabled; ask an admin"
    # Its jobs are kept; other users are not affected.
    assert api.job(job["id"])["state"] == "PENDING"
    assert api.client.get("/v1/jobs", headers=world["bob"]).status_code == 200
    api.ok("PATCH", "/v1/admin/users/alice", api.admin, json={"disabled": False})
    assert api.client.get("/v1/jobs", headers=world["alice"]).status_code == 200
    api.submit(world["alice"])


def test_a_disabled_admins_admin_token_stops_working(api: Api, world: dict) -> None:
    ops = api.user("ops", "lab1", admin=True)
    assert api.client.get("/v1/admin/users", headers=ops).status_code == 200
    api.ok("PATCH", "/v1/admin/users/ops", api.admin, json={"disabled": True})
    assert api.client.get("/v1/admin/users", headers=ops).status_code == 401
    # An admin cannot lock itself out.
    r = api.client.patch("/v1/admin/users/admin", headers=api.admin, json={"disabled": True})
    assert r.status_code == 409 and "yourself" in r.text
