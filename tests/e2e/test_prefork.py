"""``gpuq server --workers 3`` (scheduler/entry/prefork.py) as deployed: PostgreSQL, Redis, a real
worker on simulated GPUs, the real CLI. The scheduling loop's timer is 30 s, so a job that
runs within seconds of its submit was woken over LISTEN/NOTIFY from an API process."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import PY, Cluster, base_env, start_server, wait_for

WORKERS = 3


def children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry.name))
    return out


def nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def listening_inode(port: int) -> str:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "0A":
                return f[9]
    raise AssertionError(f"nothing listens on port {port}")


def holds_socket(pid: int, inode: str) -> bool:
    try:
        return any(os.readlink(fd) == f"socket:[{inode}]"
                   for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def api_processes(cluster: Cluster) -> set[int]:
    """The supervisor's children that accept on the listening socket."""
    server = cluster.procs[0].popen.pid
    inode = listening_inode(int(cluster.url.rsplit(":", 1)[1]))
    return {p for p in children(server) if alive(p) and holds_socket(p, inode)}


def metrics(cluster: Cluster) -> dict[str, float]:
    r = httpx.get(cluster.url + "/metrics", timeout=10,
                  headers={"Authorization": f"Bearer {cluster.admin_token}"})
    assert r.status_code == 200, r.text
    return {s.name: s.value for fam in text_string_to_metric_families(r.text)
            for s in fam.samples if not s.labels}


@pytest.fixture
def prefork(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[Cluster]:
    broker = redis_url.rsplit("/", 1)[0] + f"/{uuid.uuid4().int % 15 + 1}"
    cluster = start_server(tmp_path, {
        "GPUQ_DATABASE_URL": pg_url, "GPUQ_BROKER_URL": broker,
        "GPUQ_API_WORKERS": str(WORKERS), "GPUQ_SCHEDULE_INTERVAL_S": "30"})
    try:
        cluster.add_worker(f"n-{uuid.uuid4().hex[:6]}", "2xA100-80GB")
        cluster.add_user("alice")
        wait_for(lambda: len(api_processes(cluster)) == WORKERS, 20,
                 lambda: f"{WORKERS} API processes\n{cluster.procs[0].output()}")
        yield cluster
    finally:
        for p in reversed(cluster.procs):
            p.stop()


def submit_and_time(cluster: Cluster) -> tuple[int, float]:
    """Submits a short job; seconds from its submit to its dispatch, by the server's clock
    (no CLI start-up or worker in it: the wake-up and the cycle only)."""
    job_id = int(cluster.gpuq("submit", "--parsable", "--gpus", "1", "--", "sleep",
                              "0.5").stdout)
    job = cluster.wait_state(job_id, {"RUNNING", "COMPLETED", "FAILED"}, 25)
    took = (datetime.fromisoformat(job["dispatched_at"])
            - datetime.fromisoformat(job["submitted_at"])).total_seconds()
    return job_id, took


@pytest.mark.postgres
@pytest.mark.redis
def test_jobs_run_woken_across_processes_served_by_several(prefork: Cluster) -> None:
    for _ in range(2):  # the second after the first ended: the loop idle again
        job_id, took = submit_and_time(prefork)
        assert took < 5, f"job {job_id} took {took:.1f} s to dispatch (timer: 30 s)"
        assert prefork.wait_state(job_id, {"COMPLETED", "FAILED"}, 20)["state"] == "COMPLETED"

    apis = api_processes(prefork)
    assert len(apis) == WORKERS and prefork.procs[0].popen.pid not in apis
    # The loop runs at a lower priority (loop_nice, 10): the API's requests come first.
    server = prefork.procs[0].popen.pid
    (loop_pid,) = children(server) - apis
    assert nice(loop_pid) == min(19, nice(server) + 10)
    assert {nice(p) for p in apis} == {nice(server)}

    def served_by(_: int) -> int:  # a connection of its own each
        return int(httpx.get(prefork.url + "/healthz", timeout=10).headers["x-gpuq-pid"])

    pids: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):
            pids |= set(pool.map(served_by, range(24)))
            if len(pids) > 1:
                break
    assert len(pids) > 1 and pids <= apis, (pids, apis)

    # Histograms summed over the processes: cycles in the loop's, dispatch latency in
    # whichever API process took each job's start report; the gauges once.
    m = metrics(prefork)
    assert m["gpuq_schedule_cycle_seconds_count"] > 0
    assert m["gpuq_dispatch_latency_seconds_count"] == 2


@pytest.mark.postgres
@pytest.mark.redis
def test_dead_children_are_replaced_and_sigterm_stops_everything(prefork: Cluster) -> None:
    server = prefork.procs[0]
    apis = api_processes(prefork)
    (loop_pid,) = children(server.popen.pid) - apis

    victim = min(apis)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:  # one look at the processes: two could straddle the kill
        now = api_processes(prefork)
        return len(now) == WORKERS and victim not in now

    wait_for(replaced, 15, lambda: f"a new API process\n{server.output()}")
    assert httpx.get(prefork.url + "/healthz", timeout=10).status_code == 200
    assert f"(pid {victim}) was killed by SIGKILL" in server.output()

    os.kill(loop_pid, signal.SIGKILL)
    def loop_replaced() -> bool:
        now = children(server.popen.pid)
        return len(now) == WORKERS + 1 and loop_pid not in now

    wait_for(loop_replaced, 15,
             lambda: f"a new loop process\n{server.output()}")
    job_id, took = submit_and_time(prefork)  # the new loop listens and schedules
    assert took < 5, f"job {job_id} took {took:.1f} s to dispatch\n{server.output()}"

    everyone = children(server.popen.pid)
    server.popen.send_signal(signal.SIGTERM)
    assert server.popen.wait(30) == 0, server.output()
    wait_for(lambda: not any(alive(p) for p in everyone), 5, "the children to exit")
    assert "stopped" in server.output()


def test_workers_need_postgresql(tmp_path: Path) -> None:
    env = {**base_env(tmp_path / "home"), "GPUQ_DATA_DIR": str(tmp_path / "data")}
    r = subprocess.run([*PY, "server", "--workers", "2"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "--workers 2 (GPUQ_API_WORKERS" in r.stderr and "needs PostgreSQL" in r.stderr
    assert "--database-url" in r.stderr and "Traceback" not in r.stderr

    r = subprocess.run([*PY, "server"], env={**env, "GPUQ_API_WORKERS": "0"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "api_workers" in r.stderr and "Traceback" not in r.stderr
