"""gpuq submit against the fake API: the body sent, retries, and the server's refusals."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from cli_fakeapi import FakeApi


def test_submit_a_command(api: FakeApi, gpuq, monkeypatch: pytest.MonkeyPatch,
                          tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MY_VAR", "1")
    monkeypatch.setenv("GPUQ_TOKEN", "must-not-leak")
    r = gpuq("submit", "-G", "2", "--gpu-model", "A100-80GB", "-c", "8", "--mem", "16G",
             "-t", "1-02:00:00", "-J", "train", "-A", "lab2", "--env", "A=b",
             "--", "python", "train.py", "--lr", "0.1")
    assert r.exit_code == 0, r.output
    assert r.stdout == "Submitted job 1\n"
    body = api.posts[0]
    assert body["command"] == ["python", "train.py", "--lr", "0.1"]
    assert "script" not in body
    assert (body["gpus"], body["gpu_model"], body["cpus"], body["memory_mib"],
            body["time_limit_s"], body["name"], body["account"]) == \
        (2, "A100-80GB", 8, 16384, 26 * 3600, "train", "lab2")
    assert body["workdir"] == os.path.realpath(tmp_path) or body["workdir"] == str(tmp_path)
    assert body["environment"]["MY_VAR"] == "1" and body["environment"]["A"] == "b"
    assert "GPUQ_TOKEN" not in body["environment"]
    uuid.UUID(body["idempotency_key"])


def test_unset_options_are_left_to_the_server(api: FakeApi, gpuq) -> None:
    r = gpuq("submit", "--export", "NONE", "-D", "/data/run", "--", "true")
    assert r.exit_code == 0, r.output
    assert api.posts[0] == {"command": ["true"], "workdir": "/data/run", "environment": {},
                            "idempotency_key": api.posts[0]["idempotency_key"]}


def test_requeue(api: FakeApi, gpuq, tmp_path: Path) -> None:
    assert gpuq("submit", "--no-requeue", "--", "true").exit_code == 0
    assert gpuq("submit", "--requeue", "--", "true").exit_code == 0
    assert [p["requeue"] for p in api.posts] == [False, True]
    assert "Requeue:     no" in gpuq("show", "1").stdout.splitlines()
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n#GPUQ --no-requeue\necho\n")
    assert gpuq("submit", str(script)).exit_code == 0
    assert gpuq("submit", "--requeue", str(script)).exit_code == 0  # the command line wins
    assert [p["requeue"] for p in api.posts[2:]] == [False, True]
    script.write_text("#!/bin/sh\n#GPUQ --no-requeue\n#GPUQ --requeue\necho\n")
    assert gpuq("submit", str(script)).exit_code == 0  # the later line wins
    assert api.posts[-1]["requeue"] is True
    assert gpuq("submit", "--", "true").exit_code == 0
    assert "requeue" not in api.posts[-1]  # the server's default (yes)


def test_each_invocation_has_its_own_key(api: FakeApi, gpuq) -> None:
    assert gpuq("submit", "--parsable", "--", "true").stdout == "1\n"
    assert gpuq("submit", "--parsable", "--", "true").stdout == "2\n"
    assert api.posts[0]["idempotency_key"] != api.posts[1]["idempotency_key"]
    r = gpuq("submit", "--json", "--idempotency-key", "k1", "--", "true")
    again = gpuq("submit", "--json", "--idempotency-key", "k1", "--", "true")
    assert r.stdout == again.stdout and '"id": 3' in r.stdout


def test_a_lost_answer_is_retried_with_the_same_key(api: FakeApi, gpuq) -> None:
    """The first answer comes too late (the job was made): the retry gets the same job."""
    api.post_delays = [1.5]
    r = gpuq("--timeout", "0.5", "submit", "--", "true")
    assert r.exit_code == 0, r.output
    assert r.stdout == "Submitted job 1\n"
    assert len(api.posts) == 2
    assert api.posts[0]["idempotency_key"] == api.posts[1]["idempotency_key"]
    assert len(api.jobs) == 1


def test_a_busy_or_failing_over_server_is_retried(api: FakeApi, gpuq) -> None:
    """A 503 (the server's database away) and a proxy's 502 are tried again with the same
    key; a 500 is not (a bug is not fixed by repeating)."""
    api.post_refusals = [503, 502]
    r = gpuq("submit", "--", "true")
    assert r.exit_code == 0, r.output
    assert r.stdout == "Submitted job 1\n"
    assert len(api.posts) == 3 and len({p["idempotency_key"] for p in api.posts}) == 1
    api.post_refusals = [500]
    r = gpuq("submit", "--", "true")
    assert r.exit_code == 1 and len(api.posts) == 4 and len(api.jobs) == 1


def test_submit_a_script_with_directives_and_args(api: FakeApi, gpuq, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#GPUQ --gpus 3 --time 2h\n#GPUQ --env X=script\n"
                      "echo \"$1\"\n")
    r = gpuq("submit", "--gpus", "1", "--env", "Y=cli", str(script), "hello world", "--gpus")
    assert r.exit_code == 0, r.output
    body = api.posts[0]
    assert body["gpus"] == 1            # the command line wins
    assert body["time_limit_s"] == 7200  # from the script
    assert body["name"] == "job.sh"
    assert body["environment"]["X"] == "script" and body["environment"]["Y"] == "cli"
    assert body["script"] == ("#!/bin/bash\n#GPUQ --gpus 3 --time 2h\n#GPUQ --env X=script\n"
                              "set -- 'hello world' --gpus  # gpuq: script arguments\n"
                              "echo \"$1\"\n")
    assert "command" not in body


@pytest.mark.parametrize(("args", "message"), [
    (["python", "train.py"], "python: no such script. To run a command, put it after --: "
                             "gpuq submit [options] -- python train.py"),
    ([], "nothing to run"),
    (["--"], "nothing to run"),
    (["--mem", "lots", "--", "true"], "Invalid value for '--mem'"),
    (["--export", "GPUQ_TOKEN", "--", "true"], "GPUQ_TOKEN is a gpuq secret"),
])
def test_usage_errors_exit_2(api: FakeApi, gpuq, args: list[str], message: str) -> None:
    r = gpuq("submit", *args)
    assert r.exit_code == 2
    assert message in r.stderr
    assert api.posts == []


def test_bad_directive_is_reported_with_its_line(api: FakeApi, gpuq, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n#GPUQ --gpus many\necho\n")
    r = gpuq("submit", str(script))
    assert r.exit_code == 2
    assert r.stderr.startswith("gpuq: #GPUQ line 2: Invalid value for '-G' / '--gpus'")


def test_422_names_the_field(api: FakeApi, gpuq) -> None:
    r = gpuq("submit", "--gpus", "100", "--", "true")
    assert r.exit_code == 1
    assert r.stderr == "gpuq: job.gpus: Input should be less than or equal to 64\n"


def test_422_from_a_service_and_a_plain_detail(api: FakeApi, gpuq) -> None:
    r = gpuq("submit", "-A", "nope", "--", "true")
    assert (r.exit_code, r.stderr) == (1, "gpuq: job.account: user alice is not a member "
                                          "of 'nope'\n")
    r = gpuq("submit", "--gpus", "9", "--", "true")
    assert (r.exit_code, r.stderr) == (1, "gpuq: asks for 9 GPUs on one node, but the "
                                          "largest node has 8\n")


def test_422_for_the_whole_body(api: FakeApi, gpuq) -> None:
    r = gpuq("submit", "--env", "A=\x00", "--", "true")
    assert r.exit_code == 1
    assert r.stderr.startswith("gpuq: job.environment: ")
    assert "NUL" in r.stderr
