"""One clear line on stderr and a distinct exit code for each kind of failure."""

from __future__ import annotations

import json

import pytest
from cli_fakeapi import ADMIN_TOKEN, FakeApi, make_job
from click.testing import CliRunner

from gpuq.cli.client import USER_TOKEN_HINT, CliError, Response, error_for
from gpuq.cli.main import cli


def test_unreachable_server(closed_port_url: str) -> None:
    r = CliRunner().invoke(cli, ["--server", closed_port_url, "--token", "t", "q"])
    assert r.exit_code == 3
    assert r.stderr.startswith(f"gpuq: cannot reach the server at {closed_port_url}: ")
    assert r.stderr.endswith("Is it running? (gpuq up / gpuq server)\n")
    assert r.stdout == ""


def test_server_from_environment_and_config(api: FakeApi, closed_port_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuq.cli.config import client_config_path, write_client_config

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


def _error(status: int, detail: object, what: str = "grant") -> CliError:
    resp = Response(status, json.dumps({"detail": detail}).encode())
    return error_for(resp, what=what, not_found=None, auth_hint=USER_TOKEN_HINT)


@pytest.mark.parametrize(("status", "detail", "code", "message"), [
    (401, "token expired on 2027-01-01T00:00:00Z", 4, "token expired on 2027-01-01T00:00:00Z"),
    (401, "user alice is disabled; ask an admin", 4, "user alice is disabled; ask an admin"),
    (401, "invalid or revoked token", 4, USER_TOKEN_HINT),
    (401, "missing bearer token", 4, USER_TOKEN_HINT),
    (403, "only admins may give a negative nice", 4,
     "permission denied: only admins may give a negative nice"),
    (403, {"message": "user bob may not use QOS high"}, 4,
     "permission denied: user bob may not use QOS high"),
    (409, {"message": "would reserve 8 GPUs ...: conflicts with grants 3, 5",
           "conflicts": [3, 5]}, 1, "would reserve 8 GPUs ...: conflicts with grants 3, 5"),
    (409, {"message": "would reserve 8 GPUs too many", "conflicts": [3, 5]}, 1,
     "would reserve 8 GPUs too many (conflicts: 3, 5)"),
    (409, {"message": "grant 13 overlaps", "conflicts": [3]}, 1,
     "grant 13 overlaps (conflicts: 3)"),
    (409, "account qlab has pending jobs", 1, "account qlab has pending jobs"),
    (422, [{"loc": ["body", "nodes"], "msg": "Value error, unknown nodes gpu09, gpu10",
            "type": "value_error"},
           {"loc": ["body"], "msg": "a share grant needs 'shares'", "type": "value_error"},
           {"loc": ["query", "since"], "msg": "Input should be a valid datetime",
            "type": "datetime_parsing"}], 1,
     "grant.nodes: unknown nodes gpu09, gpu10\ngrant: a share grant needs 'shares'\n"
     "since: Input should be a valid datetime"),
])
def test_server_refusals_are_rendered(status: int, detail: object, code: int,
                                      message: str) -> None:
    e = _error(status, detail)
    assert (e.exit_code, e.format_message(), e.status, e.detail) == (code, message, status,
                                                                     detail)
