"""Group commit of single submits (scheduler/runtime/group_commit.py, services/submits.py):
submits that arrive together share a transaction, each is answered as if alone, a
refused one takes nothing from the others, and nothing accepted is lost."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text

from gpuq.scheduler.api.deps import _load_accounts
from gpuq.scheduler.db.models import Job, JobEvent
from gpuq.scheduler.errors import Invalid
from gpuq.scheduler.runtime import group_commit
from gpuq.scheduler.runtime.group_commit import SubmitBatcher
from gpuq.scheduler.services import jobs as svc
from gpuq.scheduler.services.auth import Principal, check_token
from gpuq.scheduler.services.submits import Answer, Runnable, submit_many
from gpuq.wire.jobs import JobCreate
from tests.api.conftest import Api


def _principal(api: Api, headers: dict[str, str]) -> Principal:
    secret = headers["Authorization"].split()[1]
    with api.ctx.transaction() as s:
        p = check_token(s, secret, now=api.clock())
        _load_accounts(p)
    return p


def _spec(**kw: object) -> JobCreate:
    return JobCreate.model_validate({"command": ["true"], "workdir": "/tmp", **kw})


@pytest.fixture
def people(api: Api) -> dict[str, Principal]:
    api.node("gpu01", gpus=4)
    alice = api.user("alice", "lab1")
    bob = api.user("bob", "lab2")
    return {"alice": _principal(api, alice), "bob": _principal(api, bob)}


def test_one_batch_answers_each_submit_as_if_alone(api: Api, people: dict) -> None:
    alice, bob = people["alice"], people["bob"]
    with api.ctx.transaction() as s:
        (first,) = submit_many(s, [(alice, _spec(idempotency_key="k-old"))], now=api.clock(),
                               settings=api.ctx.settings)
    old = json.loads(first.body)
    items = [
        (alice, _spec(gpus=2, name="a")),
        (bob, _spec(account="lab1")),                        # not a member: refused
        (bob, _spec(gpus=9)),                                # no node that big: refused
        (alice, _spec(idempotency_key="k-old")),             # a retry: the job it made
        (bob, _spec(gpus=1, idempotency_key="k-new")),
        (bob, _spec(gpus=1, idempotency_key="k-new")),       # its twin in the batch
    ]
    with api.ctx.transaction() as s:
        out = submit_many(s, items, now=api.clock(), settings=api.ctx.settings)
    assert isinstance(out[0], Answer) and isinstance(out[4], Answer)
    assert out[0].created and out[4].created
    assert isinstance(out[1], Invalid) and out[1].field == "account"
    assert isinstance(out[2], Invalid) and out[2].field == "gpus"
    assert not out[3].created and not out[5].created
    assert json.loads(out[3].body) == old
    assert json.loads(out[5].body) == json.loads(out[4].body)
    made = [json.loads(o.body) for o in (out[0], out[4])]
    assert [m["user"] for m in made] == ["alice", "bob"]
    assert [m["account"] for m in made] == ["lab1", "lab2"]
    # Each answer is what GET /v1/jobs/{id} shows (but the history).
    for m in made:
        shown = api.ok("GET", f"/v1/jobs/{m['id']}", api.admin)
        assert shown.pop("events") and m.pop("events") is None
        assert m == shown
    with api.ctx.transaction() as s:
        assert s.scalar(select(func.count(Job.id))) == 3
        events = s.execute(select(JobEvent.job_id, JobEvent.new_state, JobEvent.reason)
                           .where(JobEvent.job_id.in_([m["id"] for m in made]))).all()
    assert sorted(events) == sorted((m["id"], "PENDING", "submitted") for m in made)
    assert old["id"] not in {m["id"] for m in made}


def test_a_batched_job_reads_as_a_lone_submit_would(api: Api, people: dict) -> None:
    spec = _spec(gpus=2, gpu_model="A100-80GB", time_limit_s=600, nice=5,
                 environment={"A": "1"}, requeue=False)
    with api.ctx.transaction() as s:
        (out,) = submit_many(s, [(people["alice"], spec)], now=api.clock(),
                             settings=api.ctx.settings)
    batched = json.loads(out.body)
    with api.ctx.transaction() as s:  # as GET /v1/jobs/{id} reads it: the ORM job
        alone = svc.to_read(s.get(Job, batched["id"]), people["alice"]).model_dump(mode="json")
    assert batched == alone


def test_concurrent_submits_share_transactions_and_lose_nothing(
        api: Api, people: dict, db_url: str) -> None:
    """While a batch waits on the database, the next submits queue and go together; a
    key submitted five times at once makes one job."""
    batcher = SubmitBatcher(api.ctx)
    alice = people["alice"]
    first = batcher.submit(alice, _spec(name="first"))
    first.result(10)
    blocker = api.ctx.sessions()
    blocker.begin()
    # Hold the jobs table so that the next batch waits for the lock.
    if db_url.startswith("postgresql"):
        blocker.execute(text("LOCK TABLE jobs IN EXCLUSIVE MODE"))
    else:
        blocker.execute(text("UPDATE jobs SET nice = nice"))  # SQLite's write lock
    futures = [batcher.submit(alice, _spec(name="waits"))]
    deadline = threading.Event()
    deadline.wait(0.3)  # the batcher has taken it and waits on the lock
    with ThreadPoolExecutor(8) as pool:
        futures += list(pool.map(lambda i: batcher.submit(alice, _spec(name=f"j{i}")),
                                 range(40)))
        futures += list(pool.map(lambda i: batcher.submit(alice, _spec(
            name="twin", idempotency_key="same")), range(5)))
    batches_before = batcher.batches
    blocker.rollback()
    blocker.close()
    answers = [f.result(30) for f in futures]
    batcher.stop()
    ids = [json.loads(a.body)["id"] for a in answers]
    twins = ids[-5:]
    assert len(set(twins)) == 1
    assert sum(a.created for a in answers[-5:]) == 1
    assert len(set(ids[:-5])) == 41
    # 46 submits in a few transactions, not 46 (the 41 + one twin in one batch here).
    assert batcher.batches - batches_before <= 3, batcher.batches
    with api.ctx.transaction() as s:
        assert s.scalar(select(func.count(Job.id))) == 1 + 41 + 1
        assert s.scalar(select(func.count(JobEvent.id)).where(
            JobEvent.new_state == "PENDING", JobEvent.old_state.is_(None))) == 43


def test_a_batch_that_fails_is_written_one_by_one(api: Api, people: dict,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A database error in a batch (fault injected) does not fail its submits: each is
    written again alone, and a refused one still gets its own 4xx."""
    real = group_commit.submit_many

    def broken(session: object, items: list, **kw: object) -> object:
        if len(items) > 1:
            raise RuntimeError("injected")
        return real(session, items, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(group_commit, "submit_many", broken)
    batcher = SubmitBatcher(api.ctx)
    ok = group_commit._Submit(people["alice"], _spec(gpus=1))
    bad = group_commit._Submit(people["bob"], _spec(gpus=16))
    batcher._answer([ok, bad])  # one batch, which fails as a whole
    answer = ok.future.result(10)
    assert answer.created and json.loads(answer.body)["state"] == "PENDING"
    with pytest.raises(Invalid, match="largest node"):
        bad.future.result(10)
    batcher.stop()


def test_the_api_answers_201_then_200_for_a_replay(api: Api, people: dict) -> None:
    h = api.user("carol", "lab1")
    body = {"command": ["true"], "workdir": "/tmp", "idempotency_key": "once"}
    r1 = api.client.post("/v1/jobs", headers=h, json=body)
    r2 = api.client.post("/v1/jobs", headers=h, json=body)
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r1.json()["id"] == r2.json()["id"]
    r = api.client.post("/v1/jobs", headers=h, json={**body, "idempotency_key": None,
                                                      "gpus": 16})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "gpus"]


def test_runnable_remembers_what_runs_not_what_was_refused(api: Api, people: dict) -> None:
    """A shape some node runs is not asked again for a while; a refused one is asked
    again in the next batch, so a node that registers meanwhile is seen at once."""
    runnable = Runnable(ttl_s=60)
    eight = [(people["alice"], _spec(gpus=8))]
    with api.ctx.transaction() as s:
        (out,) = submit_many(s, eight, now=api.clock(), settings=api.ctx.settings,
                             runnable=runnable)
    assert isinstance(out, Invalid) and "largest node has 4" in out.message
    api.node("gpu02", gpus=8)
    with api.ctx.transaction() as s:
        (out,) = submit_many(s, eight, now=api.clock(), settings=api.ctx.settings,
                             runnable=runnable)
    assert isinstance(out, Answer)
    with api.ctx.transaction() as s:  # remembered: no query needed for this shape
        s.execute(text("UPDATE nodes SET state = 'UNKNOWN'"))
        (out,) = submit_many(s, eight, now=api.clock(), settings=api.ctx.settings,
                             runnable=runnable)
        assert isinstance(out, Answer)
        (out,) = submit_many(s, eight, now=api.clock(), settings=api.ctx.settings,
                             runnable=Runnable())
        assert isinstance(out, Invalid)
        s.rollback()


def test_a_large_batch_reads_as_lone_submits_would(api: Api, people: dict) -> None:
    """More rows than one ``INSERT ... RETURNING`` takes (PostgreSQL: COPY, then read back):
    each answer, in order, is the job as GET /v1/jobs/{id} reads it."""
    specs = [_spec(gpus=i % 3, name=f"j{i}", environment={"I": str(i)}, nice=i)
             for i in range(12)]
    with api.ctx.transaction() as s:
        out = submit_many(s, [(people["alice"], spec) for spec in specs], now=api.clock(),
                          settings=api.ctx.settings)
    made = [json.loads(o.body) for o in out]
    assert [m["name"] for m in made] == [f"j{i}" for i in range(12)]
    assert [m["environment"] for m in made] == [{"I": str(i)} for i in range(12)]
    with api.ctx.transaction() as s:
        for m in made:
            alone = svc.to_read(s.get(Job, m["id"]), people["alice"]).model_dump(mode="json")
            assert m == alone
