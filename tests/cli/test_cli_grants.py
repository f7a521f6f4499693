"""gpuq admin grant / grants against the fake: the GrantCreate body, the window options,
clear refusals, and the table of each grant's use."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cli_fakeadmin import make_account, make_grant
from cli_fakeapi import T0, FakeApi

from gpuq.cli.grant_render import grant_detail, grants_table, used_text
from gpuq.cli.render import render


@pytest.fixture
def qlab(api: FakeApi, utc: None) -> FakeApi:
    api.accounts = {"root": make_account("root", parent=None), "qlab": make_account("qlab")}
    return api


def sent(api: FakeApi) -> list[dict]:
    return [body for method, path, body in api.requests if (method, path) == ("POST", "grants")]


def test_create_a_reservation(qlab: FakeApi, admin) -> None:
    r = admin("grant", "create", "qlab", "--reserve", "8", "--gpu-model", "A100-80GB",
              "--node", "gpu01,gpu02", "--node", "gpu03", "--start", "2027-01-01",
              "--end", "2027-02-01T00:00", "--note", "ERC award")
    assert r.stdout == ("Created grant 1: qlab, 8 GPUs of A100-80GB on gpu01, gpu02, gpu03, "
                        "2027-01-01 -> 2027-02-01 (scheduled)\n")
    assert sent(qlab) == [{"account": "qlab", "kind": "reservation",
                           "start": "2027-01-01T00:00:00Z", "end": "2027-02-01T00:00:00Z",
                           "note": "ERC award", "gpus": 8, "gpu_model": "A100-80GB",
                           "nodes": ["gpu01", "gpu02", "gpu03"]}]


def test_create_a_share_grant_for_a_duration(qlab: FakeApi, admin) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    r = admin("grant", "create", "qlab", "--share", "100", "--budget", "5000h", "--for", "30d")
    assert r.stdout.startswith("Created grant 1: qlab, +100 shares, budget 5000 GPU-h, ")
    body = sent(qlab)[0]
    start, end = (datetime.fromisoformat(body[k]) for k in ("start", "end"))
    assert before <= start <= datetime.now(UTC)  # now, to the second: exactly 30 days
    assert end - start == timedelta(days=30)
    assert (body["kind"], body["shares"], body["gpu_hours"]) == ("share", 100, 5000.0)
    admin("grant", "create", "qlab", "--share", "5", "--start", "2027-03-01T08:00+01:00",
          "--for", "1w", "--budget", "12.5")
    body = sent(qlab)[1]
    assert (body["start"], body["end"], body["gpu_hours"]) == \
        ("2027-03-01T07:00:00Z", "2027-03-08T07:00:00Z", 12.5)
    admin("grant", "create", "qlab", "--share", "5", "--start", "now", "--end", "2099-01-01")
    assert "start" not in sent(qlab)[2]


@pytest.mark.parametrize(("args", "message"), [
    (["--end", "2099-01-01"], "give --share N (raw shares added while it is active) or "
                              "--reserve N (GPUs kept for the account)"),
    (["--share", "1", "--reserve", "2", "--end", "2099-01-01"], ", not both"),
    (["--share", "1"], "give the end of the window: --end WHEN or --for DURATION"),
    (["--share", "1", "--end", "2099-01-01", "--for", "3d"], "give --end or --for, not both"),
    (["--share", "1", "--gpu-model", "A100", "--for", "3d"],
     "--gpu-model and --node are for reservations (--reserve)"),
    (["--reserve", "1", "--budget", "10h", "--for", "3d"], "--budget is for share grants"),
    (["--share", "1", "--start", "2027-02-01", "--end", "2027-01-01"],
     "the window ends (2027-01-01 00:00 UTC) before it starts (2027-02-01 00:00 UTC)"),
    (["--share", "1", "--start", "next tuesday", "--for", "3d"],
     "Invalid value for --start: 'next tuesday' is not a date or time (examples: 2027-01-31, "
     "2027-01-31T09:00, 2027-01-31T09:00Z or 'now')"),
    (["--share", "1", "--end", "2027-13-01"], "Invalid value for --end: '2027-13-01' is not"),
    (["--share", "1", "--for", "30"], "'30' is not a duration"),
    (["--share", "1", "--budget", "lots", "--for", "3d"],
     "'lots' is not a number of GPU-hours above 0"),
    (["--share", "0", "--for", "3d"], "0 is not in the range x>=1"),
])
def test_create_usage_errors(qlab: FakeApi, admin, args: list[str], message: str) -> None:
    r = admin("grant", "create", "qlab", *args, code=2)
    assert message in r.stderr.replace("\n", " ").replace("  ", " ")
    assert sent(qlab) == []


def test_create_refused_by_the_server(qlab: FakeApi, admin) -> None:
    r = admin("grant", "create", "nolab", "--share", "1", "--for", "3d", code=1)
    assert r.stderr == "gpuq: grant.account: no account nolab (or it is retired)\n"
    r = admin("grant", "create", "qlab", "--reserve", "2", "--node", "bad name", "--for", "3d",
              code=1)
    assert r.stderr.startswith("gpuq: grant.nodes.0: String should match pattern")


def test_create_overcommitted_names_the_conflicting_grants(qlab: FakeApi, admin) -> None:
    qlab.grants = {3: make_grant(3, "lab2", gpus=4, gpu_model="A100-80GB")}
    qlab.grant_conflicts = [3, 5]
    r = admin("grant", "create", "qlab", "--reserve", "8", "--start", "2025-01-02",
              "--for", "7d", code=1)
    assert r.stderr.splitlines() == [
        "gpuq: would reserve 8 GPUs more than the cluster has at 2025-01-02T00:00:00+00:00: "
        "conflicts with grants 3, 5",
        "gpuq:   grant 3: lab2, 4 GPUs of A100-80GB, 2024-12-31 12:00 -> 2025-01-31 12:00 "
        "(active)",
        "gpuq:   grant 5",
    ]


def test_update_revoke_and_show(qlab: FakeApi, admin) -> None:
    qlab.grants = {1: make_grant(1, kind="share", gpu_hours=100.0),
                   2: make_grant(2, state="expired", state_reason="end reached")}
    r = admin("grant", "update", "1", "--end", "2025-03-01", "--budget", "200h", "--note", "x")
    assert r.stdout == ("Updated grant 1: qlab, +100 shares, budget 200 GPU-h, "
                        "2024-12-31 12:00 -> 2025-03-01 (active)\n")
    assert qlab.requests[-1] == ("PATCH", "grants/1", {"end": "2025-03-01T00:00:00Z",
                                                       "note": "x", "gpu_hours": 200.0})
    assert admin("grant", "update", "1", code=2).stderr.endswith(
        "nothing to change: give --end, --note or --budget\n")
    assert admin("grant", "update", "2", "--note", "y", code=1).stderr == \
        "gpuq: grant 2 is expired: it cannot change\n"
    assert admin("grant", "update", "9", "--note", "y", code=1).stderr == "gpuq: no grant 9\n"
    assert admin("grant", "revoke", "1", "--reason", "award withdrawn").stdout == \
        "Revoked grant 1 of qlab: revoked by root: award withdrawn\n"
    assert "Missing option '--reason'" in admin("grant", "revoke", "1", code=2).stderr
    out = admin("grant", "show", "1").stdout
    assert "State:       revoked (revoked by root: award withdrawn)" in out
    assert json.loads(admin("grant", "show", "1", "--json").stdout)["state"] == "revoked"
    assert admin("grant", "show", "9", code=1).stderr == "gpuq: no grant 9\n"


def test_grants_list_filters(qlab: FakeApi, admin) -> None:
    assert admin("grants").stdout == "No grants yet\n"
    qlab.grants = {1: make_grant(1), 2: make_grant(2, "lab2", kind="share")}
    assert admin("grants", "-A", "lab2", "--state", "active", "--kind", "share",
                 "--json").stdout == json.dumps([qlab.grants[2]], indent=2) + "\n"
    assert admin("grant", "list", "--state", "revoked").stdout == "No grants match\n"
    assert [q for m, p, q in qlab.requests if p == "grants"] == [
        [], [("account", "lab2"), ("state", "active"), ("kind", "share")],
        [("state", "revoked")]]
    assert "'gone' is not one of 'scheduled', 'active', 'expired', 'revoked'" in \
        admin("grants", "--state", "gone", code=2).stderr


def usage(**kw: float) -> dict:
    return {"gpu_hours": 0.0, "billed_gpu_hours": 0.0, **kw}


GRANTS = [
    make_grant(1, "qlab", start=T0 - timedelta(days=1), end=T0 + timedelta(days=30), gpus=8,
               gpu_model="A100-80GB", usage=usage(gpu_hours=120.0, reserved_gpu_hours=192.0,
                                                  borrowed_gpu_hours=40.25, preemptions=3,
                                                  energy_kwh=85.43)),
    make_grant(2, "lab2", kind="share", shares=100, gpu_hours=5000.0,
               start=T0 - timedelta(days=10), end=T0 + timedelta(days=20), note="ERC",
               usage=usage(gpu_hours=1000.0, billed_gpu_hours=1250.0, budget_gpu_hours=5000.0,
                           budget_left_gpu_hours=3750.0)),
    make_grant(3, "lab3", kind="share", state="expired", state_reason="end reached",
               start=T0 - timedelta(days=60), end=T0 - timedelta(days=30),
               usage=usage(gpu_hours=7.5, billed_gpu_hours=7.5)),
    make_grant(4, "qlab", state="scheduled", start=T0 + timedelta(days=5),
               end=T0 + timedelta(days=6), gpus=2, nodes=["gpu01"]),
]


def test_grants_table_shows_each_grants_use(utc: None) -> None:
    """Active grants first, then scheduled, then ended ones; each by start."""
    text = render(grants_table(reversed(GRANTS)), width=250).splitlines()
    assert [line.split() for line in text] == [
        ["ID", "ACCOUNT", "GRANT", "STATE", "WINDOW", "USED", "GPU-H", "KWH", "BORROWED",
         "GPU-H", "PREEMPTIONS", "NOTE"],
        ["2", "lab2", "+100", "shares,", "budget", "5000", "GPU-h", "active", "2024-12-22",
         "12:00", "->", "2025-01-21", "12:00", "1250/5000", "(25%)", "-", "-", "-", "ERC"],
        ["1", "qlab", "8", "GPUs", "of", "A100-80GB", "active", "2024-12-31", "12:00", "->",
         "2025-01-31", "12:00", "120/192", "(62%)", "85.4", "40.2", "3"],
        ["4", "qlab", "2", "GPUs", "on", "gpu01", "scheduled", "2025-01-06", "12:00", "->",
         "2025-01-07", "12:00", "0.0", "-", "0.0", "0"],
        ["3", "lab3", "+100", "shares", "expired", "2024-11-02", "12:00", "->", "2024-12-02",
         "12:00", "7.5", "-", "-", "-"],
    ]


def test_used_text_without_a_budget_or_reserved_hours() -> None:
    assert used_text(GRANTS[2]) == "7.5"
    assert used_text(GRANTS[3]) == "0.0"


def test_grant_detail(utc: None) -> None:
    assert grant_detail(GRANTS[0], T0).splitlines() == [
        "Grant:       1 (reservation)",
        "Account:     qlab",
        "Reserves:    8 GPUs of A100-80GB",
        "Window:      2024-12-31 12:00 UTC -> 2025-01-31 12:00 UTC (31-00:00:00)",
        "State:       active (ends in 30-00:00:00)",
        "Used:        120 GPU-hours of 192 reserved so far (62%)",
        "Borrowed:    40.2 GPU-hours by other accounts' jobs while idle; 3 preemptions to "
        "give them back",
        "Energy:      85.4 kWh",
        "Created:     2024-12-30 12:00 UTC by root",
    ]
    share = grant_detail(GRANTS[1], T0).splitlines()
    assert share[2] == "Adds:        +100 shares while active"
    assert share[5:8] == [
        "Budget:      1250 of 5000 billed GPU-hours used (25%); 3750 left",
        "Used:        1000 GPU-hours (1250 billed) in the window",
        "Note:        ERC"]
    assert "State:       scheduled (starts in 5-00:00:00)" in grant_detail(GRANTS[3], T0)
    assert "State:       expired (end reached)" in grant_detail(GRANTS[2], T0)
