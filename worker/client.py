"""The worker's HTTP client for the node endpoints of API v1.

Connection errors and 500/502/503/504 answers are retried with exponential backoff
(bounded: ``retries`` more tries, at most ``MAX_BACKOFF_S`` apart); then a 500 raises
``ApiError`` (a bug on the server: the caller keeps the report for its next pass), the
others ``ServerUnavailable``; other errors raise ``ApiError`` with the server's detail.
The node token is sent in the ``Authorization`` header only: it is never part of a log
line, an exception or a repr.

``on_contact(sent_at, database_away)`` is told of each answer that counts as contact with
the scheduler for the node's fence (``worker.lease``): a heartbeat or registration it
accepted, or any 503 saying its database is unavailable (``X-Gpuq-Unavailable:
database``), with the ``boottime()`` at which that request was sent.
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
from gpuq.worker.lease import boottime

log = logging.getLogger(__name__)
RETRY_STATUSES = frozenset({500, 502, 503, 504})
MAX_BACKOFF_S = 10.0
#: The header of a 503 that says what is unavailable (``database``: the scheduler is up,
#: its database is not, so it cannot mark this node down).
UNAVAILABLE_HEADER = "X-Gpuq-Unavailable"


class ApiError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class ServerUnavailable(Exception):
    """The server could not be reached (or answered 502/503/504) after the retries."""


Contact = Callable[[float, bool], None]


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
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = boottime) -> None:
        self.server_url = server_url.rstrip("/")
        self.node = node
        self.retries, self.backoff_s, self._sleep = retries, backoff_s, sleep
        self._clock = clock
        #: Told of each answer that counts as contact for the fence (see the module).
        self.on_contact: Contact | None = None
        self._http = httpx.Client(base_url=self.server_url, timeout=timeout_s,
                                  transport=transport,
                                  headers={"Authorization": f"Bearer {token}"})

    def __repr__(self) -> str:
        return f"NodeClient({self.server_url!r}, node={self.node!r})"

    def close(self) -> None:
        self._http.close()

    # --- the endpoints -----------------------------------------------------------------
    def register(self, body: NodeRegister) -> RegisterReply:
        r = self._request("POST", f"/v1/nodes/{self.node}/register", json=body.model_dump(),
                          contact=True)
        return RegisterReply.model_validate(r.json())

    def heartbeat(self, body: Heartbeat) -> HeartbeatReply:
        r = self._request("POST", f"/v1/nodes/{self.node}/heartbeat",
                          json=body.model_dump(mode="json"), contact=True)
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
    def _request(self, method: str, path: str, *, contact: bool = False,
                 **kwargs: Any) -> httpx.Response:
        """``contact``: a 2xx answer renews the fence (a heartbeat, a registration)."""
        attempt = 0
        while True:
            sent_at = self._clock()
            r: httpx.Response | None = None
            try:
                r = self._http.request(method, path, **kwargs)
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if r.status_code < 400:
                    if contact:
                        self._contact(sent_at, database_away=False)
                    return r
                if r.status_code == 503 and r.headers.get(UNAVAILABLE_HEADER) == "database":
                    self._contact(sent_at, database_away=True)
                if r.status_code not in RETRY_STATUSES:
                    raise ApiError(r.status_code, _detail(r))
                problem = f"HTTP {r.status_code}"
            if attempt >= self.retries:
                if r is not None and r.status_code == 500:
                    raise ApiError(500, _detail(r))  # a bug, not an outage
                raise ServerUnavailable(f"{method} {self.server_url}{path}: {problem}")
            delay_s = min(MAX_BACKOFF_S, self.backoff_s * 2**attempt)
            log.debug("%s %s: %s; retrying in %.1f s", method, path, problem, delay_s)
            self._sleep(delay_s)
            attempt += 1


    def _contact(self, sent_at: float, *, database_away: bool) -> None:
        if self.on_contact is not None:
            try:
                self.on_contact(sent_at, database_away)
            except Exception:  # noqa: BLE001 - the request's answer stands
                log.exception("renewing the lease failed")


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
