"""gpuq logs: whole logs in pages, -f following until the job has ended, Ctrl-C."""

from __future__ import annotations

import types

import pytest
from cli_fakeapi import FakeApi, make_job

from gpuq.cli import logs as logs_module
from gpuq.cli.logs import CHUNK_BYTES, TAIL_BYTES


def test_logs_prints_the_whole_log_in_pages(api: FakeApi, gpuq) -> None:
    data = bytes(range(256)) * (CHUNK_BYTES // 256) + b"\xff\xfe tail\n" * 1000
    api.jobs[1] = make_job(1, state="COMPLETED")
    api.logs[1] = data
    r = gpuq("logs", "1")
    assert r.exit_code == 0, r.stderr
    assert r.stdout_bytes == data
    assert [o for o, _ in api.log_reads] == [0, CHUNK_BYTES, len(data)]


def test_follow_until_the_job_ends(api: FakeApi, gpuq) -> None:
    api.jobs[5] = make_job(5, state="RUNNING", node="gpu01", gpu_indices=[0])
    api.log_steps[5] = [
        (b"", "RUNNING"),            # the size probe (-f starts at the tail)
        (b"step 1\n", "RUNNING"),
        (b"", "RUNNING"),            # nothing new yet: poll again
        (b"step 2\npartial", "RUNNING"),
        (b" line\n", "COMPLETED"),
    ]
    r = gpuq("logs", "-f", "5")
    assert r.exit_code == 0, r.stderr
    assert r.stdout_bytes == b"step 1\nstep 2\npartial line\n"
    # After the job is seen ended, one more empty read confirms nothing is left.
    end = len(r.stdout_bytes)
    assert [o for o, _ in api.log_reads][-2:] == [end, end]


def test_follow_goes_on_with_the_next_attempt(api: FakeApi, gpuq) -> None:
    """The job is requeued while followed: its new run's log starts again at 0."""
    api.jobs[5] = make_job(5, state="RUNNING", node="gpu01", gpu_indices=[0], attempt=1)
    api.log_steps[5] = [
        (b"", "RUNNING"),                   # the size probe
        (b"run 1\n", "RUNNING"),
        (b"run 2 begins\n", "RUNNING", 2),  # read at offset 6 of the new log: "begins\n"
        (b"run 2 ends\n", "COMPLETED"),
    ]
    r = gpuq("logs", "-f", "5")
    assert r.exit_code == 0, r.stderr
    assert r.stdout_bytes == b"run 1\nrun 2 begins\nrun 2 ends\n"
    assert r.stderr == "gpuq: job 5 was requeued; the output of attempt 2 follows\n"
    assert [o for o, _ in api.log_reads] == [0, 0, 6, 0, 24, 24]


def test_logs_of_an_earlier_attempt(api: FakeApi, gpuq) -> None:
    api.jobs[6] = make_job(6, state="COMPLETED", attempt=2)
    api.old_logs[(6, 1)] = b"first run\n"
    api.logs[6] = b"second run\n"
    assert gpuq("logs", "6").stdout_bytes == b"second run\n"
    assert gpuq("logs", "--attempt", "1", "6").stdout_bytes == b"first run\n"
    assert gpuq("logs", "--attempt", "2", "6").stdout_bytes == b"second run\n"
    r = gpuq("logs", "-f", "--attempt", "1", "6")
    assert r.exit_code == 2 and "--attempt reads an earlier one" in r.stderr


def test_follow_starts_at_the_last_lines(api: FakeApi, gpuq) -> None:
    lines = b"".join(b"line %05d\n" % i for i in range(3000))
    api.jobs[2] = make_job(2, state="COMPLETED")
    api.logs[2] = lines
    r = gpuq("logs", "-f", "2")
    assert r.exit_code == 0, r.stderr
    assert lines.endswith(r.stdout_bytes)
    assert TAIL_BYTES - 11 < len(r.stdout_bytes) <= TAIL_BYTES
    assert r.stdout_bytes.startswith(b"line ")
    r = gpuq("logs", "-f", "--from-start", "2")
    assert r.stdout_bytes == lines


def test_ctrl_c_exits_130_quietly(api: FakeApi, gpuq, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(logs_module, "time", types.SimpleNamespace(sleep=interrupted))
    api.jobs[3] = make_job(3, state="RUNNING", node="gpu01", gpu_indices=[0])
    api.logs[3] = b"hello\n"
    r = gpuq("logs", "-f", "3")
    assert r.exit_code == 130
    assert r.stdout_bytes == b"hello\n"
    assert r.stderr == ""
