"""Shared fixtures of the worker tests: a LaunchSpec builder, an in-memory fake of the
scheduler's node endpoints (the real NodeClient talks to it through httpx's transport
seam, or over real HTTP), and a polling helper."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from gpuq.wire.nodes import LaunchSpec

TOKEN = "node-secret-token-123"


def _make_spec(job_id: int = 1, **kw: Any) -> LaunchSpec:
    fields: dict[str, Any] = dict(
        job_id=job_id, attempt=1, name=f"job{job_id}", user="alice", account="lab1",
        state="DISPATCHED", cancel_requested=False, command=["true"], script=None,
        workdir="/tmp", environment={}, gpu_indices=[0, 1], gpu_uuids=["GPU-a", "GPU-b"],
        cpus=1, memory_mib=0, time_limit_s=60)
    fields.update(kw)
    fields.setdefault("unix_user", fields["user"])
    if kw.get("script") is not None and "command" not in kw:
        fields["command"] = None
    return LaunchSpec(**fields)


@pytest.fixture
def make_spec() -> Callable[..., LaunchSpec]:
    return _make_spec


class FakeServer:
    """The node endpoints of the contract (v2: attempts), in memory, for one node.

    ``specs[job_id]`` is the job as the scheduler has it now; its ``attempt`` is the
    current one: log posts for another attempt get the stale 409, and reports about
    another attempt change nothing (the answer is the job's state)."""

    def __init__(self, node: str = "n1") -> None:
        self.node = node
        self.specs: dict[int, LaunchSpec] = {}
        #: (job id, the report as sent, ``attempt`` included)
        self.events: list[tuple[int, dict[str, Any]]] = []
        #: (job id, attempt) -> the output stored for that run
        self.logs: dict[tuple[int, int], bytearray] = {}
        self.log_posts: list[tuple[int, int, int, int]] = []  # (job, attempt, offset, bytes)
        self.heartbeats: list[dict[str, Any]] = []
        self.registrations: list[dict[str, Any]] = []
        #: The next heartbeat's reply: ``launch`` job ids, ``kill`` [{job_id, attempt}].
        self.reply: dict[str, list[Any]] = {"launch": [], "kill": []}
        self.down = False
        self.fail_logs = False
        self.forget_node = False
        self.lock = threading.Lock()

    def states(self, job_id: int, attempt: int | None = None) -> list[str]:
        return [e["state"] for j, e in self.events
                if j == job_id and (attempt is None or e["attempt"] == attempt)]

    def log(self, job_id: int, attempt: int = 1) -> bytes:
        return bytes(self.logs.get((job_id, attempt), b""))

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            return self._handle(request)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"detail": "bad token"})
        parts = request.url.path.strip("/").split("/")
        if parts[:3] != ["v1", "nodes", self.node]:
            return httpx.Response(403, json={"detail": "not your node"})
        rest = parts[3:]
        body = request.read()
        if rest == ["register"]:
            self.registrations.append(json.loads(body))
            self.forget_node = False
            return httpx.Response(200, json={"node": self.node, "queue": f"gpuq.node.{self.node}",
                                             "heartbeat_interval_s": 0.2})
        if rest == ["heartbeat"]:
            if self.forget_node:
                return httpx.Response(409, json={"detail": "register first"})
            self.heartbeats.append(json.loads(body))
            reply, self.reply = self.reply, {"launch": [], "kill": []}
            return httpx.Response(200, json=reply)
        job_id = int(rest[1])
        if job_id not in self.specs:
            return httpx.Response(404, json={"detail": f"job {job_id} is not assigned"})
        if len(rest) == 2:
            return httpx.Response(200, json=self.specs[job_id].model_dump(mode="json"))
        current = self.specs[job_id]
        if rest[2] == "events":
            report = json.loads(body)
            self.events.append((job_id, report))
            if report["attempt"] != current.attempt:
                return httpx.Response(200, json={"state": current.state})
            return httpx.Response(200, json={"state": report["state"]})
        if self.fail_logs:
            return httpx.Response(500, json={"detail": "disk full"})
        offset = int(request.url.params["offset"])
        attempt = int(request.url.params["attempt"])
        self.log_posts.append((job_id, attempt, offset, len(body)))
        if attempt != current.attempt:
            return httpx.Response(409, json={"detail": f"stale attempt {attempt}: the job is "
                                                       f"at attempt {current.attempt}",
                                             "stale": True})
        log = self.logs.setdefault((job_id, attempt), bytearray())
        if offset > len(log):
            return httpx.Response(409, json={"detail": "gap", "size": len(log)})
        log += body[len(log) - offset:]
        return httpx.Response(200, json={"size": len(log)})


@pytest.fixture
def token() -> str:
    """The node token the fake server accepts."""
    return TOKEN


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def transport(server: FakeServer) -> httpx.MockTransport:
    return httpx.MockTransport(server.handle)


@pytest.fixture
def http_server(server: FakeServer) -> Iterator[str]:
    """The fake served over real HTTP; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            url = urlsplit(self.path)
            req = httpx.Request(self.command, f"http://fake{url.path}",
                                params={k: v[0] for k, v in parse_qs(url.query).items()},
                                headers=dict(self.headers.items()),
                                content=self.rfile.read(length))
            try:
                resp = server.handle(req)
            except httpx.ConnectError:
                resp = httpx.Response(503, json={"detail": "down"})
            data = resp.read()
            self.send_response(resp.status_code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _any

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _wait_for(pred: Callable[[], Any], timeout_s: float = 15.0, step_s: float = 0.02,
              what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(step_s)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    return _wait_for
