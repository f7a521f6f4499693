"""The job and node states: the one list of them that every part of gpuq reads.

    PENDING ──▶ DISPATCHED ──▶ RUNNING ──▶ COMPLETED | FAILED | CANCELLED | TIMEOUT
       │             │            │         OUT_OF_MEMORY | NODE_FAIL | PREEMPTED
       └─────────────┴────────────┴──▶ CANCELLED | FAILED | NODE_FAIL | PREEMPTED (not PENDING)

    NODE_FAIL | PREEMPTED ──▶ REQUEUED ──▶ PENDING     (a job that allows it: ``requeue``)

The rules that move a job between them live in ``gpuq.scheduler.lifecycle.rules``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args


class JobState(StrEnum):
    PENDING = "PENDING"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    #: The kernel's OOM killer killed a process of the job in its cgroup, which hit the
    #: job's memory limit (``--mem``). Slurm's name for it (``OOM`` in squeue).
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    #: Stopped to give its GPUs to another job (a grant reclaiming them, or a higher QOS).
    PREEMPTED = "PREEMPTED"
    #: On its way back to the queue after NODE_FAIL or PREEMPTED (never stays here).
    REQUEUED = "REQUEUED"


class NodeState(StrEnum):
    UNKNOWN = "UNKNOWN"
    UP = "UP"
    DOWN = "DOWN"
    DRAIN = "DRAIN"


#: Holding GPUs on a node.
ACTIVE = frozenset({JobState.DISPATCHED, JobState.RUNNING})
#: Over for good (until a requeue starts a new attempt).
TERMINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
    }
)
#: Ends after which a job that allows it goes back to the queue.
REQUEUEABLE = frozenset({JobState.NODE_FAIL, JobState.PREEMPTED})

#: The states a worker reports of a run it has (the heartbeat's and the state report's
#: ``state``): started, or how it ended on the node (NODE_FAIL: the node stopped it
#: itself, cut off from the scheduler for the fencing time: ``FenceTerms``).
ReportedState = Literal["RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                        "OUT_OF_MEMORY", "NODE_FAIL"]
REPORTED: frozenset[JobState] = frozenset(JobState(s) for s in get_args(ReportedState))
#: The ends a worker can see (a run's final state on the node).
RUN_ENDS: frozenset[JobState] = REPORTED - {JobState.RUNNING}
