"""Accounts, users and memberships through the admin API."""

from __future__ import annotations

from tests.api.conftest import Api


def test_account_tree(api: Api) -> None:
    api.account("physics", shares=40)
    api.account("qlab", parent="physics", shares=3)
    accts = {a["name"]: a for a in api.ok("GET", "/v1/admin/accounts", api.admin)}
    assert accts["root"]["parent"] is None
    assert accts["physics"] == {"name": "physics", "parent": "root", "shares": 40,
                                "description": "", "default_qos": None, "retired": False,
                                "retired_at": None}
    assert accts["qlab"]["parent"] == "physics"


def test_account_errors(api: Api) -> None:
    api.account("physics")
    r = api.client.post("/v1/admin/accounts", headers=api.admin, json={"name": "physics"})
    assert r.status_code == 409 and "already exists" in r.text
    r = api.client.post("/v1/admin/accounts", headers=api.admin,
                        json={"name": "x", "parent": "nope"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "parent"]
    r = api.client.post("/v1/admin/accounts", headers=api.admin,
                        json={"name": "bad name!"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"]
    r = api.client.post("/v1/admin/accounts", headers=api.admin,
                        json={"name": "y", "shares": -1})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "shares"]


def test_user_in_several_accounts(api: Api) -> None:
    api.account("lab1")
    api.account("lab2")
    u = api.ok("POST", "/v1/admin/users", api.admin, 201,
               json={"name": "alice", "account": "lab1", "shares": 5})
    assert u["default_account"] == "lab1"
    u = api.ok("POST", "/v1/admin/users/alice/accounts", api.admin, 201,
               json={"account": "lab2", "shares": 2})
    assert u["accounts"] == [{"account": "lab1", "shares": 5}, {"account": "lab2", "shares": 2}]
    r = api.client.post("/v1/admin/users/alice/accounts", headers=api.admin,
                        json={"account": "lab2"})
    assert r.status_code == 409
    r = api.client.post("/v1/admin/users", headers=api.admin,
                        json={"name": "alice", "account": "lab1"})
    assert r.status_code == 409
    r = api.client.post("/v1/admin/users/nobody/accounts", headers=api.admin,
                        json={"account": "lab1"})
    assert r.status_code == 404
    r = api.client.post("/v1/admin/users", headers=api.admin,
                        json={"name": "bob", "account": "nolab"})
    assert r.status_code == 422 and "no account named 'nolab'" in r.text


def test_node_token_needs_a_node_name(api: Api) -> None:
    r = api.client.post("/v1/admin/tokens", headers=api.admin, json={"role": "node"})
    assert r.status_code == 422 and "node" in r.text
    r = api.client.post("/v1/admin/tokens", headers=api.admin,
                        json={"role": "user", "user": "ghost"})
    assert r.status_code == 404


def test_account_update_changes_only_what_is_given(api: Api) -> None:
    api.account("physics", shares=40)
    a = api.ok("PATCH", "/v1/admin/accounts/physics", api.admin,
               json={"description": "Physics dept", "default_qos": "preemptible"})
    assert (a["shares"], a["description"], a["default_qos"]) == (40, "Physics dept",
                                                                 "preemptible")
    a = api.ok("PATCH", "/v1/admin/accounts/physics", api.admin, json={"shares": "parent"})
    assert (a["shares"], a["default_qos"]) == ("parent", "preemptible")
    a = api.ok("PATCH", "/v1/admin/accounts/physics", api.admin, json={"default_qos": None})
    assert a["default_qos"] is None
    r = api.client.patch("/v1/admin/accounts/nope", headers=api.admin, json={"shares": 2})
    assert r.status_code == 404 and "no account named 'nope'" in r.text
    r = api.client.patch("/v1/admin/accounts/physics", headers=api.admin,
                         json={"default_qos": "turbo"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "default_qos"]


def test_account_move_refuses_cycles(api: Api) -> None:
    api.account("physics")
    api.account("chem")
    api.account("qlab", parent="physics")
    api.account("qlab-students", parent="qlab")
    a = api.ok("PATCH", "/v1/admin/accounts/qlab", api.admin, json={"parent": "chem"})
    assert a["parent"] == "chem"
    accts = {x["name"]: x for x in api.ok("GET", "/v1/admin/accounts", api.admin)}
    assert accts["qlab-students"]["parent"] == "qlab"  # the subtree moved with it
    for target in ("qlab", "qlab-students"):
        r = api.client.patch("/v1/admin/accounts/qlab", headers=api.admin,
                             json={"parent": target})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "parent"]
        assert "outside its subtree" in r.text
    r = api.client.patch("/v1/admin/accounts/qlab", headers=api.admin, json={"parent": "x"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "parent"]
    r = api.client.patch("/v1/admin/accounts/root", headers=api.admin,
                         json={"parent": "physics"})
    assert r.status_code == 409 and "cannot move" in r.text
    assert api.client.delete("/v1/admin/accounts/root", headers=api.admin).status_code == 409


def test_retire_is_blocked_by_children_and_jobs_then_works(api: Api) -> None:
    api.node("gpu01", gpus=2)
    api.account("physics")
    api.account("qlab", parent="physics")
    alice = api.user("alice", "qlab")
    job = api.submit(alice)
    r = api.client.delete("/v1/admin/accounts/physics", headers=api.admin)
    assert r.status_code == 409 and "child accounts qlab" in r.text
    r = api.client.delete("/v1/admin/accounts/qlab", headers=api.admin)
    assert r.status_code == 409 and f"jobs {job['id']} are pending or running" in r.text
    api.ok("POST", f"/v1/jobs/{job['id']}/cancel", api.admin)
    a = api.ok("DELETE", "/v1/admin/accounts/qlab", api.admin)
    assert a["retired"] is True and a["retired_at"] == "2026-01-01T00:00:00Z"
    assert api.ok("DELETE", "/v1/admin/accounts/qlab", api.admin) == a  # idempotent
    api.ok("DELETE", "/v1/admin/accounts/physics", api.admin)
    names = {x["name"] for x in api.ok("GET", "/v1/admin/accounts", api.admin)}
    assert "qlab" not in names and "physics" not in names
    everything = api.ok("GET", "/v1/admin/accounts?include_retired=true", api.admin)
    assert {"qlab", "physics"} <= {x["name"] for x in everything}
    # A retired account takes no new children, members or changes.
    r = api.client.post("/v1/admin/accounts", headers=api.admin,
                        json={"name": "x", "parent": "physics"})
    assert r.status_code == 422 and "retired" in r.text
    r = api.client.post("/v1/admin/users", headers=api.admin,
                        json={"name": "bob", "account": "qlab"})
    assert r.status_code == 422 and "retired" in r.text
    r = api.client.patch("/v1/admin/accounts/qlab", headers=api.admin, json={"shares": 2})
    assert r.status_code == 409


def test_retire_is_blocked_by_a_grant_that_has_not_ended(api: Api) -> None:
    api.account("qlab")
    g = api.ok("POST", "/v1/admin/grants", api.admin, 201,
               json={"account": "qlab", "kind": "share", "shares": 5,
                     "end": "2026-02-01T00:00:00Z"})
    r = api.client.delete("/v1/admin/accounts/qlab", headers=api.admin)
    assert r.status_code == 409 and f"grants {g['id']} have not ended" in r.text
    api.ok("POST", f"/v1/admin/grants/{g['id']}/revoke", api.admin, json={"reason": "x"})
    api.ok("DELETE", "/v1/admin/accounts/qlab", api.admin)


def test_get_and_update_user(api: Api) -> None:
    api.account("lab1")
    api.account("lab2")
    api.ok("POST", "/v1/admin/users", api.admin, 201, json={"name": "alice", "account": "lab1"})
    u = api.ok("GET", "/v1/admin/users/alice", api.admin)
    assert u == {"name": "alice", "admin": False, "unix_user": "alice",
                 "default_account": "lab1", "accounts": [{"account": "lab1", "shares": 1}],
                 "disabled": False, "allowed_qos": []}
    assert api.client.get("/v1/admin/users/nobody", headers=api.admin).status_code == 404
    r = api.client.patch("/v1/admin/users/alice", headers=api.admin,
                         json={"default_account": "lab2"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "default_account"]
    assert "not a member of account 'lab2'" in r.text
    api.ok("POST", "/v1/admin/users/alice/accounts", api.admin, 201, json={"account": "lab2"})
    u = api.ok("PATCH", "/v1/admin/users/alice", api.admin,
               json={"default_account": "lab2", "allowed_qos": ["high", "high"],
                     "unix_user": "asmith"})
    assert (u["default_account"], u["allowed_qos"], u["unix_user"]) == ("lab2", ["high"],
                                                                        "asmith")
    u = api.ok("PATCH", "/v1/admin/users/alice", api.admin, json={"allowed_qos": []})
    assert u["allowed_qos"] == [] and u["default_account"] == "lab2"
    r = api.client.patch("/v1/admin/users/alice", headers=api.admin,
                         json={"allowed_qos": ["turbo"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "allowed_qos"]


def test_membership_update_and_delete(api: Api) -> None:
    api.node("gpu01", gpus=2)
    alice = api.user("alice", "lab1")
    api.account("lab2")
    api.ok("POST", "/v1/admin/users/alice/accounts", api.admin, 201,
           json={"account": "lab2", "shares": 2})
    u = api.ok("PATCH", "/v1/admin/users/alice/accounts/lab2", api.admin, json={"shares": 7})
    assert u["accounts"] == [{"account": "lab1", "shares": 1}, {"account": "lab2", "shares": 7}]
    r = api.client.patch("/v1/admin/users/alice/accounts/lab3", headers=api.admin,
                         json={"shares": 7})
    assert r.status_code == 404 and "not a member of account 'lab3'" in r.text
    r = api.client.delete("/v1/admin/users/alice/accounts/lab1", headers=api.admin)
    assert r.status_code == 409 and "default account" in r.text
    job = api.submit(alice, account="lab2")
    r = api.client.delete("/v1/admin/users/alice/accounts/lab2", headers=api.admin)
    assert r.status_code == 409 and f"({job['id']})" in r.text
    api.ok("POST", f"/v1/jobs/{job['id']}/cancel", api.admin)
    u = api.ok("DELETE", "/v1/admin/users/alice/accounts/lab2", api.admin)
    assert u["accounts"] == [{"account": "lab1", "shares": 1}]
    assert api.client.delete("/v1/admin/users/alice/accounts/lab2",
                             headers=api.admin).status_code == 404
