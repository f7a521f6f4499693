"""gpuq admin audit: the filters sent, and a compact before -> after of each change."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from cli_fakeadmin import make_account, make_audit
from cli_fakeapi import T0, FakeApi

from gpuq.cli.audit import changes_text, value_text


def test_changes_text() -> None:
    before = {"name": "qlab", "shares": 1, "default_qos": None, "description": "",
              "usage": {"gpu_hours": 1.0}}
    after = dict(before, shares=3, default_qos="high", description="quantum lab",
                 usage={"gpu_hours": 2.0})
    assert changes_text(before, after) == \
        "shares: 1 -> 3; default_qos: - -> high; description: '' -> 'quantum lab'"
    assert changes_text(before, dict(before)) == "no change"
    assert changes_text(None, {"id": 3, "name": "qlab", "parent": "root", "description": "",
                               "nodes": [], "gpus": 8, "retired": False,
                               "created_at": "2025-01-01T00:00:00Z"}) == \
        "new: name=qlab parent=root gpus=8"
    assert changes_text({"name": "x"}, None) == "removed"
    assert changes_text(None, None) == ""


def test_value_text(utc: None) -> None:
    assert value_text(["high"]) == '["high"]'
    assert value_text("2025-01-01T12:00:00.123456Z") == "2025-01-01 12:00:00"
    assert (value_text(5000.0), value_text(0.5), value_text(True)) == ("5000", "0.5", "true")
    assert value_text({"b": 1, "a": True}) == '{"a":true,"b":1}'
    assert value_text("x" * 50) == "x" * 37 + "..."
    assert value_text("evil\x1b[2J") == "evil?[2J"


def test_audit_table_and_filters(api: FakeApi, admin, utc: None) -> None:
    api.audit = [
        make_audit(3, "grant.create", "grant:1", time=T0,
                   after={"id": 1, "account": "qlab", "kind": "reservation", "gpus": 8}),
        make_audit(2, "user.update", "user:bob", time=T0 - timedelta(days=2), actor="alice",
                   before={"name": "bob", "disabled": False, "allowed_qos": []},
                   after={"name": "bob", "disabled": True, "allowed_qos": ["high"]}),
        make_audit(1, "grant.activate", "grant:0", time=T0 - timedelta(days=30),
                   actor="gpuq", before={"state": "scheduled"}, after={"state": "active"}),
    ]
    out = admin("audit").stdout.splitlines()
    assert out[0].split() == ["TIME", "ACTOR", "ACTION", "TARGET", "CHANGES"]
    assert out[1].split() == ["2025-01-01", "12:00:00", "root", "grant.create", "grant:1",
                              "new:", "account=qlab", "kind=reservation", "gpus=8"]
    assert out[2].split(None, 5)[2:] == [
        "alice", "user.update", "user:bob",
        'disabled: false -> true; allowed_qos: [] -> ["high"]']
    assert out[3].split()[2:] == ["gpuq", "grant.activate", "grant:0", "state:", "scheduled",
                                  "->", "active"]
    out = admin("audit", "--action", "grant", "--since", "2024-12-25", "--until",
                "2025-01-02", "--actor", "root", "--target", "grant:1", "-n", "1").stdout
    assert len(out.splitlines()) == 2 and "grant.create" in out
    assert dict(api.requests[-1][2]) == {
        "action": "grant", "since": "2024-12-25T00:00:00Z", "until": "2025-01-02T00:00:00Z",
        "actor": "root", "target": "grant:1", "limit": "1"}
    assert admin("audit", "--since", "7d").stdout == "No changes match\n"
    since = datetime.fromisoformat(dict(api.requests[-1][2])["since"])
    assert abs(since - (datetime.now(UTC) - timedelta(days=7))) < timedelta(minutes=1)
    assert json.loads(admin("audit", "--json").stdout) == api.audit
    assert admin("audit", "--actor", "nobody").stdout == "No changes match\n"


def test_audit_says_when_there_may_be_more(api: FakeApi, admin) -> None:
    api.audit = [make_audit(i) for i in range(3, 0, -1)]
    r = admin("audit", "--limit", "2")
    assert len(r.stdout.splitlines()) == 3
    assert r.stderr == "(the newest 2; --limit or --since/--until for more)\n"
    assert admin("audit").stderr == ""


def test_audit_refusals(api: FakeApi, admin) -> None:
    r = admin("audit", "--since", "last week", code=2)
    assert ("'last week' is not a date or time (examples: 2027-01-31, 2027-01-31T09:00, "
            "2027-01-31T09:00Z or 'now', or a duration ago: 7d, 12h)") in \
        r.stderr.replace("\n", " ").replace("  ", " ")
    assert "1001 is not in the range 1<=x<=1000" in admin("audit", "-n", "1001", code=2).stderr


def test_changes_end_up_in_the_audit_log(api: FakeApi, admin) -> None:
    api.accounts = {"root": make_account("root", parent=None), "qlab": make_account("qlab")}
    admin("account", "update", "qlab", "--shares", "4")
    out = admin("audit", "--target", "account:qlab").stdout.splitlines()
    assert out[1].split()[2:] == ["root", "account.update", "account:qlab", "shares:", "1",
                                  "->", "4"]
