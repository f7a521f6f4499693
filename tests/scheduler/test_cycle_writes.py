"""What a scheduling cycle writes of the pending jobs: only the values that change (set-based
UPDATEs, not an ORM object per job), and never over a change another transaction made."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.scheduler.clock import ManualClock
from gpuq.scheduler.db.models import GpuAllocation, Job, Node
from gpuq.scheduler.domain.snapshot import build_snapshot_rows
from gpuq.scheduler.entry.bootstrap import build_context
from gpuq.scheduler.lifecycle.writes import transition
from gpuq.scheduler.policy import schedule
from gpuq.scheduler.runtime import applier as loop_module
from gpuq.scheduler.runtime.applier import CycleResult, apply_decisions
from gpuq.scheduler.runtime.context import Context
from gpuq.scheduler.runtime.loop import cycle
from gpuq.wire.states import JobState
from tests.scheduler.rows import T0, add_job, add_node
from tests.scheduler.test_loop import wait_for_a_lock_wait


@dataclass
class Dispatcher:
    calls: list[tuple[str, str, int]] = field(default_factory=list)

    def launch(self, node: str, job_id: int) -> None:
        self.calls.append(("launch", node, job_id))

    def kill(self, node: str, job_id: int) -> None:
        self.calls.append(("kill", node, job_id))


@dataclass
class Cluster:
    ctx: Context
    clock: ManualClock
    dispatcher: Dispatcher
    #: The UPDATE statements on jobs the database was sent, one entry per row written.
    job_updates: list[str] = field(default_factory=list)

    def job(self, job_id: int) -> Job:
        with self.ctx.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job


@contextmanager
def make_cluster(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 policy: str = "fairshare+backfill") -> Iterator[Cluster]:
    for name in [k for k in os.environ if k.startswith("GPUQ_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GPUQ_CONFIG", str(tmp_path / "no-such-config.toml"))
    clock = ManualClock(T0)
    dispatcher = Dispatcher()
    ctx = build_context(Settings(data_dir=tmp_path / "data", database_url=url, policy=policy),
                        clock=clock, dispatcher=dispatcher)
    cluster = Cluster(ctx, clock, dispatcher)
    engine = ctx.sessions.kw["bind"]

    def count(conn: Any, cursor: Any, statement: str, params: Any, context: Any,
              executemany: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE JOBS"):
            cluster.job_updates.extend([statement] * (len(params) if executemany else 1))

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield cluster
    finally:
        engine.dispose()


@pytest.fixture
def cluster(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with make_cluster(db_url, tmp_path, monkeypatch) as c:
        yield c


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[loop_module._PendingWrites]:
    """What each cycle decided to write of the pending jobs."""
    seen: list[loop_module._PendingWrites] = []
    real = loop_module._write_pending

    def spy(session: Session, w: loop_module._PendingWrites) -> None:
        seen.append(w)
        real(session, w)

    monkeypatch.setattr(loop_module, "_write_pending", spy)
    return seen


def busy_node(session: Session) -> None:
    """A node of one GPU, taken by a running job (ends at T0 + 1 h)."""
    node = add_node(session, "n1", gpus=1)
    job = add_job(session, user="owner")
    session.add(GpuAllocation(job_id=job.id, node_id=node.id, gpu_index=0))
    job.node_id, job.gpu_indices = node.id, [0]
    transition(session, job, JobState.DISPATCHED, now=T0, reason="dispatched")
    transition(session, job, JobState.RUNNING, now=T0)


def test_a_cycle_writes_exactly_the_values_that_changed(
        cluster: Cluster, writes: list[loop_module._PendingWrites]) -> None:
    with cluster.ctx.transaction() as s:
        busy_node(s)
        waiting = [add_job(s, submitted_at=T0 - timedelta(minutes=i)).id for i in range(3)]
    cluster.clock.advance(10)

    cycle(cluster.ctx)  # the first cycle writes every waiting job: reason, factors, estimate
    (first,) = writes
    assert sorted(i for ids in first.reasons.values() for i in ids) == waiting
    assert sorted(first.columns) == waiting
    for job_id in waiting:
        job = cluster.job(job_id)
        assert job.reason.startswith("Resources")
        assert job.priority_factors is not None
        assert job.priority_factors == first.columns[job_id]["priority_factors"]
        assert job.estimated_start is not None  # after the running job's end
        assert job.estimated_start >= T0 + timedelta(hours=1)
        assert job.estimated_start == first.columns[job_id]["estimated_start"]

    cluster.job_updates.clear()
    cycle(cluster.ctx)  # nothing changed: nothing is written
    assert (dict(writes[1].reasons), dict(writes[1].columns)) == ({}, {})
    assert cluster.job_updates == []

    cluster.clock.advance(300)  # the age and the total drift, under AGE_STEP: not rewritten
    with cluster.ctx.transaction() as s:  # (the node is still there)
        s.execute(update(Node).values(last_heartbeat_at=cluster.clock()))
    cycle(cluster.ctx)
    assert (dict(writes[2].reasons), dict(writes[2].columns)) == ({}, {})
    # No pending job's row (the running job's usage charge is due: its UPDATE only).
    assert all("charged_until" in u for u in cluster.job_updates), cluster.job_updates
    cluster.job_updates.clear()

    with cluster.ctx.transaction() as s:  # a new job, behind the others
        new = add_job(s, submitted_at=cluster.clock(), nice=10).id
    cycle(cluster.ctx)
    assert {r: sorted(ids) for r, ids in writes[3].reasons.items()} == {
        cluster.job(new).reason: [new]}
    assert set(writes[3].columns) == {new}
    assert set(writes[3].columns[new]) == {"priority_factors", "priority_key",
                                           "estimated_start"}
    # Its reason, factors and estimate in one statement (one new row version).
    assert len(cluster.job_updates) == 1
    assert all(c in cluster.job_updates[0]
               for c in ("reason", "priority_factors", "estimated_start"))

    cluster.job_updates.clear()
    cluster.clock.advance(700)  # every job 700 s older, over AGE_STEP: every age is rewritten
    with cluster.ctx.transaction() as s:  # (the node is still there)
        s.execute(update(Node).values(last_heartbeat_at=cluster.clock()))
    cycle(cluster.ctx)
    assert dict(writes[4].reasons) == {}
    assert sorted(writes[4].columns) == sorted([*waiting, new])
    assert {k for c in writes[4].columns.values() for k in c} == {"priority_factors",
                                                                  "priority_key"}
    # One row each (the running job's charge is the other UPDATE); on PostgreSQL all four
    # rows in one statement (UPDATE ... FROM unnest).
    rewrites = sum("priority_factors" in u for u in cluster.job_updates)
    assert rewrites == (1 if cluster.ctx.settings.effective_database_url.startswith(
        "postgresql") else 4)
    assert all("priority_factors" in u or "charged_until" in u for u in cluster.job_updates)
    for job_id in [*waiting, new]:
        assert cluster.job(job_id).priority_factors == writes[4].columns[job_id][
            "priority_factors"]


def test_a_started_job_is_written_through_its_row_not_as_pending(
        cluster: Cluster, writes: list[loop_module._PendingWrites]) -> None:
    with cluster.ctx.transaction() as s:
        add_node(s, "n1", gpus=1)
        first = add_job(s, submitted_at=T0 - timedelta(minutes=1)).id
        second = add_job(s).id
    result = cycle(cluster.ctx)
    assert result.started == [(first, "n1")]
    assert first not in {i for ids in writes[0].reasons.values() for i in ids}
    assert first not in writes[0].columns
    assert cluster.job(first).state == "DISPATCHED"
    assert cluster.job(first).reason == "dispatched to n1 GPUs [0]"
    assert cluster.job(second).reason != "Submitted"


# --- a change committed by another transaction during the cycle is kept ---------------------


@pytest.mark.postgres
def test_a_job_cancelled_after_the_snapshot_keeps_the_cancel(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel commits between the loop's snapshot and its apply: the job is not started,
    and the reason the loop would write does not replace the cancel's."""
    with make_cluster(pg_url, tmp_path, monkeypatch) as c:
        with c.ctx.transaction() as s:
            add_node(s, "n1", gpus=1)
            starts = add_job(s, submitted_at=T0 - timedelta(minutes=2)).id
            waits = add_job(s, submitted_at=T0 - timedelta(minutes=1)).id
            other = add_job(s).id

        result = CycleResult()
        with c.ctx.transaction() as s:
            snapshot, rows, _ = build_snapshot_rows(s, T0, c.ctx.settings)
            decisions = schedule(snapshot)
            assert [st.job_id for st in decisions.starts] == [starts]
            assert {waits, other} <= set(decisions.pending_reasons)
            with c.ctx.transaction() as api:  # another connection: the API cancels two
                for job_id in (starts, waits):
                    job = api.get(Job, job_id)
                    assert job is not None
                    transition(api, job, JobState.CANCELLED, now=T0,
                               reason="cancelled by alice")
            apply_decisions(s, decisions, T0, result, snapshot, rows)

        assert (result.started, result.dropped) == ([], [starts])
        for job_id in (starts, waits):
            job = c.job(job_id)
            assert (job.state, job.reason) == ("CANCELLED", "cancelled by alice")
        assert c.job(other).reason == decisions.pending_reasons[other]
        with c.ctx.sessions() as s:
            assert s.scalars(select(GpuAllocation)).all() == []


@pytest.mark.postgres
def test_a_cancel_in_flight_is_waited_for_by_the_reason_writes(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API holds a pending job's row (cancelling it, not committed) when the loop
    writes the waiting jobs' reasons: the loop waits for the commit and leaves that job."""
    with make_cluster(pg_url, tmp_path, monkeypatch) as c:
        with c.ctx.transaction() as s:
            busy_node(s)
            cancelled = add_job(s, submitted_at=T0 - timedelta(minutes=1)).id
            other = add_job(s).id

        errors: list[BaseException] = []

        def run_cycle() -> None:
            try:
                cycle(c.ctx)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        with c.ctx.sessions() as api, api.begin():
            job = api.get(Job, cancelled, with_for_update={"key_share": True})
            assert job is not None
            transition(api, job, JobState.CANCELLED, now=T0, reason="cancelled by alice")
            api.flush()
            loop_thread = threading.Thread(target=run_cycle)
            loop_thread.start()
            wait_for_a_lock_wait(pg_url)
        loop_thread.join(30)

        assert not loop_thread.is_alive()
        assert errors == []
        job = c.job(cancelled)
        assert (job.state, job.reason, job.priority_factors) == (
            "CANCELLED", "cancelled by alice", None)
        assert c.job(other).reason.startswith("Resources")
        assert c.job(other).priority_factors is not None


def test_a_claim_the_policy_drops_is_cleared(cluster: Cluster) -> None:
    with cluster.ctx.transaction() as s:
        busy_node(s)
        claim = {"node": "n1", "gpus": [0], "victims": [999], "grant": None}
        job_id = add_job(s, claim=claim).id
    with cluster.ctx.transaction() as s:
        snapshot, rows, _ = build_snapshot_rows(s, T0, cluster.ctx.settings)
        decisions = schedule(snapshot)
        assert job_id not in decisions.claims  # its victim is gone: no claim any more
        apply_decisions(s, decisions, T0, CycleResult(), snapshot, rows)
    assert cluster.job(job_id).claim is None


@pytest.mark.postgres
def test_a_claim_is_not_written_over_a_cancel(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with make_cluster(pg_url, tmp_path, monkeypatch) as c:
        with c.ctx.transaction() as s:
            busy_node(s)
            claim = {"node": "n1", "gpus": [0], "victims": [999], "grant": None}
            job_id = add_job(s, claim=claim).id
        with c.ctx.transaction() as s:
            snapshot, rows, _ = build_snapshot_rows(s, T0, c.ctx.settings)
            decisions = schedule(snapshot)
            assert job_id not in decisions.claims
            with c.ctx.transaction() as api:
                job = api.get(Job, job_id)
                assert job is not None
                transition(api, job, JobState.CANCELLED, now=T0, reason="cancelled by alice")
            apply_decisions(s, decisions, T0, CycleResult(), snapshot, rows)
        job = c.job(job_id)
        assert (job.state, job.reason, job.claim) == ("CANCELLED", "cancelled by alice", claim)
