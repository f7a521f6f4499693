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
