"""The JobManager with real supervisors and real processes, reporting to the in-memory
fake of the node endpoints through the real NodeClient."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from scheduler.api.schemas import LaunchSpec
from worker import jobdir as jd
from worker.client import NodeClient, ServerUnavailable
from worker.jobenv import daemon_identity, identity_for
from worker.jobs import JobManager

FakeServer = Any


@pytest.fixture
def api(transport: httpx.MockTransport, token: str) -> Iterator[NodeClient]:
    c = NodeClient("http://sched", "n1", token, transport=transport, retries=0)
    yield c
    c.close()


@pytest.fixture
def manager(tmp_path: Path, api: NodeClient) -> JobManager:
    return JobManager(state_dir=tmp_path / "state", node="n1", api=api, kill_grace_s=0.5,
                      identity=lambda user: daemon_identity(), chunk_bytes=64 * 1024)


def launch(server: FakeServer, manager: JobManager, spec: LaunchSpec) -> Path:
    server.specs[spec.job_id] = spec
    assert manager.launch(spec)
    return manager.jobs_dir / str(spec.job_id)


def poll_until_done(manager: JobManager, job_id: int, wait_for: Any) -> Path:
    def done() -> bool:
        manager.poll()
        return (manager.done_dir / str(job_id)).exists()

    wait_for(done, what=f"job {job_id} retired")
    return manager.done_dir / str(job_id)


def test_runs_reports_and_retires_a_job(server: FakeServer, manager: JobManager,
                                        make_spec: Any, wait_for: Any) -> None:
    launch(server, manager, make_spec(command=["/bin/sh", "-c", "echo hello; exit 0"]))
    assert [(j.job_id, j.state) for j in manager.jobs()] == [(1, "RUNNING")]
    done = poll_until_done(manager, 1, wait_for)
    assert server.events == [
        (1, {"state": "RUNNING", "exit_code": None, "reason": ""}),
        (1, {"state": "COMPLETED", "exit_code": 0, "reason": "exit code 0"})]
    assert bytes(server.logs[1]) == b"hello\n"
    assert manager.job_ids() == [] and manager.jobs() == []
    assert (done / jd.REPORTED).read_text() == "COMPLETED"


def test_job_environment(server: FakeServer, manager: JobManager, make_spec: Any,
                         wait_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUQ_NODE_TOKEN", "daemon-s3cret")
    launch(server, manager, make_spec(command=["/usr/bin/env"], gpu_indices=[1, 3],
                                      environment={"MY_VAR": "x"}))
    poll_until_done(manager, 1, wait_for)
    env = dict(line.split("=", 1) for line in server.logs[1].decode().splitlines())
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert (env["GPUQ_JOB_ID"], env["GPUQ_NODE"], env["MY_VAR"]) == ("1", "n1", "x")
    assert "GPUQ_NODE_TOKEN" not in env and "daemon-s3cret" not in env.values()


def test_log_ships_in_bounded_chunks_before_the_final_state(
        server: FakeServer, manager: JobManager, make_spec: Any, wait_for: Any) -> None:
    size = 1_000_000
    launch(server, manager, make_spec(command=[
        sys.executable, "-c", f"import sys; sys.stdout.write('x' * {size})"]))
    poll_until_done(manager, 1, wait_for)
    assert len(server.logs[1]) == size
    assert max(n for _, _, n in server.log_posts) <= 64 * 1024
    assert server.states(1)[-1] == "COMPLETED"


def test_final_state_waits_for_the_log(server: FakeServer, manager: JobManager,
                                       make_spec: Any, wait_for: Any) -> None:
    d = launch(server, manager, make_spec(command=["/bin/sh", "-c", "echo out"]))
    wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == "COMPLETED")
    server.down = True
    with pytest.raises(ServerUnavailable):
        manager.poll()
    assert server.events == []
    server.down, server.fail_logs = False, True
    manager.poll()
    manager.poll()
    assert server.states(1) == ["RUNNING"]
    assert manager.job_ids() == [1]
    server.fail_logs = False
    poll_until_done(manager, 1, wait_for)
    assert server.states(1) == ["RUNNING", "COMPLETED"]
    assert bytes(server.logs[1]) == b"out\n"


def test_log_resent_from_the_servers_size_after_a_409(
        server: FakeServer, manager: JobManager, make_spec: Any, wait_for: Any) -> None:
    d = launch(server, manager, make_spec(command=["/bin/sh", "-c", "echo 0123456789"]))
    wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == "COMPLETED")
    server.logs[1] = bytearray(b"0123")
    (d / jd.SHIPPED).write_text("8")  # we believe more was taken than the server has
    poll_until_done(manager, 1, wait_for)
    assert bytes(server.logs[1]) == b"0123456789\n"
    assert [(o, n) for _, o, n in server.log_posts][:2] == [(8, 3), (4, 7)]


def test_launch_is_idempotent(server: FakeServer, manager: JobManager, make_spec: Any,
                              wait_for: Any, tmp_path: Path) -> None:
    spec = make_spec(command=["/bin/sh", "-c", f"echo run >> {tmp_path}/runs"])
    launch(server, manager, spec)
    assert not manager.launch(spec)
    poll_until_done(manager, 1, wait_for)
    assert not manager.launch(spec), "a job that ran here must not run again"
    assert (tmp_path / "runs").read_text() == "run\n"
    assert server.states(1) == ["RUNNING", "COMPLETED"]


def test_kill_cancels_and_reports(server: FakeServer, manager: JobManager, make_spec: Any,
                                  wait_for: Any) -> None:
    d = launch(server, manager, make_spec(command=["sleep", "30"]))
    wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == "RUNNING")
    assert manager.busy_gpu_indices() == {0, 1}
    assert manager.kill(1)
    poll_until_done(manager, 1, wait_for)
    assert server.events[-1] == (1, {"state": "CANCELLED", "exit_code": 143,
                                     "reason": "cancelled"})
    assert not manager.kill(1) and not manager.kill(42)
    assert manager.busy_gpu_indices() == set()


def test_kill_right_after_launch(server: FakeServer, manager: JobManager, make_spec: Any,
                                 wait_for: Any, tmp_path: Path) -> None:
    launch(server, manager, make_spec(command=["/bin/sh", "-c", f"touch {tmp_path}/ran"]))
    manager.kill(1)
    poll_until_done(manager, 1, wait_for)
    assert server.states(1)[-1] == "CANCELLED"


def test_unassigned_job_is_retired_without_a_report(
        server: FakeServer, manager: JobManager, make_spec: Any, wait_for: Any) -> None:
    d = launch(server, manager, make_spec(command=["true"]))
    wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == "COMPLETED")
    del server.specs[1]  # the scheduler gave the job to another node meanwhile
    poll_until_done(manager, 1, wait_for)
    assert server.events == []


SPAWN_AND_DIE = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from scheduler.api.schemas import LaunchSpec
    from worker.client import NodeClient
    from worker.jobenv import daemon_identity
    from worker.jobs import JobManager
    m = JobManager(state_dir=Path(sys.argv[1]), node="n1", kill_grace_s=1,
                   api=NodeClient("http://127.0.0.1:9", "n1", "t"),
                   identity=lambda user: daemon_identity())
    m.launch(LaunchSpec.model_validate_json(sys.argv[2]))
    os.kill(os.getpid(), 9)  # the daemon dies at once
""")


def test_supervisor_outlives_the_daemon_and_is_readopted(
        server: FakeServer, api: NodeClient, make_spec: Any, wait_for: Any,
        tmp_path: Path) -> None:
    spec = make_spec(job_id=5, command=["/bin/sh", "-c", "sleep 0.5; echo survived"])
    server.specs[5] = spec
    state = tmp_path / "state"
    daemon = subprocess.run([sys.executable, "-c", SPAWN_AND_DIE, str(state),
                             spec.model_dump_json()], timeout=10)
    assert daemon.returncode == -signal.SIGKILL
    d = state / "jobs" / "5"
    s = wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == "COMPLETED" and s)
    assert s["exit_code"] == 0
    again = JobManager(state_dir=state, node="n1", api=api, kill_grace_s=1)
    assert again.job_ids() == [5]
    poll_until_done(again, 5, wait_for)
    assert server.states(5) == ["RUNNING", "COMPLETED"]
    assert bytes(server.logs[5]) == b"survived\n"


def test_readopted_running_job_keeps_running(server: FakeServer, api: NodeClient,
                                             make_spec: Any, wait_for: Any,
                                             tmp_path: Path) -> None:
    first = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5,
                       identity=lambda user: daemon_identity())
    d = launch(server, first, make_spec(command=["sleep", "30"]))
    pid = wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["pid"])
    second = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5)
    second.poll()
    assert [(j.job_id, j.state) for j in second.jobs()] == [(1, "RUNNING")]
    assert server.states(1) == ["RUNNING"]
    os.kill(pid, 0)
    second.kill(1)
    poll_until_done(second, 1, wait_for)
    assert server.states(1) == ["RUNNING", "CANCELLED"]


def test_job_of_a_previous_boot_is_failed(server: FakeServer, manager: JobManager,
                                          make_spec: Any, wait_for: Any) -> None:
    server.specs[3] = make_spec(job_id=3)
    d = manager.jobs_dir / "3"
    d.mkdir()
    jd.write_json_atomic(d / jd.STATE, {"job_id": 3, "state": "RUNNING", "pid": 999999,
                                        "pgid": 999999, "supervisor_pid": 999998,
                                        "boot_id": "another-boot"})
    (d / jd.REPORTED).write_text("RUNNING")
    poll_until_done(manager, 3, wait_for)
    assert server.events == [(3, {"state": "FAILED", "exit_code": None,
                                  "reason": "the node restarted while the job was running"})]


def test_supervisor_that_never_started_fails_the_job(
        server: FakeServer, api: NodeClient, make_spec: Any, wait_for: Any,
        tmp_path: Path) -> None:
    m = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5,
                   identity=lambda user: daemon_identity(), python="/bin/false")
    launch(server, m, make_spec(command=["true"]))
    poll_until_done(m, 1, wait_for)
    [(job, event)] = server.events
    assert event["state"] == "FAILED" and "supervisor exited before" in event["reason"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_root_daemon_runs_the_job_as_the_users_account(
        server: FakeServer, api: NodeClient, make_spec: Any, wait_for: Any,
        tmp_path: Path) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' account")
    m = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5,
                   identity=identity_for)
    launch(server, m, make_spec(user="nobody", script="id -u\necho $USER\n"))
    launch(server, m, make_spec(job_id=2, user="no-such-user-x", command=["true"]))
    poll_until_done(m, 1, wait_for)
    poll_until_done(m, 2, wait_for)
    assert server.logs[1].decode().split() == [str(nobody.pw_uid), "nobody"]
    assert server.states(1) == ["RUNNING", "COMPLETED"]
    [(_, refused)] = [e for e in server.events if e[0] == 2]
    assert refused["state"] == "FAILED" and "no local account" in refused["reason"]


def test_directories(manager: JobManager) -> None:
    assert manager.jobs_dir.is_dir() and manager.done_dir.is_dir()
    assert oct(manager.jobs_dir.parent.stat().st_mode & 0o777) == "0o700"
