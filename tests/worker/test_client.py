from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from gpuq.wire.nodes import Heartbeat, JobRef, JobSample, JobStateReport, NodeRegister, WorkerJob
from gpuq.worker.client import ApiError, LogAck, NodeClient, ServerUnavailable

TOKEN = "node-secret-token-123"  # the fake server's (conftest.TOKEN)
FakeServer = Any


def client(transport: httpx.BaseTransport, **kw: Any) -> NodeClient:
    return NodeClient("http://sched:8642/", "n1", TOKEN, transport=transport,
                      sleep=lambda s: None, **kw)


def test_endpoints_round_trip(server: FakeServer, transport: httpx.MockTransport,
                              make_spec: Any) -> None:
    c = client(transport)
    reply = c.register(NodeRegister(gpu_backend="simulated"))
    assert (reply.node, reply.queue) == ("n1", "gpuq.node.n1")
    server.reply = {"launch": [4], "kill": [{"job_id": 5, "attempt": 2}]}
    hb = c.heartbeat(Heartbeat(jobs=[WorkerJob(job_id=5, attempt=2, state="RUNNING",
                                               sample=JobSample(power_w=250.0))]))
    assert (hb.launch, hb.kill) == ([4], [JobRef(job_id=5, attempt=2)])
    assert server.heartbeats[0]["jobs"] == [{
        "job_id": 5, "attempt": 2, "state": "RUNNING",
        "sample": {"utilization_pct": None, "memory_used_mib": None, "power_w": 250.0,
                   "energy_j": None, "gpus": None}}]
    server.specs[4] = make_spec(job_id=4, attempt=3, unix_user="alice_l")
    spec = c.launch_spec(4)
    assert spec is not None and (spec.job_id, spec.attempt, spec.unix_user) == (4, 3, "alice_l")
    assert c.launch_spec(99) is None
    assert c.report(4, JobStateReport(attempt=3, state="COMPLETED", exit_code=0)) == "COMPLETED"
    assert server.events == [(4, {"attempt": 3, "state": "COMPLETED", "exit_code": 0,
                                  "reason": ""})]
    assert c.ship_log(4, 3, 0, b"hello ") == LogAck(6)
    assert c.ship_log(4, 3, 3, b"lo world") == LogAck(11)
    assert server.log(4, 3) == b"hello world"
    assert server.log_posts[0] == (4, 3, 0, 6)


def test_log_gap_asks_for_a_resend(server: FakeServer, transport: httpx.MockTransport,
                                   make_spec: Any) -> None:
    server.specs[1] = make_spec()
    assert client(transport).ship_log(1, 1, 100, b"x") == LogAck(size=0, resend=True)


def test_log_of_a_stale_attempt_is_refused(server: FakeServer, transport: httpx.MockTransport,
                                           make_spec: Any) -> None:
    server.specs[1] = make_spec(attempt=2)
    assert client(transport).ship_log(1, 1, 0, b"old output") == LogAck(size=0, stale=True)
    assert server.logs == {}


def test_a_report_about_an_older_attempt_changes_nothing(
        server: FakeServer, transport: httpx.MockTransport, make_spec: Any) -> None:
    server.specs[1] = make_spec(attempt=2, state="RUNNING")
    assert client(transport).report(1, JobStateReport(attempt=1, state="FAILED")) == "RUNNING"


def test_connection_errors_are_retried_with_backoff() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        if len(calls) == 3:
            return httpx.Response(503, json={"detail": "starting"})
        return httpx.Response(200, json={"state": "RUNNING"})

    c = NodeClient("http://s", "n1", TOKEN, transport=httpx.MockTransport(flaky),
                   retries=3, backoff_s=0.5, sleep=sleeps.append)
    assert c.report(1, JobStateReport(state="RUNNING")) == "RUNNING"
    assert sleeps == [0.5, 1.0, 2.0]


def test_gives_up_after_the_retries(server: FakeServer, transport: httpx.MockTransport) -> None:
    server.down = True
    with pytest.raises(ServerUnavailable, match="POST http://sched:8642/v1/nodes/n1/heartbeat"):
        client(transport, retries=2).heartbeat(Heartbeat())


def test_client_errors_are_not_retried(transport: httpx.MockTransport) -> None:
    bad = NodeClient("http://s", "n1", "wrong-token", transport=transport,
                     sleep=lambda s: pytest.fail("retried a 401"))
    with pytest.raises(ApiError) as e:
        bad.heartbeat(Heartbeat())
    assert (e.value.status, e.value.detail) == (401, "bad token")


def test_token_never_logged_or_shown(server: FakeServer, transport: httpx.MockTransport,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    c = client(transport, retries=1)
    c.register(NodeRegister(gpu_backend="simulated"))
    server.down = True
    with pytest.raises(ServerUnavailable) as e:
        c.heartbeat(Heartbeat())
    assert caplog.records, "expected the retry to be logged"
    assert TOKEN not in caplog.text
    assert TOKEN not in str(e.value) and TOKEN not in repr(c)


def test_a_500_is_retried_then_raised_as_the_server_s_error() -> None:
    """A 500 may be a passing fault (retried with the same backoff); if it stays, it is
    the server's bug: ``ApiError``, which the reporter keeps for its next pass."""
    calls: list[int] = []
    sleeps: list[float] = []

    def broken(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(500, json={"detail": "Internal Server Error"})

    c = NodeClient("http://s", "n1", TOKEN, transport=httpx.MockTransport(broken),
                   retries=2, backoff_s=0.5, sleep=sleeps.append)
    with pytest.raises(ApiError) as e:
        c.report(1, JobStateReport(state="RUNNING"))
    assert e.value.status == 500 and len(calls) == 3 and sleeps == [0.5, 1.0]


def test_a_500_then_an_answer_is_the_answer() -> None:
    answers = iter([httpx.Response(500, text="oops"), httpx.Response(200, json={"state": "X"})])
    c = NodeClient("http://s", "n1", TOKEN, transport=httpx.MockTransport(lambda r: next(answers)),
                   sleep=lambda s: None)
    assert c.report(1, JobStateReport(state="RUNNING")) == "X"


def test_contact_for_the_fence() -> None:
    """An accepted heartbeat or registration, or any 503 that says the database is away,
    is contact (with the time its request was sent); nothing else is."""
    now = [100.0]
    seen: list[tuple[float, bool]] = []
    answers: list[httpx.Response] = []

    def serve(request: httpx.Request) -> httpx.Response:
        now[0] += 1.0  # each request takes a second to answer
        return answers.pop(0)

    c = NodeClient("http://s", "n1", TOKEN, transport=httpx.MockTransport(serve),
                   retries=1, sleep=lambda s: None, clock=lambda: now[0])
    c.on_contact = lambda sent_at, away: seen.append((sent_at, away))
    answers[:] = [httpx.Response(200, json={"launch": [], "kill": []})]
    c.heartbeat(Heartbeat())
    assert seen == [(100.0, False)]  # sent at 100, answered at 101
    db_away = httpx.Response(503, json={"detail": "the database is unavailable"},
                             headers={"X-Gpuq-Unavailable": "database"})
    answers[:] = [db_away, httpx.Response(503, text="proxy says no")]
    with pytest.raises(ServerUnavailable):
        c.heartbeat(Heartbeat())
    assert seen[1:] == [(101.0, True)]  # the proxy's 503 is no contact
    answers[:] = [httpx.Response(500, text="bug"), httpx.Response(502, text="gateway")]
    with pytest.raises(ServerUnavailable):
        c.heartbeat(Heartbeat())
    answers[:] = [httpx.Response(200, json={"state": "RUNNING"})]
    c.report(1, JobStateReport(state="RUNNING"))  # a report does not renew the lease
    assert len(seen) == 2
    answers[:] = [db_away, db_away]
    with pytest.raises(ServerUnavailable):
        c.report(1, JobStateReport(state="RUNNING"))  # but says the database is away
    assert seen[2:] == [(106.0, True), (107.0, True)]
    answers[:] = [httpx.Response(200, json={"node": "n1", "queue": "q",
                                            "heartbeat_interval_s": 1.0})]
    c.register(NodeRegister(gpu_backend="simulated"))
    assert seen[4:] == [(108.0, False)]
