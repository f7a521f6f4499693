"""The scheduling loop on a real database: one ``cycle`` at a time, with a manual clock."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from gpuq.config import Settings
from gpuq.scheduler.clock import ManualClock
from gpuq.scheduler.db.models import GpuAllocation, Job, Node
from gpuq.scheduler.db.session import make_engine
from gpuq.scheduler.domain.snapshot import build_snapshot
from gpuq.scheduler.entry.bootstrap import build_context
from gpuq.scheduler.lifecycle.writes import transition
from gpuq.scheduler.policy import Decisions, Start, schedule
from gpuq.scheduler.runtime.applier import CycleResult, apply_decisions
from gpuq.scheduler.runtime.context import Context
from gpuq.scheduler.runtime.loop import LOCK_KEY, cycle
from gpuq.wire.states import JobState
from tests.scheduler.rows import T0, add_job, add_node, allocations, events


@dataclass
class RecordingDispatcher:
    """The dispatch seam. At each launch it also reads the job from a new session, to see
    what a worker fetching the job at that moment would see."""

    sessions: sessionmaker[Session] | None = None
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    seen_at_launch: list[str] = field(default_factory=list)

    def launch(self, node: str, job_id: int) -> None:
        self.calls.append(("launch", node, job_id))
        assert self.sessions is not None
        with self.sessions() as session:
            job = session.get(Job, job_id)
            self.seen_at_launch.append(job.state if job else "missing")

    def kill(self, node: str, job_id: int) -> None:
        self.calls.append(("kill", node, job_id))


@dataclass
class Loop:
    ctx: Context
    clock: ManualClock
    dispatcher: RecordingDispatcher

    def job(self, job_id: int) -> Job:
        with self.ctx.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def node(self, name: str) -> Node:
        with self.ctx.sessions() as session:
            node = session.scalar(select(Node).where(Node.name == name))
            assert node is not None
            return node

    def allocations(self) -> set[tuple[int, int, int]]:
        with self.ctx.sessions() as session:
            return allocations(session)


@contextmanager
def make_loop(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loop]:
    for name in [k for k in os.environ if k.startswith("GPUQ_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GPUQ_CONFIG", str(tmp_path / "no-such-config.toml"))
    clock = ManualClock(T0)
    dispatcher = RecordingDispatcher()
    # The loop's mechanics under the simplest policy (strict priority, first fit, the hold
    # rule); fair share and backfill have their own tests in tests/policy and tests/api.
    ctx = build_context(Settings(data_dir=tmp_path / "data", database_url=url,
                                 policy="fifo"),
                        clock=clock, dispatcher=dispatcher)
    dispatcher.sessions = ctx.sessions
    try:
        yield Loop(ctx, clock, dispatcher)
    finally:
        ctx.sessions.kw["bind"].dispose()


@pytest.fixture
def loop(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loop]:
    with make_loop(db_url, tmp_path, monkeypatch) as lp:
        yield lp


def hold(session: Session, job: Job, node: Node, gpus: list[int]) -> None:
    """Dispatch ``job`` by hand, as another scheduler replica would have."""
    for i in gpus:
        session.add(GpuAllocation(job_id=job.id, node_id=node.id, gpu_index=i))
    job.node_id, job.gpu_indices = node.id, gpus
    transition(session, job, JobState.DISPATCHED, now=T0, reason="elsewhere")


# --- dispatching ---------------------------------------------------------------------------


def test_cycle_dispatches_a_pending_job(loop: Loop) -> None:
    with loop.ctx.transaction() as s:
        node_id = add_node(s, "n1", gpus=4).id
        job_id = add_job(s, gpus=2).id
    loop.clock.advance(10)

    result = cycle(loop.ctx)

    assert result == CycleResult(ran=True, started=[(job_id, "n1")])
    job = loop.job(job_id)
    assert (job.state, job.node_id, job.gpu_indices) == ("DISPATCHED", node_id, [0, 1])
    assert job.dispatched_at == T0 + timedelta(seconds=10)
    assert job.reason == "dispatched to n1 GPUs [0,1]"
    assert loop.allocations() == {(job_id, node_id, 0), (job_id, node_id, 1)}
    with loop.ctx.sessions() as s:
        (ev,) = events(s, job_id)
    assert (ev.old_state, ev.new_state, ev.time) == ("PENDING", "DISPATCHED", job.dispatched_at)
    assert ev.reason == "dispatched to n1 GPUs [0,1]"
    # The launch goes out once, after the commit: a worker fetching the job finds it dispatched.
    assert loop.dispatcher.calls == [("launch", "n1", job_id)]
    assert loop.dispatcher.seen_at_launch == ["DISPATCHED"]


def test_later_cycles_start_nothing_twice_and_use_the_gpus_left(loop: Loop) -> None:
    with loop.ctx.transaction() as s:
        node_id = add_node(s, "n1", gpus=4).id
        first = add_job(s, gpus=2).id
    cycle(loop.ctx)
    with loop.ctx.transaction() as s:
        second = add_job(s, gpus=2).id

    assert cycle(loop.ctx).started == [(second, "n1")]
    assert cycle(loop.ctx) == CycleResult(ran=True)

    assert loop.job(second).gpu_indices == [2, 3]
    assert loop.allocations() == {(first, node_id, 0), (first, node_id, 1),
                                  (second, node_id, 2), (second, node_id, 3)}
    assert loop.dispatcher.calls == [("launch", "n1", first), ("launch", "n1", second)]


def test_jobs_start_in_priority_order_on_the_first_node_by_name(loop: Loop) -> None:
    with loop.ctx.transaction() as s:
        add_node(s, "n2", gpus=1)
        add_node(s, "n1", gpus=1)
        low = add_job(s, priority=0).id
        high = add_job(s, priority=10).id
        last = add_job(s, priority=0).id

    result = cycle(loop.ctx)

    assert result.started == [(high, "n1"), (low, "n2")]
    assert loop.job(last).state == "PENDING"


def test_pending_reasons_are_written_each_cycle_without_events(loop: Loop) -> None:
    with loop.ctx.transaction() as s:
        add_node(s, "n1", gpus=4)
        running = add_job(s, gpus=2).id
    cycle(loop.ctx)
    with loop.ctx.transaction() as s:
        big = add_job(s, gpus=4, priority=5).id
        small = add_job(s, gpus=1).id

    assert cycle(loop.ctx).started == []
    assert loop.job(big).reason == \
        "Resources: no node has 4 free GPUs now (1 node: too few free GPUs)"
    assert loop.job(small).reason == f"Priority: waiting behind job {big}"

    with loop.ctx.transaction() as s:
        job = s.get(Job, running)
        assert job is not None
        transition(s, job, JobState.COMPLETED, now=T0, reason="exit code 0", exit_code=0)
    assert cycle(loop.ctx).started == [(big, "n1")]
    assert loop.job(small).reason == \
        "Resources: no node has 1 free GPU now (1 node: too few free GPUs)"
    with loop.ctx.sessions() as s:
        assert events(s, small) == []  # a new reason is not a state change


def test_a_cycle_with_nothing_to_do(loop: Loop) -> None:
    assert cycle(loop.ctx) == CycleResult(ran=True)
    assert loop.dispatcher.calls == []


# --- nodes that stop answering ----------------------------------------------------------


def test_a_silent_node_goes_down_and_its_jobs_end_as_node_fail(loop: Loop) -> None:
    with loop.ctx.transaction() as s:
        add_node(s, "n1", gpus=4)
        n2 = add_node(s, "n2", gpus=4).id
        running = add_job(s, gpus=2)
        dispatched = add_job(s, gpus=2)
        running.requeue = dispatched.requeue = False  # (requeue: tests/api/test_nodes.py)
        running, dispatched = running.id, dispatched.id
        elsewhere = add_job(s, gpus=4).id
    assert [n for _, n in cycle(loop.ctx).started] == ["n1", "n1", "n2"]
    with loop.ctx.transaction() as s:
        job = s.get(Job, running)
        assert job is not None
        transition(s, job, JobState.RUNNING, now=T0, reason="started")
        late = add_job(s, gpus=2).id

    limit = loop.ctx.settings.node_down_after_s
    loop.clock.advance(limit + 30)
    with loop.ctx.transaction() as s:  # n2 keeps sending heartbeats; n1 went quiet at T0
        alive = s.get(Node, n2)
        assert alive is not None
        alive.last_heartbeat_at = loop.clock() - timedelta(seconds=5)

    result = cycle(loop.ctx)

    assert result.nodes_down == ["n1"]
    assert result.started == []
    node = loop.node("n1")
    assert (node.state, node.state_reason) == ("DOWN", f"no heartbeat for {int(limit)} s")
    assert loop.node("n2").state == "UP"
    for job_id in (running, dispatched):
        job = loop.job(job_id)
        assert job.state == "NODE_FAIL"
        assert job.reason == f"n1: no heartbeat for {int(limit)} s"
        assert job.ended_at == loop.clock()
    assert loop.job(elsewhere).state == "DISPATCHED"
    assert {(j, n) for j, n, _ in loop.allocations()} == {(elsewhere, n2)}
    # The GPUs of n1 are free, but n1 is DOWN: the new job waits.
    assert loop.job(late).state == "PENDING"
    assert loop.job(late).reason == ("Resources: no node has 2 free GPUs now "
                                     "(1 node: node DOWN, 1 node: too few free GPUs)")
    assert [c for c in loop.dispatcher.calls if c[2] == late] == []


def test_which_nodes_count_as_silent(loop: Loop) -> None:
    limit = loop.ctx.settings.node_down_after_s
    now = loop.clock()
    old = now - timedelta(seconds=limit + 1)
    with loop.ctx.transaction() as s:
        add_node(s, "at-limit", heartbeat=now - timedelta(seconds=limit))
        add_node(s, "drained", state="DRAIN", heartbeat=old)
        add_node(s, "stale", heartbeat=old)
        add_node(s, "down", state="DOWN", heartbeat=old).state_reason = "was down"
        add_node(s, "never", state="UNKNOWN", heartbeat=None)

    result = cycle(loop.ctx)

    assert sorted(result.nodes_down) == ["drained", "stale"]
    assert loop.node("at-limit").state == "UP"
    assert loop.node("drained").state == "DOWN"
    assert (loop.node("down").state, loop.node("down").state_reason) == ("DOWN", "was down")
    assert loop.node("never").state == "UNKNOWN"


def test_a_cycle_without_housekeeping_schedules_but_marks_no_node_down(loop: Loop) -> None:
    """What the loop runs for an event shortly after its last housekeeping: the
    scheduling pass only; the silent node is marked down by the next full cycle."""
    limit = loop.ctx.settings.node_down_after_s
    with loop.ctx.transaction() as s:
        add_node(s, "quiet", heartbeat=loop.clock() - timedelta(seconds=limit + 1))
        add_node(s, "alive", heartbeat=loop.clock())
        job = add_job(s).id

    result = cycle(loop.ctx, housekeeping=False)

    assert result.ran and result.nodes_down == []
    assert loop.node("quiet").state == "UP"
    assert [j for j, _ in result.started] == [job]
    assert cycle(loop.ctx).nodes_down == ["quiet"]
    assert loop.node("quiet").state == "DOWN"


def test_after_the_server_s_own_outage_every_node_gets_a_fresh_timeout(loop: Loop) -> None:
    """Issue 16, item 4: heartbeats the server could not receive (its database away, a
    restart) do not count against the nodes: silence counts from ``listening_since``."""
    limit = loop.ctx.settings.node_down_after_s
    with loop.ctx.transaction() as s:
        add_node(s, "quiet", heartbeat=loop.clock())
        job = add_job(s, gpus=1)
        job.requeue = False
        job_id = job.id
    assert [j for j, _ in cycle(loop.ctx).started] == [job_id]
    outage_ended = loop.clock() + timedelta(seconds=limit)  # the database was away till now
    loop.clock.advance(limit + 30)

    assert cycle(loop.ctx, listening_since=outage_ended).nodes_down == []
    assert loop.node("quiet").state == "UP" and loop.job(job_id).state == "DISPATCHED"

    loop.clock.advance(31)  # now silent for the limit and more since the server came back
    assert cycle(loop.ctx, listening_since=outage_ended).nodes_down == ["quiet"]
    assert loop.job(job_id).state == "NODE_FAIL"


# --- the applier re-checks every start -----------------------------------------------------


def test_a_start_whose_gpu_was_taken_meanwhile_is_dropped(loop: Loop) -> None:
    with loop.ctx.transaction() as s:
        add_node(s, "n1", gpus=1)
        mine = add_job(s).id
        decisions = schedule(build_snapshot(s, T0))
    assert decisions.starts == (Start(mine, "n1", (0,)),)

    with loop.ctx.transaction() as s:  # meanwhile another replica gives GPU 0 away
        node = s.scalar(select(Node).where(Node.name == "n1"))
        assert node is not None
        theirs = add_job(s)
        hold(s, theirs, node, [0])
        theirs_id, node_id = theirs.id, node.id

    result = CycleResult()
    with loop.ctx.transaction() as s:
        apply_decisions(s, decisions, T0, result)

    assert (result.started, result.dropped) == ([], [mine])
    job = loop.job(mine)
    assert (job.state, job.node_id, job.gpu_indices) == ("PENDING", None, [])
    assert loop.allocations() == {(theirs_id, node_id, 0)}
    with loop.ctx.sessions() as s:
        assert events(s, mine) == []


def test_two_starts_on_one_gpu_start_only_the_first(loop: Loop) -> None:
    with loop.ctx.transaction() as s:
        node_id = add_node(s, "n1", gpus=2).id
        a, b = add_job(s).id, add_job(s).id
    result = CycleResult()
    with loop.ctx.transaction() as s:
        apply_decisions(s, Decisions(starts=(Start(a, "n1", (0,)), Start(b, "n1", (1, 0)))), T0,
               result)
    assert (result.started, result.dropped) == ([(a, "n1")], [b])
    assert loop.allocations() == {(a, node_id, 0)}


def test_starts_that_no_longer_hold_are_dropped(loop: Loop) -> None:
    with loop.ctx.transaction() as s:
        add_node(s, "up", gpus=1)
        add_node(s, "down", gpus=1, state="DOWN")
        cancelled = add_job(s)
        transition(s, cancelled, JobState.CANCELLED, now=T0, reason="cancelled by alice")
        on_down, on_ghost = add_job(s).id, add_job(s).id
        ids = cancelled.id, on_down, on_ghost
    decisions = Decisions(starts=(Start(ids[0], "up", (0,)), Start(on_down, "down", (0,)),
                                  Start(on_ghost, "ghost", (0,)), Start(999_999, "up", (0,))))
    result = CycleResult()
    with loop.ctx.transaction() as s:
        apply_decisions(s, decisions, T0, result)
    assert result.started == []
    assert result.dropped == [*ids, 999_999]
    assert loop.job(ids[0]).state == "CANCELLED"
    assert {loop.job(i).state for i in ids[1:]} == {"PENDING"}
    assert loop.allocations() == set()


def test_reasons_are_written_only_to_jobs_still_pending(loop: Loop) -> None:
    with loop.ctx.transaction() as s:
        add_node(s, "n1", gpus=1)
        started, waiting, gone = add_job(s).id, add_job(s).id, add_job(s)
        transition(s, gone, JobState.CANCELLED, now=T0, reason="cancelled by alice")
        gone_id = gone.id
    decisions = Decisions(starts=(Start(started, "n1", (0,)),),
                          pending_reasons={started: "Resources: x", waiting: "Resources: y",
                                           gone_id: "Resources: z", 424242: "Resources: ?"})
    with loop.ctx.transaction() as s:
        apply_decisions(s, decisions, T0, CycleResult())
    assert loop.job(started).reason == "dispatched to n1 GPUs [0]"
    assert loop.job(waiting).reason == "Resources: y"
    assert loop.job(gone_id).reason == "cancelled by alice"


# --- one loop at a time (PostgreSQL advisory lock) -----------------------------------------


@pytest.mark.postgres
def test_cycle_does_nothing_while_another_loop_holds_the_lock(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with make_loop(pg_url, tmp_path, monkeypatch) as lp:
        with lp.ctx.transaction() as s:
            add_node(s, "n1", gpus=1, heartbeat=T0)
            add_node(s, "silent", gpus=1, heartbeat=T0 - timedelta(hours=1))
            job_id = add_job(s).id

        other = make_engine(pg_url)
        try:
            with other.connect() as conn, conn.begin():
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
                assert cycle(lp.ctx) == CycleResult(ran=False)
                assert lp.job(job_id).state == "PENDING"
                assert lp.job(job_id).reason == "Submitted"
                assert lp.node("silent").state == "UP"
                assert lp.allocations() == set()
                assert lp.dispatcher.calls == []
            # The other loop's transaction ended, and its lock with it.
            result = cycle(lp.ctx)
        finally:
            other.dispose()

        assert (result.ran, result.started, result.nodes_down) == \
            (True, [(job_id, "n1")], ["silent"])
        assert lp.dispatcher.calls == [("launch", "n1", job_id)]


@pytest.mark.postgres
def test_the_lock_is_released_when_the_cycle_ends(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with make_loop(pg_url, tmp_path, monkeypatch) as lp:
        cycle(lp.ctx)
        other = make_engine(pg_url)
        try:
            with other.connect() as conn, conn.begin():
                got = conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                   {"k": LOCK_KEY}).scalar()
        finally:
            other.dispose()
        assert got is True


# --- the re-check reads the rows as they are now, not as the snapshot loaded them ------------


@pytest.mark.postgres
def test_a_job_cancelled_after_the_snapshot_is_not_dispatched(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL runs the API's transactions beside the loop's (READ COMMITTED): a cancel
    may commit between the loop's snapshot and its apply. The apply must see it."""
    with make_loop(pg_url, tmp_path, monkeypatch) as lp:
        with lp.ctx.transaction() as s:
            add_node(s, "n1", gpus=1)
            job_id = add_job(s).id

        result = CycleResult()
        with lp.ctx.transaction() as s:
            decisions = schedule(build_snapshot(s, T0))
            assert decisions.starts == (Start(job_id, "n1", (0,)),)
            with lp.ctx.transaction() as api:  # another connection: the API cancels it
                job = api.get(Job, job_id)
                assert job is not None
                transition(api, job, JobState.CANCELLED, now=T0, reason="cancelled by alice")
            apply_decisions(s, decisions, T0, result)

        assert (result.started, result.dropped) == ([], [job_id])
        job = lp.job(job_id)
        assert (job.state, job.reason) == ("CANCELLED", "cancelled by alice")
        assert lp.allocations() == set()


@pytest.mark.postgres
def test_a_node_drained_after_the_snapshot_gets_no_new_job(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with make_loop(pg_url, tmp_path, monkeypatch) as lp:
        with lp.ctx.transaction() as s:
            add_node(s, "n1", gpus=1)
            job_id = add_job(s).id

        result = CycleResult()
        with lp.ctx.transaction() as s:
            decisions = schedule(build_snapshot(s, T0))
            assert decisions.starts == (Start(job_id, "n1", (0,)),)
            with lp.ctx.transaction() as api:  # an admin drains the node meanwhile
                node = api.scalar(select(Node).where(Node.name == "n1"))
                assert node is not None
                node.state, node.state_reason = "DRAIN", "maintenance"
            apply_decisions(s, decisions, T0, result)

        assert (result.started, result.dropped) == ([], [job_id])
        assert lp.job(job_id).state == "PENDING"
        assert lp.allocations() == set()


def wait_for_a_lock_wait(url: str, timeout_s: float = 10.0) -> None:
    """Until some connection to this database waits on a row lock."""
    engine = make_engine(url, isolation_level="AUTOCOMMIT")
    deadline = time.monotonic() + timeout_s
    try:
        with engine.connect() as conn:
            while time.monotonic() < deadline:
                waiting = conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'")).scalar()
                if waiting:
                    return
                time.sleep(0.02)
    finally:
        engine.dispose()
    raise AssertionError(f"no connection waited on a lock within {timeout_s} s")


@pytest.mark.postgres
def test_a_cancel_in_flight_is_waited_for_not_overwritten(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API has cancelled the job but not committed yet when the loop applies a start
    for it: the loop must wait for that commit and drop the start, not dispatch the job
    over the cancel."""
    with make_loop(pg_url, tmp_path, monkeypatch) as lp:
        with lp.ctx.transaction() as s:
            add_node(s, "n1", gpus=1)
            job_id = add_job(s).id
        with lp.ctx.sessions() as s:
            decisions = schedule(build_snapshot(s, T0))
        assert decisions.starts == (Start(job_id, "n1", (0,)),)

        result = CycleResult()
        errors: list[BaseException] = []

        def apply() -> None:
            try:
                with lp.ctx.transaction() as s:
                    apply_decisions(s, decisions, T0, result)
            except BaseException as e:  # noqa: BLE001 - reported by the test below
                errors.append(e)

        with lp.ctx.sessions() as api, api.begin():
            job = api.get(Job, job_id)
            assert job is not None
            transition(api, job, JobState.CANCELLED, now=T0, reason="cancelled by alice")
            api.flush()  # the row is now locked by this open transaction
            applier = threading.Thread(target=apply)
            applier.start()
            wait_for_a_lock_wait(pg_url)
        applier.join(30)

        assert not applier.is_alive()
        assert errors == []
        assert (result.started, result.dropped) == ([], [job_id])
        job = lp.job(job_id)
        assert (job.state, job.reason) == ("CANCELLED", "cancelled by alice")
        assert lp.allocations() == set()
        with lp.ctx.sessions() as s:
            assert [e.new_state for e in events(s, job_id)] == ["CANCELLED"]
