"""Fair share end to end in the server: usage moves priorities, /v1/fairshare, why."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api


@pytest.fixture
def labs(api: Api) -> dict[str, dict[str, str]]:
    api.ctx.settings.node_down_after_s = 1e9  # no heartbeats in these tests
    api.node("gpu01", gpus=1)
    api.account("heavy", shares=1)
    api.account("light", shares=1)
    return {"hugo": api.user("hugo", "heavy"), "lena": api.user("lena", "light")}


def test_the_lab_with_less_usage_goes_first(api: Api, labs: dict) -> None:
    api.ok("POST", "/v1/admin/usage/import", api.admin,
           json=[{"user": "hugo", "account": "heavy", "billed_seconds": 1e6}])
    blocker = api.submit(labs["lena"])
    api.cycle()  # the one GPU is busy now
    first = api.submit(labs["hugo"])  # submitted earlier...
    api.clock.advance(10)
    second = api.submit(labs["lena"])  # ... but lena's lab has used less
    api.cycle()
    a, b = api.job(first["id"]), api.job(second["id"])
    assert b["priority_factors"]["fairshare"] > a["priority_factors"]["fairshare"]
    assert b["priority_factors"]["total"] > a["priority_factors"]["total"]
    why_a = api.ok("GET", f"/v1/jobs/{first['id']}/why", labs["hugo"])
    assert why_a["position"] == 2 and why_a["ahead"]["id"] == second["id"]
    assert why_a["ahead"]["factors"]["fairshare"] == b["priority_factors"]["fairshare"]
    why_b = api.ok("GET", f"/v1/jobs/{second['id']}/why", labs["lena"])
    assert why_b["position"] == 1 and why_b["ahead"] is None and why_b["pending"] == 2
    assert blocker  # runs on the only GPU


def test_fairshare_table_has_sshare_columns(api: Api, labs: dict) -> None:
    api.ok("POST", "/v1/admin/usage/import", api.admin,
           json=[{"user": "hugo", "account": "heavy", "billed_seconds": 3000.0},
                 {"user": "lena", "account": "light", "billed_seconds": 1000.0}])
    rows = api.ok("GET", "/v1/fairshare", labs["lena"])
    by = {(r["account"], r["user"]): r for r in rows}
    heavy, light = by[("heavy", None)], by[("light", None)]
    assert heavy["norm_shares"] == light["norm_shares"] == pytest.approx(0.5)
    assert heavy["raw_usage"] == pytest.approx(3000.0)
    assert heavy["effective_usage"] == pytest.approx(0.75)
    assert light["level_fs"] > 1 > heavy["level_fs"]
    assert by[("light", "lena")]["fairshare"] > by[("heavy", "hugo")]["fairshare"]
    assert {"name", "parent", "raw_shares", "norm_usage"} <= set(heavy)


def test_users_may_not_raise_their_own_priority(api: Api, labs: dict) -> None:
    r = api.client.post("/v1/jobs", headers=labs["lena"],
                        json={"command": ["true"], "workdir": "/", "nice": -100})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "nice"]
    job = api.submit(labs["lena"], nice=50)
    assert job["nice"] == 50
