"""What other users see of a job's reason and events: never the node's own words about
how its run ended (they may quote the command, workdir or environment, which only the
owner and admins see); the scheduler's reasons as they are (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import Api

SECRET = "/opt/secret-tool"
START_FAILED = f"cannot start program {SECRET}: No such file or directory"


@pytest.fixture
def users(api: Api) -> tuple[dict[str, str], dict[str, str]]:
    api.node("gpu01", gpus=4)
    return api.user("alice", "lab1"), api.user("bob", "lab1")


def _node(api: Api) -> dict[str, str]:
    tok = api.ok("POST", "/v1/admin/tokens", api.admin, 201,
                 json={"role": "node", "node": "gpu01"})
    return {"Authorization": f"Bearer {tok['token']}"}


def _ended(api: Api, owner: dict[str, str], state: str, reason: str,
           exit_code: int | None = None, **spec: Any) -> int:
    """A job of ``owner`` that its node reports ended as ``state`` with ``reason``."""
    job = api.submit(owner, name="train", command=[SECRET, "--fast"],
                     workdir="/home/bob/private", **spec)
    api.cycle()
    node = _node(api)
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job['id']}/events", node,
           json={"state": "RUNNING", "reason": f"started {SECRET}"})
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job['id']}/events", node,
           json={"state": state, "reason": reason, "exit_code": exit_code})
    return int(job["id"])


def _everything(api: Api, who: dict[str, str], job_id: int) -> str:
    """Every answer that shows the job's reason or events, as one text."""
    answers = [api.ok("GET", f"/v1/jobs/{job_id}", who),
               api.ok("GET", "/v1/jobs", who),
               api.ok("GET", "/v1/jobs?view=brief", who),
               api.ok("GET", f"/v1/jobs/{job_id}/why", who)]
    return json.dumps(answers)


def test_another_user_sees_no_path_from_a_failed_start(api: Api, users: Any) -> None:
    alice, bob = users
    job_id = _ended(api, bob, "FAILED", START_FAILED, exit_code=127)

    seen = api.ok("GET", f"/v1/jobs/{job_id}", alice)
    assert seen["state"] == "FAILED" and seen["reason"] == "start failed"
    assert seen["exit_code"] == 127
    assert [e["reason"] for e in seen["events"]][-2:] == ["started", "start failed"]
    assert api.ok("GET", f"/v1/jobs/{job_id}/why", alice)["reason"] == "start failed"
    (brief,) = api.ok("GET", "/v1/jobs?view=brief", alice)
    assert brief["reason"] == "start failed"
    assert SECRET not in _everything(api, alice, job_id)
    assert "/home/bob" not in _everything(api, alice, job_id)

    # The owner and admins see the node's words (a full listing, the job, why).
    for who in (bob, api.admin):
        shown = api.ok("GET", f"/v1/jobs/{job_id}", who)
        assert shown["reason"] == START_FAILED
        assert shown["events"][-1]["reason"] == START_FAILED
        assert api.ok("GET", "/v1/jobs", who)[0]["reason"] == START_FAILED
        assert api.ok("GET", f"/v1/jobs/{job_id}/why", who)["reason"] == START_FAILED
    # A RUNNING report's reason is "started", whatever the node says.
    events = api.ok("GET", f"/v1/jobs/{job_id}", bob)["events"]
    assert [e["reason"] for e in events if e["new_state"] == "RUNNING"] == ["started"]


@pytest.mark.parametrize(("state", "reason", "shown"), [
    ("FAILED", f"user bob has no account on this node ({SECRET})", "failed"),
    ("FAILED", "the job's supervisor exited before starting it (see /var/lib/gpuq/x)",
     "failed"),
    ("CANCELLED", f"cancelled while {SECRET} ran", "cancelled"),
    ("TIMEOUT", f"{SECRET} ran out of time", "time limit reached"),
    ("COMPLETED", f"{SECRET} done", "completed"),
])
def test_the_nodes_own_words_are_a_category_to_others(api: Api, users: Any, state: str,
                                                      reason: str, shown: str) -> None:
    alice, bob = users
    job_id = _ended(api, bob, state, reason, exit_code=1)
    assert api.ok("GET", f"/v1/jobs/{job_id}", alice)["reason"] == shown
    assert SECRET not in _everything(api, alice, job_id)
    assert "/var/lib" not in _everything(api, alice, job_id)
    assert api.ok("GET", f"/v1/jobs/{job_id}", bob)["reason"] == reason


@pytest.mark.parametrize(("state", "reason", "code"), [
    ("FAILED", "exit code 3", 3),
    ("FAILED", "killed by SIGKILL", 137),
    ("TIMEOUT", "time limit of 60 s reached", None),
    ("CANCELLED", "cancelled", 143),
    ("COMPLETED", "exit code 0", 0),
])
def test_fixed_words_of_an_end_are_shown_to_everyone(api: Api, users: Any, state: str,
                                                     reason: str, code: int | None) -> None:
    alice, bob = users
    job_id = _ended(api, bob, state, reason, exit_code=code)
    seen = api.ok("GET", f"/v1/jobs/{job_id}", alice)
    assert seen["reason"] == reason and seen["events"][-1]["reason"] == reason


def test_the_schedulers_reasons_are_shown_to_everyone(api: Api, users: Any) -> None:
    alice, bob = users
    running = api.submit(bob, gpus=4)["id"]
    waiting = api.submit(bob, gpus=4)["id"]
    cancelled = api.submit(bob, gpus=1)["id"]
    api.ok("POST", f"/v1/jobs/{cancelled}/cancel", bob)
    api.cycle()
    assert api.ok("GET", f"/v1/jobs/{waiting}", alice)["reason"].startswith("Resources")
    assert api.ok("GET", f"/v1/jobs/{cancelled}", alice)["reason"] == "cancelled by bob"
    events = api.ok("GET", f"/v1/jobs/{running}", alice)["events"]
    assert "gpu01" in events[-1]["reason"]  # dispatched to gpu01 GPUs [...]
    api.ok("POST", f"/v1/jobs/{running}/cancel", bob)
    notes = api.ok("GET", f"/v1/jobs/{running}", alice)["events"]
    assert notes[-1]["reason"] == "cancel requested by bob"
