"""What the worker does for a launch or kill message (Celery task or heartbeat reply).

Messages carry only a job id and can be late, lost or repeated, so each handler re-reads
the job from the API (``LaunchSpec``, which says the job's current attempt) and acts only
on what it says now; running one twice does no harm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery

from gpuq.broker import KILL, LAUNCH
from gpuq.wire.states import ACTIVE, JobState
from gpuq.worker.client import NodeClient, ServerUnavailable
from gpuq.worker.jobdir import RunKey
from gpuq.worker.jobs import JobManager

log = logging.getLogger(__name__)
#: How long a launch waits for its job to start before ``on_started`` (a few ms usually).
STARTED_WAIT_S = 1.0


def _attempts(attempts: list[int]) -> str:
    return ("attempt " if len(attempts) == 1 else "attempts ") + ", ".join(map(str, attempts))


class Handlers:
    def __init__(self, api: NodeClient, manager: JobManager,
                 on_started: Callable[[], None] | None = None) -> None:
        """``on_started``: called once a launched job has started (or failed to), so that
        its start is reported now, not at the next poll."""
        self.api, self.manager, self.on_started = api, manager, on_started

    def launch(self, job_id: int) -> str:
        """Launch the job's current attempt if it is DISPATCHED to this node and nobody
        cancelled it (killing any other attempt of it still running here first)."""
        spec = self.api.launch_spec(job_id)
        if spec is None:
            outcome = "ignored: not assigned to this node"
        elif spec.state != JobState.DISPATCHED:
            outcome = f"ignored: the job is {spec.state}"
        elif spec.cancel_requested:
            outcome = "ignored: cancel requested"
        elif spec.preempt_requested:
            outcome = "ignored: being preempted"
        elif self.manager.launch(spec):
            outcome = f"launched attempt {spec.attempt}"
            if self.on_started is not None and self.manager.wait_started(
                    RunKey(job_id, spec.attempt), STARTED_WAIT_S):
                self.on_started()
        else:
            outcome = f"ignored: attempt {spec.attempt} is already here"
        log.info("launch %s: %s", job_id, outcome)
        return outcome

    def kill(self, job_id: int) -> str:
        """Kill the job's runs here that the scheduler no longer wants: every attempt but
        the current one, and the current one too when the job was cancelled, is not
        active (ended, or back in the queue) or is not this node's (404)."""
        spec = self.api.launch_spec(job_id)
        here = self.manager.live_attempts(job_id)
        if (spec is None or spec.cancel_requested or spec.preempt_requested
                or spec.state not in ACTIVE):
            victims = here
        else:
            victims = [a for a in here if a != spec.attempt]
        # A preemption's grace period applies to the current run (time to checkpoint).
        grace = spec.kill_grace_s if spec is not None and spec.preempt_requested else None
        if victims:
            killed = [a for a in victims
                      if self.manager.kill(job_id, a, grace if spec is not None
                                           and a == spec.attempt else None)]
            outcome = f"killing {_attempts(killed)}" if killed else "ignored: not running here"
        elif not here:
            outcome = "ignored: not running here"
        else:
            assert spec is not None
            outcome = f"ignored: the job is {spec.state} and not cancelled"
        log.info("kill %s: %s", job_id, outcome)
        return outcome


def register_tasks(app: Celery, handlers: Handlers) -> None:
    """Register ``gpuq.launch`` and ``gpuq.kill`` on ``app``, calling into ``handlers``."""
    retry = {"autoretry_for": (ServerUnavailable,), "retry_backoff": 2, "retry_backoff_max": 60,
             "max_retries": 5, "ignore_result": True}

    @app.task(name=LAUNCH, **retry)
    def launch(job_id: int) -> str:
        return handlers.launch(int(job_id))

    @app.task(name=KILL, **retry)
    def kill(job_id: int) -> str:
        return handlers.kill(int(job_id))
