"""The job state machine. This module is the only writer of ``Job.state``.

    PENDING ──▶ DISPATCHED ──▶ RUNNING ──▶ COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL
       │             │
       └─────────────┴──────▶ CANCELLED | FAILED | NODE_FAIL

Every transition writes a ``JobEvent`` with its time and reason, and frees the job's GPUs
when the job leaves the active states. A job that allows it is requeued after NODE_FAIL
(``requeue``: NODE_FAIL -> PENDING), and runs again as its next attempt.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import delete
from sqlalchemy.orm import Session

from scheduler.db.models import GpuAllocation, Job, JobEvent


class JobState(StrEnum):
    PENDING = "PENDING"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"


class NodeState(StrEnum):
    UNKNOWN = "UNKNOWN"
    UP = "UP"
    DOWN = "DOWN"
    DRAIN = "DRAIN"


ACTIVE = frozenset({JobState.DISPATCHED, JobState.RUNNING})
TERMINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.NODE_FAIL,
    }
)

#: A DISPATCHED job may end without a RUNNING report (a job that exits at once, a lost
#: message); the node's report of how it ended is taken as it is.
ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.DISPATCHED, JobState.CANCELLED, JobState.FAILED}),
    JobState.DISPATCHED: frozenset({JobState.RUNNING}) | TERMINAL,
    JobState.RUNNING: TERMINAL,
}


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
    """Put a job whose node failed back in the queue (NODE_FAIL -> PENDING): it keeps
    its id and submit time, and its next dispatch is a new attempt."""
    if job.state != JobState.NODE_FAIL.value:
        raise InvalidTransition(job.id, job.state, JobState.PENDING.value)
    job.state = JobState.PENDING.value
    job.reason = reason
    job.node_id = None
    job.gpu_indices = []
    job.started_at = None
    job.charged_until = None
    job.ended_at = None
    job.exit_code = None
    job.gpu_energy_earlier_j = job.gpu_energy_j or 0.0
    session.add(JobEvent(job_id=job.id, time=now, old_state=JobState.NODE_FAIL.value,
                         new_state=JobState.PENDING.value, reason=reason))


def record_submit(session: Session, job: Job, *, now: datetime, reason: str) -> None:
    """The first event of a job (it has no previous state)."""
    session.add(JobEvent(job_id=job.id, time=now, old_state=None,
                         new_state=JobState.PENDING.value, reason=reason))


def set_pending_reason(job: Job, reason: str) -> None:
    """A pending job's reason changes every cycle; that is not a state change (no event)."""
    if job.state == JobState.PENDING.value:
        job.reason = reason
