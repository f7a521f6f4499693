"""Fixtures of the CLI tests: the fake API server (see cli_fakeapi), a clean client
environment, and a ``gpuq`` runner."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from cli_fakeapi import USER_TOKEN, FakeApi, build_app, free_socket
from click.testing import CliRunner, Result

from gpuq.cli.main import cli


@pytest.fixture(scope="session")
def _fake_server() -> Iterator[FakeApi]:
    state = FakeApi()
    sock = free_socket()
    config = uvicorn.Config(build_app(state), log_level="critical", access_log=False,
                            lifespan="off", ws="none", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the fake API did not start"
        time.sleep(0.01)
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield state
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()


@pytest.fixture
def api(_fake_server: FakeApi) -> FakeApi:
    _fake_server.reset()
    return _fake_server


@pytest.fixture
def closed_port_url() -> str:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _client_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads the developer's own gpuq configuration or tokens."""
    config = tmp_path_factory.mktemp("gpuqcfg") / "config.toml"
    monkeypatch.setenv("GPUQ_CLIENT_CONFIG", str(config))
    for name in ("GPUQ_SERVER", "GPUQ_TOKEN", "GPUQ_ADMIN_TOKEN", "GPUQ_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def gpuq(api: FakeApi):  # noqa: ANN201 - returns a function
    """Run ``gpuq --server <fake> --token <user token> ARGS`` through CliRunner."""

    def run(*args: str, token: str | None = USER_TOKEN, input: bytes | None = None,
            **kw: Any) -> Result:
        pre = ["--server", api.url] + (["--token", token] if token else [])
        return CliRunner().invoke(cli, [*pre, *args], input=input, catch_exceptions=False, **kw)

    return run


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC (times people read and type are local)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def admin(gpuq):  # noqa: ANN201 - returns a function
    """``gpuq admin ARGS`` with the admin token; asserts the exit code (0 unless given)."""

    def run(*args: str, code: int = 0, **kw: Any) -> Result:
        from cli_fakeapi import ADMIN_TOKEN

        r = gpuq("admin", *args, token=ADMIN_TOKEN, **kw)
        assert r.exit_code == code, (r.stdout, r.stderr)
        return r

    return run
