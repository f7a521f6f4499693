"""What the service benchmarks share: a fresh PostgreSQL database, a Redis database, a real
``gpuq server`` (and real workers) from the end-to-end harness, fake nodes that only talk
HTTP, a light keep-alive HTTP client, percentiles, and the machine's description."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import create_engine, text

from tests.e2e.conftest import Cluster, start_server

PG_ADMIN_URL = os.environ.get("GPUQ_TEST_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GPUQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def machine() -> dict[str, Any]:
    """Where the figures come from, taken before the run: the load average says how busy
    the machine was, the CPU probe how fast its CPU runs Python."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(terse=True),
            "python": platform.python_version(), "loadavg_1m": round(os.getloadavg()[0], 2),
            "cpu_probe_ms": cpu_probe_ms(), "date": time.strftime("%Y-%m-%d")}


def cpu_probe_ms() -> float:
    """A fixed pure-Python loop (a million additions), best of three, in ms: lower is
    faster. VMs of the same size differ (this project's benchmarks ran 2-3 times slower on
    one 2-core VM than on another); the probe says which kind a run had."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 1)


def describe(m: dict[str, Any]) -> str:
    """The machine in a few words, for a benchmark's first line."""
    return (f"{m['cpus']} CPUs (CPU probe {m['cpu_probe_ms']} ms), load {m['loadavg_1m']} "
            f"({m['date']})")


@contextmanager
def pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (the server migrates it), dropped afterwards."""
    name = f"gpuq_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def redis_broker(db: int) -> str:
    """A Redis database of the benchmark's own, emptied first."""
    import redis

    url = REDIS_URL.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


@contextmanager
def server(env: dict[str, str] | None = None, *, database: str = "postgresql",
           broker: str = "redis", redis_db: int = 14) -> Iterator[Cluster]:
    """A real ``gpuq server`` on PostgreSQL (or its default SQLite) with the Redis (or its
    default filesystem) broker; stopped with its workers afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="gpuq-bench-"))
    extra = dict(env or {})
    if broker == "redis":
        extra["GPUQ_BROKER_URL"] = redis_broker(redis_db)
    with pg_database() if database == "postgresql" else _nothing() as url:
        if url:
            extra["GPUQ_DATABASE_URL"] = url
        cluster = start_server(tmp, extra)
        try:
            yield cluster
        finally:
            for p in reversed(cluster.procs):
                p.stop()


@contextmanager
def _nothing() -> Iterator[str]:
    yield ""


def fake_node(cluster: Cluster, name: str, gpus: int = 8,
              model: str = "A100-80GB") -> str:
    """Register a node that only talks HTTP (no worker process); returns its token."""
    tok = cluster.admin("POST", "/v1/admin/tokens", json={"role": "node", "node": name})["token"]
    body = {"cpus": 128, "memory_mib": 1024 * 1024, "gpu_backend": "simulated",
            "gpus": [{"index": i, "uuid": f"GPU-{name}-{i}", "model": model,
                      "memory_mib": 81920} for i in range(gpus)]}
    with Http(cluster.url, tok) as h:
        status, reply = h.request("POST", f"/v1/nodes/{name}/register", body)
        assert status == 200, reply
    return tok


def submit_singles(url: str, token: str, job: dict[str, Any], n: int,
                   clients: int = 8) -> None:
    """``n`` single-job submits (``POST /v1/jobs``, each a row of its own: an array would
    be one record) from ``clients`` threads."""
    counts = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]

    def client(k: int) -> None:
        with Http(url, token, timeout=600) as h:
            for _ in range(k):
                status, reply = h.request("POST", "/v1/jobs", job)
                assert status == 201, reply

    threads = [threading.Thread(target=client, args=(k,)) for k in counts if k]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class Http:
    """One keep-alive HTTP/1.1 connection (``http.client``: the lightest client at hand,
    so that the benchmark's own CPU use stays small beside the server's)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        u = urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {token}",
                        "Content-Type": "application/json"}

    def request(self, method: str, path: str, body: Any = None, *,
                raw: bool = False) -> tuple[int, Any]:
        """The status and the decoded JSON reply (``raw``: the bytes, not decoded: a
        listing's latency is the server's, not this client's JSON decoding)."""
        data = json.dumps(body).encode() if body is not None else None
        try:
            self.conn.request(method, path, body=data, headers=self.headers)
            r = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closed an idle keep-alive connection: open a new one, once.
            self.conn.close()
            self.conn.request(method, path, body=data, headers=self.headers)
            r = self.conn.getresponse()
        reply = r.read()
        if raw:
            return r.status, reply
        return r.status, json.loads(reply) if reply else None

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


#: API processes the service benchmarks run the server with: one per core, as the README
#: advises for a busy cluster (``--workers`` changes it).
WORKERS = 2


def add_workers_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--workers", type=int, default=WORKERS,
                    help="API processes of the server (gpuq server --workers)")


class CpuUse:
    """CPU time used by the server's processes (the API processes and the loop), by
    PostgreSQL's and by this benchmark's own process between ``start`` and ``stop``, in
    cores (Linux /proc; empty elsewhere). It says where a machine's CPU went."""

    def __init__(self, server_pid: int, port: int) -> None:
        self.server_pid = server_pid
        self.port = port
        self.before: dict[str, float] = {}
        self.t0 = 0.0
        self.names: dict[int, str] = {}

    @classmethod
    def of(cls, cluster: Cluster) -> CpuUse:
        """For the server of a ``server()`` cluster."""
        return cls(cluster.procs[0].popen.pid, int(cluster.url.rsplit(":", 1)[1]))

    def _sample(self) -> dict[str, float]:
        tick = os.sysconf("SC_CLK_TCK")
        out: dict[str, float] = {}
        kids = _children(self.server_pid)
        for pid in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
            if not pid.name.isdigit():
                continue
            try:
                fields = (pid / "stat").read_text().rsplit(")", 1)[1].split()
                name = (pid / "comm").read_text().strip()
            except OSError:
                continue
            used = (int(fields[11]) + int(fields[12])) / tick
            n = int(pid.name)
            if n == os.getpid():
                key = "benchmark clients"
            elif n == self.server_pid or n in kids:
                key = self._role(n)
            elif name.startswith("postgres"):
                key = "postgresql"
            else:
                continue
            out[key] = out.get(key, 0.0) + used
        return out

    def _role(self, pid: int) -> str:
        """supervisor (the parent of --workers N), api (holds the listening socket) or
        loop; with one process: server."""
        if pid not in self.names:
            kids = _children(self.server_pid)
            if pid == self.server_pid:
                self.names[pid] = "server supervisor" if kids else "server (API + loop)"
            else:
                listening = _listening_inode(self.port)
                fds: set[str] = set()
                for fd in Path(f"/proc/{pid}/fd").glob("*"):
                    with suppress(OSError):  # an fd closed while we looked
                        fds.add(os.readlink(fd))
                if not listening or not fds:
                    return f"server {pid}"  # not known yet: ask again next time
                role = "api" if f"socket:[{listening}]" in fds else "loop"
                self.names[pid] = f"server {role} {pid}"
        return self.names[pid]

    def start(self) -> None:
        self.before, self.t0 = self._sample(), time.perf_counter()

    def stop(self) -> dict[str, float]:
        after, elapsed = self._sample(), time.perf_counter() - self.t0
        return {k: round((v - self.before.get(k, 0.0)) / elapsed, 2)
                for k, v in sorted(after.items()) if v - self.before.get(k, 0.0) > 0}


def _listening_inode(port: int) -> str:
    with suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                return f[9]
    return ""


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            out.update(int(c) for c in (task / "children").read_text().split())
    return out


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (q in 0..100), nearest rank; 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2) if ms else 0.0,
            "p95_ms": round(pct(ms, 95), 2), "p99_ms": round(pct(ms, 99), 2),
            "max_ms": round(max(ms), 2) if ms else 0.0}


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def finish(result: dict[str, Any], *, as_json: bool, smoke: bool,
           human: Callable[[dict[str, Any], bool], None]) -> int:
    """Print the figures (one JSON object, or the human table) and the exit status: 0 when
    every target is met (always for a smoke run, whose figures are not the targets')."""
    if as_json:
        print(json.dumps(result))
    else:
        human(result, smoke)
    return 0 if smoke or all(result["met"].values()) else 1
