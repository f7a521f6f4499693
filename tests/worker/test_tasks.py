"""Launch and kill handlers: they re-read the job from the API and are safe to repeat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery

from gpuq.worker import jobdir as jd
from gpuq.worker.client import NodeClient
from gpuq.worker.jobdir import RunKey
from gpuq.worker.jobenv import daemon_identity
from gpuq.worker.jobs import JobManager
from gpuq.worker.tasks import Handlers, register_tasks


@pytest.fixture
def handlers(tmp_path: Path, transport: httpx.MockTransport, token: str) -> Iterator[Handlers]:
    api = NodeClient("http://sched", "n1", token, transport=transport, retries=0)
    m = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.3,
                   identity=lambda user: daemon_identity())
    yield Handlers(api, m)
    for key in m.runs():
        m.kill(*key)
    api.close()


def run_state(handlers: Handlers, job_id: int, attempt: int, wait_for: Any,
              state: str) -> None:
    d = handlers.manager.jobs_dir / f"{job_id}.{attempt}"
    wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == state,
             what=f"{job_id}.{attempt} {state}")


def test_launches_a_dispatched_job_once(server: Any, handlers: Handlers,
                                        make_spec: Any) -> None:
    server.specs[1] = make_spec(command=["sleep", "5"])
    assert handlers.launch(1) == "launched attempt 1"
    assert handlers.launch(1) == "ignored: attempt 1 is already here"
    assert list(handlers.manager.runs()) == [(1, 1)]


@pytest.mark.parametrize("fields, outcome", [
    ({"state": "PENDING"}, "ignored: the job is PENDING"),
    ({"state": "RUNNING"}, "ignored: the job is RUNNING"),
    ({"state": "CANCELLED"}, "ignored: the job is CANCELLED"),
    ({"cancel_requested": True}, "ignored: cancel requested"),
    ({"preempt_requested": True, "kill_grace_s": 30.0}, "ignored: being preempted"),
])
def test_does_not_launch_what_the_scheduler_no_longer_wants(
        server: Any, handlers: Handlers, make_spec: Any, fields: dict[str, Any],
        outcome: str) -> None:
    server.specs[1] = make_spec(**fields)
    assert handlers.launch(1) == outcome
    assert handlers.manager.job_ids() == []


def test_launch_of_a_job_not_assigned_here(handlers: Handlers) -> None:
    assert handlers.launch(9) == "ignored: not assigned to this node"


def test_launch_of_a_newer_attempt_kills_the_older_one(
        server: Any, handlers: Handlers, make_spec: Any, wait_for: Any) -> None:
    server.specs[1] = make_spec(command=["sleep", "30"])
    handlers.launch(1)
    run_state(handlers, 1, 1, wait_for, "RUNNING")
    server.specs[1] = make_spec(attempt=2, command=["sleep", "30"])
    assert handlers.launch(1) == "launched attempt 2"
    old = jd.read_json(handlers.manager.jobs_dir / "1.1" / jd.STATE)
    assert old is not None and old["state"] == "CANCELLED"
    assert handlers.manager.live_attempts(1) == [2]


def test_kill_only_when_the_scheduler_no_longer_wants_the_job(
        server: Any, handlers: Handlers, make_spec: Any, wait_for: Any) -> None:
    server.specs[1] = make_spec(command=["sleep", "30"])
    handlers.launch(1)
    run_state(handlers, 1, 1, wait_for, "RUNNING")
    server.specs[1] = make_spec(command=["sleep", "30"], state="RUNNING")
    assert handlers.kill(1) == "ignored: the job is RUNNING and not cancelled"
    server.specs[1] = make_spec(command=["sleep", "30"], state="RUNNING", cancel_requested=True)
    assert handlers.kill(1) == "killing attempt 1"
    run_state(handlers, 1, 1, wait_for, "CANCELLED")
    assert handlers.kill(1) == "ignored: not running here"


@pytest.mark.parametrize("fields", [
    {"state": "COMPLETED"}, {"state": "NODE_FAIL"},
    {"state": "PENDING"},  # requeued: it will run again as its next attempt, not this one
])
def test_kill_the_current_attempt_when_the_job_is_no_longer_active(
        server: Any, handlers: Handlers, make_spec: Any, wait_for: Any,
        fields: dict[str, Any]) -> None:
    server.specs[1] = make_spec(command=["sleep", "30"])
    handlers.launch(1)
    server.specs[1] = make_spec(command=["sleep", "30"], **fields)
    assert handlers.kill(1) == "killing attempt 1"
    run_state(handlers, 1, 1, wait_for, "CANCELLED")


def test_kill_of_a_job_the_scheduler_does_not_know(
        server: Any, handlers: Handlers, make_spec: Any, wait_for: Any) -> None:
    server.specs[1] = make_spec(command=["sleep", "30"])
    handlers.launch(1)
    del server.specs[1]
    assert handlers.kill(1) == "killing attempt 1"
    run_state(handlers, 1, 1, wait_for, "CANCELLED")


def test_kill_spares_the_current_attempt_and_kills_the_others(
        server: Any, handlers: Handlers, make_spec: Any, wait_for: Any,
        tmp_path: Path) -> None:
    """Two attempts here at once (say a daemon restarted between them): the kill task
    keeps the one the scheduler runs now."""
    m = handlers.manager
    server.specs[1] = make_spec(command=["sleep", "30"])
    handlers.launch(1)
    # Attempt 2 as another daemon instance would have started it, without killing 1.
    other = JobManager(state_dir=tmp_path / "s", node="n1", api=handlers.api,
                       kill_grace_s=0.3, identity=lambda user: daemon_identity())
    other.live_attempts = lambda job_id: []  # type: ignore[method-assign]
    server.specs[1] = make_spec(attempt=2, command=["sleep", "30"], state="RUNNING")
    assert other.launch(server.specs[1])
    run_state(handlers, 1, 1, wait_for, "RUNNING")
    run_state(handlers, 1, 2, wait_for, "RUNNING")
    assert m.live_attempts(1) == [1, 2]
    assert handlers.kill(1) == "killing attempt 1"
    run_state(handlers, 1, 1, wait_for, "CANCELLED")
    assert m.live_attempts(1) == [2]
    assert handlers.kill(1) == "ignored: the job is RUNNING and not cancelled"


def test_tasks_are_registered_by_name(handlers: Handlers, server: Any, make_spec: Any) -> None:
    app = Celery("gpuq", set_as_current=False)
    register_tasks(app, handlers)
    assert {"gpuq.launch", "gpuq.kill"} <= set(app.tasks)
    server.specs[1] = make_spec(state="COMPLETED")
    assert app.tasks["gpuq.launch"](1) == "ignored: the job is COMPLETED"


def test_a_preemption_kill_passes_the_schedulers_grace_period(
        server: Any, handlers: Handlers, make_spec: Any, wait_for: Any) -> None:
    server.specs[1] = make_spec(command=["sleep", "30"])
    handlers.launch(1)
    run_state(handlers, 1, 1, wait_for, "RUNNING")
    server.specs[1] = make_spec(state="RUNNING", command=["sleep", "30"],
                                preempt_requested=True, kill_grace_s=42.0)
    assert handlers.kill(1) == "killing attempt 1"
    run = handlers.manager.runs()[(1, 1)]
    assert (run / jd.CANCEL).read_text() == "42.0\n"  # what the supervisor waits
    run_state(handlers, 1, 1, wait_for, "CANCELLED")


def test_a_launch_says_when_its_job_has_started(server: Any, handlers: Handlers,
                                                make_spec: Any) -> None:
    """The daemon's poll thread reports RUNNING when told, not at its next pass."""
    started: list[bool] = []
    handlers.on_started = lambda: started.append(
        (handlers.manager.jobs_dir / "1.1" / jd.STATE).exists())
    server.specs[1] = make_spec(command=["sleep", "5"])
    assert handlers.launch(1) == "launched attempt 1"
    assert started == [True]  # called once, after the supervisor wrote its first state
    state = jd.read_json(handlers.manager.jobs_dir / "1.1" / jd.STATE)
    assert state is not None and state["state"] == "RUNNING" and state["pid"] > 0
    assert handlers.launch(1) == "ignored: attempt 1 is already here"
    assert started == [True]


def test_waiting_for_a_run_that_is_not_here_returns_at_once(handlers: Handlers) -> None:
    import time

    t0 = time.monotonic()
    assert handlers.manager.wait_started(RunKey(7, 1), 5.0) is False
    assert time.monotonic() - t0 < 1.0
