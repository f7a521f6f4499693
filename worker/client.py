"""The worker's HTTP client for the node endpoints of API v1.

Connection errors and 502/503/504 answers are retried with exponential backoff; other
errors raise ``ApiError`` with the server's detail. The node token is sent in the
``Authorization`` header only: it is never part of a log line, an exception or a repr.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from gpuq.wire.nodes import (
    Heartbeat,
    HeartbeatReply,
    JobStateReport,
    LaunchSpec,
    NodeRegister,
    RegisterReply,
)

log = logging.getLogger(__name__)
RETRY_STATUSES = frozenset({502, 503, 504})
MAX_BACKOFF_S = 10.0


class ApiError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class ServerUnavailable(Exception):
    """The server could not be reached (or answered 502/503/504) after the retries."""


@dataclass(frozen=True)
class LogAck:
    #: Bytes of the job's output the server holds now.
    size: int
    #: The server has less than the offset we sent from (409): resend from ``size``.
    resend: bool = False
    #: The run is not the job's current attempt (409 with ``"stale": true``): the server
    #: takes no more of its output.
    stale: bool = False


class NodeClient:
    def __init__(self, server_url: str, node: str, token: str, *, timeout_s: float = 10.0,
                 retries: int = 3, backoff_s: float = 0.5,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.server_url = server_url.rstrip("/")
        self.node = node
        self.retries, self.backoff_s, self._sleep = retries, backoff_s, sleep
        self._http = httpx.Client(base_url=self.server_url, timeout=timeout_s,
                                  transport=transport,
                                  headers={"Authorization": f"Bearer {token}"})

    def __repr__(self) -> str:
        return f"NodeClient({self.server_url!r}, node={self.node!r})"

    def close(self) -> None:
        self._http.close()

    # --- the endpoints -----------------------------------------------------------------
    def register(self, body: NodeRegister) -> RegisterReply:
        r = self._request("POST", f"/v1/nodes/{self.node}/register", json=body.model_dump())
        return RegisterReply.model_validate(r.json())

    def heartbeat(self, body: Heartbeat) -> HeartbeatReply:
        r = self._request("POST", f"/v1/nodes/{self.node}/heartbeat", json=body.model_dump())
        return HeartbeatReply.model_validate(r.json())

    def launch_spec(self, job_id: int) -> LaunchSpec | None:
        """The job's spec, or ``None`` when the job is not assigned to this node (404)."""
        try:
            r = self._request("GET", f"/v1/nodes/{self.node}/jobs/{int(job_id)}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return LaunchSpec.model_validate(r.json())

    def report(self, job_id: int, body: JobStateReport) -> str:
        """Report a state change; returns the job's state in the database now."""
        r = self._request("POST", f"/v1/nodes/{self.node}/jobs/{int(job_id)}/events",
                          json=body.model_dump())
        return str(r.json().get("state", ""))

    def ship_log(self, job_id: int, attempt: int, offset: int, data: bytes) -> LogAck:
        """Append ``data`` at ``offset`` of the output of run (``job_id``, ``attempt``)."""
        try:
            r = self._request("POST", f"/v1/nodes/{self.node}/jobs/{int(job_id)}/log",
                              params={"offset": offset, "attempt": int(attempt)}, content=data,
                              headers={"Content-Type": "application/octet-stream"})
        except ApiError as e:
            if e.status == 409 and isinstance(e.detail, dict):
                if e.detail.get("stale"):
                    return LogAck(size=int(e.detail.get("size") or 0), stale=True)
                if "size" in e.detail:
                    return LogAck(size=int(e.detail["size"]), resend=True)
            raise
        return LogAck(size=int(r.json()["size"]))

    # --- transport ---------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                r = self._http.request(method, path, **kwargs)
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if r.status_code < 400:
                    return r
                if r.status_code not in RETRY_STATUSES:
                    raise ApiError(r.status_code, _detail(r))
                problem = f"HTTP {r.status_code}"
            if attempt >= self.retries:
                raise ServerUnavailable(f"{method} {self.server_url}{path}: {problem}")
            delay_s = min(MAX_BACKOFF_S, self.backoff_s * 2**attempt)
            log.debug("%s %s: %s; retrying in %.1f s", method, path, problem, delay_s)
            self._sleep(delay_s)
            attempt += 1


def _detail(r: httpx.Response) -> Any:
    """The server's ``detail``, else the body text. A body with more than ``detail`` (the
    log's 409 carries ``size`` and ``stale``) is kept whole."""
    try:
        body = r.json()
    except ValueError:
        return r.text[:500]
    if isinstance(body, dict) and "detail" in body:
        return body if set(body) - {"detail"} else body["detail"]
    return body
