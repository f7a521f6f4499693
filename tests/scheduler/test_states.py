"""The job state machine: the allowed moves, and what a move writes (on a real database)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from gpuq.scheduler.db.models import GpuAllocation, Job, Node
from gpuq.scheduler.lifecycle.rules import InvalidTransition, can_transition
from gpuq.scheduler.lifecycle.writes import create, transition
from gpuq.wire.states import ACTIVE, TERMINAL, JobState
from tests.scheduler.rows import T0, add_job, add_node, allocations, events, owner

S = JobState
ENDS = {S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMEOUT, S.OUT_OF_MEMORY, S.NODE_FAIL,
        S.PREEMPTED}

#: The machine, written out by hand (not read from ``ALLOWED``): what each state may become.
EXPECTED: dict[JobState, set[JobState]] = {
    S.PENDING: {S.DISPATCHED, S.CANCELLED, S.FAILED},
    S.DISPATCHED: {S.RUNNING, *ENDS},
    S.RUNNING: set(ENDS),
    **{end: set() for end in ENDS},
}
#: REQUEUED is only passed through by ``requeue`` (tested on its own), never reached by
#: ``transition``.
PAIRS = [(old, new) for old in JobState for new in JobState if old != S.REQUEUED]
ALLOWED_PAIRS = [(o, n) for o, n in PAIRS if n in EXPECTED[o]]
FORBIDDEN_PAIRS = [(o, n) for o, n in PAIRS if n not in EXPECTED[o]]

#: How a test job gets to each state (every step a real transition).
PATH: dict[JobState, list[JobState]] = {
    S.PENDING: [],
    S.DISPATCHED: [S.DISPATCHED],
    S.RUNNING: [S.DISPATCHED, S.RUNNING],
    **{end: [S.DISPATCHED, S.RUNNING, end] for end in ENDS},
}

T1 = T0 + timedelta(minutes=5)


def pair_id(pair: tuple[JobState, JobState]) -> str:
    return f"{pair[0]}->{pair[1]}"


def dispatch(session: Session, job: Job, node: Node, gpus: Sequence[int]) -> None:
    """What the loop's applier does: hold the GPUs, then move to DISPATCHED."""
    for i in gpus:
        session.add(GpuAllocation(job_id=job.id, node_id=node.id, gpu_index=i))
    job.node_id, job.gpu_indices = node.id, list(gpus)
    transition(session, job, S.DISPATCHED, now=T0, reason="dispatched")


def job_in(session: Session, state: JobState, node: Node, gpus: Sequence[int]) -> Job:
    job = add_job(session, gpus=len(gpus))
    for step in PATH[state]:
        if step == S.DISPATCHED:
            dispatch(session, job, node, gpus)
        else:
            transition(session, job, step, now=T0, reason=f"to {step}")
    session.flush()
    return job


# --- the table -----------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new"), PAIRS, ids=[pair_id(p) for p in PAIRS])
def test_can_transition(old: JobState, new: JobState) -> None:
    assert can_transition(old, new) is (new in EXPECTED[old])
    assert can_transition(old.value, new.value) is (new in EXPECTED[old])


def test_active_and_terminal_sets() -> None:
    assert {S.DISPATCHED, S.RUNNING} == ACTIVE
    assert ENDS == TERMINAL
    assert set(JobState) == {S.PENDING, S.REQUEUED} | ACTIVE | TERMINAL


# --- what a transition writes ------------------------------------------------------------


@pytest.mark.parametrize(("old", "new"), ALLOWED_PAIRS, ids=[pair_id(p) for p in ALLOWED_PAIRS])
def test_allowed_transition(sessions: sessionmaker[Session], old: JobState,
                            new: JobState) -> None:
    with sessions() as session, session.begin():
        node = add_node(session, gpus=2)
        job = job_in(session, old, node, [0, 1])
        before = len(events(session, job.id))
        held_before = allocations(session)
        transition(session, job, new, now=T1, reason="because", exit_code=3)
        job_id, node_id = job.id, node.id

    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.state, job.reason) == (new.value, "because")
        evs = events(session, job_id)
        assert len(evs) == before + 1
        last = evs[-1]
        assert (last.old_state, last.new_state, last.reason) == (old.value, new.value, "because")
        assert last.time == T1

        held = allocations(session)
        if new in ACTIVE:
            assert held == held_before
        else:
            assert held == set()  # ended: its GPUs are free
        if old in ACTIVE:
            assert held_before == {(job_id, node_id, 0), (job_id, node_id, 1)}

        assert job.dispatched_at == (T1 if new == S.DISPATCHED else
                                     T0 if old in ACTIVE else None)
        assert job.started_at == (T1 if new == S.RUNNING else
                                  T0 if old == S.RUNNING else None)
        if new in TERMINAL:
            assert (job.ended_at, job.exit_code) == (T1, 3)
        else:
            assert (job.ended_at, job.exit_code) == (None, None)


def test_forbidden_transitions_raise_and_change_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        node = add_node(session, gpus=len(FORBIDDEN_PAIRS))
        for i, (old, new) in enumerate(FORBIDDEN_PAIRS):
            job = job_in(session, old, node, [i])
            before = (len(events(session, job.id)), allocations(session), job.reason,
                      job.ended_at)
            with pytest.raises(InvalidTransition) as err:
                transition(session, job, new, now=T1, reason="nope", exit_code=9)
            assert (err.value.old, err.value.new) == (old, new)
            assert str(err.value) == f"job {job.id}: {old} -> {new} is not a valid transition"
            assert job.state == old.value
            session.flush()
            assert before == (len(events(session, job.id)), allocations(session), job.reason,
                              job.ended_at)
            assert job.exit_code is None


def test_leaving_the_active_states_frees_only_this_jobs_gpus(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session, session.begin():
        node = add_node(session, gpus=4)
        done = job_in(session, S.RUNNING, node, [0, 1])
        other = job_in(session, S.RUNNING, node, [2, 3])
        transition(session, done, S.COMPLETED, now=T1, exit_code=0)
        assert allocations(session) == {(other.id, node.id, 2), (other.id, node.id, 3)}
        # The job keeps where it ran, for history; only the allocation rows go.
        assert (done.node_id, done.gpu_indices) == (node.id, [0, 1])
        assert done.exit_code == 0


def test_a_freed_gpu_can_be_given_again_at_once(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        node = add_node(session, gpus=1)
        first = job_in(session, S.DISPATCHED, node, [0])
        transition(session, first, S.NODE_FAIL, now=T1, reason="lost")
        second = add_job(session)
        dispatch(session, second, node, [0])
        session.flush()
        assert allocations(session) == {(second.id, node.id, 0)}


def test_dispatched_and_ended_in_one_transaction_leaves_no_allocation(
    sessions: sessionmaker[Session],
) -> None:
    # The allocation rows are still unflushed when the job ends: they must go all the same.
    with sessions() as session, session.begin():
        node = add_node(session, gpus=2)
        job = add_job(session, gpus=2)
        dispatch(session, job, node, [0, 1])
        transition(session, job, S.FAILED, now=T1, reason="exited at once", exit_code=1)
        job_id = job.id
    with sessions() as session:
        assert allocations(session) == set()
        assert [e.new_state for e in events(session, job_id)] == ["DISPATCHED", "FAILED"]


def test_cancel_while_pending_ends_the_job_and_touches_no_gpu(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session, session.begin():
        node = add_node(session, gpus=1)
        busy = job_in(session, S.RUNNING, node, [0])
        job = add_job(session)
        transition(session, job, S.CANCELLED, now=T1, reason="cancelled by alice")
        assert (job.state, job.ended_at, job.dispatched_at) == ("CANCELLED", T1, None)
        assert allocations(session) == {(busy.id, node.id, 0)}


def test_a_late_report_after_the_end_is_refused(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        node = add_node(session, gpus=1)
        job = job_in(session, S.COMPLETED, node, [0])
        with pytest.raises(InvalidTransition):
            transition(session, job, S.RUNNING, now=T1, reason="late heartbeat")
        assert job.state == "COMPLETED"


def test_created_jobs_are_pending_with_their_first_event(
        sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        who = owner(session, "alice")
        fields = {"name": "job", "user_id": who.id, "account_id": who.default_account_id,
                  "command": ["true"], "workdir": "/tmp", "time_limit_s": 60,
                  "submitted_at": T0}
        made = create(session, [fields, {**fields, "name": "second"}], now=T0)
        assert [job.name for job in made] == ["job", "second"]
        ids = [job.id for job in made]
        assert len(set(ids)) == 2
        for job_id in ids:
            (ev,) = events(session, job_id)
            assert (ev.old_state, ev.new_state, ev.reason, ev.time) == \
                (None, "PENDING", "submitted", T0)
            job = session.get(Job, job_id)
            assert (job.state, job.gpus, job.attempt) == ("PENDING", 1, 0)  # the defaults
