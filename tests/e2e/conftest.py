"""End-to-end harness: real server and worker processes, the real CLI as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

PY = [sys.executable, "-m", "gpuq"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], Any], timeout_s: float = 30.0,
             what: str | Callable[[], str] = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for "
                         f"{(what() if callable(what) else what) or pred}")


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUQ_")}
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    env["XDG_DATA_HOME"] = str(home / ".local/share")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def spawn(name: str, argv: list[str], env: dict[str, str], logdir: Path) -> Proc:
    log = logdir / f"{name}.log"
    f = open(log, "wb")  # noqa: SIM115 - handed to the child
    p = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    f.close()
    return Proc(name, p, log)


@dataclass
class Cluster:
    url: str
    tmp: Path
    env: dict[str, str]
    admin_token: str
    procs: list[Proc] = field(default_factory=list)
    user_tokens: dict[str, str] = field(default_factory=dict)

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        r = httpx.request(method, self.url + path, timeout=10,
                          headers={"Authorization": f"Bearer {self.admin_token}"}, **kw)
        assert r.status_code < 300, r.text
        return r.json()

    def add_user(self, name: str, account: str = "lab1") -> str:
        accounts = {a["name"] for a in self.admin("GET", "/v1/admin/accounts")}
        if account not in accounts:
            self.admin("POST", "/v1/admin/accounts", json={"name": account})
        self.admin("POST", "/v1/admin/users", json={"name": name, "account": account})
        tok = self.admin("POST", "/v1/admin/tokens", json={"role": "user", "user": name})
        self.user_tokens[name] = tok["token"]
        return tok["token"]

    def add_worker(self, name: str, gpus: str = "4xA100-80GB", **env: str) -> Proc:
        tok = self.admin("POST", "/v1/admin/tokens", json={"role": "node", "node": name})
        token_file = self.tmp / f"{name}.token"
        token_file.write_text(tok["token"])
        token_file.chmod(0o600)
        wenv = {**self.env, "GPUQ_SERVER_URL": self.url, "GPUQ_NODE_NAME": name,
                "GPUQ_NODE_TOKEN_FILE": str(token_file), "GPUQ_SIMULATE_GPUS": gpus,
                "GPUQ_WORKER_STATE_DIR": str(self.tmp / "worker" / name),
                # Tests run jobs as the test's own account (root in CI, allowed here).
                "GPUQ_WORKER_RUN_AS": "daemon", "GPUQ_WORKER_ALLOW_ROOT_JOBS": "1", **env}
        proc = spawn(f"worker-{name}", [*PY, "worker"], wenv, self.tmp)
        self.procs.append(proc)
        wait_for(lambda: any(n["name"] == name and n["state"] == "UP"
                             for n in self.admin("GET", "/v1/nodes")),
                 30, f"node {name} to register\n{proc.output()}")
        return proc

    def gpuq(self, *args: str, user: str = "alice", check: bool = True,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {**base_env(self.tmp / "home"), "GPUQ_SERVER": self.url,
               "GPUQ_TOKEN": self.user_tokens[user]}
        r = subprocess.run([*PY, *args], env=env, capture_output=True, text=True, timeout=60,
                           cwd=cwd or self.tmp)
        if check:
            assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
        return r

    def job(self, job_id: int) -> dict[str, Any]:
        return self.admin("GET", f"/v1/jobs/{job_id}")

    def wait_state(self, job_id: int, states: set[str], timeout_s: float = 30) -> dict:
        return wait_for(lambda: (j := self.job(job_id))["state"] in states and j,
                        timeout_s, f"job {job_id} to reach {states}: {self.job(job_id)}\n"
                        + "\n".join(p.output()[-3000:] for p in self.procs))

    def log(self, job_id: int) -> str:
        r = httpx.get(f"{self.url}/v1/jobs/{job_id}/log", timeout=10,
                      headers={"Authorization": f"Bearer {self.admin_token}"})
        return r.text


def start_server(tmp: Path, extra_env: dict[str, str]) -> Cluster:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**base_env(tmp / "home"), "GPUQ_DATA_DIR": str(tmp / "data"),
           "GPUQ_LISTEN_PORT": str(port), "GPUQ_SCHEDULE_INTERVAL_S": "1",
           "GPUQ_HEARTBEAT_INTERVAL_S": "1", "GPUQ_KILL_GRACE_S": "2", **extra_env}
    proc = spawn("server", [*PY, "server"], env, tmp)

    def healthy() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"server died:\n{proc.output()}")
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 60, "the server")
    token = (tmp / "data" / "admin.token").read_text().strip()
    return Cluster(url=url, tmp=tmp, env=env, admin_token=token, procs=[proc])


@pytest.fixture
def redis_cluster(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[Cluster]:
    """A deployment as in the README: PostgreSQL, Redis, `gpuq server`, `gpuq worker`s."""
    # A Redis database of its own per test keeps parallel tests' queues apart.
    db = int(uuid.uuid4().int % 15) + 1
    broker = redis_url.rsplit("/", 1)[0] + f"/{db}"
    cluster = start_server(tmp_path, {"GPUQ_DATABASE_URL": pg_url, "GPUQ_BROKER_URL": broker})
    try:
        yield cluster
    finally:
        for p in reversed(cluster.procs):
            p.stop()


def parse_env_dump(text: str) -> dict[str, str]:
    """Lines ``KEY=VALUE`` printed by the test jobs."""
    out = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v
    return out


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
