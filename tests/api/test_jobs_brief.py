"""The brief queue listing (``GET /v1/jobs?view=brief``, what ``gpuq q`` reads): the
``JobBrief`` fields of the jobs the full listing lists, in the same order, for everyone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import TypeAdapter

from gpuq.scheduler.db.models import Job
from gpuq.wire.jobs import JobBrief
from tests.api.conftest import Api

BRIEF_FIELDS = list(JobBrief.model_fields)
PRIVATE = {"command", "script", "workdir", "environment", "accounting", "priority_factors",
           "events"}


def brief_of(full: dict[str, Any]) -> dict[str, Any]:
    """What the brief listing should say of a job the full listing shows."""
    out = {k: full[k] for k in BRIEF_FIELDS if k != "idle"}
    out["idle"] = bool((full["accounting"] or {}).get("idle"))
    return out


@pytest.fixture
def queue(api: Api) -> dict[str, Any]:
    """gpu01 (4 GPUs), 2 of them reserved for qlab; olaf's four 1-GPU jobs run there (two
    borrowing the reserved GPUs, one flagged idle, one being cancelled); alice has a job
    waiting and one cancelled."""
    node = api.node("gpu01", gpus=4)
    api.user("gina", "qlab")
    olaf = api.user("olaf", "biglab")
    alice = api.user("alice", "lab1")
    grant = api.ok("POST", "/v1/admin/grants", api.admin, 201, json={
        "account": "qlab", "kind": "reservation", "gpus": 2, "note": "award",
        "start": api.clock().isoformat(),
        "end": (api.clock() + timedelta(days=30)).isoformat()})
    running = [api.submit(olaf, gpus=1, name=f"r{i}", time_limit_s=7200)["id"]
               for i in range(4)]
    api.cycle()
    for j in running:
        api.ok("POST", f"/v1/nodes/gpu01/jobs/{j}/events", node,
               json={"state": "RUNNING", "attempt": 1})
    api.cycle()
    waiting = api.submit(alice, gpus=2, name="big", script="#!/bin/sh\nexit 0\n",
                         command=None, environment={"SECRET": "x"})["id"]
    gone = api.submit(alice, gpus=1, name="gone")["id"]
    api.ok("POST", f"/v1/jobs/{gone}/cancel", alice)
    api.cycle()
    borrowers = [j for j in running if api.job(j)["borrowed_grant"] is not None]
    assert len(borrowers) == 2
    plain = [j for j in running if j not in borrowers]
    with api.ctx.transaction() as s:  # as the heartbeats would after the idle window
        s.get(Job, plain[0]).idle_flagged_at = api.clock()
    api.ok("POST", f"/v1/jobs/{plain[1]}/cancel", olaf)
    return {"olaf": olaf, "alice": alice, "running": running, "borrowers": borrowers,
            "idle": plain[0], "cancelling": plain[1], "waiting": waiting, "gone": gone,
            "grant": grant["id"]}


def listing(api: Api, who: dict[str, str], view: str, **params: Any) -> list[dict[str, Any]]:
    return api.ok("GET", "/v1/jobs", who, params={**params, "view": view})


FILTERS: list[dict[str, Any]] = [
    {}, {"active": "true"}, {"state": "PENDING"}, {"state": ["RUNNING", "CANCELLED"]},
    {"user": "olaf"}, {"account": "lab1"}, {"node": "gpu01"}, {"limit": 2},
    {"active": "true", "user": "alice"}, {"state": "RUNNING", "account": "biglab", "limit": 3},
    {"user": "nobody"},
]


def test_brief_lists_what_full_lists_for_every_filter_and_caller(
        api: Api, queue: dict[str, Any]) -> None:
    for who in (queue["alice"], queue["olaf"], api.admin):
        for params in FILTERS:
            full = listing(api, who, "full", **params)
            brief = listing(api, who, "brief", **params)
            assert [j["id"] for j in brief] == [j["id"] for j in full], params
            assert brief == [brief_of(j) for j in full], params
    assert len(listing(api, api.admin, "brief")) == 6
    assert len(listing(api, api.admin, "brief", active="true")) == 5


def test_brief_has_the_brief_fields_and_no_spec_for_anyone(
        api: Api, queue: dict[str, Any]) -> None:
    for who in (queue["alice"], queue["olaf"], api.admin):
        for j in listing(api, who, "brief"):
            assert list(j) == BRIEF_FIELDS
            assert not PRIVATE & set(j)
    # The full listing leaves out the script and the environment; the job's own page has
    # them, for its owner.
    (big,) = listing(api, queue["alice"], "full", state="PENDING")
    assert big["workdir"] and big["script"] is None and big["environment"] is None
    page = api.ok("GET", f"/v1/jobs/{big['id']}", queue["alice"])
    assert page["environment"] == {"SECRET": "x"} and page["script"]


def test_brief_is_newest_first_and_encoded_as_the_model_encodes(
        api: Api, queue: dict[str, Any]) -> None:
    r = api.client.get("/v1/jobs", headers=api.admin, params={"view": "brief"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    ids = [j["id"] for j in r.json()]
    assert ids == sorted(ids, reverse=True) and ids[0] == queue["gone"]
    adapter = TypeAdapter(list[JobBrief])
    assert adapter.dump_json(adapter.validate_json(r.content)) == r.content


def test_brief_shows_borrowing_idle_cancelling_and_where_jobs_run(
        api: Api, queue: dict[str, Any]) -> None:
    jobs = {j["id"]: j for j in listing(api, queue["olaf"], "brief")}
    for j in queue["running"]:
        assert jobs[j]["state"] == "RUNNING" and jobs[j]["node"] == "gpu01"
        assert len(jobs[j]["gpu_indices"]) == 1 and jobs[j]["started_at"] is not None
        borrowing = j in queue["borrowers"]
        assert jobs[j]["borrowed_grant"] == (queue["grant"] if borrowing else None)
        assert jobs[j]["idle"] is (j == queue["idle"])
        assert jobs[j]["cancel_requested"] is (j == queue["cancelling"])
        assert jobs[j]["preempt_requested"] is False
    waiting = jobs[queue["waiting"]]
    assert (waiting["state"], waiting["node"], waiting["gpu_indices"]) == ("PENDING", None, [])
    assert waiting["reason"] and waiting["user"] == "alice" and waiting["account"] == "lab1"
    assert (waiting["gpus"], waiting["qos"], waiting["name"]) == (2, "normal", "big")
    gone = jobs[queue["gone"]]
    assert gone["state"] == "CANCELLED" and gone["ended_at"] is not None


def test_a_bad_view_is_refused_naming_view(api: Api) -> None:
    h = api.user("alice", "lab1")
    r = api.client.get("/v1/jobs", headers=h, params={"view": "tiny"})
    assert r.status_code == 422, r.text
    assert any(d["loc"] == ["query", "view"] for d in r.json()["detail"])
    assert api.ok("GET", "/v1/jobs", h, params={"view": "brief"}) == []


def test_openapi_documents_the_view_and_jobbrief(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    op = spec["paths"]["/v1/jobs"]["get"]
    (view,) = [p for p in op["parameters"] if p["name"] == "view"]
    assert view["schema"]["enum"] == ["full", "brief"] and view["schema"]["default"] == "full"
    schema = spec["components"]["schemas"]["JobBrief"]
    assert list(schema["properties"]) == BRIEF_FIELDS
    assert "JobBrief" in str(op["responses"]["200"])
