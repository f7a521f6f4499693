"""Job arrays through the API (SQLite and PostgreSQL): all elements or none, their
environment, idempotent retries, and bad input naming the field."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gpuq.scheduler.api.deps import _load_accounts
from gpuq.scheduler.db.models import Job, JobEvent
from gpuq.scheduler.lifecycle.writes import create_from_select, create_rows, reserve_ids
from gpuq.scheduler.services.arrays import (
    EVENT_REASON,
    element_columns,
    element_rows,
    shared_spec,
)
from gpuq.scheduler.services.auth import check_token
from gpuq.scheduler.services.jobs import check_submit, job_fields
from gpuq.wire.arrays import MAX_ARRAY_TASKS, JobArrayCreate, parse_array
from tests.api.conftest import Api


@pytest.fixture
def alice(api: Api) -> dict[str, str]:
    api.node("gpu01", gpus=4)
    return api.user("alice", "lab1")


def submit_array(api: Api, headers: dict[str, str], status: int = 201, **spec: object) -> dict:
    body = {"command": ["python", "sweep.py"], "workdir": "/tmp", **spec}
    return api.ok("POST", "/v1/jobs/array", headers, status, json=body)


def test_parse_array() -> None:
    assert parse_array("0-3") == [0, 1, 2, 3]
    assert parse_array("1,3,5-7") == [1, 3, 5, 6, 7]
    assert parse_array("0-15:4") == [0, 4, 8, 12]
    assert parse_array("2, 2,1") == [1, 2]
    assert len(parse_array(f"0-{MAX_ARRAY_TASKS - 1}")) == MAX_ARRAY_TASKS


def test_every_element_is_a_pending_job_with_its_index(api: Api,
                                                       alice: dict[str, str]) -> None:
    out = submit_array(api, alice, array="0-2,10", name="sweep", environment={"A": "b"})
    assert out["indices"] == [0, 1, 2, 10] and len(out["ids"]) == 4
    assert out["array_job_id"] == out["ids"][0] and out["ids"] == sorted(out["ids"])
    for job_id, index in zip(out["ids"], out["indices"], strict=True):
        job = api.job(job_id)
        assert job["state"] == "PENDING" and job["name"] == f"sweep[{index}]"
        env = job["environment"]
        assert env["A"] == "b"
        assert env["GPUQ_ARRAY_TASK_ID"] == env["SLURM_ARRAY_TASK_ID"] == str(index)
        assert env["GPUQ_ARRAY_INDEX"] == str(index)
        assert env["GPUQ_ARRAY_JOB_ID"] == env["SLURM_ARRAY_JOB_ID"] == str(out["ids"][0])
        assert (env["GPUQ_ARRAY_TASK_COUNT"], env["GPUQ_ARRAY_TASK_MIN"],
                env["GPUQ_ARRAY_TASK_MAX"]) == ("4", "0", "10")
        assert [e["new_state"] for e in job["events"]] == ["PENDING"]
    # Single submits after it get the next ids.
    assert api.submit(alice)["id"] > out["ids"][-1]
    # The loop schedules them like any job.
    api.cycle()
    states = [api.job(i)["state"] for i in out["ids"]]
    assert states.count("DISPATCHED") == 4


def test_a_retry_with_the_key_returns_the_same_array(api: Api,
                                                     alice: dict[str, str]) -> None:
    first = submit_array(api, alice, array="0-4", idempotency_key="sweep-1")
    again = submit_array(api, alice, 200, array="0-4", idempotency_key="sweep-1")
    assert again["ids"] == first["ids"] and again["array_job_id"] == first["array_job_id"]
    assert len(api.ok("GET", "/v1/jobs", alice)) == 5
    other = submit_array(api, alice, array="0-4", idempotency_key="sweep-2")
    assert set(other["ids"]).isdisjoint(first["ids"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"array": ""}, "array"),
        ({"array": "a-b"}, "array"),
        ({"array": "5-1"}, "array"),
        ({"array": "0-9:0"}, "array"),
        ({"array": f"0-{MAX_ARRAY_TASKS}"}, "array"),
        ({"array": "0-1", "gpus": -1}, "gpus"),
        ({"array": "0-1", "idempotency_key": "k" * 101}, "idempotency_key"),
        ({"command": ["true"]}, "array"),
    ],
)
def test_bad_input_is_422_naming_the_field(api: Api, alice: dict[str, str], body: dict,
                                           field: str) -> None:
    r = api.client.post("/v1/jobs/array", headers=alice,
                        json={"command": ["true"], "workdir": "/tmp", **body})
    assert r.status_code == 422, r.text
    locs = [e["loc"] for e in r.json()["detail"]]
    assert any(field in loc for loc in locs), locs
    assert api.ok("GET", "/v1/jobs", alice) == []


def test_a_refused_array_makes_no_job(api: Api, alice: dict[str, str]) -> None:
    r = api.client.post("/v1/jobs/array", headers=alice, json={
        "command": ["true"], "workdir": "/tmp", "array": "0-9", "gpus": 8})
    assert r.status_code == 422, r.text
    assert "largest node has 4" in r.text
    assert api.ok("GET", "/v1/jobs", alice) == []


def test_node_tokens_cannot_submit_arrays(api: Api, alice: dict[str, str]) -> None:
    node = api.node("gpu02")
    r = api.client.post("/v1/jobs/array", headers=node, json={
        "command": ["true"], "workdir": "/tmp", "array": "0-1"})
    assert r.status_code == 403


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("key", [None, "sweep\\7\t'x"])
def test_postgresql_makes_the_same_rows_as_python(api: Api, alice: dict[str, str],
                                                  key: str | None) -> None:
    """PostgreSQL builds the elements in SQL (element_columns, create_from_select); SQLite
    from Python (element_rows, create_rows). Both ways, in one PostgreSQL database, give
    identical rows."""
    spec = JobArrayCreate.model_validate({
        "command": ["python", "sweep.py", "--lr", "1e-3"], "workdir": "/data/x y",
        "array": "3,5-9:2,40", "name": "lr\\sweep\nnext", "idempotency_key": key,
        "environment": {"A": "b\tc", "GPUQ_ARRAY_TASK_ID": "overridden", "Z": "é"},
        "gpus": 2, "nice": 3})
    secret = alice["Authorization"].split()[1]
    now = api.clock()
    with api.ctx.transaction() as s:
        principal = check_token(s, secret, now=now)
        _load_accounts(principal)
        ok = check_submit(s, principal, spec, settings=api.ctx.settings)
        ids = reserve_ids(s, len(spec.indices))
        base = shared_spec(s, spec, job_fields(spec, ok, now=now), ids)  # one for both

        def made() -> list[tuple]:
            jobs = s.execute(select(Job.__table__).where(Job.id.in_(ids))
                             .order_by(Job.id)).all()
            events = s.execute(select(*[c for c in JobEvent.__table__.c if c.key != "id"])
                               .where(JobEvent.job_id.in_(ids))
                               .order_by(JobEvent.job_id)).all()
            return [tuple(r) for r in jobs] + [tuple(r) for r in events]

        with s.begin_nested() as sp:
            create_from_select(s, element_columns(spec, base, ids), ids, now=now,
                               reason=EVENT_REASON)
            by_sql = made()
            sp.rollback()
        with s.begin_nested() as sp:
            create_rows(s, element_rows(spec, base, ids), now=now, reason=EVENT_REASON)
            by_python = made()
            sp.rollback()
    assert len(by_sql) == 2 * len(spec.indices) == 10
    assert by_sql == by_python
