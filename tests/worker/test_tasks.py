"""Launch and kill handlers: they re-read the job from the API and are safe to repeat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery

from worker import jobdir as jd
from worker.client import NodeClient
from worker.jobenv import daemon_identity
from worker.jobs import JobManager
from worker.tasks import Handlers, register_tasks


@pytest.fixture
def handlers(tmp_path: Path, transport: httpx.MockTransport, token: str) -> Iterator[Handlers]:
    api = NodeClient("http://sched", "n1", token, transport=transport, retries=0)
    m = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.3,
                   identity=lambda user: daemon_identity())
    yield Handlers(api, m)
    api.close()


def test_launches_a_dispatched_job_once(server: Any, handlers: Handlers,
                                        make_spec: Any) -> None:
    server.specs[1] = make_spec(command=["sleep", "5"])
    assert handlers.launch(1) == "launched"
    assert handlers.launch(1) == "ignored: already here"
    assert handlers.manager.job_ids() == [1]
    handlers.manager.kill(1)


@pytest.mark.parametrize("fields, outcome", [
    ({"state": "PENDING"}, "ignored: the job is PENDING"),
    ({"state": "RUNNING"}, "ignored: the job is RUNNING"),
    ({"state": "CANCELLED"}, "ignored: the job is CANCELLED"),
    ({"cancel_requested": True}, "ignored: cancel requested"),
])
def test_does_not_launch_what_the_scheduler_no_longer_wants(
        server: Any, handlers: Handlers, make_spec: Any, fields: dict[str, Any],
        outcome: str) -> None:
    server.specs[1] = make_spec(**fields)
    assert handlers.launch(1) == outcome
    assert handlers.manager.job_ids() == []


def test_launch_of_a_job_not_assigned_here(handlers: Handlers) -> None:
    assert handlers.launch(9) == "ignored: not assigned to this node"


def test_kill_only_when_the_scheduler_no_longer_wants_the_job(
        server: Any, handlers: Handlers, make_spec: Any, wait_for: Any) -> None:
    server.specs[1] = make_spec(command=["sleep", "30"])
    handlers.launch(1)
    d = handlers.manager.jobs_dir / "1"
    wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == "RUNNING")
    server.specs[1] = make_spec(command=["sleep", "30"], state="RUNNING")
    assert handlers.kill(1) == "ignored: the job is RUNNING and not cancelled"
    server.specs[1] = make_spec(command=["sleep", "30"], state="RUNNING", cancel_requested=True)
    assert handlers.kill(1) == "killing"
    wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == "CANCELLED")
    assert handlers.kill(1) == "ignored: not running here"


def test_kill_of_a_job_the_scheduler_does_not_know(
        server: Any, handlers: Handlers, make_spec: Any, wait_for: Any) -> None:
    server.specs[1] = make_spec(command=["sleep", "30"])
    handlers.launch(1)
    del server.specs[1]
    assert handlers.kill(1) == "killing"
    d = handlers.manager.jobs_dir / "1"
    wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == "CANCELLED")


def test_tasks_are_registered_by_name(handlers: Handlers, server: Any, make_spec: Any) -> None:
    app = Celery("gpuq", set_as_current=False)
    register_tasks(app, handlers)
    assert {"gpuq.launch", "gpuq.kill"} <= set(app.tasks)
    server.specs[1] = make_spec(state="COMPLETED")
    assert app.tasks["gpuq.launch"](1) == "ignored: the job is COMPLETED"
