"""What the worker does for a launch or kill message (Celery task or heartbeat reply).

Messages carry only a job id and can be late, lost or repeated, so each handler re-reads
the job from the API and acts only on what it says now; running one twice does no harm.
"""

from __future__ import annotations

import logging

from celery import Celery

from scheduler.dispatch import KILL, LAUNCH
from worker.client import NodeClient, ServerUnavailable
from worker.jobs import JobManager

log = logging.getLogger(__name__)
#: Job states after which nothing of the job should run (the scheduler's TERMINAL).
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"})


class Handlers:
    def __init__(self, api: NodeClient, manager: JobManager) -> None:
        self.api, self.manager = api, manager

    def launch(self, job_id: int) -> str:
        """Launch the job if it is DISPATCHED to this node and nobody cancelled it."""
        spec = self.api.launch_spec(job_id)
        if spec is None:
            outcome = "ignored: not assigned to this node"
        elif spec.state != "DISPATCHED":
            outcome = f"ignored: the job is {spec.state}"
        elif spec.cancel_requested:
            outcome = "ignored: cancel requested"
        elif self.manager.launch(spec):
            outcome = "launched"
        else:
            outcome = "ignored: already here"
        log.info("launch %s: %s", job_id, outcome)
        return outcome

    def kill(self, job_id: int) -> str:
        """Kill the job if the scheduler no longer wants it (cancelled, ended, not ours)."""
        spec = self.api.launch_spec(job_id)
        if spec is not None and not spec.cancel_requested and spec.state not in TERMINAL:
            outcome = f"ignored: the job is {spec.state} and not cancelled"
        elif self.manager.kill(job_id):
            outcome = "killing"
        else:
            outcome = "ignored: not running here"
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
