"""Group commit of heartbeats (scheduler/runtime/group_commit.py ``HeartbeatBatcher``,
services/heartbeats.py): the steady heartbeats of a batch (``_steady``) are written
together exactly as each would be alone; a heartbeat that is not steady (or a second one
of the same node) gets ``None`` there and nothing of it is written, so that
``reconcile`` takes it; through the API, heartbeats arriving together share a
transaction, and a batch that fails as a whole is answered one by one, still
correctly."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from gpuq.scheduler.db.models import Gpu, Job, JobEvent, JobSample, Node
from gpuq.scheduler.runtime import group_commit
from gpuq.scheduler.services import heartbeats as svc
from gpuq.wire.nodes import Heartbeat, HeartbeatReply
from tests.api.conftest import Api

STEADY = (HeartbeatReply(launch=[], kill=[]), False)
STEADY_JSON = {"launch": [], "kill": []}
UNKNOWN = 4242  # a job id the database does not have


@dataclass
class Cluster:
    """Nodes n1..n5 with 2 GPUs each; ``runs``: node -> the 2-GPU job RUNNING on it."""

    heads: dict[str, dict[str, str]]
    runs: dict[str, int]


@pytest.fixture
def cluster(api: Api) -> Cluster:
    """n1 and n2 each run one of alice's 2-GPU jobs; n3, n4 and n5 run nothing."""
    alice = api.user("alice", "lab1")
    heads = {n: api.node(n, gpus=2) for n in ("n1", "n2")}
    jobs = [api.submit(alice, gpus=2, name=f"j{i}")["id"] for i in range(2)]
    api.cycle()
    runs: dict[str, int] = {}
    for job_id in jobs:
        node = api.job(job_id)["node"]
        api.ok("POST", f"/v1/nodes/{node}/jobs/{job_id}/events", heads[node],
               json={"state": "RUNNING"})
        runs[node] = job_id
    assert sorted(runs) == ["n1", "n2"]
    heads.update((n, api.node(n, gpus=2)) for n in ("n3", "n4", "n5"))
    api.clock.advance(1)  # so that a heartbeat's writes show against registration's
    return Cluster(heads, runs)


def wire(*runs: int, watts: float = 100.0, energy_j: float | None = None,
         util: float = 80.0, sick: int | None = None) -> dict[str, Any]:
    """A heartbeat's JSON: these job ids RUNNING (attempt 1, with a sample if
    ``energy_j``), two GPUs drawing ``watts``, GPU ``sick`` reported unhealthy."""
    jobs: list[dict[str, Any]] = []
    for job_id in runs:
        run: dict[str, Any] = {"job_id": job_id, "attempt": 1, "state": "RUNNING"}
        if energy_j is not None:
            run["sample"] = {"utilization_pct": util, "power_w": 2 * watts,
                             "energy_j": energy_j, "memory_used_mib": 1000.0,
                             "gpus": [{"index": i, "utilization_pct": util}
                                      for i in range(2)]}
        jobs.append(run)
    gpus: list[dict[str, Any]] = [{"index": i, "power_w": watts, "utilization_pct": util}
                                  for i in range(2)]
    if sick is not None:
        gpus[sick] = {**gpus[sick], "healthy": False, "health_reason": "XID 79"}
    return {"jobs": jobs, "gpus": gpus}


def beat(*runs: int, **kw: Any) -> Heartbeat:
    return Heartbeat.model_validate(wire(*runs, **kw))


def batch(api: Api, beats: list[tuple[str, Heartbeat]]) -> list[Any]:
    """The steady part of a batch (``_steady``) in one committed transaction, at the
    API's clock."""
    with api.ctx.transaction() as s:
        return svc._steady(s, beats, now=api.clock(), settings=api.ctx.settings)


def tables(s: Session) -> dict[str, list[dict[str, Any]]]:
    """Every row a heartbeat may write (sample and event ids left out: sequences are not
    rolled back on PostgreSQL)."""
    def rows(table: Any, order: Any, drop: str = "") -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != drop}
                for r in s.execute(select(table).order_by(*order)).mappings()]

    return {
        "nodes": rows(Node.__table__, [Node.id]),
        "gpus": rows(Gpu.__table__, [Gpu.id]),
        "jobs": rows(Job.__table__, [Job.id]),
        "samples": rows(JobSample.__table__, [JobSample.job_id, JobSample.time], "id"),
        "events": rows(JobEvent.__table__, [JobEvent.job_id, JobEvent.time,
                                            JobEvent.reason], "id"),
    }


def node_rows(api: Api) -> dict[str, tuple[Any, ...]]:
    """Per node: state, last heartbeat, and each GPU's (healthy, sampled power)."""
    with api.ctx.transaction() as s:
        out = {}
        for node in s.scalars(select(Node).order_by(Node.name)):
            gpus = sorted(node.gpus, key=lambda g: g.index)
            out[node.name] = (node.state, node.last_heartbeat_at,
                              [(g.healthy, (g.last_sample or {}).get("power_w")) for g in gpus])
        return out


def job_row(api: Api, job_id: int) -> tuple[Any, ...]:
    with api.ctx.transaction() as s:
        job = s.get(Job, job_id)
        assert job is not None
        samples = s.scalar(select(func.count(JobSample.id)).where(JobSample.job_id == job_id))
        return job.state, job.gpu_energy_j, job.max_gpu_memory_mib, samples


# --- steady_heartbeats, one batch --------------------------------------------------------


def test_steady_heartbeats_of_several_nodes_in_one_batch(api: Api, cluster: Cluster) -> None:
    """Each node's beat time is written, each GPU sample when due (gpu_sample_interval_s)
    and not between, every reply is launch=[] kill=[], and the jobs are untouched."""
    n1, n2 = cluster.runs["n1"], cluster.runs["n2"]
    jobs_before = [api.job(n1), api.job(n2)]
    first = api.clock()
    out = batch(api, [("n1", beat(n1, watts=100.0)), ("n2", beat(n2, watts=110.0)),
                      ("n3", beat(watts=120.0)), ("n4", beat(watts=130.0))])
    assert out == [STEADY] * 4
    rows = node_rows(api)
    for name, watts in (("n1", 100.0), ("n2", 110.0), ("n3", 120.0), ("n4", 130.0)):
        assert rows[name] == ("UP", first, [(True, watts)] * 2), name
    assert rows["n5"][1] < first  # not in the batch: not written

    api.clock.advance(api.ctx.settings.gpu_sample_interval_s / 2)
    out = batch(api, [("n1", beat(n1, watts=200.0)), ("n3", beat(watts=220.0))])
    assert out == [STEADY] * 2
    rows = node_rows(api)
    assert rows["n1"] == ("UP", api.clock(), [(True, 100.0)] * 2)  # sample not due: kept
    assert rows["n3"] == ("UP", api.clock(), [(True, 120.0)] * 2)
    assert rows["n2"][1] == first

    api.clock.advance(api.ctx.settings.gpu_sample_interval_s / 2)
    assert batch(api, [("n3", beat(watts=300.0)), ("n1", beat(n1, watts=310.0))]) == \
        [STEADY] * 2
    rows = node_rows(api)
    assert rows["n1"][2] == [(True, 310.0)] * 2 and rows["n3"][2] == [(True, 300.0)] * 2
    assert [api.job(n1), api.job(n2)] == jobs_before


def test_a_batch_writes_exactly_what_the_same_heartbeats_write_alone(
        api: Api, cluster: Cluster) -> None:
    """The same heartbeats (steady ones with and without job samples, one not steady)
    leave every row a heartbeat may write the same, and get the same answers, whether
    written by ``_steady`` in one batch or as batches of one."""
    n1, n2 = cluster.runs["n1"], cluster.runs["n2"]
    beats = [("n1", beat(n1, energy_j=5000.0)), ("n5", beat(UNKNOWN)),
             ("n2", beat(n2, watts=90.0)), ("n3", beat(watts=70.0))]
    settings, now = api.ctx.settings, api.clock()

    def written(together: bool) -> tuple[list[Any], dict[str, Any]]:
        with api.ctx.sessions() as s:
            s.begin()
            if together:
                out = svc._steady(s, beats, now=now, settings=settings)
            else:
                out = [svc._steady(s, [(n, b)], now=now, settings=settings)[0]
                       for n, b in beats]
            rows = tables(s)
            s.rollback()
            return out, rows

    with api.ctx.sessions() as s:
        before = tables(s)
    alone = written(False)
    together = written(True)
    assert together == alone
    out, rows = together
    assert out == [STEADY, None, STEADY, STEADY]
    assert rows != before  # not vacuous: the batch wrote something
    beat_at = {r["name"]: r["last_heartbeat_at"] for r in rows["nodes"]}
    assert beat_at["n1"] == beat_at["n2"] == beat_at["n3"] == now > beat_at["n5"]
    assert [r["job_id"] for r in rows["samples"]] == [n1]


# --- what is not steady gets None and nothing written -------------------------------------


def test_a_heartbeat_that_is_not_steady_gets_none_and_nothing_of_it_is_written(
        api: Api, cluster: Cluster) -> None:
    """In one batch: n1 reports a job the database does not have on it, n3 is DOWN, n4
    reports a GPU turned unhealthy, n2 runs a job that is being cancelled, and a node
    nobody registered beats; all get None and none of their rows change, while n5's
    steady heartbeat in the same batch is written."""
    n1, n2 = cluster.runs["n1"], cluster.runs["n2"]
    api.ok("POST", f"/v1/jobs/{n2}/cancel", api.admin)
    with api.ctx.transaction() as s:
        s.execute(text("UPDATE nodes SET state = 'DOWN' WHERE name = 'n3'"))
    api.clock.advance(1)
    before = node_rows(api)
    jobs_before = [job_row(api, n1), job_row(api, n2)]
    out = batch(api, [("n1", beat(n1, UNKNOWN, energy_j=100.0)),
                      ("n3", beat()),
                      ("n4", beat(sick=1)),
                      ("n2", beat(n2, energy_j=100.0)),
                      ("ghost", beat()),
                      ("n5", beat(watts=55.0))])
    assert out == [None, None, None, None, None, STEADY]
    after = node_rows(api)
    assert {n: after[n] for n in ("n1", "n2", "n3", "n4")} == \
        {n: before[n] for n in ("n1", "n2", "n3", "n4")}
    assert after["n3"][0] == "DOWN" and after["n4"][2][1] == (True, None)
    assert after["n5"] == ("UP", api.clock(), [(True, 55.0)] * 2)
    assert [job_row(api, n1), job_row(api, n2)] == jobs_before
    assert jobs_before[0][1:] == (None, None, 0)  # the sample was not recorded either


def test_a_second_heartbeat_of_a_node_in_one_batch_gets_none(
        api: Api, cluster: Cluster) -> None:
    """Only a node's first heartbeat in a batch is written (the second is answered alone,
    after it); a node whose first heartbeat is not steady has nothing written at all."""
    n1 = cluster.runs["n1"]
    out = batch(api, [("n3", beat(watts=10.0)), ("n1", beat(n1, energy_j=1.0)),
                      ("n3", beat(watts=20.0)), ("n1", beat(n1, energy_j=2.0))])
    assert out == [STEADY, STEADY, None, None]
    rows = node_rows(api)
    assert rows["n3"][2] == [(True, 10.0)] * 2 and rows["n1"][2] == [(True, 100.0)] * 2
    assert job_row(api, n1)[1:] == (1.0, 1000.0, 1)  # the first's sample, once

    api.clock.advance(1)
    out = batch(api, [("n4", beat(sick=0)), ("n4", beat(watts=30.0))])
    assert out == [None, None]
    _, at, gpus = node_rows(api)["n4"]
    assert at < api.clock() and gpus == [(True, None)] * 2


# --- job samples -------------------------------------------------------------------------


def test_job_samples_are_recorded_in_the_batch(api: Api, cluster: Cluster) -> None:
    """``record_sample`` runs for each steady job with a sample: its energy and memory
    totals every beat, a sample row at most every job_sample_interval_s; a job flagged
    idle whose GPUs are busy again is unflagged, and only its beat says ``changed``."""
    n1, n2 = cluster.runs["n1"], cluster.runs["n2"]
    with api.ctx.transaction() as s:
        s.get(Job, n2).idle_flagged_at = api.clock()
    out = batch(api, [("n1", beat(n1, energy_j=1000.0)),
                      ("n2", beat(n2, energy_j=2000.0, util=90.0))])
    assert out == [STEADY, (HeartbeatReply(launch=[], kill=[]), True)]
    assert job_row(api, n1) == ("RUNNING", 1000.0, 1000.0, 1)
    assert job_row(api, n2) == ("RUNNING", 2000.0, 1000.0, 1)
    shown = api.job(n2)
    assert shown["accounting"]["idle"] is False
    assert shown["events"][-1]["reason"] == "idle: its GPUs are busy again"
    with api.ctx.transaction() as s:
        stats = s.get(Job, n1).gpu_stats
    assert stats["sample_at"] == api.clock().isoformat()

    api.clock.advance(1)
    assert batch(api, [("n2", beat(n2, energy_j=2500.0)),
                       ("n1", beat(n1, energy_j=1500.0))]) == [STEADY] * 2
    assert job_row(api, n1) == ("RUNNING", 1500.0, 1000.0, 1)  # totals; no new row yet
    api.clock.advance(api.ctx.settings.job_sample_interval_s)
    assert batch(api, [("n1", beat(n1, energy_j=9000.0))]) == [STEADY]
    assert job_row(api, n1) == ("RUNNING", 9000.0, 1000.0, 2)
    acc = api.job(n1)["accounting"]
    assert acc["energy_kwh"] == round(9000.0 / 3.6e6, 6)
    assert acc["utilization_peak_pct"] == 80.0


# --- through the API ---------------------------------------------------------------------


def _post(api: Api, heads: dict[str, str], name: str, body: dict[str, Any]
          ) -> tuple[int, Any]:
    r = api.client.post(f"/v1/nodes/{name}/heartbeat", headers=heads, json=body)
    return r.status_code, r.json()


def _wait(what: str, done: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _together(api: Api, cluster: Cluster, db_url: str,
              requests: list[tuple[str, dict[str, Any]]]) -> list[tuple[int, Any]]:
    """Each node beats once (its caller cached, nothing due after), the clock moves on a
    GPU sample interval; then the first request is posted and held in its batch behind a
    lock on the nodes, the others are posted from as many threads meanwhile (they
    queue), and the lock let go: their answers, in order."""
    batcher = api.client.app.state.heartbeats
    for name, heads in cluster.heads.items():
        runs = [cluster.runs[name]] if name in cluster.runs else []
        assert _post(api, heads, name, wire(*runs)) == (200, STEADY_JSON)
    api.clock.advance(api.ctx.settings.gpu_sample_interval_s)
    started = batcher.batches
    blocker = api.ctx.sessions()
    blocker.begin()
    if db_url.startswith("postgresql"):
        blocker.execute(text("LOCK TABLE nodes IN EXCLUSIVE MODE"))
    else:
        blocker.execute(text("UPDATE nodes SET cpus = cpus"))  # SQLite's write lock
    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            futures: list[Future[tuple[int, Any]]] = [
                pool.submit(_post, api, cluster.heads[n], n, b) for n, b in requests[:1]]
            _wait("the first batch", lambda: batcher.batches > started)
            time.sleep(0.2)  # it waits on the lock now
            futures += [pool.submit(_post, api, cluster.heads[n], n, b)
                        for n, b in requests[1:]]
            _wait("the others to queue",  # (the batcher's queue: no public size)
                  lambda: batcher._queue.qsize() >= len(requests) - 1)
            assert not any(f.done() for f in futures)
            blocker.rollback()
            answers = [f.result(30) for f in futures]
    finally:
        blocker.close()
    # Seven heartbeats, two batches: the first alone, the rest together.
    assert batcher.batches - started == 2 < len(requests)
    return answers


def _requests(cluster: Cluster) -> tuple[list[tuple[str, dict[str, Any]]], list[Any]]:
    """Seven heartbeats and their answers: n4 reports a job it should not have (a kill),
    n3 and n5 beat twice."""
    n1, n2 = cluster.runs["n1"], cluster.runs["n2"]
    reqs = [("n3", wire(watts=1.0)),
            ("n1", wire(n1, watts=2.0, energy_j=777.0)),
            ("n2", wire(n2, watts=3.0)),
            ("n4", wire(UNKNOWN, watts=4.0)),
            ("n5", wire(watts=5.0)),
            ("n3", wire(watts=6.0)),
            ("n5", wire(watts=7.0))]
    kill = {"launch": [], "kill": [{"job_id": UNKNOWN, "attempt": 1, "grace_s": None}]}
    expected = [(200, STEADY_JSON)] * 3 + [(200, kill)] + [(200, STEADY_JSON)] * 3
    return reqs, expected


def test_concurrent_heartbeats_share_transactions_and_are_answered_as_alone(
        api: Api, cluster: Cluster, db_url: str) -> None:
    """Heartbeats posted from many threads at once are written in fewer transactions than
    heartbeats (the ones not steady in a batch then alone), and each is answered and
    written as if alone."""
    reqs, expected = _requests(cluster)
    batcher = api.client.app.state.heartbeats
    items = batcher.items
    answers = _together(api, cluster, db_url, reqs)
    assert answers == expected
    assert batcher.items - items == len(cluster.heads) + len(reqs)  # all went through it
    # Each node's GPU sample is its first heartbeat's of the interval (n4's: written by
    # the full reconciliation; n5's two race into the batch), every beat time the same.
    rows = node_rows(api)
    n5 = rows["n5"][2][0][1]
    assert n5 in (5.0, 7.0)
    assert rows == {n: ("UP", api.clock(), [(True, w)] * 2) for n, w in
                    (("n1", 2.0), ("n2", 3.0), ("n3", 1.0), ("n4", 4.0), ("n5", n5))}
    assert job_row(api, cluster.runs["n1"]) == ("RUNNING", 777.0, 1000.0, 1)
    assert job_row(api, cluster.runs["n2"]) == ("RUNNING", None, None, 0)


class _FailingBatches:
    """``heartbeats`` as the batcher sees it: each batch of more than one is written, then
    fails (as a commit might); a batch of one (a heartbeat written alone) goes through."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, session: Session, beats: list[Any], **kw: Any) -> Any:
        self.sizes.append(len(beats))
        out = svc.heartbeats(session, beats, **kw)
        if len(beats) > 1:
            raise RuntimeError("injected")
        return out


def test_a_batch_that_fails_is_answered_one_by_one(
        api: Api, cluster: Cluster, db_url: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A batch that fails as a whole (fault injected after its writes) is rolled back and
    each of its heartbeats taken alone: all answered 200 with the right reply, each
    written once (one sample row, not two)."""
    broken = _FailingBatches()
    monkeypatch.setattr(group_commit, "heartbeats", broken)
    reqs, expected = _requests(cluster)
    answers = _together(api, cluster, db_url, reqs)
    assert answers == expected
    assert max(broken.sizes) == len(reqs) - 1  # the held batch of six failed as a whole
    assert "gpuq-heartbeats: a batch of 6 failed as a whole" in caplog.text
    rows = node_rows(api)
    assert all(r[:2] == ("UP", api.clock()) for r in rows.values())
    assert rows["n1"][2] == [(True, 2.0)] * 2 and rows["n4"][2] == [(True, 4.0)] * 2
    assert job_row(api, cluster.runs["n1"]) == ("RUNNING", 777.0, 1000.0, 1)
    # The batcher thread lives on: with the fault gone, a heartbeat is batched again.
    monkeypatch.undo()
    batches = api.client.app.state.heartbeats.batches
    assert _post(api, cluster.heads["n3"], "n3", wire()) == (200, STEADY_JSON)
    assert api.client.app.state.heartbeats.batches == batches + 1
