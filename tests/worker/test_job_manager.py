"""The JobManager with real supervisors and real processes, reporting to the in-memory
fake of the node endpoints through the real NodeClient."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuq.wire.nodes import LaunchSpec
from gpuq.worker import jobdir as jd
from gpuq.worker.client import NodeClient, ServerUnavailable
from gpuq.worker.gpus.base import GpuSample
from gpuq.worker.gpus.sim import IDLE_POWER_W, SimulatedBackend, write_faults
from gpuq.worker.jobdir import RunKey
from gpuq.worker.jobenv import daemon_identity, identity_for, identity_policy
from gpuq.worker.jobs import JobManager
from gpuq.worker.procs import JobProcesses

FakeServer = Any


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


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
    return manager.jobs_dir / f"{spec.job_id}.{spec.attempt}"


def poll_until_done(manager: JobManager, job_id: int, wait_for: Any, attempt: int = 1,
                    name: str | None = None) -> Path:
    done_dir = manager.done_dir / (name or f"{job_id}.{attempt}")

    def done() -> bool:
        manager.poll()
        return done_dir.exists()

    wait_for(done, what=f"job {job_id}.{attempt} retired")
    return done_dir


def final_state(d: Path, wait_for: Any) -> dict[str, Any]:
    return wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] in jd.FINAL and s,
                    what=f"{d.name} ended")


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_runs_reports_and_retires_a_job(server: FakeServer, manager: JobManager,
                                        make_spec: Any, wait_for: Any) -> None:
    launch(server, manager, make_spec(command=["/bin/sh", "-c", "echo hello; exit 0"]))
    assert [(j.job_id, j.attempt, j.state) for j in manager.jobs()] == [(1, 1, "RUNNING")]
    done = poll_until_done(manager, 1, wait_for)
    assert server.events == [
        (1, {"attempt": 1, "state": "RUNNING", "exit_code": None, "reason": ""}),
        (1, {"attempt": 1, "state": "COMPLETED", "exit_code": 0, "reason": "exit code 0"})]
    assert server.log(1) == b"hello\n"
    assert manager.job_ids() == [] and manager.jobs() == []
    assert (done / jd.REPORTED).read_text() == "COMPLETED"


def test_job_environment(server: FakeServer, manager: JobManager, make_spec: Any,
                         wait_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUQ_NODE_TOKEN", "daemon-s3cret")
    launch(server, manager, make_spec(command=["/usr/bin/env"], gpu_indices=[1, 3],
                                      environment={"MY_VAR": "x"}))
    poll_until_done(manager, 1, wait_for)
    env = dict(line.split("=", 1) for line in server.log(1).decode().splitlines())
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert (env["GPUQ_JOB_ID"], env["GPUQ_NODE"], env["MY_VAR"]) == ("1", "n1", "x")
    assert "GPUQ_NODE_TOKEN" not in env and "daemon-s3cret" not in env.values()


def test_log_ships_in_bounded_chunks_before_the_final_state(
        server: FakeServer, manager: JobManager, make_spec: Any, wait_for: Any) -> None:
    size = 1_000_000
    launch(server, manager, make_spec(command=[
        sys.executable, "-c", f"import sys; sys.stdout.write('x' * {size})"]))
    poll_until_done(manager, 1, wait_for)
    assert len(server.log(1)) == size
    assert max(n for _, _, _, n in server.log_posts) <= 64 * 1024
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
    assert server.log(1) == b"out\n"


def test_log_resent_from_the_servers_size_after_a_409(
        server: FakeServer, manager: JobManager, make_spec: Any, wait_for: Any) -> None:
    d = launch(server, manager, make_spec(command=["/bin/sh", "-c", "echo 0123456789"]))
    wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == "COMPLETED")
    server.logs[1, 1] = bytearray(b"0123")
    (d / jd.SHIPPED).write_text("8")  # we believe more was taken than the server has
    poll_until_done(manager, 1, wait_for)
    assert server.log(1) == b"0123456789\n"
    assert [(o, n) for _, _, o, n in server.log_posts][:2] == [(8, 3), (4, 7)]


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
    assert not manager.kill(1, 2), "only the run named is killed"
    assert manager.kill(1, 1)
    poll_until_done(manager, 1, wait_for)
    assert server.events[-1] == (1, {"attempt": 1, "state": "CANCELLED", "exit_code": 143,
                                     "reason": "cancelled"})
    assert not manager.kill(1, 1) and not manager.kill(42, 1)
    assert manager.busy_gpu_indices() == set()


def test_kill_right_after_launch(server: FakeServer, manager: JobManager, make_spec: Any,
                                 wait_for: Any, tmp_path: Path) -> None:
    launch(server, manager, make_spec(command=["/bin/sh", "-c", f"touch {tmp_path}/ran"]))
    manager.kill(1, 1)
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
    from gpuq.wire.nodes import LaunchSpec
    from gpuq.worker.client import NodeClient
    from gpuq.worker.jobenv import daemon_identity
    from gpuq.worker.jobs import JobManager
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
    d = state / "jobs" / "5.1"
    s = wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == "COMPLETED" and s)
    assert (s["exit_code"], s["attempt"]) == (0, 1)
    again = JobManager(state_dir=state, node="n1", api=api, kill_grace_s=1)
    assert list(again.runs()) == [(5, 1)]
    poll_until_done(again, 5, wait_for)
    assert server.states(5) == ["RUNNING", "COMPLETED"]
    assert server.log(5) == b"survived\n"


def test_readopted_running_job_keeps_running(server: FakeServer, api: NodeClient,
                                             make_spec: Any, wait_for: Any,
                                             tmp_path: Path) -> None:
    first = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5,
                       identity=lambda user: daemon_identity())
    d = launch(server, first, make_spec(command=["sleep", "30"]))
    pid = wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["pid"])
    second = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5)
    second.poll()
    assert [(j.job_id, j.attempt, j.state) for j in second.jobs()] == [(1, 1, "RUNNING")]
    assert server.states(1) == ["RUNNING"]
    os.kill(pid, 0)
    second.kill(1, 1)
    poll_until_done(second, 1, wait_for)
    assert server.states(1) == ["RUNNING", "CANCELLED"]


def test_job_of_a_previous_boot_is_failed(server: FakeServer, manager: JobManager,
                                          make_spec: Any, wait_for: Any) -> None:
    server.specs[3] = make_spec(job_id=3, attempt=2)
    d = manager.jobs_dir / "3.2"
    d.mkdir()
    jd.write_json_atomic(d / jd.STATE, {"job_id": 3, "attempt": 2, "state": "RUNNING",
                                        "pid": 999999, "pgid": 999999,
                                        "supervisor_pid": 999998, "boot_id": "another-boot"})
    (d / jd.REPORTED).write_text("RUNNING")
    poll_until_done(manager, 3, wait_for, attempt=2)
    assert server.events == [(3, {"attempt": 2, "state": "FAILED", "exit_code": None,
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
    launch(server, m, make_spec(user="alice", unix_user="nobody", script="id -u\necho $USER\n"))
    launch(server, m, make_spec(job_id=2, unix_user="no-such-user-x", command=["true"]))
    poll_until_done(m, 1, wait_for)
    poll_until_done(m, 2, wait_for)
    assert server.log(1).decode().split() == [str(nobody.pw_uid), "nobody"]
    assert server.states(1) == ["RUNNING", "COMPLETED"]
    [(_, refused)] = [e for e in server.events if e[0] == 2]
    assert refused["state"] == "FAILED" and "no local account" in refused["reason"]


def test_directories(manager: JobManager) -> None:
    assert manager.jobs_dir.is_dir() and manager.done_dir.is_dir()
    assert oct(manager.jobs_dir.parent.stat().st_mode & 0o777) == "0o700"


# --- attempts ---------------------------------------------------------------------------


def test_a_newer_attempt_kills_the_older_one_first(
        server: FakeServer, manager: JobManager, make_spec: Any, wait_for: Any) -> None:
    old = launch(server, manager, make_spec(command=["sleep", "30"]))
    wait_for(lambda: (s := jd.read_json(old / jd.STATE)) and s["pid"], what="attempt 1 runs")
    new = launch(server, manager, make_spec(attempt=2, command=["/bin/sh", "-c", "echo two"]))
    # launch() returned only once attempt 1 had ended: never both at once
    old_state = jd.read_json(old / jd.STATE)
    assert old_state is not None and old_state["state"] == "CANCELLED"
    assert final_state(new, wait_for)["state"] == "COMPLETED"
    assert sorted(manager.runs()) == [(1, 1), (1, 2)]
    assert not manager.launch(make_spec(attempt=2)), "the same run is launched once"
    poll_until_done(manager, 1, wait_for, attempt=1)
    poll_until_done(manager, 1, wait_for, attempt=2)
    assert server.states(1, attempt=2) == ["RUNNING", "COMPLETED"]
    assert server.log(1, 2) == b"two\n"
    assert not manager.launch(make_spec(attempt=1)), "an older attempt is not run again"


def test_output_of_a_stale_attempt_is_dropped_and_the_run_finished_here(
        server: FakeServer, manager: JobManager, make_spec: Any, wait_for: Any) -> None:
    d = launch(server, manager, make_spec(command=["/bin/sh", "-c", "echo old; sleep 30"]))
    wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["pid"], what="the job runs")
    wait_for(lambda: (d / jd.LOG).read_bytes(), what="output")
    server.specs[1] = make_spec(attempt=2, state="DISPATCHED")  # requeued meanwhile
    manager.poll()
    assert (d / jd.STALE).exists()
    assert server.logs == {} and [p[1] for p in server.log_posts] == [1]
    posts = len(server.log_posts)
    manager.poll()
    assert len(server.log_posts) == posts, "nothing more is sent for a stale run"
    assert [(j.job_id, j.attempt, j.state) for j in manager.jobs()] == [(1, 1, "RUNNING")]
    manager.kill(1, 1)  # as the heartbeat's reply would have it
    done = poll_until_done(manager, 1, wait_for)
    assert (done / jd.STALE).exists() and (done / jd.LOG).read_bytes() == b"old\n"
    assert server.states(1) == ["RUNNING"], "no final report for a stale run"


def test_a_run_of_the_first_layout_is_readopted_as_attempt_1(
        server: FakeServer, manager: JobManager, make_spec: Any, wait_for: Any) -> None:
    """A daemon upgraded under a running job finds ``jobs/<id>/`` (no attempt) there."""
    spec = make_spec(job_id=4, command=["/bin/sh", "-c", "sleep 0.3; echo from-v1"])
    server.specs[4] = spec
    d = manager.jobs_dir / "4"
    d.mkdir()
    launch_v1 = spec.model_dump(mode="json", exclude={"attempt", "unix_user"})
    jd.write_json_atomic(d / jd.SPEC, {"job_id": 4, "launch": launch_v1,
                                       "env": {"PATH": "/usr/bin:/bin"}, "kill_grace_s": 0.5,
                                       "run_as": None, "refused": None})
    supervisor = subprocess.Popen([sys.executable, "-m", "gpuq.worker.supervisor", str(d)],
                                  start_new_session=True, stdin=subprocess.DEVNULL)
    wait_for(lambda: jd.read_json(d / jd.STATE), what="the v1 supervisor")
    assert list(manager.runs()) == [(4, 1)]
    assert not manager.launch(spec), "attempt 1 is already here"
    assert [(j.job_id, j.attempt) for j in manager.jobs()] == [(4, 1)]
    poll_until_done(manager, 4, wait_for, name="4")
    assert server.states(4) == ["RUNNING", "COMPLETED"]
    assert {e["attempt"] for _, e in server.events} == {1}
    assert server.log(4) == b"from-v1\n"
    assert supervisor.wait(5) == 0
    assert not manager.launch(spec), "a job that ran here must not run again"
    assert manager.launch(make_spec(job_id=4, attempt=2, command=["true"]))


# --- killing a job that does not want to die -------------------------------------------

IGNORES_TERM = ("trap '' TERM; "
                "(trap '' TERM; while :; do sleep 0.05; done) & echo $! > child.pid; "
                "echo $$ > job.pid; while :; do sleep 0.05; done")


@pytest.mark.parametrize("how, state", [("cancel", "CANCELLED"), ("time limit", "TIMEOUT")])
def test_cancel_and_time_limit_kill_a_job_that_ignores_sigterm_and_its_children(
        server: FakeServer, manager: JobManager, make_spec: Any, wait_for: Any,
        tmp_path: Path, how: str, state: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    d = launch(server, manager, make_spec(
        command=["/bin/sh", "-c", IGNORES_TERM], workdir=str(work),
        time_limit_s=1 if how == "time limit" else 60))

    def pid(name: str) -> int:
        text = (work / name).read_text().strip() if (work / name).exists() else ""
        return int(text) if text else 0

    job, child = wait_for(lambda: pid("job.pid") and pid("child.pid")
                          and (pid("job.pid"), pid("child.pid")), what="job and child")
    assert os.getpgid(child) == job, "the child is in the job's process group"
    if how == "cancel":
        assert manager.kill(1, 1)
    s = final_state(d, wait_for)
    assert (s["state"], s["exit_code"]) == (state, 128 + signal.SIGKILL)
    assert gone(job) and gone(child)
    poll_until_done(manager, 1, wait_for)
    assert server.states(1) == ["RUNNING", state]


# --- who the job runs as ---------------------------------------------------------------


@pytest.fixture
def unix_user() -> Iterator[pwd.struct_passwd]:
    """A Unix account made for the test (root and useradd needed), deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a user and switching to it needs root")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("no useradd/userdel here")
    name = f"gpuq-test-{secrets.token_hex(4)}"
    for _ in range(50):  # useradd fails while another process holds /etc/passwd's lock
        r = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            name], capture_output=True, text=True)
        if r.returncode == 0:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"useradd {name}: {r.stderr.strip()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        for _ in range(50):
            if subprocess.run(["userdel", name], capture_output=True).returncode in (0, 6):
                break
            time.sleep(0.1)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory any account can use (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="gpuq-test-work-", dir="/tmp"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_root_daemon(tmp_path: Path, api: NodeClient, **kw: Any) -> JobManager:
    return JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5,
                      identity=identity_policy("user", **kw))


def test_root_daemon_runs_the_job_as_another_unix_user(
        server: FakeServer, api: NodeClient, make_spec: Any, wait_for: Any, tmp_path: Path,
        unix_user: pwd.struct_passwd, shared_dir: Path) -> None:
    m = as_root_daemon(tmp_path, api)
    d = launch(server, m, make_spec(
        job_id=77, user="alice", unix_user=unix_user.pw_name, workdir=str(shared_dir),
        script="id -u\nid -G\necho $HOME\necho $USER\npwd\ntouch made-by-the-job\n"))
    s = final_state(d, wait_for)
    assert s["state"] == "COMPLETED", (d / jd.LOG).read_text()
    done = poll_until_done(m, 77, wait_for)
    uid, groups, home, user, cwd = server.log(77).decode().splitlines()
    assert int(uid) == unix_user.pw_uid
    assert {int(g) for g in groups.split()} == set(
        os.getgrouplist(unix_user.pw_name, unix_user.pw_gid))
    assert (home, user, cwd) == (unix_user.pw_dir, unix_user.pw_name, str(shared_dir))
    made = (shared_dir / "made-by-the-job").stat()
    assert (made.st_uid, made.st_gid) == (unix_user.pw_uid, unix_user.pw_gid)
    assert oct((tmp_path / "s").stat().st_mode & 0o777) == "0o700", "state stays private"
    wait_for(lambda: not jd.supervisor_alive(done), what="the supervisor's exit")
    assert not list(Path("/tmp").glob("gpuq-job-77.1-*")), "the script's copy is removed"


@pytest.mark.parametrize("mode", [0o700, 0o777])
def test_a_workdir_the_jobs_user_cannot_reach_fails_the_job(
        server: FakeServer, api: NodeClient, make_spec: Any, wait_for: Any, tmp_path: Path,
        unix_user: pwd.struct_passwd, shared_dir: Path, mode: int) -> None:
    """Root could enter it; the job's user cannot: a closed directory, or an open one
    behind a closed parent (pytest's root-only tmp_path), which the user must not reach
    through the daemon either."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=mode)
    closed.chmod(mode)
    m = as_root_daemon(tmp_path, api)
    d = launch(server, m, make_spec(unix_user=unix_user.pw_name, workdir=str(closed),
                                    command=["/bin/sh", "-c", "touch ran"]))
    s = final_state(d, wait_for)
    assert (s["state"], s["exit_code"], s["pid"]) == ("FAILED", 126, None)
    assert s["reason"] == f"cannot start workdir {closed}: Permission denied"
    assert not (closed / "ran").exists()
    gone_dir = shared_dir / "no-such-dir"
    d = launch(server, m, make_spec(job_id=2, unix_user=unix_user.pw_name,
                                    workdir=str(gone_dir), command=["true"]))
    s = final_state(d, wait_for)
    assert (s["state"], s["exit_code"]) == ("FAILED", 127)
    assert s["reason"] == f"cannot start workdir {gone_dir}: No such file or directory"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a daemon running as root")
def test_root_daemon_refuses_to_run_a_job_as_root(
        server: FakeServer, api: NodeClient, make_spec: Any, wait_for: Any,
        tmp_path: Path) -> None:
    m = as_root_daemon(tmp_path, api)
    d = launch(server, m, make_spec(user="mallory", unix_user="root",
                                    command=["/bin/sh", "-c", f"touch {tmp_path}/ran"]))
    poll_until_done(m, 1, wait_for)
    [(_, refused)] = server.events
    assert refused["state"] == "FAILED"
    assert refused["reason"].startswith("refusing to run a job of 'root' as root")
    assert not (tmp_path / "ran").exists()
    assert "not started: refusing" in (m.done_dir / d.name / jd.LOG).read_text()
    allowed = JobManager(state_dir=tmp_path / "s2", node="n1", api=api, kill_grace_s=0.5,
                         identity=identity_policy("user", allow_root=True))
    server.events.clear()
    launch(server, allowed, make_spec(job_id=2, unix_user="root", command=["id", "-u"]))
    poll_until_done(allowed, 2, wait_for)
    assert server.states(2) == ["RUNNING", "COMPLETED"] and server.log(2) == b"0\n"


# --- GPUs: per-job samples, and which processes are the jobs' --------------------------


def test_job_samples_count_energy_from_the_start(
        server: FakeServer, api: NodeClient, make_spec: Any, wait_for: Any,
        tmp_path: Path) -> None:
    clock, wall = FakeClock(), FakeClock()
    gpus = SimulatedBackend("3xA100-80GB", node="n1", clock=clock)
    m = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5,
                   identity=lambda user: daemon_identity(), gpus=gpus, wall=wall)
    clock.now_s += 100  # energy the GPUs used before the job is not the job's
    d = launch(server, m, make_spec(command=["sleep", "30"], gpu_indices=[1, 2]))
    start = {int(k): v["energy_start_j"] for k, v in jd.read_json(d / jd.USAGE)["gpus"].items()}
    assert start == {1: pytest.approx(100 * IDLE_POWER_W, abs=1),
                     2: pytest.approx(100 * IDLE_POWER_W, abs=1)}
    state = wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["pid"] and s,
                     what="the job runs")
    # The poll reads the GPUs as the job has started (here at once: nothing to take off).
    wall.now_s = datetime.fromisoformat(state["started_at"]).timestamp()
    m.start_sample(d)
    assert jd.read_json(d / jd.USAGE)["begun"] == wall.now_s
    gpus.set_busy(m.job_processes().gpus)
    clock.now_s += 10
    wall.now_s += 10
    samples = gpus.samples()
    [job] = m.jobs(samples)
    assert job.sample is not None
    busy = [samples[1], samples[2]]
    assert job.sample.utilization_pct == pytest.approx(
        sum(s.utilization_pct or 0 for s in busy) / 2, abs=0.1)
    assert job.sample.memory_used_mib == pytest.approx(
        sum(s.memory_used_mib or 0 for s in busy), abs=0.2)
    assert job.sample.power_w == pytest.approx(sum(s.power_w or 0 for s in busy), abs=0.2)
    assert job.sample.energy_j == pytest.approx(
        sum((s.energy_j or 0) - start[s.index] for s in busy), abs=0.2)
    assert 2 * 10 * 250 < job.sample.energy_j < 2 * 10 * 350
    m.kill(1, 1)
    final_state(d, wait_for)
    clock.now_s += 10
    [ended] = m.jobs(gpus.samples())
    assert ended.state == "CANCELLED" and ended.sample is not None
    assert ended.sample.energy_j >= job.sample.energy_j, "the end sample: up to the end"
    clock.now_s += 10
    [again] = m.jobs(gpus.samples())
    assert again.sample == ended.sample, "frozen once ended"


def fixed_power_gpus(tmp_path: Path, power_w: float) -> SimulatedBackend:
    """Two simulated GPUs drawing ``power_w`` each all the time (real clocks)."""
    faults = tmp_path / "gpu-faults.json"
    write_faults(faults, trace={0: {"utilization_pct": 90, "power_w": power_w},
                                1: {"utilization_pct": 0, "power_w": power_w}})
    return SimulatedBackend("2xA100-80GB", node="n1", faults_file=faults)


def end_report(server: FakeServer, job_id: int) -> dict[str, Any]:
    [final] = [e for j, e in server.events if j == job_id and e["state"] != "RUNNING"]
    return final


def test_the_final_report_brings_the_energy_up_to_the_jobs_end(
        server: FakeServer, api: NodeClient, make_spec: Any, wait_for: Any,
        tmp_path: Path) -> None:
    """Issue 16 item 7: the run's energy is read again at its end and sent with its final
    report, counted from the process's start to its end (at 2 x 400 W: 800 J a second of
    the process's life, whenever the poll saw the start and the end)."""
    gpus = fixed_power_gpus(tmp_path, 400.0)
    m = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5,
                   identity=lambda user: daemon_identity(), gpus=gpus)
    d = launch(server, m, make_spec(command=["sleep", "1"], gpu_indices=[0, 1]))
    time.sleep(0.3)  # the launch's reading is well before the start
    done = poll_until_done(m, 1, wait_for)
    state = jd.read_json(done / jd.STATE)
    ran_s = (datetime.fromisoformat(state["ended_at"])
             - datetime.fromisoformat(state["started_at"])).total_seconds()
    report = end_report(server, 1)
    end = report["end_sample"]
    assert report["state"] == "COMPLETED"
    assert end["sample"]["energy_j"] == pytest.approx(800.0 * ran_s, abs=2.0), ran_s
    assert [g["energy_j"] for g in end["sample"]["gpus"]] == [
        pytest.approx(400.0 * ran_s, abs=1.0)] * 2
    assert 0.0 <= end["ended_s_ago"] < 5.0
    assert jd.read_json(done / jd.USAGE)["end"]["sample"] == end["sample"]
    assert d.exists() is False


def test_a_restarted_daemon_sends_the_end_sample_taken_before(
        server: FakeServer, api: NodeClient, make_spec: Any, wait_for: Any,
        tmp_path: Path) -> None:
    """The end sample is taken once and kept in the run's directory: a daemon restarted
    between the end and the report sends the same figures (not the GPUs' reading then)."""
    gpus = fixed_power_gpus(tmp_path, 400.0)
    first = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5,
                       identity=lambda user: daemon_identity(), gpus=gpus)
    d = launch(server, first, make_spec(command=["sleep", "0.3"], gpu_indices=[0, 1]))
    final_state(d, wait_for)
    taken = first.end_sample(d)
    assert taken is not None and taken.energy_j is not None and taken.energy_j > 0
    server.down = True
    with pytest.raises(ServerUnavailable):
        first.poll()
    server.down = False
    time.sleep(0.5)  # the GPUs draw on; the restarted daemon does not count it
    again = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5,
                       identity=lambda user: daemon_identity(),
                       gpus=fixed_power_gpus(tmp_path, 400.0))
    assert again.end_sample(d) == taken
    poll_until_done(again, 1, wait_for)
    assert end_report(server, 1)["end_sample"]["sample"] == taken.model_dump()


def test_energy_is_integrated_from_power_without_a_counter(
        server: FakeServer, api: NodeClient, make_spec: Any, tmp_path: Path) -> None:
    wall = FakeClock()
    m = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5,
                   identity=lambda user: daemon_identity(), wall=wall)
    launch(server, m, make_spec(command=["sleep", "30"], gpu_indices=[0]))
    try:
        def at(power_w: float) -> GpuSample:
            return GpuSample(index=0, utilization_pct=50.0, power_w=power_w)

        [first] = m.jobs([at(100.0)])
        assert first.sample is not None and first.sample.energy_j == 0
        wall.now_s += 10
        [job] = m.jobs([at(200.0)])
        assert job.sample is not None and job.sample.energy_j == pytest.approx(1500)
        assert (job.sample.power_w, job.sample.utilization_pct) == (200.0, 50.0)
    finally:
        m.kill(1, 1)


def test_job_processes_name_the_jobs_sessions_and_gpus(
        server: FakeServer, manager: JobManager, make_spec: Any, wait_for: Any) -> None:
    d = launch(server, manager, make_spec(command=["sleep", "30"], gpu_indices=[0, 3]))
    s = wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["pid"] and s)
    procs = manager.job_processes()
    assert procs.sessions == {s["pid"]} and procs.supervisors == {s["supervisor_pid"]}
    assert procs.gpus == {0: [s["pid"]], 3: [s["pid"]]}
    manager.kill(1, 1)
    final_state(d, wait_for)
    assert manager.job_processes() == JobProcesses()


TERM_TRAP = ("trap 'echo checkpointing > term.seen; sleep 30' TERM; "
             "echo $$ > job.pid; while :; do sleep 0.05; done")


@pytest.mark.parametrize("grace_s", [0.2, 3.0])
def test_a_kill_with_its_own_grace_period_waits_that_long_before_sigkill(
        server: FakeServer, manager: JobManager, make_spec: Any, wait_for: Any,
        tmp_path: Path, grace_s: float) -> None:
    """A preemption gives the job the scheduler's grace period to checkpoint (SIGTERM, then
    SIGKILL after it), not the worker's own kill grace (0.5 s here)."""
    work = tmp_path / "work"
    work.mkdir()
    d = launch(server, manager, make_spec(command=["/bin/sh", "-c", TERM_TRAP],
                                          workdir=str(work)))
    wait_for(lambda: (work / "job.pid").exists() and (work / "job.pid").read_text().strip(),
             what="the job")
    t0 = time.monotonic()
    assert manager.kill(1, 1, grace_s)
    wait_for(lambda: (work / "term.seen").exists(), what="SIGTERM seen by the job")
    s = final_state(d, wait_for)
    took = time.monotonic() - t0
    assert (s["state"], s["exit_code"]) == ("CANCELLED", 128 + signal.SIGKILL)
    assert grace_s <= took < grace_s + 2.5, took
    poll_until_done(manager, 1, wait_for)


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_supervisors_come_from_the_fork_server_and_survive_its_loss(
        server: FakeServer, manager: JobManager, make_spec: Any, wait_for: Any,
        tmp_path: Path) -> None:
    """A launch forks an already-imported supervisor from the fork server; if that server
    dies, the next launch still starts (a new server, or a new Python process)."""
    d = launch(server, manager, make_spec(command=["sleep", "30"]))
    s = wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == "RUNNING" and s,
                 what="the first job running")
    forker = manager.starter.fork_server
    assert forker is not None and forker.poll() is None
    sup = int(s["supervisor_pid"])
    assert _ppid(sup) == forker.pid, "the supervisor is the fork server's child"
    forker.kill()
    forker.wait()
    d2 = launch(server, manager, make_spec(job_id=2, command=["true"]))
    assert final_state(d2, wait_for)["state"] == "COMPLETED"
    assert jd.supervisor_alive(d), "supervisors outlive the fork server"
    assert manager.kill(1, 1)
    poll_until_done(manager, 1, wait_for)
    poll_until_done(manager, 2, wait_for)
    manager.close()
    assert manager.starter.fork_server is None


def test_a_job_that_ends_while_it_is_observed_is_not_taken_for_a_lost_supervisor(
        server: FakeServer, manager: JobManager, make_spec: Any, wait_for: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor writes the end and exits between observe's read of the state
    (RUNNING) and its check of the supervisor: the end stands (it was FAILED, "the job's
    supervisor died", with a killpg of the job's old process group)."""
    launch(server, manager, make_spec(command=["sleep", "30"]))
    d = manager.jobs_dir / "1.1"
    running = wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["pid"] and s)
    alive = jd.supervisor_alive
    ended: list[bool] = []

    def ends_meanwhile(run_dir: Path) -> bool:
        if run_dir == d and not ended:
            ended.append(True)
            manager.kill(1, 1)  # the real supervisor ends the job and records it
            wait_for(lambda: not alive(d), what="the supervisor to exit")
        return alive(run_dir)

    monkeypatch.setattr(jd, "supervisor_alive", ends_meanwhile)
    obs = manager.observe(RunKey(1, 1), d)
    assert obs.state == "CANCELLED", obs
    final = jd.read_json(d / jd.STATE)
    assert final is not None and final["state"] == "CANCELLED"
    assert "supervisor died" not in final.get("reason", "") and running["pid"] > 0


def test_a_server_older_than_the_end_sample_gets_the_report_without_it(
        server: FakeServer, token: str, make_spec: Any, wait_for: Any,
        tmp_path: Path) -> None:
    """A server that does not know ``end_sample`` refuses it (422, unknown field): the end
    is reported again without it, and RUNNING reports never carry the key."""
    refused = []

    def older(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events") and b"end_sample" in request.read():
            refused.append(json.loads(request.read()))
            return httpx.Response(422, json={"detail": [{"loc": ["body", "end_sample"],
                                                         "msg": "Extra inputs are not "
                                                                "permitted"}]})
        return server.handle(request)

    api = NodeClient("http://sched", "n1", token, transport=httpx.MockTransport(older),
                     retries=0)
    m = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5,
                   identity=lambda user: daemon_identity(), gpus=fixed_power_gpus(tmp_path, 1))
    launch(server, m, make_spec(command=["true"], gpu_indices=[0]))
    poll_until_done(m, 1, wait_for)
    assert server.events == [
        (1, {"attempt": 1, "state": "RUNNING", "exit_code": None, "reason": ""}),
        (1, {"attempt": 1, "state": "COMPLETED", "exit_code": 0, "reason": "exit code 0"})]
    assert [r["state"] for r in refused] == ["COMPLETED"]
    assert refused[0]["end_sample"]["sample"]["gpus"][0]["index"] == 0
    api.close()


def test_a_run_of_a_previous_boot_ends_on_its_last_sample(
        server: FakeServer, api: NodeClient, make_spec: Any, wait_for: Any,
        tmp_path: Path) -> None:
    """The node restarted under the run: its GPUs' counters started again and when it
    ended is unknown, so its last heartbeat's sample stands for its end."""
    m = JobManager(state_dir=tmp_path / "s", node="n1", api=api, kill_grace_s=0.5,
                   identity=lambda user: daemon_identity(), gpus=fixed_power_gpus(tmp_path, 400))
    spec = make_spec(job_id=3, gpu_indices=[0])
    server.specs[3] = spec
    d = m.jobs_dir / "3.1"
    d.mkdir()
    jd.write_json_atomic(d / jd.SPEC, {"job_id": 3, "attempt": 1,
                                       "launch": spec.model_dump(mode="json")})
    last = {"energy_j": 4000.0, "gpus": [{"index": 0, "energy_j": 4000.0}]}
    jd.write_json_atomic(d / jd.USAGE, {"started_at": 0.0, "sample": last, "gpus": {
        "0": {"energy_start_j": 90_000.0, "integrated_j": 4000.0, "power_w": 400.0,
              "at": 10.0}}})
    jd.write_json_atomic(d / jd.STATE, {"job_id": 3, "attempt": 1, "state": "RUNNING",
                                        "pid": 999999, "pgid": 999999,
                                        "supervisor_pid": 999998, "boot_id": "another-boot"})
    (d / jd.REPORTED).write_text("RUNNING")
    poll_until_done(m, 3, wait_for)
    assert end_report(server, 3)["end_sample"]["sample"]["energy_j"] == 4000.0


def test_done_runs_are_pruned_in_batches_off_the_poll(manager: JobManager) -> None:
    """``done/`` keeps the newest ``DONE_KEEP`` ended runs; the older ones go once every
    ``DONE_SLACK`` retirements, removed by a thread of its own (the poll reports ends)."""
    from gpuq.worker import jobs as jobs_module

    total = jobs_module.DONE_KEEP + jobs_module.DONE_SLACK + 5
    for i in range(total):
        d = manager.done_dir / f"{i + 1}.1"
        d.mkdir()
        (d / jd.STATE).write_text("{}")
        os.utime(d, (1_000_000 + i, 1_000_000 + i))
    for _ in range(jobs_module.DONE_SLACK - 1):
        manager._prune_done()
    assert manager._pruner is None  # not yet: a batch at a time
    assert len(list(manager.done_dir.iterdir())) == total
    manager._prune_done()
    assert manager._pruner is not None
    manager._pruner.join(10)
    left = sorted(int(p.name.split(".")[0]) for p in manager.done_dir.iterdir())
    assert left == list(range(total - jobs_module.DONE_KEEP + 1, total + 1))  # the newest
