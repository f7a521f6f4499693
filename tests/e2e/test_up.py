"""`gpuq up`: the whole system on one machine with no external service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import PY, base_env, free_port, parse_env_dump, spawn, wait_for

#: CI runs as root; jobs then run as root, which must be allowed explicitly.
ROOT = ["--allow-root-jobs"] if os.geteuid() == 0 else []
JOB = ("import os, time; print('CUDA_VISIBLE_DEVICES=' + os.environ['CUDA_VISIBLE_DEVICES']);"
       " print('PID=%d' % os.getpid(), flush=True); time.sleep(float(os.environ['NAP']))")


@dataclass
class Up:
    url: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    tmp: Path

    def gpuq(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*PY, *args], env=self.env, capture_output=True, text=True,
                           timeout=60, cwd=self.tmp)
        if check:
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r

    def state(self, job_id: int) -> str:
        out = self.gpuq("q", "--all", "--json").stdout
        import json

        return next(j["state"] for j in json.loads(out) if j["id"] == job_id)


def start_up(tmp_path: Path, gpus: list[str]) -> Iterator[Up]:
    port = free_port()
    env = base_env(tmp_path / "home")
    env["GPUQ_CLIENT_CONFIG"] = str(tmp_path / "client.toml")
    proc = spawn("up", [*PY, "up", *gpus, "--port", str(port),
                        "--data-dir", str(tmp_path / "data"), *ROOT], env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.popen.poll() is None, proc.output()
            return "gpuq is up" in proc.output()

        wait_for(ready, 60, "gpuq up")
        yield Up(url, env, proc.popen, tmp_path)
    finally:
        proc.stop()
        # Everything it started has stopped with it.
        assert proc.popen.returncode is not None


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    yield from start_up(tmp_path, ["--simulate-gpus", "2xA100-80GB"])


def test_up_runs_jobs_with_no_external_service(up: Up) -> None:
    cfg = (up.tmp / "client.toml")
    assert cfg.stat().st_mode & 0o777 == 0o600
    wait_for(lambda: '"state": "UP"' in up.gpuq("nodes", "--json").stdout, 30, "the node")
    ids = [int(up.gpuq("submit", "--parsable", "--gpus", "1", "--env", "NAP=1", "--",
                       sys.executable, "-c", JOB).stdout) for _ in range(3)]
    for i in ids:
        wait_for(lambda i=i: up.state(i) in ("COMPLETED", "FAILED"), 60, f"job {i}")
    assert [up.state(i) for i in ids] == ["COMPLETED"] * 3
    seen = [parse_env_dump(up.gpuq("logs", str(i)).stdout)["CUDA_VISIBLE_DEVICES"]
            for i in ids]
    assert all(s in ("0", "1") for s in seen)
    # What the server and the worker keep is theirs alone: the data directory, the
    # database, the job logs, the worker's state and output (issue 16, item 6).
    data = up.tmp / "data"
    assert (data.stat().st_mode & 0o777) == 0o700
    assert list((data / "logs").glob("*.log")) and list(data.glob("worker/*/done/*/output.log"))
    # (kombu writes the broker's files with the worker's umask, which its jobs inherit:
    # they hold queue names and job ids, in directories only the owner can enter.)
    open_ = [f"{p} {p.stat().st_mode & 0o777:o}" for p in [data, *data.rglob("*")]
             if not p.is_symlink() and p.exists() and p.stat().st_mode & 0o077
             and (p.is_dir() or "broker" not in p.relative_to(data).parts)]
    assert open_ == []


def test_up_cancel_and_restart_of_a_dead_worker(up: Up) -> None:
    wait_for(lambda: '"state": "UP"' in up.gpuq("nodes", "--json").stdout, 30, "the node")
    job = int(up.gpuq("submit", "--parsable", "--gpus", "1", "--env", "NAP=300", "--",
                      sys.executable, "-c", JOB).stdout)
    wait_for(lambda: up.state(job) == "RUNNING", 30, "running")
    pid = int(wait_for(lambda: parse_env_dump(up.gpuq("logs", str(job)).stdout).get("PID"),
                       20, "pid"))
    up.gpuq("cancel", str(job))
    wait_for(lambda: up.state(job) == "CANCELLED", 30, "cancelled")
    wait_for(lambda: not Path(f"/proc/{pid}").exists()
             or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", 10, "killed")

    # Kill the worker hard: `gpuq up` starts it again and jobs still run.
    workers = subprocess.run(["pgrep", "-f", "-P", str(up.proc.pid), "gpuq worker"],
                             capture_output=True, text=True).stdout.split()
    assert workers, "the worker is a child process of gpuq up"
    for w in workers:
        os.kill(int(w), signal.SIGKILL)
    job2 = int(up.gpuq("submit", "--parsable", "--gpus", "2", "--env", "NAP=0", "--",
                       sys.executable, "-c", JOB).stdout)
    wait_for(lambda: up.state(job2) == "COMPLETED", 60, "job after the worker restart")
    assert httpx.get(up.url + "/healthz").status_code == 200
