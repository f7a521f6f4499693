"""gpuq admin account / user / token against the fake admin API v3: what they send and
print, and the server's refusals shown as one clear line each."""

from __future__ import annotations

import json

import pytest
from cli_fakeadmin import make_account
from cli_fakeapi import FakeApi, make_user


@pytest.fixture
def tree(api: FakeApi) -> FakeApi:
    """root -> physics (default QOS high) -> qlab; root -> old (retired)."""
    api.accounts = {a["name"]: a for a in (
        make_account("root", parent=None),
        make_account("physics", default_qos="high", shares=5, description="dept"),
        make_account("qlab", parent="physics", shares=2),
        make_account("old", retired=True, retired_at="2024-12-01T00:00:00Z"))}
    return api


def test_account_update_sends_only_what_is_given(tree: FakeApi, admin) -> None:
    r = admin("account", "update", "qlab", "--shares", "parent", "--default-qos", "preemptible")
    assert r.stdout == ("Updated account qlab: under physics, parent shares, default QOS "
                        "preemptible\n")
    admin("account", "update", "qlab", "--default-qos", "inherit", "--parent", "root")
    admin("account", "update", "qlab", "--shares", "7", "--description", "")
    assert tree.requests == [
        ("PATCH", "accounts/qlab", {"shares": "parent", "default_qos": "preemptible"}),
        ("PATCH", "accounts/qlab", {"parent": "root", "default_qos": None}),
        ("PATCH", "accounts/qlab", {"shares": 7, "description": ""}),
    ]
    assert tree.accounts["qlab"]["default_qos"] is None


@pytest.mark.parametrize(("args", "code", "stderr"), [
    (["physics", "--parent", "qlab"], 1,
     "gpuq: account.parent: cannot move physics under itself or an account below it (qlab)\n"),
    (["root", "--parent", "physics"], 1, "gpuq: the root account cannot move\n"),
    (["nope", "--shares", "1"], 1, "gpuq: no account nope\n"),
    (["qlab", "--shares", "-1"], 2, None),
    (["qlab", "--shares", "lots"], 2, None),
    (["qlab"], 2, None),
])
def test_account_update_refusals(tree: FakeApi, admin, args: list[str], code: int,
                                 stderr: str | None) -> None:
    r = admin("account", "update", *args, code=code)
    if stderr is not None:
        assert r.stderr == stderr
    elif args == ["qlab"]:
        assert "nothing to change: give --parent, --shares" in r.stderr
    else:
        assert "is not a number of shares (a whole number >= 0, or 'parent')" in r.stderr


def test_account_retire(tree: FakeApi, admin, utc: None) -> None:
    r = admin("account", "retire", "physics", code=1)
    assert r.stderr == ("gpuq: account physics has accounts below it that are not retired: "
                        "qlab; retire them first\n")
    assert admin("account", "retire", "qlab").stdout == \
        "Retired account qlab (since 2025-01-01 12:00 UTC): it takes no new jobs\n"
    assert tree.accounts["qlab"]["retired"] is True
    assert admin("account", "retire", "nope", code=1).stderr == "gpuq: no account nope\n"


def test_account_list_shows_default_qos_and_retired(tree: FakeApi, admin, utc: None) -> None:
    out = [line.split() for line in admin("account", "list").stdout.splitlines()]
    assert out == [["ACCOUNT", "PARENT", "SHARES", "QOS", "DESCRIPTION"],
                   ["root", "-", "1"],
                   ["physics", "root", "5", "high", "dept"],
                   ["qlab", "physics", "2", "high", "(physics)"]]
    out = [line.split() for line in admin("account", "list", "--all").stdout.splitlines()]
    assert out[0] == ["ACCOUNT", "PARENT", "SHARES", "QOS", "RETIRED", "DESCRIPTION"]
    assert ["old", "root", "1", "2024-12-01"] in out
    assert [q for m, p, q in tree.requests if p == "accounts"] == \
        [[], [("include_retired", "true")]]
    names = [a["name"] for a in json.loads(admin("account", "list", "--json").stdout)]
    assert "old" not in names and "qlab" in names


def test_account_create_with_parent_shares_and_default_qos(api: FakeApi, admin) -> None:
    admin("account", "create", "lab3", "--shares", "parent", "--default-qos", "preemptible")
    assert api.admin_posts == [("accounts", {"name": "lab3", "shares": "parent",
                                             "default_qos": "preemptible"})]


@pytest.fixture
def bob(api: FakeApi) -> FakeApi:
    api.users["bob"] = make_user("bob", accounts=[{"account": "lab1", "shares": 1},
                                                  {"account": "lab2", "shares": "parent"}])
    return api


def test_user_set_disable_default_account_and_qos(bob: FakeApi, admin) -> None:
    r = admin("user", "set", "bob", "--disable")
    assert r.stdout == ("Updated user bob: jobs run as Unix user bob, not an admin; DISABLED: "
                        "its tokens stop working and it cannot submit (its jobs stay)\n")
    r = admin("user", "set", "bob", "--enable", "--default-account", "lab2",
              "--allow-qos", "high")
    assert r.stdout == ("Updated user bob: jobs run as Unix user bob, not an admin; default "
                        "account lab2; may choose QOS normal, preemptible, high; enabled\n")
    admin("user", "set", "bob", "--allow-qos", "none")
    assert bob.admin_patches == [
        ("bob", {"disabled": True}),
        ("bob", {"disabled": False, "default_account": "lab2", "allowed_qos": ["high"]}),
        ("bob", {"allowed_qos": []}),
    ]


def test_user_set_refusals(bob: FakeApi, admin) -> None:
    r = admin("user", "set", "bob", "--default-account", "lab9", code=1)
    assert r.stderr == ("gpuq: user.default_account: user bob is not a member of lab9; add it "
                        "first\n")
    r = admin("user", "set", "bob", "--allow-qos", "none", "--allow-qos", "high", code=2)
    assert "--allow-qos none clears the list: give it alone" in r.stderr
    r = admin("user", "set", "bob", "--allow-qos", "vip", code=2)
    assert "'vip' is not one of 'normal', 'preemptible', 'high', 'none'" in r.stderr
    assert [p for p in bob.admin_patches if "allowed_qos" in p[1]] == []


def test_user_show(bob: FakeApi, admin) -> None:
    bob.users["bob"].update(disabled=True, allowed_qos=["high"])
    assert admin("user", "show", "bob").stdout.splitlines() == [
        "User:            bob",
        "Status:          DISABLED: its tokens do not work and it cannot submit",
        "Admin:           no",
        "Unix user:       bob",
        "Default account: lab1",
        "Accounts:        lab1 (1 share), lab2 (shares: parent's)",
        "QOS allowed:     normal, preemptible, high",
    ]
    assert json.loads(admin("user", "show", "bob", "--json").stdout)["disabled"] is True
    assert admin("user", "show", "carol", code=1).stderr == "gpuq: no user carol\n"
    row = admin("user", "list").stdout.splitlines()[1].split()
    assert row[-2:] == ["high", "disabled"]


def test_user_memberships(bob: FakeApi, admin) -> None:
    assert admin("user", "set-shares", "bob", "lab2", "3").stdout == \
        "User bob now has 3 shares in account lab2\n"
    assert admin("user", "set-shares", "bob", "lab1", "parent").stdout == \
        "User bob now has shares 'parent' (no level of its own) in account lab1\n"
    assert admin("user", "remove-account", "bob", "lab2").stdout == \
        "Removed user bob from account lab2\n"
    r = admin("user", "remove-account", "bob", "lab1", code=1)
    assert r.stderr == ("gpuq: lab1 is the default account of bob: set another first (gpuq "
                        "admin user set --default-account)\n")
    r = admin("user", "set-shares", "bob", "lab7", "1", code=1)
    assert r.stderr == "gpuq: no user bob in account lab7\n"
    assert bob.requests == [
        ("PATCH", "users/bob/accounts/lab2", {"shares": 3}),
        ("PATCH", "users/bob/accounts/lab1", {"shares": "parent"}),
        ("DELETE", "users/bob/accounts/lab2", None),
    ]
    assert bob.users["bob"]["accounts"] == [{"account": "lab1", "shares": "parent"}]


def test_token_expiry(api: FakeApi, admin, utc: None) -> None:
    r = admin("token", "create", "--role", "user", "--user", "bob", "--expires", "90d")
    assert r.stdout == "gpuq_abc_SECRET\n"
    assert "it expires 2025-04-01 12:00" in r.stderr
    assert api.admin_posts == [("tokens", {"role": "user", "user": "bob",
                                           "expires_in_s": 90 * 86400})]
    r = admin("token", "create", "--role", "admin", "--user", "bob")
    assert "it never expires" in r.stderr
    r = admin("token", "create", "--role", "user", "--user", "bob", "--expires", "90",
              code=2)
    assert "'90' is not a duration (examples: 90d, 12h, 2w, 1d12h, 30m)" in r.stderr
    r = admin("token", "create", "--role", "user", "--user", "bob", "--expires", "10s",
              code=1)
    assert r.stderr == "gpuq: token.expires_in_s: Input should be greater than or equal to 60\n"


def test_token_list_shows_expiry(api: FakeApi, admin, utc: None) -> None:
    base = {"prefix": "gpuq_x", "role": "user", "user": "bob", "node": None,
            "description": "", "created_at": "2025-01-01T00:00:00Z", "last_used_at": None,
            "revoked": False}
    api.admin_lists = {"tokens": [
        dict(base, id=1),
        dict(base, id=2, expires_at="2025-01-02T00:00:00Z", expired=True),
        dict(base, id=3, expires_at="2099-01-01T00:00:00Z"),
        dict(base, id=4, revoked=True, expires_at="2099-01-01T00:00:00Z"),
    ]}
    out = [line.split() for line in admin("token", "list").stdout.splitlines()]
    assert out[0] == ["ID", "PREFIX", "ROLE", "OWNER", "CREATED", "LAST", "USED", "EXPIRES",
                      "STATUS", "DESCRIPTION"]
    assert out[1][-3:] == ["never", "never", "active"]
    assert out[2][-3:] == ["2025-01-02", "00:00", "expired"]
    assert out[3][-3:] == ["2099-01-01", "00:00", "active"]
    assert out[4][-1] == "revoked"
