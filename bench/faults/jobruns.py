"""What the partition and database-outage scenarios share: short timeouts, a job that says
when and where each of its runs started, a watcher that sees each run's process go (by
pid, in ``/proc``), and the jobs' submits and cancels over the API."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import Cluster, wait_for


@dataclass(frozen=True)
class Timings:
    """The scenario's settings: ``node_down_s >= fence_s + grace_s + margin_s``."""

    heartbeat_s: float = 0.5
    fence_s: float = 3.0
    grace_s: float = 1.0
    margin_s: float = 1.5
    node_down_s: float = 6.0

    def env(self) -> dict[str, str]:
        return {"GPUQ_HEARTBEAT_INTERVAL_S": str(self.heartbeat_s),
                "GPUQ_FENCE_AFTER_S": str(self.fence_s),
                "GPUQ_FENCE_GRACE_S": str(self.grace_s),
                "GPUQ_FENCE_MARGIN_S": str(self.margin_s),
                "GPUQ_NODE_DOWN_AFTER_S": str(self.node_down_s),
                "GPUQ_SCHEDULE_INTERVAL_S": "0.5"}

    def as_dict(self) -> dict[str, float]:
        return {"heartbeat_interval_s": self.heartbeat_s, "fence_after_s": self.fence_s,
                "fence_grace_s": self.grace_s, "fence_margin_s": self.margin_s,
                "node_down_after_s": self.node_down_s}


FAST = Timings()

#: A job: appends "<job id> <node> <pid> <epoch>" to the runs file as it starts, then
#: sleeps. Its default SIGTERM action ends it at once.
JOB = """import os, sys, time
line = "%s %s %d %.6f\\n" % (os.environ["GPUQ_JOB_ID"], os.environ["GPUQ_NODE"], os.getpid(),
                            time.time())
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, line.encode())
os.close(fd)
time.sleep(float(sys.argv[2]))
"""


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@dataclass
class Run:
    job_id: int
    node: str
    pid: int
    #: When the job's process started (as it wrote it), epoch seconds.
    started: float
    #: When the watcher first saw it gone (``None``: still running).
    ended: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "pid": self.pid, "started": round(self.started, 3),
                "ended": None if self.ended is None else round(self.ended, 3)}


class RunWatch(threading.Thread):
    """Reads the runs file and looks at each run's pid every ``poll_s``: when each run
    started and when it went (its end is seen at most ``poll_s`` late: an overlap is
    overstated, never missed)."""

    def __init__(self, path: Path, poll_s: float = 0.02) -> None:
        super().__init__(name="run-watch", daemon=True)
        self.path, self.poll_s = path, poll_s
        self._runs: list[Run] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._read = 0

    def run(self) -> None:
        while not self._halt.wait(self.poll_s):
            self.look()

    def look(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._read)
                data = f.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1
        self._read += end
        now = time.time()
        with self._lock:
            for line in data[:end].decode().splitlines():
                job_id, node, pid, started = line.split()
                self._runs.append(Run(int(job_id), node, int(pid), float(started)))
            for r in self._runs:
                if r.ended is None and not alive(r.pid):
                    r.ended = now

    def runs(self) -> list[Run]:
        self.look()
        with self._lock:
            return [Run(r.job_id, r.node, r.pid, r.started, r.ended) for r in self._runs]

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def job_file(tmp: Path) -> str:
    path = tmp / "job.py"
    path.write_text(JOB)
    return str(path)


def submit(c: Cluster, token: str, job_py: str, runs: Path, *, seconds: float,
           requeue: bool = True) -> int:
    r = httpx.post(f"{c.url}/v1/jobs", timeout=10, headers={"Authorization": f"Bearer {token}"},
                   json={"command": [sys.executable, job_py, str(runs), str(seconds)],
                         "workdir": str(c.tmp), "gpus": 1, "requeue": requeue})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def jobs(c: Cluster, ids: list[int]) -> dict[int, dict[str, Any]]:
    return {i: c.job(i) for i in ids}


def cancel_all(c: Cluster, ids: list[int], runs: RunWatch | None = None) -> None:
    """Cancel the jobs and wait for them to end; kill any run process still left."""
    for i in ids:
        httpx.post(f"{c.url}/v1/jobs/{i}/cancel", timeout=10,
                   headers={"Authorization": f"Bearer {c.admin_token}"})
    try:
        wait_for(lambda: all(j["state"] not in ("PENDING", "DISPATCHED", "RUNNING")
                             for j in jobs(c, ids).values()), 20, "the jobs to end")
    finally:
        for r in runs.runs() if runs is not None else []:
            if alive(r.pid):
                os.kill(r.pid, 9)


def node(c: Cluster, name: str) -> dict[str, Any]:
    return next(n for n in c.admin("GET", "/v1/nodes") if n["name"] == name)
