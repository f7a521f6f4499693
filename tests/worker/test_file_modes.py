"""The worker's state directory and every file in it are its own (0700 / 0600), whatever
the umask; a state directory left open is made 0700 at start (logged); a job that runs as
another account still writes its output (through the descriptor its supervisor opened)."""

from __future__ import annotations

import logging
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuq.worker import jobdir as jd
from gpuq.worker.client import NodeClient
from gpuq.worker.jobenv import daemon_identity
from gpuq.worker.jobs import JobManager
from tests.worker.conftest import FakeServer
from tests.worker.test_job_manager import (  # noqa: F401 - fixtures
    api,
    as_root_daemon,
    final_state,
    launch,
    poll_until_done,
    shared_dir,
    unix_user,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    """The usual umask (022): what is private must not owe it to the umask."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def open_to_others(root: Path) -> list[str]:
    return [f"{p} {mode(p):o}" for p in [root, *root.rglob("*")]
            if not p.is_symlink() and mode(p) & 0o077]


def test_state_directory_and_run_files_are_private(
        server: FakeServer, api: NodeClient, make_spec: Any, wait_for: Any,  # noqa: F811
        tmp_path: Path) -> None:
    state = tmp_path / "worker" / "n1"
    m = JobManager(state_dir=state, node="n1", api=api, kill_grace_s=0.5,
                   identity=lambda user: daemon_identity())
    assert mode(tmp_path / "worker") == 0o700 and mode(state) == 0o700
    launch(server, m, make_spec(command=["/bin/sh", "-c", "echo hello"]))
    launch(server, m, make_spec(job_id=2, command=["/nonexistent/secret-tool"]))
    launch(server, m, make_spec(job_id=3, script="#!/bin/sh\necho from a script\nsleep 30\n"))
    wait_for(lambda: (s := jd.read_json(m.jobs_dir / "3.1" / jd.STATE)) and s.get("pid"),
             what="job 3 started")
    assert m.kill(3, 1)  # a cancel file
    for job_id in (1, 2, 3):
        poll_until_done(m, job_id, wait_for)
    assert server.log(1) == b"hello\n"
    assert server.states(2)[-1] == "FAILED"
    done = m.done_dir / "1.1"
    assert mode(done / jd.LOG) == 0o600 and mode(done / jd.STATE) == 0o600
    assert mode(done / jd.SUPERVISOR_LOG) == 0o600
    assert (m.done_dir / "3.1" / jd.CANCEL).exists()
    assert open_to_others(state) == []


def test_an_open_state_directory_is_made_private_at_start(
        api: NodeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    state = tmp_path / "state"
    (state / "jobs").mkdir(parents=True)
    state.chmod(0o755)
    (state / "jobs").chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="gpuq.files"):
        m = JobManager(state_dir=state, node="n1", api=api, kill_grace_s=0.5,
                       identity=lambda user: daemon_identity())
    assert mode(state) == 0o700 and mode(m.jobs_dir) == 0o700 and mode(m.done_dir) == 0o700
    assert f"{state} was open to other users (mode 0755); made it 0700" in caplog.text


def test_a_job_of_another_account_writes_to_its_private_log(
        server: FakeServer, api: NodeClient, make_spec: Any, wait_for: Any,  # noqa: F811
        tmp_path: Path, unix_user: pwd.struct_passwd, shared_dir: Path) -> None:  # noqa: F811
    m = as_root_daemon(tmp_path, api)
    d = launch(server, m, make_spec(
        job_id=5, user="alice", unix_user=unix_user.pw_name, workdir=str(shared_dir),
        script="id -u\necho to stderr >&2\n"))
    s = final_state(d, wait_for)
    assert s["state"] == "COMPLETED", (d / jd.LOG).read_text()
    assert mode(d / jd.LOG) == 0o600 and (d / jd.LOG).stat().st_uid == 0
    done = poll_until_done(m, 5, wait_for)
    assert server.log(5).decode().split() == [str(unix_user.pw_uid), "to", "stderr"]
    assert open_to_others(tmp_path / "s") == []
    assert done.is_dir()
