"""The daemon: token reading, heartbeats, and ``run`` for real (a subprocess with a
Celery worker on the filesystem broker, against the fake node endpoints over HTTP)."""

from __future__ import annotations

import logging
import os
import pwd
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuq.broker import make_celery, send_launch
from gpuq.config import Settings
from gpuq.worker import jobdir as jd
from gpuq.worker.client import NodeClient
from gpuq.worker.daemon import Daemon
from gpuq.worker.gpus import open_backend
from gpuq.worker.gpus.sim import FAULTS_FILE, SimulatedBackend, write_faults
from gpuq.worker.host import NoNodeToken, read_node_token, registration
from gpuq.worker.jobenv import daemon_identity
from gpuq.worker.procs import proc_command


def settings(tmp_path: Path, **kw: Any) -> Settings:
    # No job cgroups: tests on one host would share gpuq/n1/job-<id>.<attempt> (the job
    # cgroups have tests of their own, in test_kill_tree.py).
    kw.setdefault("node_name", "n1")
    kw.setdefault("worker_cgroup_root", "")
    return Settings(data_dir=tmp_path / "data", **kw)


def test_token_from_settings_or_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert read_node_token(settings(tmp_path, node_token=" abc \n")) == "abc"
    f = tmp_path / "token"
    f.write_text("from-file\n")
    f.chmod(0o600)
    assert read_node_token(settings(tmp_path, node_token_file=str(f))) == "from-file"
    assert not caplog.records
    f.chmod(0o644)
    assert read_node_token(settings(tmp_path, node_token_file=str(f))) == "from-file"
    assert "readable by others" in caplog.text and "from-file" not in caplog.text


@pytest.mark.parametrize("content, message", [
    (None, "cannot read the node token file"), ("\n", "is empty")])
def test_bad_token_file(tmp_path: Path, content: str | None, message: str) -> None:
    f = tmp_path / "token"
    if content is not None:
        f.write_text(content)
    with pytest.raises(NoNodeToken, match=message):
        read_node_token(settings(tmp_path, node_token_file=str(f)))


def test_no_token_at_all(tmp_path: Path) -> None:
    with pytest.raises(NoNodeToken, match="GPUQ_NODE_TOKEN"):
        read_node_token(settings(tmp_path))


def test_registration_describes_the_node() -> None:
    body = registration(SimulatedBackend("2xA100-80GB", node="n1"))
    assert body.gpu_backend == "simulated" and body.cpus >= 1 and body.memory_mib > 0
    assert [(g.index, g.model, g.memory_mib) for g in body.gpus] == [
        (0, "A100-80GB", 81920), (1, "A100-80GB", 81920)]


@pytest.fixture
def daemon(tmp_path: Path, transport: httpx.MockTransport, token: str) -> Iterator[Daemon]:
    api = NodeClient("http://sched", "n1", token, transport=transport, retries=0)
    conf = settings(tmp_path, kill_grace_s=0.3, simulate_gpus="2xT4-16GB")
    d = Daemon(conf, open_backend(conf), api, identity=lambda user: daemon_identity())
    yield d
    for key in d.manager.runs():
        d.manager.kill(*key)
    api.close()


def faults_file(daemon: Daemon) -> Path:
    return daemon.settings.effective_worker_state_dir / FAULTS_FILE


def job_state(daemon: Daemon, name: str, wait_for: Any, state: str) -> dict[str, Any]:
    d = daemon.manager.jobs_dir / name
    return wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == state and s,
                    what=f"{name} {state}")


def test_heartbeat_reports_jobs_and_samples_and_obeys(
        server: Any, daemon: Daemon, make_spec: Any, wait_for: Any) -> None:
    assert daemon.register() is not None
    assert daemon.heartbeat_interval_s == 0.2
    server.specs[1] = make_spec(command=["sleep", "30"], gpu_indices=[1])
    server.reply = {"launch": [1], "kill": []}
    daemon.heartbeat()
    assert list(daemon.manager.runs()) == [(1, 1)]
    job_state(daemon, "1.1", wait_for, "RUNNING")
    daemon.heartbeat()
    hb = server.heartbeats[-1]
    [job] = hb["jobs"]
    assert (job["job_id"], job["attempt"], job["state"]) == (1, 1, "RUNNING")
    gpu = hb["gpus"][1]
    assert job["sample"]["utilization_pct"] == gpu["utilization_pct"] > 0
    assert job["sample"]["memory_used_mib"] == gpu["memory_used_mib"] > 0
    assert job["sample"]["power_w"] == gpu["power_w"] > 0
    assert [s["index"] for s in hb["gpus"]] == [0, 1]
    assert hb["gpus"][1]["utilization_pct"] > 0 == hb["gpus"][0]["utilization_pct"]
    assert all(g["foreign_processes"] == [] and g["healthy"] for g in hb["gpus"])
    first_energy = job["sample"]["energy_j"]
    wait_for(lambda: (daemon.heartbeat() or True)
             and server.heartbeats[-1]["jobs"][0]["sample"]["energy_j"] > first_energy + 10,
             what="the job's energy to grow")
    server.reply = {"launch": [], "kill": [{"job_id": 1, "attempt": 2}]}
    daemon.heartbeat()
    assert daemon.manager.live_attempts(1) == [1], "another attempt's kill spares this run"
    server.reply = {"launch": [], "kill": [{"job_id": 1, "attempt": 1}]}
    daemon.heartbeat()
    job_state(daemon, "1.1", wait_for, "CANCELLED")


def test_a_foreign_process_is_reported_until_it_ends(
        server: Any, daemon: Daemon, make_spec: Any, wait_for: Any) -> None:
    """Someone runs a program on GPU 0 by hand (injected into the simulation from another
    process through its faults file): the heartbeat shows it until it exits."""
    daemon.register()
    hand_run = subprocess.Popen(["sleep", "29"])
    try:
        wait_for(lambda: proc_command(hand_run.pid) == "sleep 29", what="exec")
        write_faults(faults_file(daemon), foreign={0: [hand_run.pid]})
        daemon.heartbeat()
        gpus = server.heartbeats[-1]["gpus"]
        [proc] = gpus[0]["foreign_processes"]
        assert (proc["pid"], proc["user"], proc["command"]) == (
            hand_run.pid, pwd.getpwuid(os.getuid()).pw_name, "sleep 29")
        assert proc["used_memory_mib"] > 0 and gpus[0]["utilization_pct"] > 0
        assert gpus[1]["foreign_processes"] == []
    finally:
        hand_run.kill()
        hand_run.wait()
    daemon.heartbeat()
    gpus = server.heartbeats[-1]["gpus"]
    assert gpus[0]["foreign_processes"] == [] and gpus[0]["utilization_pct"] == 0


def test_the_jobs_own_processes_are_not_foreign(
        server: Any, daemon: Daemon, make_spec: Any, wait_for: Any, tmp_path: Path) -> None:
    daemon.register()
    work = tmp_path / "work"
    work.mkdir()
    server.specs[1] = make_spec(command=["/bin/sh", "-c", "sleep 30 & echo $! > child; wait"],
                                workdir=str(work), gpu_indices=[1])
    server.reply = {"launch": [1], "kill": []}
    daemon.heartbeat()
    state = job_state(daemon, "1.1", wait_for, "RUNNING")
    child = int(wait_for(lambda: (work / "child").exists() and (work / "child").read_text()))
    # The job's child on its GPU, and on another GPU too (a job may touch any GPU it sees).
    write_faults(faults_file(daemon), foreign={0: [child], 1: [child]})
    daemon.heartbeat()
    gpus = server.heartbeats[-1]["gpus"]
    assert gpus[0]["foreign_processes"] == gpus[1]["foreign_processes"] == []
    assert gpus[1]["utilization_pct"] > 0
    # ... though the GPUs do list them: the daemon told them apart.
    assert {p.pid for p in daemon.backend.samples()[0].processes} == {child}
    assert {p.pid for p in daemon.backend.samples()[1].processes} == {state["pid"], child}


def test_an_unhealthy_gpu_is_reported_with_its_reason(server: Any, daemon: Daemon) -> None:
    daemon.register()
    write_faults(faults_file(daemon), unhealthy={1: "XID 79: GPU has fallen off the bus"})
    daemon.heartbeat()
    gpus = server.heartbeats[-1]["gpus"]
    assert (gpus[0]["healthy"], gpus[0]["health_reason"]) == (True, None)
    assert (gpus[1]["healthy"], gpus[1]["health_reason"]) == (
        False, "XID 79: GPU has fallen off the bus")
    write_faults(faults_file(daemon))
    daemon.heartbeat()
    assert all(g["healthy"] for g in server.heartbeats[-1]["gpus"])


def test_heartbeat_registers_again_when_forgotten(server: Any, daemon: Daemon) -> None:
    daemon.register()
    server.forget_node = True
    daemon.heartbeat()
    assert len(server.registrations) == 2
    daemon.heartbeat()
    assert len(server.heartbeats) == 1


def test_register_stops_when_asked(server: Any, daemon: Daemon) -> None:
    server.down = True
    daemon.stop.set()
    assert daemon.register() is None


def start_daemon(tmp_path: Path, http_server: str, token: str, gpus: str,
                 **env: str) -> subprocess.Popen[bytes]:
    """``gpuq worker``'s ``run`` in a process of its own, node n1, no job cgroups."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("GPUQ_")}
    full.update(GPUQ_CONFIG=str(tmp_path / "none.toml"),
                GPUQ_DATA_DIR=str(tmp_path / "data"), GPUQ_NODE_NAME="n1",
                GPUQ_SERVER_URL=http_server, GPUQ_NODE_TOKEN=token, GPUQ_SIMULATE_GPUS=gpus,
                GPUQ_WORKER_CGROUP_ROOT="", **env)
    return subprocess.Popen(
        [sys.executable, "-c", "from gpuq.config import Settings\n"
                               "from gpuq.worker.daemon import run\nrun(Settings())"],
        env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_run_for_real(tmp_path: Path, http_server: str, server: Any, token: str,
                      make_spec: Any, wait_for: Any) -> None:
    # A root daemon runs jobs as the user's local account: use one that exists.
    server.specs[1] = make_spec(job_id=1, unix_user="nobody", command=["echo", "via celery"])
    server.specs[2] = make_spec(job_id=2, unix_user="nobody", command=["sleep", "30"])
    proc = start_daemon(tmp_path, http_server, token, "2xA100-80GB", GPUQ_KILL_GRACE_S="0.5",
                        GPUQ_JOB_POLL_INTERVAL_S="0.05")
    try:
        wait_for(lambda: server.registrations, what="registration")
        send_launch(make_celery(Settings(data_dir=tmp_path / "data")), "n1", 1)
        server.reply = {"launch": [2], "kill": []}
        wait_for(lambda: server.states(1) == ["RUNNING", "COMPLETED"], what="job 1")
        assert server.log(1) == b"via celery\n"
        wait_for(lambda: server.states(2) == ["RUNNING"], what="job 2")
        assert len(server.heartbeats[-1]["gpus"]) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.stdout.read().decode() if proc.stdout else ""
        logging.getLogger(__name__).info("daemon output:\n%s", out)
    assert "registered node n1 with 2 GPU(s)" in out and "worker stopped" in out
    assert token not in out
    job2 = tmp_path / "data" / "worker" / "n1" / "jobs" / "2.1"
    assert jd.supervisor_alive(job2), "a stopping daemon must leave its jobs running"
    state = jd.read_json(job2 / jd.STATE)
    assert state is not None
    os.kill(state["supervisor_pid"], signal.SIGTERM)
    wait_for(lambda: (s := jd.read_json(job2 / jd.STATE)) and s["state"] == "CANCELLED")


def test_a_job_s_start_and_end_are_reported_without_waiting_for_the_poll(
        tmp_path: Path, http_server: str, server: Any, token: str, make_spec: Any,
        wait_for: Any) -> None:
    """The poll thread passes every 60 s here. The launch wakes it once the job runs, and
    the supervisor's write into the ``poke`` FIFO when the job ends (its GPU is free: the
    next job waits for the report)."""
    server.specs[1] = make_spec(job_id=1, unix_user="nobody", command=["sleep", "1"])
    proc = start_daemon(tmp_path, http_server, token, "1xA100-80GB",
                        GPUQ_JOB_POLL_INTERVAL_S="60")
    try:
        wait_for(lambda: server.registrations, what="registration")
        send_launch(make_celery(Settings(data_dir=tmp_path / "data")), "n1", 1)
        wait_for(lambda: server.states(1) in (["RUNNING"], ["RUNNING", "COMPLETED"]),
                 timeout_s=20, what="RUNNING reported")
        wait_for(lambda: server.states(1) == ["RUNNING", "COMPLETED"], timeout_s=10,
                 what="COMPLETED reported within seconds, not at the next poll")
        fifo = tmp_path / "data" / "worker" / "n1" / jd.POKE
        assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_IMODE(fifo.stat().st_mode) == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        state = jd.read_json(tmp_path / "data" / "worker" / "n1" / "jobs" / "1.1" / jd.STATE)
        if state is not None and state.get("supervisor_pid") and not state.get("ended_at"):
            os.kill(state["supervisor_pid"], signal.SIGTERM)


def test_a_consumer_that_gives_up_makes_the_daemon_exit_1_to_be_restarted(
        tmp_path: Path, http_server: str, server: Any, token: str, wait_for: Any) -> None:
    """A message Celery cannot decode stops its consumer for good ("Unrecoverable
    error"): the daemon must not exit 0 as if asked to stop (systemd's Restart=on-failure
    would leave the node without a worker)."""
    proc = start_daemon(tmp_path, http_server, token, "1xA100-80GB")
    try:
        wait_for(lambda: server.registrations, what="registration")
        broker = Settings(data_dir=tmp_path / "data").broker_dir
        wait_for(lambda: (broker / "processed").is_dir(), what="the consumer")
        (broker / "1_garbage.gpuq.node.n1.msg").write_bytes(b"")
        assert proc.wait(15) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.stdout.read().decode() if proc.stdout else ""
    assert "Unrecoverable error" in out
    assert "the task consumer stopped without being asked to" in out, out


def test_registration_offers_the_configured_cpus_and_memory() -> None:
    backend = SimulatedBackend("2xA100-80GB", node="n1")
    assert registration(backend, cpus=64, memory=1024).cpus == 64
    assert registration(backend, cpus=64, memory=1024).memory_mib == 1024
    assert registration(backend).cpus >= 1


def test_registration_says_which_limits_the_worker_enforces(server: Any,
                                                            daemon: Daemon) -> None:
    # Job cgroups off (worker_cgroup_root = ""): nothing is enforced, and it is said.
    daemon.register()
    assert server.registrations[-1]["enforcement"] == \
        "none: job cgroups are off (worker_cgroup_root is empty)"
    assert registration(SimulatedBackend("1xT4-16GB", node="n1")).enforcement is None


def test_the_worker_says_at_start_which_limits_it_cannot_enforce(
        tmp_path: Path, transport: httpx.MockTransport, token: str,
        caplog: pytest.LogCaptureFixture) -> None:
    api = NodeClient("http://sched", "n1", token, transport=transport, retries=0)
    conf = settings(tmp_path, simulate_gpus="1xT4-16GB")
    with caplog.at_level(logging.INFO):
        Daemon(conf, open_backend(conf), api, identity=lambda user: daemon_identity())
    api.close()
    assert ("gpuq.worker.jobs", logging.WARNING,
            "job limits: none: job cgroups are off (worker_cgroup_root is empty)") \
        in caplog.record_tuples
