"""Every input is bounded (issue 16, item 1): a request body over ``max_request_bytes`` is
a 413 (with a ``Content-Length`` or streamed without one), a field over its limit a 422
naming it (``gpuq.wire.common``), and an array's shared spec is stored once, not once per
element, while each element still shows and runs with all of it."""

from __future__ import annotations

import importlib
import json
import pkgutil
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import Text, cast, func, select

import gpuq.wire
from gpuq.config import Settings
from gpuq.scheduler.api.app import create_app
from gpuq.scheduler.api.limits import BodyLimit
from gpuq.scheduler.clock import ManualClock
from gpuq.scheduler.db.models import Job, JobArray, JobSpec
from gpuq.scheduler.entry.bootstrap import build_context
from gpuq.scheduler.services.arrays import array_env
from gpuq.wire.common import (
    MAX_ARG_BYTES,
    MAX_ARGV,
    MAX_ARGV_BYTES,
    MAX_ENV,
    MAX_ENV_BYTES,
    MAX_ENV_NAME,
    MAX_ENV_VAR_BYTES,
    MAX_SCRIPT_BYTES,
    Strict,
)
from tests.api.conftest import Api, RecordingDispatcher
from tests.statements import sent

#: The body limit and the fields' limits do not touch the database: one backend will do.
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def alice(api: Api) -> dict[str, str]:
    api.node("gpu01", gpus=4)
    return api.user("alice", "lab1")


def jobs_made(api: Api) -> int:
    with api.ctx.transaction() as s:
        return s.scalar(select(func.count()).select_from(Job)) or 0


# --- the request body: 413 -------------------------------------------------------------


@sqlite_only
def test_a_body_over_the_limit_is_413_naming_the_limit(api: Api, alice: dict[str, str]) -> None:
    limit = api.ctx.settings.max_request_bytes
    assert limit == 8 * 1024 * 1024
    r = api.client.post("/v1/jobs", headers={**alice, "content-type": "application/json"},
                        content=b" " * (limit + 1))
    assert r.status_code == 413, r.text
    assert r.headers["content-length"] == str(len(r.content))
    body = r.json()
    assert body["limit_bytes"] == limit
    assert f"over {limit} bytes (8 MiB)" in body["detail"]
    assert "max_request_bytes" in body["detail"] and "send a smaller one" in body["detail"]
    assert jobs_made(api) == 0


@sqlite_only
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/array", "/v1/nodes/gpu01/heartbeat",
                                  "/v1/nodes/gpu01/jobs/1/log?offset=0"])
def test_a_streamed_body_over_the_limit_is_413(api: Api, alice: dict[str, str],
                                               path: str) -> None:
    """No Content-Length (``Transfer-Encoding: chunked``): counted as it comes. The routes
    read their bodies each their own way (FastAPI's parsing, the heartbeat's and the log's
    own reads): each is refused."""
    node = api.node("gpu03")
    path = path.replace("gpu01", "gpu03")
    headers = node if "/nodes/" in path else alice
    limit = api.ctx.settings.max_request_bytes

    def chunks() -> Iterator[bytes]:
        for _ in range(limit // (1024 * 1024) + 1):
            yield b" " * (1024 * 1024)

    r = api.client.post(path, headers={**headers, "content-type": "application/json"},
                        content=chunks())
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert r.status_code == 413, r.text
    assert r.json()["limit_bytes"] == limit
    assert jobs_made(api) == 0


@sqlite_only
@pytest.mark.parametrize("streamed", [False, True])
def test_the_largest_legitimate_job_fits_under_the_limit(api: Api, alice: dict[str, str],
                                                         streamed: bool) -> None:
    """A script of the most bytes allowed (all newlines: two bytes each in JSON) and an
    environment of the most bytes allowed: well under the body limit."""
    name_len = 8
    per_var = MAX_ENV_VAR_BYTES - 1 - name_len  # NAME=value at its limit
    n_vars = MAX_ENV_BYTES // (name_len + per_var + 2)
    env = {f"V{i:07d}": "x" * per_var for i in range(n_vars)}
    spec = {"script": "\n" * MAX_SCRIPT_BYTES, "workdir": "/tmp", "environment": env}
    data = json.dumps(spec).encode()
    assert len(data) > 2.8 * 1024 * 1024
    content: Any = iter([data[i:i + 65536] for i in range(0, len(data), 65536)]) \
        if streamed else data
    r = api.client.post("/v1/jobs", headers={**alice, "content-type": "application/json"},
                        content=content)
    assert r.status_code == 201, r.text[:300]
    job = api.job(r.json()["id"])
    assert len(job["script"]) == MAX_SCRIPT_BYTES and job["environment"] == env


def test_body_limit_middleware_stops_reading_a_stream_past_the_limit() -> None:
    """At the ASGI level: the app stops at the first chunk past the limit, its own answer
    to the failed read (FastAPI's 400) is replaced by the 413, and a body within the limit
    goes through untouched, with or without a length."""
    pulled: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        total = 0
        try:
            while True:
                msg = await receive()
                total += len(msg.get("body", b""))
                pulled.append(total)
                if not msg.get("more_body"):
                    break
        except Exception:  # noqa: BLE001 - as FastAPI does: a body it cannot read is a 400
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"bad body"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(total).encode()})

    def run(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, bytes]:
        import asyncio

        sent: list[dict[str, Any]] = []
        queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                 for i, c in enumerate(chunks)]

        async def receive() -> dict[str, Any]:
            return queue.pop(0)

        async def send(msg: dict[str, Any]) -> None:
            sent.append(msg)

        pulled.clear()
        asyncio.run(BodyLimit(app, max_bytes=100)(
            {"type": "http", "method": "POST", "headers": headers}, receive, send))
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        return sent[0]["status"], sent[1]["body"]

    status, body = run([], [b"x" * 40] * 10)
    assert status == 413 and b"over 100 bytes" in body
    assert pulled == [40, 80]  # the third chunk (120 bytes) failed; none was read after it
    assert run([], [b"x" * 50, b"x" * 50]) == (200, b"100")
    assert run([(b"content-length", b"100")], [b"x" * 100]) == (200, b"100")
    status, _ = run([(b"content-length", b"101")], [b"x" * 101])
    assert status == 413 and pulled == []  # refused before a byte was read


# --- the same over a real HTTP server ---------------------------------------------------


@pytest.fixture
def small_limit_server(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """The API on a socket (uvicorn), with a body limit of 64 KiB: (port, admin token)."""
    settings = Settings(data_dir=tmp_path / "data", database_url=sqlite_url,
                        max_request_bytes=64 * 1024)
    ctx = build_context(settings, clock=ManualClock(), dispatcher=RecordingDispatcher())
    token = settings.effective_admin_token_file.read_text().strip()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), log_level="critical",
                                           access_log=False, ws="none",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield sock.getsockname()[1], token
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()
    ctx.sessions.kw["bind"].dispose()


def _exchange(port: int, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send the request head and body parts, then read what the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head)
        for part in body_parts:
            conn.sendall(part)
        out = b""
        while b"\r\n\r\n" not in out or not out.rstrip().endswith(b"}"):
            data = conn.recv(65536)
            if not data:
                break
            out += data
    return out


def test_a_real_server_refuses_a_chunked_body_before_it_ends(
        small_limit_server: tuple[int, str]) -> None:
    """Over HTTP: 80 KiB of chunks, and the body never finished (no last chunk): the 413
    comes once the count passes 64 KiB, without waiting for the rest."""
    port, token = small_limit_server
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: gpuq\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"%x\r\n%s\r\n" % (16 * 1024, b" " * (16 * 1024))
    out = _exchange(port, head, [chunk] * 5)
    assert out.startswith(b"HTTP/1.1 413 "), out[:200]
    assert b'"limit_bytes": 65536' in out


def test_a_real_server_refuses_a_long_content_length_unread(
        small_limit_server: tuple[int, str]) -> None:
    """Over HTTP: a Content-Length over the limit is refused at once, its body unsent."""
    port, token = small_limit_server
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: gpuq\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 205000000\r\n\r\n").encode()
    out = _exchange(port, head, [])
    assert out.startswith(b"HTTP/1.1 413 "), out[:200]
    assert b"max_request_bytes" in out


# --- each field: 422 naming it -----------------------------------------------------------

_BIG = "x" * 120 * 1024  # an argument or a value under its own limit, 120 KiB
_E_ACUTE = "\u00e9"  # two bytes in UTF-8


@sqlite_only
@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"command": ["true", "x" * (MAX_ARG_BYTES + 1)]}, ["command", 1], "131072"),
        ({"command": ["true", _E_ACUTE * (MAX_ARG_BYTES // 2 + 1)]}, ["command"],
         "element 1 is 131074 bytes"),
        ({"command": ["true"] + [_BIG] * 9}, ["command"], "argv is"),
        ({"command": ["true"] * (MAX_ARGV + 1)}, ["command"], "4096"),
        ({"environment": {"BIG": "x" * (MAX_ENV_VAR_BYTES + 1)}}, ["environment", "BIG"],
         "131072"),
        ({"environment": {"AB": "x" * (MAX_ENV_VAR_BYTES - 2)}}, ["environment"],
         "AB=<value> is 131073 bytes"),
        ({"environment": {f"V{i}": _BIG for i in range(9)}}, ["environment"],
         "the environment is"),
        ({"environment": {f"V{i}": "1" for i in range(MAX_ENV + 1)}}, ["environment"],
         "4096"),
        ({"environment": {"A" * (MAX_ENV_NAME + 1): "1"}},
         ["environment", "A" * (MAX_ENV_NAME + 1), "[key]"], "256"),
        ({"command": ["true"] + [_BIG] * 7, "environment": {f"V{i}": _BIG for i in range(8)}},
         ["environment"], "together"),
        ({"command": None, "script": "x" * (MAX_SCRIPT_BYTES + 1)}, ["script"], "1048576"),
        ({"command": None, "script": _E_ACUTE * (MAX_SCRIPT_BYTES // 2 + 1)}, ["script"],
         "the script is 1048578 bytes"),
        ({"workdir": "/" + "d" * 1024}, ["workdir"], "1024"),
        ({"name": "n" * 129}, ["name"], "128"),
        ({"gpu_model": "m" * 65}, ["gpu_model"], "64"),
        ({"idempotency_key": "k" * 129}, ["idempotency_key"], "128"),
    ],
    ids=["arg", "arg-bytes", "argv-total", "argv-count", "env-value", "env-var-bytes",
         "env-total", "env-count", "env-name", "argv-and-env", "script", "script-bytes",
         "workdir", "name", "gpu-model", "idempotency-key"],
)
@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/jobs/array"])
def test_a_field_over_its_limit_is_422_naming_it(api: Api, alice: dict[str, str],
                                                 body: dict[str, Any], loc: list[Any],
                                                 words: str, route: str) -> None:
    spec: dict[str, Any] = {"command": ["true"], "workdir": "/tmp", **body}
    if spec["command"] is None:
        del spec["command"]
    if route.endswith("array"):
        spec["array"] = "0-99"
        if spec.get("idempotency_key"):
            loc, words = ["idempotency_key"], "100"  # an array's keys are shorter
    r = api.client.post(route, headers=alice, json=spec)
    assert r.status_code == 422, r.text[:300]
    errors = r.json()["detail"]
    assert [["body", *loc]] == [e["loc"] for e in errors], errors
    assert words in errors[0]["msg"], errors[0]["msg"]
    assert jobs_made(api) == 0


@sqlite_only
def test_a_422_quotes_a_refused_input_only_in_part(api: Api, alice: dict[str, str]) -> None:
    """A 1 MiB value over its limit is not sent back whole: 200 characters of it and its
    size (the body of a refused request would otherwise come back in the answer)."""
    big = "x" * (MAX_ARG_BYTES + 1)
    r = api.client.post("/v1/jobs", headers=alice,
                        json={"command": [big], "workdir": "/tmp",
                              "environment": {f"V{i}": "y" * 100 for i in range(50)},
                              "gpus": "not a number"})
    assert r.status_code == 422
    assert len(r.content) < 4000, len(r.content)
    quoted = {tuple(e["loc"]): e["input"] for e in r.json()["detail"]}
    assert quoted[("body", "command", 0)] == f"{'x' * 200}... ({len(big)} characters)"
    assert quoted[("body", "gpus")] == "not a number"


@sqlite_only
def test_limits_are_exact(api: Api, alice: dict[str, str]) -> None:
    """At each limit itself: accepted."""
    at_limit = [
        {"command": ["true", "x" * MAX_ARG_BYTES]},
        {"command": ["x" * 255] * MAX_ARGV},  # 256 bytes each with its NUL: 1 MiB
        {"environment": {"AB": "x" * (MAX_ENV_VAR_BYTES - 3)}},
        {"environment": {f"V{i:06d}": "x" * (MAX_ENV_BYTES // 8 - 9) for i in range(8)}},
        {"command": None, "script": _E_ACUTE * (MAX_SCRIPT_BYTES // 2)},
    ]
    for body in at_limit:
        spec: dict[str, Any] = {"command": ["true"], "workdir": "/tmp", **body}
        if spec["command"] is None:
            del spec["command"]
        api.ok("POST", "/v1/jobs", alice, 201, json=spec)
    assert MAX_ARGV * 256 == MAX_ARGV_BYTES


def _input_models() -> list[type[Strict]]:
    for mod in pkgutil.iter_modules(gpuq.wire.__path__):
        importlib.import_module(f"gpuq.wire.{mod.name}")
    out: list[type[Strict]] = []
    todo = [Strict]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.append(sub)
            todo.append(sub)
    return out


def _unbounded(schema: dict[str, Any], path: str) -> list[str]:
    if "$ref" in schema:
        return []  # a model of its own: checked as one of the input models
    found = []
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            found += _unbounded(sub, path)
    kind = schema.get("type")
    if kind == "string" and not ({"maxLength", "pattern", "enum", "const"} & set(schema)) \
            and schema.get("format") != "date-time":
        found.append(f"{path}: text without a maxLength")
    if kind == "array":
        if "maxItems" not in schema:
            found.append(f"{path}: a list without maxItems")
        found += _unbounded(schema.get("items", {}), f"{path}[]")
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        if "maxProperties" not in schema:
            found.append(f"{path}: a mapping without maxProperties")
        found += _unbounded(schema.get("propertyNames", {}), f"{path}{{key}}")
        found += _unbounded(schema["additionalProperties"], f"{path}{{}}")
    return found


def test_every_field_of_every_input_model_is_bounded() -> None:
    """Each text, list and mapping of each input model (``Strict``, admin's and the
    worker's too) has a maximum in its schema (argv and the environment count bytes in
    validators beside it)."""
    models = _input_models()
    assert len(models) > 15
    found = []
    for model in models:
        schema = model.model_json_schema()
        for name, prop in schema["properties"].items():
            found += _unbounded(prop, f"{model.__name__}.{name}")
    assert found == []


# --- an array's spec, stored once -------------------------------------------------------


def _stored_env_bytes(api: Api) -> tuple[int, int, int]:
    """(text bytes of jobs.environment, of job_specs.environment, job_specs rows)."""
    with api.ctx.transaction() as s:
        jobs = s.scalar(select(func.sum(func.length(cast(Job.environment, Text))))) or 0
        specs = s.scalar(select(func.sum(func.length(cast(JobSpec.environment, Text))))) or 0
        n = s.scalar(select(func.count()).select_from(JobSpec)) or 0
    return jobs, specs, n


def test_an_arrays_spec_is_stored_once(api: Api, alice: dict[str, str]) -> None:
    """100 elements of ~800 KB of environment: the environment is stored once (it was
    once per element: 100 x the request)."""
    env = {f"V{i}": secrets.token_urlsafe(75_000) for i in range(8)}  # 100,000 bytes each
    given = sum(len(k) + len(v) + 2 for k, v in env.items())
    out = api.ok("POST", "/v1/jobs/array", alice, 201, json={
        "command": ["python", "sweep.py", "--big", _BIG], "workdir": "/tmp", "array": "0-99",
        "environment": env})
    assert len(out["ids"]) == 100
    in_jobs, in_specs, n_specs = _stored_env_bytes(api)
    assert n_specs == 1
    assert given < in_specs < given + 1000  # the environment, and the array's variables
    assert in_jobs < 100 * 200  # each element: its own index variables only
    with api.ctx.transaction() as s:
        (spec,) = s.scalars(select(JobSpec)).all()
        (array,) = s.scalars(select(JobArray)).all()
    assert array.spec_id == spec.id and array.count == 100
    assert spec.command == ["python", "sweep.py", "--big", _BIG] and spec.script is None
    # The elements that start get rows pointing to the same spec, with their index only.
    api.cycle()
    with api.ctx.transaction() as s:
        rows = s.execute(select(Job.command, Job.script, Job.spec_id)).all()
    assert len(rows) == 4 and {tuple(r) for r in rows} == {(None, None, spec.id)}
    assert _stored_env_bytes(api)[0] < 4 * 200

    # A plain job keeps its spec in its own row.
    plain = api.submit(alice, environment={"A": "b"})
    with api.ctx.transaction() as s:
        job = s.get(Job, plain["id"])
        assert job is not None and job.spec_id is None
        assert job.command == ["true"] and job.environment == {"A": "b"}
    assert _stored_env_bytes(api)[2] == 1


def test_an_element_shows_and_runs_with_its_whole_spec(api: Api) -> None:
    """Its detail, the owner's listing (the shared spec read once for all of them), its
    answer to a repeated key, and the launch spec its node reads: the array's command
    and environment with the element's own index."""
    node = api.node("gpu01", gpus=4)
    alice = api.user("alice", "lab1")
    env = {"A": "b", "GPUQ_ARRAY_TASK_ID": "overridden"}
    out = api.ok("POST", "/v1/jobs/array", alice, 201, json={
        "command": ["python", "sweep.py"], "workdir": "/tmp", "array": "0-2,7",
        "environment": env, "idempotency_key": "sweep-1"})
    ids, indices = out["ids"], out["indices"]

    def expected(index: int) -> dict[str, str]:
        return {"A": "b", **array_env(ids[0], index, indices)}

    for job_id, index in zip(ids, indices, strict=True):
        job = api.ok("GET", f"/v1/jobs/{job_id}", alice)
        assert job["command"] == ["python", "sweep.py"] and job["script"] is None
        assert job["environment"] == expected(index)
        assert job["environment"]["GPUQ_ARRAY_TASK_ID"] == str(index)

    with sent(api.ctx.sessions.kw["bind"]) as statements:
        listing = api.ok("GET", "/v1/jobs", alice)
    assert sum("job_specs" in st for st in statements) == 1, statements
    # A listing carries the command, not the script or the environment (the job's page
    # has them): 10,000 jobs of 2 MiB of spec each would be a 20 GB answer.
    assert all(j["environment"] is None and j["script"] is None for j in listing)
    assert all(j["command"] == ["python", "sweep.py"] for j in listing)

    # Others see no spec.
    bob = api.user("bob", "lab1")
    assert all(j["command"] is None and j["environment"] is None
               for j in api.ok("GET", "/v1/jobs", bob))

    # A single submit repeating the array's key answers with the element made by it.
    again = api.ok("POST", "/v1/jobs", alice, 200, json={
        "command": ["true"], "workdir": "/tmp", "idempotency_key": "sweep-1"})
    assert again["id"] == ids[0] and again["environment"] == expected(indices[0])

    api.cycle()
    for job_id, index in zip(ids, indices, strict=True):
        assert api.ok("GET", f"/v1/jobs/{job_id}", alice)["state"] == "DISPATCHED"
        spec = api.ok("GET", f"/v1/nodes/gpu01/jobs/{job_id}", node)
        assert spec["command"] == ["python", "sweep.py"] and spec["script"] is None
        assert spec["environment"] == expected(index)


def test_a_script_arrays_elements_show_the_script(api: Api, alice: dict[str, str]) -> None:
    out = api.ok("POST", "/v1/jobs/array", alice, 201, json={
        "script": "#!/bin/sh\necho $GPUQ_ARRAY_TASK_ID\n", "workdir": "/tmp", "array": "1-3"})
    for job_id in out["ids"]:
        job = api.ok("GET", f"/v1/jobs/{job_id}", alice)
        assert job["script"].startswith("#!/bin/sh") and job["command"] is None
    assert _stored_env_bytes(api)[2] == 1
