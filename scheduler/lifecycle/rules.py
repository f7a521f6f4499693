"""The job state machine. This module is the only writer of ``Job.state``.

    PENDING ──▶ DISPATCHED ──▶ RUNNING ──▶ COMPLETED | FAILED | CANCELLED | TIMEOUT
       │             │            │         NODE_FAIL | PREEMPTED
       └─────────────┴────────────┴──▶ CANCELLED | FAILED | NODE_FAIL | PREEMPTED (not PENDING)

    NODE_FAIL | PREEMPTED ──▶ REQUEUED ──▶ PENDING     (a job that allows it: ``requeue``)

Every transition writes a ``JobEvent`` with its time and reason, and frees the job's GPUs
when the job leaves the active states. A job that allows it is requeued after NODE_FAIL or
PREEMPTED: REQUEUED is passed through at once, in the same transaction (it is the event
that says so); the job keeps its id and submit time (its age) and runs again as its next
attempt. A job that asked not to be requeued stays NODE_FAIL or PREEMPTED.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from gpuq.scheduler.db.models import GpuAllocation, Job, JobEvent
from gpuq.wire.states import ACTIVE, REQUEUEABLE, TERMINAL, JobState

#: A DISPATCHED job may end without a RUNNING report (a job that exits at once, a lost
#: message); the node's report of how it ended is taken as it is.
ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.DISPATCHED, JobState.CANCELLED, JobState.FAILED}),
    JobState.DISPATCHED: frozenset({JobState.RUNNING}) | TERMINAL,
    JobState.RUNNING: TERMINAL,
}
# The way back to the queue (NODE_FAIL | PREEMPTED -> REQUEUED -> PENDING) is ``requeue``'s
# own: it resets the run's fields as it goes, which ``transition`` does not.


class InvalidTransition(Exception):
    def __init__(self, job_id: int, old: str, new: str) -> None:
        super().__init__(f"job {job_id}: {old} -> {new} is not a valid transition")
        self.old, self.new = old, new


def can_transition(old: str, new: str) -> bool:
    return JobState(new) in ALLOWED.get(JobState(old), frozenset())


def transition(
    session: Session,
    job: Job,
    new: JobState,
    *,
    now: datetime,
    reason: str = "",
    exit_code: int | None = None,
) -> None:
    """Move ``job`` to ``new``; record the event; free GPUs when it stops being active.

    Raises ``InvalidTransition`` for a move the machine does not allow (for example a
    late RUNNING report for a job that is already COMPLETED). Callers decide whether that
    is an error or an old message to ignore.
    """
    old = JobState(job.state)
    if not can_transition(old, new):
        raise InvalidTransition(job.id, old, new)
    job.state = new.value
    job.reason = reason
    if new == JobState.DISPATCHED:
        job.dispatched_at = now
    elif new == JobState.RUNNING:
        job.started_at = now
    if new in TERMINAL:
        job.ended_at = now
        if exit_code is not None:
            job.exit_code = exit_code
        if old in ACTIVE:
            session.execute(delete(GpuAllocation).where(GpuAllocation.job_id == job.id))
    session.add(JobEvent(job_id=job.id, time=now, old_state=old.value, new_state=new.value,
                         reason=reason))


def requeue(session: Session, job: Job, *, now: datetime, reason: str) -> None:
    """Put a job whose node failed, or that was preempted, back in the queue
    (NODE_FAIL | PREEMPTED -> REQUEUED -> PENDING): it keeps its id and submit time, and
    its next dispatch is a new attempt."""
    old = JobState(job.state)
    if old not in REQUEUEABLE:
        raise InvalidTransition(job.id, job.state, JobState.REQUEUED.value)
    session.add(JobEvent(job_id=job.id, time=now, old_state=old.value,
                         new_state=JobState.REQUEUED.value, reason=reason))
    job.state = JobState.PENDING.value
    job.reason = reason
    job.node_id = None
    job.gpu_indices = []
    job.started_at = None
    job.charged_until = None
    job.ended_at = None
    job.exit_code = None
    job.borrowed_grant_id = None
    job.borrowed_gpus = 0
    job.preempt_requested_at = None
    job.preempt_reason = ""
    job.gpu_energy_earlier_j = job.gpu_energy_j or 0.0
    session.add(JobEvent(job_id=job.id, time=now, old_state=JobState.REQUEUED.value,
                         new_state=JobState.PENDING.value,
                         reason="back in the queue; keeps its submit time"))


def record_submit(session: Session, job: Job, *, now: datetime, reason: str) -> None:
    """The first event of a job (it has no previous state)."""
    session.add(JobEvent(job_id=job.id, time=now, old_state=None,
                         new_state=JobState.PENDING.value, reason=reason))


def set_pending_reason(job: Job, reason: str) -> None:
    """A pending job's reason changes every cycle; that is not a state change (no event)."""
    if job.state == JobState.PENDING.value:
        job.reason = reason
