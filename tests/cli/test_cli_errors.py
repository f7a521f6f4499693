"""One clear line on stderr and a distinct exit code for each kind of failure."""

from __future__ import annotations

import pytest
from cli_fakeapi import ADMIN_TOKEN, FakeApi, make_job
from click.testing import CliRunner

from cli.main import cli


def test_unreachable_server(closed_port_url: str) -> None:
    r = CliRunner().invoke(cli, ["--server", closed_port_url, "--token", "t", "q"])
    assert r.exit_code == 3
    assert r.stderr.startswith(f"gpuq: cannot reach the server at {closed_port_url}: ")
    assert r.stderr.endswith("Is it running? (gpuq up / gpuq server)\n")
    assert r.stdout == ""


def test_server_from_environment_and_config(api: FakeApi, closed_port_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.config import client_config_path, write_client_config

    write_client_config(client_config_path(), closed_port_url, "gpuq_user_secret")
    monkeypatch.setenv("GPUQ_SERVER", api.url)
    r = CliRunner().invoke(cli, ["whoami"])
    assert r.exit_code == 0, r.output
    assert "user:     alice" in r.stdout


@pytest.mark.parametrize("token", [None, "wrong"])
def test_bad_or_missing_token(api: FakeApi, gpuq, token: str | None) -> None:
    r = gpuq("q", token=token)
    assert r.exit_code == 4
    assert r.stderr == ("gpuq: bad or missing token: set GPUQ_TOKEN or run gpuq up / "
                        "ask your admin\n")


def test_admin_with_a_user_token_is_refused(api: FakeApi, gpuq) -> None:
    r = gpuq("admin", "account", "create", "lab9")
    assert r.exit_code == 4
    assert r.stderr == ("gpuq: permission denied: this needs a admin token; yours is a "
                        "user token\n")


def test_admin_token_from_the_environment(api: FakeApi, gpuq,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUQ_ADMIN_TOKEN", ADMIN_TOKEN)
    r = gpuq("admin", "account", "create", "lab9", "--shares", "3", token=None)
    assert r.exit_code == 0, r.output
    assert api.admin_posts == [("accounts", {"name": "lab9", "shares": 3})]
    monkeypatch.setenv("GPUQ_ADMIN_TOKEN", "wrong")
    r = gpuq("admin", "account", "list", token=None)
    assert r.exit_code == 4 and "GPUQ_ADMIN_TOKEN" in r.stderr


def test_unknown_job(api: FakeApi, gpuq) -> None:
    r = gpuq("show", "42")
    assert (r.exit_code, r.stderr) == (1, "gpuq: no job 42\n")
    r = gpuq("logs", "42")
    assert (r.exit_code, r.stderr) == (1, "gpuq: no job 42\n")


def test_conflict(api: FakeApi, gpuq) -> None:
    r = gpuq("admin", "account", "create", "lab1", token=ADMIN_TOKEN)
    assert (r.exit_code, r.stderr) == (1, "gpuq: account lab1 exists\n")


def test_cancel_goes_on_past_failures(api: FakeApi, gpuq) -> None:
    api.jobs[1] = make_job(1, state="PENDING")
    api.jobs[2] = make_job(2, user="bob", state="PENDING")
    api.jobs[3] = make_job(3, state="RUNNING", reason="", node="gpu01", gpu_indices=[0])
    r = gpuq("cancel", "1", "2", "9", "3")
    assert r.exit_code == 1
    assert r.stdout == "Cancelled job 1\nCancel requested for job 3 (running on gpu01)\n"
    assert r.stderr == ("gpuq: permission denied: job 2 belongs to another user\n"
                        "gpuq: no job 9\n")


def test_bad_server_url() -> None:
    r = CliRunner().invoke(cli, ["--server", "ftp://x", "q"])
    assert r.exit_code == 2
    assert r.stderr.startswith("gpuq: bad server URL 'ftp://x'")


def test_not_a_gpuq_server(api: FakeApi) -> None:
    # The fake answers /v1/admin/whatever with 404 JSON, and the root with FastAPI's 404.
    r = CliRunner().invoke(cli, ["--server", api.url + "/nothing", "--token", "t", "nodes"])
    assert r.exit_code == 1
    assert r.stderr == "gpuq: Not Found\n"
