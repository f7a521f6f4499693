"""The job state machine: every rule that moves a job, as pure functions.

    PENDING ──▶ DISPATCHED ──▶ RUNNING ──▶ COMPLETED | FAILED | CANCELLED | TIMEOUT
       │             │            │         OUT_OF_MEMORY | NODE_FAIL | PREEMPTED
       └─────────────┴────────────┴──▶ CANCELLED | FAILED | NODE_FAIL | PREEMPTED (not PENDING)

    NODE_FAIL | PREEMPTED ──▶ REQUEUED ──▶ PENDING     (a job that allows it: ``requeue``)

A rule reads what matters of one job (``Facts``) and what happened (a node's report, what
its heartbeat shows, a cancel, a preemption, a node lost) and returns what follows: a
``Change`` (the events to write, in order, and what the job's columns become), a
``Resend`` or a ``Kill`` for the node, or ``None`` (nothing to do: a repeat, a late or
stale report). It imports no database, network or clock (the time is the caller's):
``writes.py`` applies a ``Change``, and is the only code that writes a job's state or an
event. The names of the states are ``gpuq.wire.states``.

A job that allows it is requeued when its node is lost (``node_lost``) or it was
preempted (``preempted``): REQUEUED is passed through at once (its event says so), and
the job keeps its id and submit time (its age) and runs again as its next attempt. A job
that asked not to be requeued stays NODE_FAIL or PREEMPTED. A run that vanished from a
node that still answers (``seen_in_heartbeat``) is NODE_FAIL and not requeued: the node
lost it, and may lose it again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gpuq.wire.states import ACTIVE, REQUEUEABLE, TERMINAL, JobState

#: A DISPATCHED job may end without a RUNNING report (a job that exits at once, a lost
#: message); the node's report of how it ended is taken as it is. The way back to the
#: queue (NODE_FAIL | PREEMPTED -> REQUEUED -> PENDING) is ``requeued``'s own.
ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.DISPATCHED, JobState.CANCELLED, JobState.FAILED}),
    JobState.DISPATCHED: frozenset({JobState.RUNNING}) | TERMINAL,
    JobState.RUNNING: TERMINAL,
}

#: An event's reason is kept to this many characters (the column's size).
REASON_CHARS = 256


class InvalidTransition(Exception):
    def __init__(self, job_id: int, old: str, new: str) -> None:
        super().__init__(f"job {job_id}: {old} -> {new} is not a valid transition")
        self.old, self.new = old, new


def can_transition(old: str, new: str) -> bool:
    return JobState(new) in ALLOWED.get(JobState(old), frozenset())


@dataclass(frozen=True)
class Facts:
    """What the rules read of a job (``of`` takes them from a job or a row)."""

    id: int
    state: JobState
    attempt: int = 0
    requeue: bool = True
    cancel_requested: bool = False
    preempt_requested: bool = False
    preempt_reason: str = ""
    time_limit_s: int | None = None

    @classmethod
    def of(cls, job: Any) -> Facts:
        return cls(id=job.id, state=JobState(job.state), attempt=job.attempt or 0,
                   requeue=bool(job.requeue),
                   cancel_requested=job.cancel_requested_at is not None,
                   preempt_requested=job.preempt_requested_at is not None,
                   preempt_reason=job.preempt_reason or "", time_limit_s=job.time_limit_s)


@dataclass(frozen=True)
class Step:
    """One event: ``old`` -> ``new`` (the same state: a note on the job's record; ``old``
    None: the job's first event)."""

    old: JobState | None
    new: JobState
    reason: str


@dataclass(frozen=True)
class Change:
    """What a rule decided for one job: its events, in order, and what its columns become.

    The state is the last step's. Leaving the active states frees the job's GPUs and ends
    it (``ended_at``); ``requeued`` resets the run's fields for the next attempt."""

    job_id: int
    steps: tuple[Step, ...]
    exit_code: int | None = None
    #: Back in the queue (NODE_FAIL | PREEMPTED -> REQUEUED -> PENDING).
    requeued: bool = False
    #: A preemption ended the run (the job's count of them grows by one).
    preempted: bool = False
    #: The job's cancel is requested now (``cancel_requested_at``).
    cancel_requested: bool = False
    #: The job's preemption is requested now, for this reason (``preempt_requested_at``).
    preempt_reason: str | None = None
    #: Dispatched: to this node id, on these GPUs (a new attempt).
    node_id: int | None = None
    gpu_indices: tuple[int, ...] = ()

    @property
    def old(self) -> JobState | None:
        return self.steps[0].old

    @property
    def state(self) -> JobState:
        return self.steps[-1].new

    @property
    def moves(self) -> bool:
        """The job's state changes (not only a note on its record)."""
        return any(s.old != s.new for s in self.steps)

    @property
    def ends_run(self) -> bool:
        """The job leaves the active states (its GPUs are freed)."""
        return self.old in ACTIVE and self.steps[0].new not in ACTIVE


def _reason(text: str) -> str:
    return text[:REASON_CHARS]


def move(f: Facts, new: JobState, reason: str, *, exit_code: int | None = None) -> Change:
    """``f`` goes to ``new`` as the machine allows (``ALLOWED``; else
    ``InvalidTransition``). The named rules below say which move follows what."""
    return _move(f, new, reason, exit_code=exit_code)


def _move(f: Facts, new: JobState, reason: str, **effects: Any) -> Change:
    if not can_transition(f.state, new):
        raise InvalidTransition(f.id, f.state, new)
    return Change(f.id, (Step(f.state, new, _reason(reason)),), **effects)


def note(f: Facts, reason: str) -> Change:
    """An event that changes no state (a cancel or preemption requested, an idle notice,
    borrowing GPUs...)."""
    return Change(f.id, (Step(f.state, f.state, _reason(reason)),))


def submitted(job_id: int, reason: str = "submitted") -> Change:
    """A new job's first event: it has no previous state."""
    return Change(job_id, (Step(None, JobState.PENDING, _reason(reason)),))


def dispatched(f: Facts, *, node_id: int, node: str, gpu_indices: tuple[int, ...]) -> Change:
    """The loop starts a pending job on a node's GPUs: its next attempt."""
    gpus = ",".join(map(str, gpu_indices)) or "none"
    return _move(f, JobState.DISPATCHED, f"dispatched to {node} GPUs [{gpus}]",
                 node_id=node_id, gpu_indices=tuple(gpu_indices))


def _requeue_steps(ended: JobState, reason: str) -> tuple[Step, ...]:
    return (Step(ended, JobState.REQUEUED, _reason(reason)),
            Step(JobState.REQUEUED, JobState.PENDING, "back in the queue; keeps its submit time"))


def _ended(f: Facts, new: JobState, reason: str, requeue_reason: str | None,
           **effects: Any) -> Change:
    """``f`` ends as ``new`` (NODE_FAIL or PREEMPTED), then goes back to the queue if
    ``requeue_reason`` is given."""
    end = _move(f, new, reason, **effects)
    if requeue_reason is None:
        return end
    assert new in REQUEUEABLE
    return Change(f.id, end.steps + _requeue_steps(new, requeue_reason), requeued=True,
                  **effects)


def preempted(f: Facts, how: str) -> Change:
    """A job being preempted was stopped (whatever its exit: a job that checkpoints and
    exits 0 on SIGTERM was still preempted): PREEMPTED, then back in the queue unless it
    asked not to be requeued."""
    again = (f"requeued after preemption (attempt {f.attempt} stopped)"
             if f.requeue else None)
    return _ended(f, JobState.PREEMPTED, f"{f.preempt_reason or 'preempted'} ({how})", again,
                  preempted=True)


def node_lost(f: Facts, *, node: str, reason: str) -> Change:
    """The job's node stopped answering: NODE_FAIL, then back in the queue if it allows
    it and nobody cancelled it."""
    again = (f"requeued after {node} failed (attempt {f.attempt} lost)"
             if f.requeue and not f.cancel_requested else None)
    return _ended(f, JobState.NODE_FAIL, f"{node}: {reason}", again)


#: The reason of a report that gives none.
_REPORT_REASONS = {
    JobState.RUNNING: "started",
    JobState.COMPLETED: "exit code 0",
    JobState.CANCELLED: "cancelled",
}


#: The reason of a run its node stopped itself, cut off from the scheduler for the fencing
#: time (``FenceTerms``): the scheduler's words, never the node's.
FENCED = "lost contact with the scheduler; the node stopped the run (fenced)"


def reported(f: Facts, *, attempt: int, state: str, reason: str = "",
             exit_code: int | None = None, node: str = "its node") -> Change | None:
    """A node's report of a run: started, or how it ended. Repeats, late reports and
    reports about an earlier attempt change nothing (``None``). NODE_FAIL (the node
    fenced the run: it could not reach the scheduler) is a lost node's end
    (``node_lost``): back in the queue if the job allows it."""
    new = JobState(state)
    if attempt != f.attempt or f.state == new or f.state not in ACTIVE:
        return None  # a repeat, or about a run that is over (a late report)
    if new == JobState.RUNNING and f.state != JobState.DISPATCHED:
        return None  # a late RUNNING after the end, or before dispatch
    if new == JobState.NODE_FAIL:
        return node_lost(f, node=node, reason=FENCED)
    # The worker reports CANCELLED for every run it signalled (whatever the exit code: a
    # job that checkpoints and exits 0 on SIGTERM was preempted). COMPLETED, FAILED,
    # TIMEOUT or OUT_OF_MEMORY while a preemption is pending means the run ended by itself
    # before the signal: it is what it says, not run again.
    if new == JobState.CANCELLED and f.preempt_requested and not f.cancel_requested:
        return preempted(f, reason or new.value.lower())
    if new == JobState.RUNNING:
        reason = ""  # the node's own words only where a run ends (see ``public_reason``)
    if not reason:
        reason = {JobState.FAILED: f"exit code {exit_code}",
                  JobState.TIMEOUT: f"time limit of {f.time_limit_s} s reached",
                  JobState.OUT_OF_MEMORY: "out of memory",
                  }.get(new) or _REPORT_REASONS[new]
    return _move(f, new, reason, exit_code=exit_code)


#: The states a node's report ends a run in: their reason may be the node's own words
#: (``reported``), which can quote the job's spec ("cannot start program /opt/tool: ...").
_NODE_WORDS = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED,
                         JobState.TIMEOUT, JobState.OUT_OF_MEMORY, JobState.PREEMPTED})
#: The reasons of those states that quote nothing of the job: the scheduler's and the
#: worker's fixed ones (the exit code, the signal, the time limit, a cancel).
_SAFE = (r"exit code (?:-?\d+|None)|killed by (?:SIG[A-Z0-9+]+|signal \d+)"
         r"|time limit of \d+ s reached|cancelled|cancelled before it started"
         r"|cancelled before the node started it|cancelled by [A-Za-z0-9._-]+"
         r"|the node restarted while the job was running"
         r"|the job's supervisor died; the job was killed|gone from its node"
         r"|out of memory(?:: the job's cgroup hit its \d+ MiB limit \(--mem\)"
         r"(?:; the kernel killed \d+ process(?:es)?)?)?")
_SAFE_REASON = re.compile(_SAFE)
#: A preemption's reason: the scheduler's, then how the run ended (``preempted``).
_SAFE_PREEMPTED = re.compile(rf"(?s).+ \((?:{_SAFE})\)")
#: What others see instead of a reason that is the node's own words.
_CATEGORY = {JobState.COMPLETED: "completed", JobState.FAILED: "failed",
             JobState.CANCELLED: "cancelled", JobState.TIMEOUT: "time limit reached",
             JobState.OUT_OF_MEMORY: "out of memory", JobState.PREEMPTED: "preempted"}


def public_reason(state: str, reason: str) -> str:
    """``reason`` (a job's, or an event's that moved it to ``state``) as users other than
    the job's owner and admins see it: the node's own words about how a run ended may quote
    the job's command, workdir or environment, which only they may see, so such a reason
    is shown as its category ("start failed", "failed", ...). The scheduler's reasons
    (Priority, Resources, dispatched to..., node lost, preemption and cancel requests,
    notes) and the fixed words of a run's end (exit code, signal, time limit) are shown
    as they are. Notes never carry the node's words (``note``), and a RUNNING report's
    reason is always "started" (``reported``), so the state says enough."""
    try:
        s = JobState(state)
    except ValueError:
        return reason
    if s not in _NODE_WORDS or not reason:
        return reason
    safe = _SAFE_PREEMPTED if s == JobState.PREEMPTED else _SAFE_REASON
    if safe.fullmatch(reason):
        return reason
    if s == JobState.FAILED and reason.startswith("cannot start"):
        return "start failed"
    return _CATEGORY[s]


@dataclass(frozen=True)
class Resend:
    """Send the job's launch to its node again (the first was lost, it seems)."""

    job_id: int


@dataclass(frozen=True)
class Kill:
    """Tell the node to stop this run (``grace_s``: the time between SIGTERM and SIGKILL,
    ``None``: the node's own)."""

    job_id: int
    attempt: int
    grace_s: float | None = None


#: A heartbeat listed less than this many seconds after a job started (the scheduler's
#: clock against the worker's: room for their difference) is no proof that the job is gone.
LISTED_AFTER_START_MARGIN_S = 2.0


def seen_in_heartbeat(f: Facts, *, seen: str | None, node: str, waited_s: float,
                      resend_after_s: float,
                      listed_after_start_s: float | None = None) -> Change | Resend | None:
    """One of a node's active jobs, against what its heartbeat shows: ``seen``, the state
    the node reports for the job's current attempt (None: the node does not have it);
    ``waited_s``: seconds since it was dispatched (or its launch last sent);
    ``listed_after_start_s``: how long after the job started the node listed its jobs
    (``None``: not known, an older worker). A heartbeat can arrive after the report of a
    run it could not list yet (another server replica took that report, a paused replica
    answers late): such a heartbeat does not fail a RUNNING job."""
    if seen is not None:
        if f.state == JobState.DISPATCHED and seen == JobState.RUNNING:
            return _move(f, JobState.RUNNING, "running (seen in heartbeat)")
        return None
    if f.cancel_requested:
        return _move(f, JobState.CANCELLED, "cancelled before the node started it")
    if f.preempt_requested:
        return preempted(f, "gone from its node")
    if f.state == JobState.RUNNING:
        if listed_after_start_s is not None and \
                listed_after_start_s < LISTED_AFTER_START_MARGIN_S:
            return None  # listed before (or as) it started: the next heartbeat will say
        return _move(f, JobState.NODE_FAIL, f"{node} no longer has the job")
    if waited_s >= resend_after_s:
        return Resend(f.id)
    return None


def run_to_stop(job_id: int, attempt: int, f: Facts | None, *, on_this_node: bool,
                preempt_grace_s: float) -> Kill | None:
    """A run a node reports RUNNING (``f``: its job, None if there is no such job): stop it
    at once if it is not the job's current run on this node, or the job is over or
    cancelled; after the grace period if the job is being preempted."""
    if (f is None or not on_this_node or f.attempt != attempt or f.state in TERMINAL
            or f.cancel_requested):
        return Kill(job_id, attempt)
    if f.preempt_requested:
        return Kill(job_id, attempt, preempt_grace_s)
    return None


def cancelled(f: Facts, *, by: str) -> Change | None:
    """A user (or an admin) cancels the job: a pending one is CANCELLED now; an active one
    has its cancel requested (its node stops it and reports CANCELLED); a job that is over,
    or whose cancel was requested already, is left as it is."""
    if f.state in TERMINAL:
        return None
    if f.state == JobState.PENDING:
        return _move(f, JobState.CANCELLED, cancelled_reason(by))
    return request_cancel(f, f"cancel requested by {by}")


def cancelled_reason(by: str) -> str:
    """The reason of a pending job (or an array's waiting elements) cancelled by ``by``."""
    return f"cancelled by {by}"[:REASON_CHARS]


def request_cancel(f: Facts, reason: str) -> Change | None:
    """Ask the node to stop an active job for good (a cancel, an idle job's cancel)."""
    if f.cancel_requested or f.state not in ACTIVE:
        return None
    return Change(f.id, note(f, reason).steps, cancel_requested=True)


def request_preemption(f: Facts, reason: str) -> Change | None:
    """Ask the node to stop an active job to give its GPUs to another (SIGTERM, the grace
    period, SIGKILL); its end report makes it PREEMPTED. A job that ended, or whose cancel
    or preemption was requested already, is left alone."""
    if f.state not in ACTIVE or f.preempt_requested or f.cancel_requested:
        return None
    return Change(f.id, note(f, f"preemption requested: {reason}").steps,
                  preempt_reason=reason[:REASON_CHARS])
