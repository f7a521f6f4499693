"""The job state machine's rules (``lifecycle.rules``): pure functions of a job's ``Facts``
and an event, tested without a database."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuq.scheduler.lifecycle import rules
from gpuq.scheduler.lifecycle.rules import REASON_CHARS, Change, Facts, InvalidTransition, Resend
from gpuq.wire.states import ACTIVE, REPORTED, REQUEUEABLE, RUN_ENDS, TERMINAL, JobState

S = JobState
LONG = "x" * (REASON_CHARS + 50)
BACK = "back in the queue; keeps its submit time"
REQUEUE_STEPS = {(S.NODE_FAIL, S.REQUEUED), (S.PREEMPTED, S.REQUEUED), (S.REQUEUED, S.PENDING)}


def facts(state: JobState = S.RUNNING, **kw: Any) -> Facts:
    """Job 7 in ``state``, on its first attempt, with a one-hour limit."""
    return Facts(**{"id": 7, "state": state, "attempt": 1, "time_limit_s": 3600, **kw})


def path(change: Change | Resend | None) -> list[tuple[JobState | None, JobState]]:
    assert isinstance(change, Change), change
    return [(s.old, s.new) for s in change.steps]


def reasons(change: Change | Resend | None) -> list[str]:
    assert isinstance(change, Change), change
    return [s.reason for s in change.steps]


def report(f: Facts, state: str, **kw: Any) -> Change | None:
    """The node reports ``state`` for the job's current attempt."""
    return rules.reported(f, attempt=f.attempt, state=state, **kw)


def heartbeat(f: Facts, seen: str | None = None, waited_s: float = 0.0) -> Change | Resend | None:
    return rules.seen_in_heartbeat(f, seen=seen, node="n1", waited_s=waited_s,
                                   resend_after_s=30.0)


# --- reported ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", sorted(REPORTED))
def test_a_repeated_report_changes_nothing(state: JobState) -> None:
    assert report(facts(state), state) is None


@pytest.mark.parametrize("attempt", [0, 2])
@pytest.mark.parametrize("state", [S.RUNNING, S.COMPLETED, S.CANCELLED])
def test_a_report_about_another_attempt_changes_nothing(attempt: int, state: JobState) -> None:
    f = facts(S.DISPATCHED, preempt_requested=True)
    assert rules.reported(f, attempt=attempt, state=state) is None


def test_a_dispatched_job_reported_running_runs() -> None:
    change = report(facts(S.DISPATCHED), "RUNNING")
    assert path(change) == [(S.DISPATCHED, S.RUNNING)] and reasons(change) == ["started"]
    assert change is not None and change.moves and not change.ends_run


@pytest.mark.parametrize("state", [S.PENDING, *sorted(TERMINAL)])
def test_a_running_report_after_the_end_or_before_dispatch_is_ignored(state: JobState) -> None:
    assert report(facts(state), "RUNNING") is None


@pytest.mark.parametrize("given", ["", "OOM killed", LONG])
@pytest.mark.parametrize(("end", "default"), [
    (S.COMPLETED, "exit code 0"), (S.FAILED, "exit code 3"),
    (S.TIMEOUT, "time limit of 3600 s reached"), (S.CANCELLED, "cancelled"),
    (S.OUT_OF_MEMORY, "out of memory")])
@pytest.mark.parametrize("old", sorted(ACTIVE))
def test_each_end_is_taken_from_an_active_state_with_its_reason(
        old: JobState, end: JobState, default: str, given: str) -> None:
    """A given reason is kept (cut to the column); without one, the end's own."""
    code = 3 if end == S.FAILED else None
    change = report(facts(old), end, reason=given, exit_code=code)
    assert path(change) == [(old, end)]
    assert reasons(change) == [given[:REASON_CHARS] or default]
    assert change is not None and change.exit_code == code and change.ends_run
    assert not change.requeued and not change.preempted


@pytest.mark.parametrize("requeue", [True, False])
@pytest.mark.parametrize("old", sorted(ACTIVE))
def test_cancelled_while_a_preemption_is_requested_is_preempted_then_requeued_if_allowed(
        old: JobState, requeue: bool) -> None:
    f = facts(old, requeue=requeue, preempt_requested=True, preempt_reason="grant 3 wants it")
    change = report(f, "CANCELLED", exit_code=0)
    again = [(S.PREEMPTED, S.REQUEUED), (S.REQUEUED, S.PENDING)] if requeue else []
    assert path(change) == [(old, S.PREEMPTED), *again]
    assert reasons(change) == ["grant 3 wants it (cancelled)", *(
        ["requeued after preemption (attempt 1 stopped)", BACK] if requeue else [])]
    assert change is not None and change.old == old and change.ends_run
    assert change.state == (S.PENDING if requeue else S.PREEMPTED)
    assert change.preempted and change.requeued is requeue and change.exit_code is None


def test_a_preempted_job_s_reason_says_how_its_run_stopped() -> None:
    change = report(facts(preempt_requested=True), "CANCELLED", reason="SIGTERM, exit 0")
    assert reasons(change)[0] == "preempted (SIGTERM, exit 0)"


def test_cancelled_with_both_a_cancel_and_a_preemption_requested_is_cancelled() -> None:
    change = report(facts(preempt_requested=True, cancel_requested=True), "CANCELLED")
    assert path(change) == [(S.RUNNING, S.CANCELLED)]
    assert change is not None and not change.preempted


@pytest.mark.parametrize("end", [S.COMPLETED, S.FAILED, S.TIMEOUT, S.OUT_OF_MEMORY])
def test_an_end_of_its_own_while_a_preemption_is_pending_is_what_it_says(end: JobState) -> None:
    change = report(facts(preempt_requested=True), end, exit_code=1)
    assert path(change) == [(S.RUNNING, end)]
    assert change is not None and not change.preempted and not change.requeued


@pytest.mark.parametrize("end", sorted(RUN_ENDS))
@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_a_report_for_a_job_already_ended_changes_nothing(state: JobState,
                                                          end: JobState) -> None:
    assert report(facts(state), end) is None


@pytest.mark.parametrize("state", [S.PREEMPTED, S.NODE_FAIL, S.COMPLETED])
def test_a_cancelled_report_for_an_ended_job_being_preempted_changes_nothing(
        state: JobState) -> None:
    """Its preempt_requested_at stays set (requeue=False: never reset): the late report of
    the signalled run is not a second preemption (it raised InvalidTransition, a 500)."""
    assert report(facts(state, preempt_requested=True, requeue=False), "CANCELLED") is None


@pytest.mark.parametrize("end", [S.CANCELLED, S.FAILED])
def test_a_late_end_report_for_a_requeued_job_changes_nothing(end: JobState) -> None:
    """A requeued job is PENDING with its attempt unchanged until its next dispatch: the
    lost run's late report passes the attempt check, and must not end the queued job."""
    assert report(facts(S.PENDING), end) is None


@pytest.mark.parametrize("requeue", [True, False])
@pytest.mark.parametrize("old", sorted(ACTIVE))
def test_a_run_its_node_fenced_is_a_lost_node_s_end(old: JobState, requeue: bool) -> None:
    """NODE_FAIL from the node: it stopped the run itself, cut off from the scheduler for
    the fencing time (issue 16, item 3). Back in the queue if the job allows it; the
    reason is the scheduler's words, never the node's."""
    change = rules.reported(facts(old, requeue=requeue), attempt=1, state="NODE_FAIL",
                            reason="anything the node says", exit_code=143, node="n1")
    again = [(S.NODE_FAIL, S.REQUEUED), (S.REQUEUED, S.PENDING)] if requeue else []
    assert path(change) == [(old, S.NODE_FAIL), *again]
    assert reasons(change)[0] == f"n1: {rules.FENCED}"
    assert change is not None and change.requeued is requeue and change.ends_run


# --- seen_in_heartbeat -------------------------------------------------------------------


def test_a_dispatched_job_seen_running_runs() -> None:
    change = heartbeat(facts(S.DISPATCHED), seen="RUNNING")
    assert path(change) == [(S.DISPATCHED, S.RUNNING)]
    assert reasons(change) == ["running (seen in heartbeat)"]


@pytest.mark.parametrize(("state", "seen"), [
    (S.RUNNING, S.RUNNING), (S.DISPATCHED, S.COMPLETED), (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED)])
def test_a_job_seen_in_another_state_is_left_to_its_report(state: JobState,
                                                           seen: JobState) -> None:
    assert heartbeat(facts(state, cancel_requested=True), seen=seen, waited_s=99) is None


@pytest.mark.parametrize("state", sorted(ACTIVE))
def test_a_job_gone_with_its_cancel_requested_is_cancelled(state: JobState) -> None:
    change = heartbeat(facts(state, cancel_requested=True, preempt_requested=True))
    assert path(change) == [(state, S.CANCELLED)]
    assert reasons(change) == ["cancelled before the node started it"]


@pytest.mark.parametrize("requeue", [True, False])
@pytest.mark.parametrize("state", sorted(ACTIVE))
def test_a_job_gone_while_being_preempted_is_preempted_then_requeued_if_allowed(
        state: JobState, requeue: bool) -> None:
    change = heartbeat(facts(state, requeue=requeue, preempt_requested=True,
                             preempt_reason="qos"))
    assert path(change)[0] == (state, S.PREEMPTED)
    assert reasons(change)[0] == "qos (gone from its node)"
    assert isinstance(change, Change) and change.preempted and change.requeued is requeue
    assert change.state == (S.PENDING if requeue else S.PREEMPTED)


def test_a_running_job_gone_from_its_node_fails_naming_the_node() -> None:
    """Not requeued, though it allows it (unlike the jobs of a lost node)."""
    change = heartbeat(facts(S.RUNNING), waited_s=99)
    assert path(change) == [(S.RUNNING, S.NODE_FAIL)]
    assert reasons(change) == ["n1 no longer has the job"]
    assert isinstance(change, Change) and not change.requeued


@pytest.mark.parametrize(("waited_s", "expected"), [(0.0, None), (29.9, None),
                                                    (30.0, Resend(7)), (600.0, Resend(7))])
def test_a_dispatched_job_not_seen_is_resent_once_the_wait_is_over(
        waited_s: float, expected: Resend | None) -> None:
    assert heartbeat(facts(S.DISPATCHED), waited_s=waited_s) == expected


# --- run_to_stop -------------------------------------------------------------------------

BEING_PREEMPTED = facts(preempt_requested=True)


@pytest.mark.parametrize(("f", "attempt", "here"), [
    (None, 1, False), (BEING_PREEMPTED, 1, False), (BEING_PREEMPTED, 0, True),
    (dataclasses.replace(BEING_PREEMPTED, state=S.COMPLETED), 1, True),
    (dataclasses.replace(BEING_PREEMPTED, cancel_requested=True), 1, True)],
    ids=["unknown job", "another node", "another attempt", "ended", "cancel requested"])
def test_a_run_that_is_not_the_job_s_live_run_is_killed_at_once(
        f: Facts | None, attempt: int, here: bool) -> None:
    kill = rules.run_to_stop(7, attempt, f, on_this_node=here, preempt_grace_s=45.0)
    assert kill == rules.Kill(7, attempt, None)


def test_a_run_being_preempted_is_killed_after_the_grace() -> None:
    kill = rules.run_to_stop(7, 1, BEING_PREEMPTED, on_this_node=True, preempt_grace_s=45.0)
    assert kill == rules.Kill(7, 1, 45.0)


@pytest.mark.parametrize("state", sorted(ACTIVE))
def test_the_job_s_current_run_is_left_alone(state: JobState) -> None:
    assert rules.run_to_stop(7, 1, facts(state), on_this_node=True, preempt_grace_s=45) is None


# --- cancels and preemption requests -----------------------------------------------------


def test_a_pending_job_is_cancelled_at_once() -> None:
    change = rules.cancelled(facts(S.PENDING), by="alice")
    assert path(change) == [(S.PENDING, S.CANCELLED)] and reasons(change) == ["cancelled by alice"]
    assert change is not None and change.moves and not change.ends_run
    assert not change.cancel_requested


@pytest.mark.parametrize("state", sorted(ACTIVE))
def test_an_active_job_has_its_cancel_requested(state: JobState) -> None:
    change = rules.cancelled(facts(state, preempt_requested=True), by="admin")
    assert path(change) == [(state, state)] and reasons(change) == ["cancel requested by admin"]
    assert change is not None and change.cancel_requested and change.state == state
    assert not change.moves and not change.ends_run


@pytest.mark.parametrize("f", [*(facts(s) for s in sorted(TERMINAL)),
                               facts(cancel_requested=True)], ids=repr)
def test_an_ended_job_or_one_whose_cancel_is_requested_is_not_cancelled(f: Facts) -> None:
    assert rules.cancelled(f, by="alice") is None


@pytest.mark.parametrize("f", [*(facts(s) for s in [S.PENDING, *sorted(TERMINAL)]),
                               facts(cancel_requested=True)], ids=repr)
def test_only_an_active_job_has_its_cancel_requested_once(f: Facts) -> None:
    assert rules.request_cancel(f, "idle") is None


@pytest.mark.parametrize("state", sorted(ACTIVE))
def test_a_requested_cancel_is_a_note_with_its_reason_cut_to_the_column(state: JobState) -> None:
    change = rules.request_cancel(facts(state, preempt_requested=True), LONG)
    assert path(change) == [(state, state)] and reasons(change) == [LONG[:REASON_CHARS]]
    assert change is not None and change.cancel_requested and not change.moves


@pytest.mark.parametrize("why", ["grant 3 needs them", LONG])
@pytest.mark.parametrize("state", sorted(ACTIVE))
def test_an_active_job_has_its_preemption_requested_with_the_reason(state: JobState,
                                                                    why: str) -> None:
    """The reason is kept for the job's PREEMPTED event, both cut to the column."""
    change = rules.request_preemption(facts(state), why)
    assert path(change) == [(state, state)]
    assert reasons(change) == [f"preemption requested: {why}"[:REASON_CHARS]]
    assert change is not None and change.preempt_reason == why[:REASON_CHARS]
    assert not change.moves and not change.cancel_requested and not change.preempted


@pytest.mark.parametrize("f", [
    *(facts(s) for s in [S.PENDING, *sorted(TERMINAL)]),
    facts(cancel_requested=True), facts(preempt_requested=True)], ids=repr)
def test_a_job_not_active_or_already_being_stopped_is_not_preempted(f: Facts) -> None:
    assert rules.request_preemption(f, "qos") is None


# --- the other rules ---------------------------------------------------------------------


@pytest.mark.parametrize("state", list(S))
def test_a_note_records_an_event_without_moving(state: JobState) -> None:
    change = rules.note(facts(state), LONG)
    assert path(change) == [(state, state)] and reasons(change) == [LONG[:REASON_CHARS]]
    assert not change.moves and not change.ends_run and not change.cancel_requested
    assert change.preempt_reason is None


def test_a_new_job_s_first_event_has_no_previous_state() -> None:
    change = rules.submitted(9)
    assert change.job_id == 9 and path(change) == [(None, S.PENDING)]
    assert change.old is None and reasons(change) == ["submitted"] and not change.ends_run
    assert reasons(rules.submitted(9, LONG)) == [LONG[:REASON_CHARS]]


@pytest.mark.parametrize(("gpus", "shown"), [((0, 1), "[0,1]"), ((), "[none]")])
def test_a_dispatch_names_the_node_and_its_gpus(gpus: tuple[int, ...], shown: str) -> None:
    change = rules.dispatched(facts(S.PENDING), node_id=4, node="n1", gpu_indices=gpus)
    assert path(change) == [(S.PENDING, S.DISPATCHED)]
    assert reasons(change) == [f"dispatched to n1 GPUs {shown}"]
    assert change.node_id == 4 and change.gpu_indices == gpus and not change.ends_run


@pytest.mark.parametrize("state", [s for s in S if s != S.PENDING])
def test_only_a_pending_job_is_dispatched(state: JobState) -> None:
    with pytest.raises(InvalidTransition):
        rules.dispatched(facts(state), node_id=4, node="n1", gpu_indices=(0,))


@pytest.mark.parametrize("state", sorted(ACTIVE))
def test_a_job_on_a_lost_node_fails_and_is_requeued(state: JobState) -> None:
    change = rules.node_lost(facts(state), node="n1", reason="missed heartbeats")
    assert path(change) == [(state, S.NODE_FAIL), (S.NODE_FAIL, S.REQUEUED),
                            (S.REQUEUED, S.PENDING)]
    assert reasons(change) == ["n1: missed heartbeats",
                               "requeued after n1 failed (attempt 1 lost)", BACK]
    assert change.requeued and not change.preempted and change.ends_run


@pytest.mark.parametrize("f", [facts(requeue=False), facts(cancel_requested=True),
                               facts(S.DISPATCHED, requeue=False)], ids=repr)
def test_a_job_on_a_lost_node_that_may_not_requeue_stays_failed(f: Facts) -> None:
    change = rules.node_lost(f, node="n1", reason="down")
    assert path(change) == [(f.state, S.NODE_FAIL)] and not change.requeued


def test_a_preempted_job_is_requeued_naming_the_attempt_stopped() -> None:
    change = rules.preempted(facts(attempt=3, preempt_reason=LONG), "SIGKILL")
    assert change.state == S.PENDING and change.preempted and change.requeued
    assert reasons(change)[1] == "requeued after preemption (attempt 3 stopped)"
    assert all(len(r) <= REASON_CHARS for r in reasons(change))


# --- move, the table, Change and Facts ---------------------------------------------------

PAIRS = [(old, new) for old in S for new in S]


@pytest.mark.parametrize(("old", "new"), PAIRS, ids=[f"{o}->{n}" for o, n in PAIRS])
def test_move_follows_the_table(old: JobState, new: JobState) -> None:
    allowed = new in rules.ALLOWED.get(old, ())
    assert rules.can_transition(old.value, new.value) is allowed
    if allowed:
        change = rules.move(facts(old), new, "why", exit_code=2)
        assert path(change) == [(old, new)] and change.exit_code == 2
        assert change.ends_run is (old in ACTIVE and new not in ACTIVE)
    else:
        with pytest.raises(InvalidTransition, match=f"job 7: {old} -> {new} is not") as err:
            rules.move(facts(old), new, "why")
        assert (err.value.old, err.value.new) == (old, new)


@pytest.mark.parametrize("old", list(S))
def test_requeued_is_never_a_target_of_move(old: JobState) -> None:
    assert not rules.can_transition(old, S.REQUEUED)
    with pytest.raises(InvalidTransition):
        rules.move(facts(old), S.REQUEUED, "")


def test_a_change_s_old_and_state_are_its_first_and_last_steps() -> None:
    steps = [(S.RUNNING, S.PREEMPTED), (S.PREEMPTED, S.REQUEUED), (S.REQUEUED, S.PENDING)]
    change = Change(7, tuple(rules.Step(old, new, "") for old, new in steps))
    assert (change.old, change.state, change.moves, change.ends_run) == (
        S.RUNNING, S.PENDING, True, True)


def test_facts_are_read_from_a_job_s_columns() -> None:
    job = SimpleNamespace(id=5, state="RUNNING", attempt=2, requeue=0,
                          cancel_requested_at="t", preempt_requested_at="t",
                          preempt_reason="qos", time_limit_s=60)
    assert Facts.of(job) == Facts(5, S.RUNNING, 2, False, True, True, "qos", 60)
    fresh = SimpleNamespace(id=6, state="PENDING", attempt=None, requeue=True,
                            cancel_requested_at=None, preempt_requested_at=None,
                            preempt_reason=None, time_limit_s=None)
    assert Facts.of(fresh) == Facts(6, S.PENDING)


# --- random histories --------------------------------------------------------------------

texts = st.sampled_from(["", "why", "é" * 20, LONG]) | st.text(max_size=REASON_CHARS + 40)
reports = st.tuples(st.just("report"), st.sampled_from([0, 0, 0, -1, 1]),
                    st.sampled_from(sorted(REPORTED)), texts, st.none() | st.integers(-9, 255))
events = st.one_of(
    reports, reports,  # the commonest event, twice as likely
    st.tuples(st.just("heartbeat"), st.none() | st.sampled_from(sorted(REPORTED)),
              st.floats(0, 120), st.integers(-1, 1), st.booleans()),
    *(st.tuples(st.just(kind), texts)  # a preemption's end is the subtle part: twice too
      for kind in ["cancel", "preempt", "preempt", "lost", "note"]),
    st.tuples(st.just("dispatch"), st.lists(st.integers(0, 7), max_size=4)),
)


def outcome(f: Facts, event: tuple[Any, ...]) -> Change | Resend | None:
    """What the rule for ``event`` decides, called as its callers call it (a heartbeat or
    a lost node: for the node's active jobs only)."""
    kind, *args = event
    if kind == "report":
        delta, state, reason, code = args
        return rules.reported(f, attempt=f.attempt + delta, state=state, reason=reason,
                              exit_code=code)
    if kind == "heartbeat":
        seen, waited, delta, here = args
        kill = rules.run_to_stop(f.id, f.attempt + delta, f, on_this_node=here,
                                 preempt_grace_s=5)
        assert kill is None or kill.grace_s is None or f.preempt_requested
        if f.state not in ACTIVE:
            return None
        return rules.seen_in_heartbeat(f, seen=seen, node="n1", waited_s=waited,
                                       resend_after_s=30)
    if kind == "lost":
        return rules.node_lost(f, node="n1", reason=args[0]) if f.state in ACTIVE else None
    if kind == "dispatch":
        if f.state != S.PENDING:
            return None
        return rules.dispatched(f, node_id=1, node="n1", gpu_indices=tuple(args[0]))
    rule = {"cancel": lambda: rules.cancelled(f, by=args[0]),
            "preempt": lambda: rules.request_preemption(f, args[0]),
            "note": lambda: rules.note(f, args[0])}[kind]
    return rule()


def apply(f: Facts, change: Change) -> Facts:
    """What ``writes.apply`` does to the columns the rules read."""
    f = dataclasses.replace(f, state=change.state,
                            cancel_requested=f.cancel_requested or change.cancel_requested)
    if change.node_id is not None:  # a dispatch: the next attempt
        f = dataclasses.replace(f, attempt=f.attempt + 1)
    if change.preempt_reason is not None:
        f = dataclasses.replace(f, preempt_requested=True, preempt_reason=change.preempt_reason)
    if change.requeued:  # the attempt stays until the next dispatch
        f = dataclasses.replace(f, preempt_requested=False, preempt_reason="")
    return f


def check(f: Facts, change: Change) -> None:
    """A change's steps chain from the job's state, each a move the machine allows or a
    requeue's, and an ended job moves again only by a requeue in the same change."""
    assert change.job_id == f.id and change.steps[0].old == f.state
    for i, step in enumerate(change.steps):
        assert len(step.reason) <= REASON_CHARS
        assert i == 0 or step.old == change.steps[i - 1].new, path(change)
        if step.old == step.new:
            continue
        assert step.old is not None
        assert rules.can_transition(step.old, step.new) or (step.old, step.new) in REQUEUE_STEPS
        if step.old in TERMINAL | {S.REQUEUED}:
            assert i > 0 and (step.old, step.new) in REQUEUE_STEPS, path(change)
    assert change.state != S.REQUEUED
    assert change.requeued is any(s.new == S.REQUEUED for s in change.steps)
    assert not (f.state in TERMINAL and change.moves), path(change)


@settings(max_examples=400, deadline=None)
@given(start=st.sampled_from([S.PENDING, S.DISPATCHED, S.RUNNING]), requeue=st.booleans(),
       history=st.lists(events, max_size=25))
def test_random_histories_keep_the_machine_s_invariants(
        start: JobState, requeue: bool, history: list[tuple[Any, ...]]) -> None:
    f = facts(start, requeue=requeue)
    for event in history:
        result = outcome(f, event)
        if isinstance(result, Resend):
            assert f.state == S.DISPATCHED and result.job_id == f.id
        elif result is not None:
            check(f, result)
            f = apply(f, result)
        assert not (f.state == S.PENDING and (f.cancel_requested or f.preempt_requested))


def test_out_of_memory_is_an_end_a_node_reports_and_is_not_requeued() -> None:
    assert S.OUT_OF_MEMORY in RUN_ENDS and S.OUT_OF_MEMORY in TERMINAL
    assert S.OUT_OF_MEMORY not in REQUEUEABLE
    reason = ("out of memory: the job's cgroup hit its 10 MiB limit (--mem); the kernel "
              "killed 1 process")
    change = report(facts(requeue=True), "OUT_OF_MEMORY", reason=reason, exit_code=137)
    assert path(change) == [(S.RUNNING, S.OUT_OF_MEMORY)] and reasons(change) == [reason]
    assert change is not None and change.ends_run and not change.requeued
    assert change.exit_code == 137
    # Its reason quotes nothing of the job: others see it as it is.
    assert rules.public_reason("OUT_OF_MEMORY", reason) == reason
    assert rules.public_reason("OUT_OF_MEMORY", "out of memory") == "out of memory"
    assert rules.public_reason("OUT_OF_MEMORY", "killed /home/a/secret") == "out of memory"


@pytest.mark.parametrize("given", ["", "started /opt/secret-tool"])
def test_a_running_report_s_reason_is_always_started(given: str) -> None:
    change = report(facts(S.DISPATCHED), "RUNNING", reason=given)
    assert reasons(change) == ["started"]


@pytest.mark.parametrize(("state", "reason", "others_see"), [
    # The node's own words about an end: a category to others.
    ("FAILED", "cannot start program /opt/secret-tool: No such file or directory",
     "start failed"),
    ("FAILED", "cannot start workdir /home/bob/x: Permission denied", "start failed"),
    ("FAILED", "user bob has no local account", "failed"),
    ("CANCELLED", "cancelled /opt/x", "cancelled"),
    ("TIMEOUT", "ran out of time in /home/bob", "time limit reached"),
    ("COMPLETED", "done: /opt/x", "completed"),
    ("PREEMPTED", "for job 9 (cannot start program /opt/x)", "preempted"),
    # Fixed words, and the scheduler's: as they are.
    ("FAILED", "exit code 3", "exit code 3"),
    ("FAILED", "exit code None", "exit code None"),
    ("FAILED", "killed by SIGKILL", "killed by SIGKILL"),
    ("FAILED", "killed by signal 77", "killed by signal 77"),
    ("TIMEOUT", "time limit of 3600 s reached", "time limit of 3600 s reached"),
    ("CANCELLED", "cancelled by alice", "cancelled by alice"),
    ("CANCELLED", "cancelled before the node started it", "cancelled before the node started it"),
    ("PREEMPTED", "for job 9 of alice (cancelled)", "for job 9 of alice (cancelled)"),
    ("PREEMPTED", "preempted (gone from its node)", "preempted (gone from its node)"),
    ("NODE_FAIL", "gpu01: no heartbeat for 60 s", "gpu01: no heartbeat for 60 s"),
    ("PENDING", "Resources", "Resources"),
    ("RUNNING", "cancel requested by bob", "cancel requested by bob"),
    ("FAILED", "", ""),
])
def test_public_reason(state: str, reason: str, others_see: str) -> None:
    assert rules.public_reason(state, reason) == others_see
