"""A worker a lab can trust: jobs outlive the daemon, a silent node's jobs run elsewhere
and only once it has fenced its copy, hand-run GPU processes are respected, jobs run as their
user.

Real processes throughout: PostgreSQL, Redis, `gpuq server`, `gpuq worker`s with
simulated GPUs, the CLI."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, parse_env_dump, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

JOB = textwrap.dedent("""
    import os, sys, time
    print("PID=%d" % os.getpid(), flush=True)
    time.sleep(float(sys.argv[1]))
    print("END=1", flush=True)
    sys.exit(int(sys.argv[2]))
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _submit(c: Cluster, *args: str) -> int:
    return int(c.gpuq("submit", "--parsable", *args).stdout)


@pytest.fixture
def job_py(redis_cluster: Cluster) -> str:
    redis_cluster.add_user("alice")
    path = redis_cluster.tmp / "job.py"
    path.write_text(JOB)
    return str(path)


def test_jobs_survive_kill_9_of_the_daemon(redis_cluster: Cluster, job_py: str) -> None:
    c = redis_cluster
    name = f"k9-{uuid.uuid4().hex[:6]}"
    worker = c.add_worker(name, "4xA100-80GB")
    # Two jobs: the host has as few as 2 CPUs (CI), and each job asks for one.
    ids = {code: _submit(c, "--gpus", "1", "--", sys.executable, job_py, "4", str(code))
           for code in (0, 3)}
    pids = {}
    for code, job_id in ids.items():
        c.wait_state(job_id, {"RUNNING"})
        pids[code] = int(wait_for(lambda j=job_id: parse_env_dump(c.log(j)).get("PID"), 20))
    worker.popen.send_signal(signal.SIGKILL)
    worker.popen.wait()
    time.sleep(1.5)
    assert all(_alive(p) for p in pids.values()), "kill -9 of the daemon killed a job"
    c.procs.remove(worker)
    c.add_worker(name, "4xA100-80GB", GPUQ_WORKER_STATE_DIR=str(c.tmp / "worker" / name))
    for code, job_id in ids.items():
        job = c.wait_state(job_id, {"COMPLETED", "FAILED"}, 60)
        assert job["exit_code"] == code, job
        assert job["state"] == ("COMPLETED" if code == 0 else "FAILED")
        assert job["attempt"] == 1
        log = parse_env_dump(c.log(job_id))
        assert log["PID"] == str(pids[code]) and log["END"] == "1"  # the same run, to its end


def test_a_silent_node_s_jobs_run_elsewhere_once_it_fenced_its_copy(
        tmp_path: Path, pg_url: str, redis_url: str) -> None:
    from tests.e2e.conftest import start_server

    db = int(uuid.uuid4().int % 15) + 1
    c = start_server(tmp_path, {"GPUQ_DATABASE_URL": pg_url,
                                "GPUQ_BROKER_URL": redis_url.rsplit("/", 1)[0] + f"/{db}",
                                "GPUQ_NODE_DOWN_AFTER_S": "4", "GPUQ_FENCE_AFTER_S": "2",
                                "GPUQ_FENCE_GRACE_S": "0.5", "GPUQ_FENCE_MARGIN_S": "1.5"})
    try:
        c.add_user("alice")
        job_py = tmp_path / "job.py"
        job_py.write_text(JOB)
        tag = uuid.uuid4().hex[:6]
        a = c.add_worker(f"a-{tag}", "2xA100-80GB")
        c.add_worker(f"b-{tag}", "2xA100-80GB")
        c.admin("POST", f"/v1/admin/nodes/b-{tag}/drain", json={"reason": "test"})
        job_id = _submit(c, "--gpus", "2", "--", sys.executable, str(job_py), "12", "0")
        first = c.wait_state(job_id, {"RUNNING"})
        assert first["node"] == f"a-{tag}"
        pid1 = int(wait_for(lambda: parse_env_dump(c.log(job_id)).get("PID"), 20))
        c.admin("POST", f"/v1/admin/nodes/b-{tag}/resume")
        # The daemon of node a freezes: no heartbeats (its job keeps running).
        os.kill(a.popen.pid, signal.SIGSTOP)
        try:
            second = wait_for(lambda: (j := c.job(job_id))["attempt"] == 2
                              and j["state"] == "RUNNING" and j, 40, "the requeued run")
            assert second["node"] == f"b-{tag}"
            events = [e["new_state"] for e in second["events"]]
            assert events[-5:] == ["NODE_FAIL", "REQUEUED", "PENDING", "DISPATCHED",
                                   "RUNNING"]
            # The silent node fenced its copy (no contact for 2 s) before the server ran
            # the job elsewhere (4 s): it did not run twice (tests/e2e/test_partition.py).
            assert not _alive(pid1)
        finally:
            os.kill(a.popen.pid, signal.SIGCONT)
        # Node a is back; its report of the fenced run changes nothing.
        wait_for(lambda: not _alive(pid1), 30, "the duplicate to be gone")
        done = c.wait_state(job_id, {"COMPLETED", "FAILED"}, 60)
        assert (done["state"], done["attempt"], done["node"]) == ("COMPLETED", 2, f"b-{tag}")
        assert "END=1" in c.log(job_id)
    finally:
        for p in reversed(c.procs):
            os.kill(p.popen.pid, signal.SIGCONT) if p.popen.poll() is None else None
            p.stop()


def test_a_hand_run_process_keeps_its_gpu_out(redis_cluster: Cluster, job_py: str) -> None:
    c = redis_cluster
    name = f"fg-{uuid.uuid4().hex[:6]}"
    c.add_worker(name, "1xA100-80GB")
    hand_run = subprocess.Popen(["sleep", "60"])
    try:
        (c.tmp / "worker" / name / "sim-gpus.json").write_text(
            json.dumps({"foreign": {"0": [hand_run.pid]}}))
        wait_for(lambda: c.admin("GET", "/v1/nodes")[0]["gpus"][0]["foreign_processes"],
                 20, "the foreign process to be reported")
        nodes = c.gpuq("nodes").stdout
        assert str(hand_run.pid) in nodes
        job_id = _submit(c, "--gpus", "1", "--", sys.executable, job_py, "0", "0")
        time.sleep(2)
        job = c.job(job_id)
        assert job["state"] == "PENDING" and "Resources" in job["reason"], job
    finally:
        hand_run.kill()
        hand_run.wait()
    # Its process ended: the GPU is free again and the job runs.
    assert c.wait_state(job_id, {"COMPLETED"}, 30)["gpu_indices"] == [0]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                    reason="needs root and useradd")
def test_jobs_run_as_the_users_unix_account(redis_cluster: Cluster) -> None:
    c = redis_cluster
    unix = f"gq{uuid.uuid4().hex[:8]}"
    workdir = Path("/nonexistent")
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", unix], check=True)
    try:
        name = f"ru-{uuid.uuid4().hex[:6]}"
        c.add_worker(name, "2xA100-80GB", GPUQ_WORKER_RUN_AS="user",
                     GPUQ_WORKER_ALLOW_ROOT_JOBS="0")
        c.add_user("alice")
        c.admin("PATCH", "/v1/admin/users/alice", json={"unix_user": unix})
        # A directory the job's user can reach (pytest's tmp dirs are root's, 0700).
        import tempfile

        workdir = Path(tempfile.mkdtemp(prefix="gpuq-e2e-"))
        workdir.chmod(0o777)
        # --export NONE: HOME and the rest come from the account, not from the submitter.
        job_id = _submit(c, "--gpus", "1", "--export", "NONE", "-D", str(workdir), "--",
                         "/bin/sh", "-c",
                         'echo "WHO=$(id -un)"; echo "UID=$(id -u)"; echo "HOME=$HOME"; '
                         'touch mine')
        job = c.wait_state(job_id, {"COMPLETED", "FAILED"}, 30)
        assert job["state"] == "COMPLETED", (job, c.log(job_id))
        out = parse_env_dump(c.log(job_id))
        pw = pwd.getpwnam(unix)
        assert (out["WHO"], out["UID"], out["HOME"]) == (unix, str(pw.pw_uid), pw.pw_dir)
        assert (workdir / "mine").stat().st_uid == pw.pw_uid
        # Mapped to root: refused, with a reason that says so.
        c.admin("PATCH", "/v1/admin/users/alice", json={"unix_user": "root"})
        job_id = _submit(c, "--gpus", "1", "--", "/bin/true")
        job = c.wait_state(job_id, {"COMPLETED", "FAILED"}, 30)
        assert job["state"] == "FAILED"
        assert "as root" in job["reason"] + c.log(job_id)
    finally:
        subprocess.run(["userdel", "--remove", unix], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
