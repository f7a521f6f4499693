"""Job arrays through the API (SQLite and PostgreSQL): one record for the whole array,
element rows only once started or touched, their environment, idempotent retries,
listings folded as squeue folds them, cancels of one element and of the whole array, and
bad input naming the field."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from gpuq.scheduler.db.models import Job, JobArray, JobEvent
from gpuq.scheduler.domain.snapshot import build_snapshot_rows
from gpuq.wire.arrays import MAX_ARRAY_TASKS, Ranges, parse_array, parse_ranges
from tests.api.conftest import Api


@pytest.fixture
def alice(api: Api) -> dict[str, str]:
    api.node("gpu01", gpus=4)
    return api.user("alice", "lab1")


def submit_array(api: Api, headers: dict[str, str], status: int = 201, **spec: object) -> dict:
    body = {"command": ["python", "sweep.py"], "workdir": "/tmp", **spec}
    return api.ok("POST", "/v1/jobs/array", headers, status, json=body)


def rows(api: Api) -> int:
    with api.ctx.transaction() as s:
        return s.scalar(select(func.count()).select_from(Job)) or 0


def test_parse_array() -> None:
    assert parse_array("0-3") == [0, 1, 2, 3]
    assert parse_array("1,3,5-7") == [1, 3, 5, 6, 7]
    assert parse_array("0-15:4") == [0, 4, 8, 12]
    assert parse_array("2, 2,1") == [1, 2]
    assert parse_array("0-10,5-15:5") == [*range(11), 15]
    big = parse_ranges(f"0-{MAX_ARRAY_TASKS - 1}")
    assert big.count == MAX_ARRAY_TASKS and big.runs == [(0, MAX_ARRAY_TASKS - 1, 1)]


def test_ranges_map_positions_and_indices_both_ways() -> None:
    r = parse_ranges("3,5-9:2,40,100-104")
    indices = r.indices()
    assert indices == [3, 5, 7, 9, 40, 100, 101, 102, 103, 104] and r.count == 10
    assert [r.index_at(p) for p in range(r.count)] == indices
    assert [r.position(i) for i in indices] == list(range(10))
    assert r.position(4) is None and r.position(105) is None and r.position(0) is None
    assert r.text() == "3,5-9:2,40,100-104" and r.text(5) == "100-104"
    assert r.text(6) == "101-104" and Ranges.from_indices(indices).indices() == indices


def test_an_array_is_one_record_and_its_elements_read_as_pending_jobs(
        api: Api, alice: dict[str, str]) -> None:
    out = submit_array(api, alice, array="0-2,10", name="sweep", environment={"A": "b"})
    assert out["indices"] == [0, 1, 2, 10] and out["count"] == 4 and out["array"] == "0-2,10"
    assert out["ids"] == list(range(out["array_job_id"], out["array_job_id"] + 4))
    assert rows(api) == 0  # one record, no job rows
    for job_id, index in zip(out["ids"], out["indices"], strict=True):
        job = api.job(job_id)
        assert job["state"] == "PENDING" and job["name"] == f"sweep[{index}]"
        assert (job["array_id"], job["array_task"]) == (out["array_job_id"], str(index))
        env = job["environment"]
        assert env["A"] == "b"
        assert env["GPUQ_ARRAY_TASK_ID"] == env["SLURM_ARRAY_TASK_ID"] == str(index)
        assert env["GPUQ_ARRAY_INDEX"] == str(index)
        assert env["GPUQ_ARRAY_JOB_ID"] == env["SLURM_ARRAY_JOB_ID"] == str(out["ids"][0])
        assert (env["GPUQ_ARRAY_TASK_COUNT"], env["GPUQ_ARRAY_TASK_MIN"],
                env["GPUQ_ARRAY_TASK_MAX"]) == ("4", "0", "10")
        assert [e["new_state"] for e in job["events"]] == ["PENDING"]
    # The block is reserved: single submits after it get the next ids.
    assert api.submit(alice)["id"] > out["ids"][-1]
    # The loop schedules them like any job: 4 GPUs, 5 one-GPU jobs.
    api.cycle()
    states = [api.job(i)["state"] for i in out["ids"]]
    assert states.count("DISPATCHED") == 4
    assert rows(api) == 5  # the four elements that started, and the single job
    for job_id in out["ids"]:
        job = api.job(job_id)
        assert [e["new_state"] for e in job["events"]] == ["PENDING", "DISPATCHED"]
        assert job["environment"]["GPUQ_ARRAY_TASK_ID"] == job["name"][6:-1]


def test_a_retry_with_the_key_returns_the_same_array(api: Api,
                                                     alice: dict[str, str]) -> None:
    first = submit_array(api, alice, array="0-4", idempotency_key="sweep-1")
    again = submit_array(api, alice, 200, array="0-4", idempotency_key="sweep-1")
    assert again == first
    listing = api.ok("GET", "/v1/jobs", alice)
    assert len(listing) == 1 and listing[0]["count"] == 5
    other = submit_array(api, alice, array="0-4", idempotency_key="sweep-2")
    assert set(other["ids"]).isdisjoint(first["ids"])
    # A single submit repeating the array's key answers with its first element.
    single = api.ok("POST", "/v1/jobs", alice, 200, json={
        "command": ["true"], "workdir": "/tmp", "idempotency_key": "sweep-1"})
    assert single["id"] == first["ids"][0] and single["array_id"] == first["ids"][0]


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


def test_the_queue_folds_the_waiting_elements_as_squeue_does(
        api: Api, alice: dict[str, str]) -> None:
    out = submit_array(api, alice, array="0-99", name="sweep")
    first = out["array_job_id"]
    for view in ("brief", "full"):
        (line,) = api.ok("GET", "/v1/jobs", alice, params={"view": view, "active": "true"})
        assert (line["id"], line["array_id"], line["array_task"], line["count"],
                line["state"], line["name"]) == (first, first, "[0-99]", 100, "PENDING",
                                                 "sweep")
    api.cycle()  # four start
    brief = api.ok("GET", "/v1/jobs", alice, params={"view": "brief", "active": "true"})
    assert [(j["array_task"], j["state"], j["count"]) for j in brief] == [
        ("[4-99]", "PENDING", 96), ("3", "DISPATCHED", 1), ("2", "DISPATCHED", 1),
        ("1", "DISPATCHED", 1), ("0", "DISPATCHED", 1)]
    assert brief[0]["id"] == first + 4 and brief[0]["reason"].startswith("Resources")
    # Someone else's listing shows it too; the limit counts the folded line as one.
    bob = api.user("bob", "lab1")
    assert len(api.ok("GET", "/v1/jobs", bob, params={"limit": 2})) == 2
    assert api.ok("GET", "/v1/jobs", bob, params={"state": "RUNNING"}) == []


def test_one_element_cancelled_alone_gets_its_row(api: Api, alice: dict[str, str]) -> None:
    out = submit_array(api, alice, array="0-9")
    first = out["array_job_id"]
    gone = api.ok("POST", f"/v1/jobs/{first + 1}/cancel", alice)
    assert gone["state"] == "CANCELLED" and gone["array_task"] == "1"
    assert rows(api) == 1
    job = api.job(first + 1)
    assert [e["new_state"] for e in job["events"]] == ["PENDING", "CANCELLED"]
    (line,) = api.ok("GET", "/v1/jobs", alice, params={"view": "brief", "active": "true"})
    assert line["array_task"] == "[0,2-9]" and line["count"] == 9
    # The cycle starts elements 0, 2, 3, 4: it skips the cancelled one.
    api.cycle()
    started = sorted(i - first for i in range(first, first + 10)
                     if api.job(i)["state"] == "DISPATCHED")
    assert started == [0, 2, 3, 4]
    (line,) = [j for j in api.ok("GET", "/v1/jobs", alice, params={"view": "brief"})
               if j["count"] > 1]
    assert line["array_task"] == "[5-9]" and line["count"] == 5
    # Bob may not cancel it; an unknown id is a 404.
    bob = api.user("bob", "lab1")
    api.ok("POST", f"/v1/jobs/{first + 7}/cancel", bob, 403)
    api.ok("POST", f"/v1/jobs/{first + 7000}/cancel", alice, 404)


def test_the_whole_array_is_cancelled_at_once(api: Api, alice: dict[str, str]) -> None:
    out = submit_array(api, alice, array="0-999")
    first = out["array_job_id"]
    api.cycle()  # four of them run
    bob = api.user("bob", "lab1")
    api.ok("POST", f"/v1/jobs/array/{first}/cancel", bob, 403)
    done = api.ok("POST", f"/v1/jobs/array/{first}/cancel", alice)
    assert done["cancelled"] == 996 and sorted(done["cancel_requested"]) == list(
        range(first, first + 4))
    assert rows(api) == 4
    waiting = api.job(first + 500)
    assert waiting["state"] == "CANCELLED" and waiting["reason"] == "cancelled by alice"
    assert [e["new_state"] for e in waiting["events"]] == ["PENDING", "CANCELLED"]
    assert api.job(first)["cancel_requested"] is True
    assert api.ok("GET", "/v1/jobs", alice, params={"view": "brief", "state": "PENDING"}) == []
    (line,) = api.ok("GET", "/v1/jobs", alice, params={"view": "brief",
                                                        "state": "CANCELLED"})
    assert line["count"] == 996 and line["array_task"] == "[4-999]"
    # Nothing more starts, and a second cancel changes nothing.
    api.cycle()
    assert rows(api) == 4
    again = api.ok("POST", f"/v1/jobs/array/{first}/cancel", alice)
    assert again["cancelled"] == 0
    assert api.ok("POST", f"/v1/jobs/{first + 9}/cancel", alice)["state"] == "CANCELLED"
    api.ok("POST", "/v1/jobs/array/999999/cancel", alice, 404)


def test_why_an_element_waits(api: Api, alice: dict[str, str]) -> None:
    api.submit(alice, gpus=4)  # takes the node
    api.cycle()
    solo = api.submit(alice)
    out = submit_array(api, alice, array="0-9")
    api.cycle()
    why = api.ok("GET", f"/v1/jobs/{out['array_job_id'] + 3}/why", alice)
    assert why["state"] == "PENDING" and why["pending"] == 11
    assert why["position"] == 5 and why["ahead"]["id"] == out["array_job_id"] + 2
    assert api.ok("GET", f"/v1/jobs/{solo['id']}/why", alice)["position"] == 1


def test_a_huge_array_costs_the_cycle_what_a_few_jobs_do(api: Api,
                                                         alice: dict[str, str]) -> None:
    """1,000,000 elements: one record, no rows; the loop's snapshot holds as many of
    them as could start (4 GPUs) and one more."""
    out = submit_array(api, alice, array=f"0-{MAX_ARRAY_TASKS - 1}")
    assert out["count"] == MAX_ARRAY_TASKS and out["ids"] == [] and out["indices"] == []
    assert out["array"] == f"0-{MAX_ARRAY_TASKS - 1}"
    assert rows(api) == 0
    with api.ctx.transaction() as s:
        snapshot, _, _ = build_snapshot_rows(s, api.clock(), api.ctx.settings)
    assert [j.id - out["array_job_id"] for j in snapshot.pending] == [0, 1, 2, 3, 4]
    api.cycle()
    assert rows(api) == 4
    last = api.job(out["array_job_id"] + MAX_ARRAY_TASKS - 1)
    assert last["name"].endswith(f"[{MAX_ARRAY_TASKS - 1}]") and last["state"] == "PENDING"
    api.ok("GET", f"/v1/jobs/{out['array_job_id'] + MAX_ARRAY_TASKS}", alice, 404)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_block_is_never_shared_with_concurrent_submits(api: Api,
                                                         alice: dict[str, str]) -> None:
    """Single submits racing array submits on PostgreSQL never get an id inside an
    array's block (the sequence steps by the block at once)."""
    singles: list[int] = []
    blocks: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def single() -> None:
        try:
            for _ in range(20):
                singles.append(api.submit(alice)["id"])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def arrays() -> None:
        try:
            for _ in range(10):
                out = submit_array(api, alice, array="0-49")
                blocks.append((out["array_job_id"], out["array_job_id"] + 49))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=f) for f in (single, single, arrays, arrays)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(singles) == 40 and len(blocks) == 20
    for lo, hi in blocks:
        assert not [i for i in singles if lo <= i <= hi]
    spans = sorted(blocks)
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False))
    with api.ctx.transaction() as s:
        assert s.scalar(select(func.count()).select_from(JobArray)) == 20
        assert s.scalar(select(func.count()).select_from(JobEvent)) == 40
