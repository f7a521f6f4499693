"""share, why, admin usage import, submit --nice and show's priority against the fake API."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_fakeapi import ADMIN_TOKEN, T0, FakeApi, make_factors, make_job, share_tree

CSV = ("user,account,billed_seconds,end_time\n"
       "alice,lab1,36000,2024-12-25T12:00:00Z\n\nbob,lab1,500\n")


def cells(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()]


# --- share ------------------------------------------------------------------------------


def test_share_shows_the_tree_like_sshare(api: FakeApi, gpuq) -> None:
    r = gpuq("share")
    assert r.exit_code == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].split() == ["Account", "User", "RawShares", "NormShares", "RawUsage",
                              "GPUHours", "NormUsage", "EffectvUsage", "FairShare", "LevelFS"]
    # Accounts indented by depth, users one deeper than their account.
    assert [line[:8] for line in out[1:]] == ["root    ", " lab1   ", "  lab1  ", "  lab1  ",
                                              " lab2   ", "  lab2a ", "   lab2a"]
    assert cells(r.stdout)[3] == ["lab1", "alice", "1", "0.500000", "54000", "15.0",
                                  "0.750000", "1.000000", "0.333333", "0.500000"]
    assert cells(r.stdout)[4][-1] == "inf"
    assert cells(r.stdout)[5][:3] == ["lab2", "parent", "18000"]


def test_share_json_and_filters(api: FakeApi, gpuq) -> None:
    assert json.loads(gpuq("share", "--json").stdout) == share_tree()
    r = gpuq("share", "-A", "lab2")
    assert [c[:2] for c in cells(r.stdout)[1:]] == [["lab2", "parent"], ["lab2a", "1"],
                                                     ["lab2a", "alice"]]
    r = gpuq("share", "-u", "bob")
    assert [c[:2] for c in cells(r.stdout)[1:]] == [["root", "1"], ["lab1", "3"],
                                                     ["lab1", "bob"]]
    rows = json.loads(gpuq("share", "--json", "-A", "lab1", "-u", "alice").stdout)
    assert [(x["account"], x["user"]) for x in rows] == [("lab1", None), ("lab1", "alice")]


@pytest.mark.parametrize(("args", "message"), [
    (("-A", "nope"), "gpuq: no account nope in the fair-share tree\n"),
    (("-u", "carol"), "gpuq: user carol has no association in the fair-share tree\n"),
    (("-A", "lab2", "-u", "bob"),
     "gpuq: user bob has no association in the fair-share tree in account lab2 or below it\n"),
])
def test_share_filter_that_matches_nothing(api: FakeApi, gpuq, args, message) -> None:
    r = gpuq("share", *args)
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", message)


def test_share_needs_a_token(api: FakeApi, gpuq) -> None:
    assert gpuq("share", token=None).exit_code == 4


# --- why --------------------------------------------------------------------------------


def test_why_a_pending_job(api: FakeApi, gpuq) -> None:
    soon = datetime.now(UTC) + timedelta(hours=2, minutes=13, seconds=30)
    api.jobs[17] = make_job(17, user="bob", account="lab2a",
                            priority_factors=make_factors(6001.2, fairshare=0.6))
    api.jobs[42] = make_job(42, reason="Priority: waiting behind job 17",
                            priority_factors=make_factors(nice=10), estimated_start=soon)
    api.jobs[50] = make_job(50, priority_factors=make_factors(10.0))
    r = gpuq("why", "42")
    assert r.exit_code == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[:4] == [
        "Job 42 is PENDING: Priority: waiting behind job 17",
        "Position:    2 of 3 pending",
        "Priority:    5123.4 (fair share 0.5000, age 0.1234, job size 0.0500, QOS 0.0000, "
        "nice 10)",
        "Ahead:       job 17 (bob, lab2a), priority 6001.2 (fair share 0.6000, age 0.1234, "
        "job size 0.0500, QOS 0.0000, nice 0)",
    ]
    assert out[4].startswith("Est. start:  ")
    # "(in 2:13:30)", less the time the command took to start and ask (seconds on a busy
    # machine: CI once saw 2:13:28).
    m = re.search(r"\(in 2:13:(\d\d)\)$", out[4])
    assert m is not None and 15 <= int(m.group(1)) <= 30, out[4]
    assert len(out) == 5
    top = gpuq("why", "17").stdout.splitlines()
    assert top[1] == "Position:    1 of 3 pending (next in line)"
    assert not any(line.startswith("Ahead:") for line in top)
    assert top[-1] == "Est. start:  no estimate yet"


def test_why_json(api: FakeApi, gpuq) -> None:
    api.jobs[3] = make_job(3, priority_factors=make_factors())
    assert json.loads(gpuq("why", "--json", "3").stdout) == {
        "id": 3, "state": "PENDING", "reason": "Priority", "position": 1, "pending": 1,
        "factors": make_factors(), "ahead": None, "estimated_start": None}


def test_why_before_the_first_cycle(api: FakeApi, gpuq) -> None:
    api.jobs[3] = make_job(3, reason="")
    assert gpuq("why", "3").stdout.splitlines() == [
        "Job 3 is PENDING",
        "Position:    1 of 1 pending (next in line)",
        "Priority:    not computed yet (no scheduling cycle since the job was submitted)",
        "Est. start:  no estimate yet",
    ]


def test_why_a_job_that_no_longer_waits(api: FakeApi, gpuq) -> None:
    api.jobs[5] = make_job(5, state="RUNNING", reason="", node="gpu01", gpu_indices=[0, 1],
                           started_at=datetime.now(UTC) - timedelta(minutes=12))
    api.jobs[6] = make_job(6, state="FAILED", reason="exit code 1", exit_code=1,
                           started_at=T0, ended_at=T0 + timedelta(hours=1))
    r = gpuq("why", "5")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("Job 5 is not waiting: it is RUNNING on gpu01 (GPUs 0,1) since ")
    assert r.stdout.endswith((" (for 12:00)\n", " (for 12:01)\n"))
    r = gpuq("why", "6")
    assert r.stdout.startswith("Job 6 is not waiting: it ended FAILED at ")
    assert r.stdout.endswith(" (exit code 1)\n")
    assert json.loads(gpuq("why", "--json", "6").stdout)["position"] is None


def test_why_an_unknown_job(api: FakeApi, gpuq) -> None:
    r = gpuq("why", "99")
    assert (r.exit_code, r.stderr) == (1, "gpuq: no job 99\n")


# --- show -------------------------------------------------------------------------------


def test_show_priority_factors_and_estimated_start(api: FakeApi, gpuq) -> None:
    api.jobs[4] = make_job(4, priority_factors=make_factors(77.25, nice=-3, site=5),
                           estimated_start=datetime.now(UTC) + timedelta(hours=1, seconds=30),
                           qos="high", nice=-3)
    out = gpuq("show", "4").stdout.splitlines()
    assert ("Priority:    77.2 (fair share 0.5000, age 0.1234, job size 0.0500, QOS 0.0000, "
            "nice -3, site 5)") in out
    assert "QOS:         high" in out
    assert any(line.startswith("Est. start:  ") and "(in 1:00:" in line for line in out)
    api.jobs[5] = make_job(5, priority=100, nice=7)
    out = gpuq("show", "5").stdout.splitlines()
    assert "Priority:    100 (nice 7)" in out
    assert not any(line.startswith(("Est. start:", "QOS:")) for line in out)


# --- submit --nice ----------------------------------------------------------------------


def test_submit_nice(api: FakeApi, gpuq, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert gpuq("submit", "--nice", "50", "--", "true").exit_code == 0
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n#GPUQ --nice 20\necho hi\n")
    assert gpuq("submit", "job.sh").exit_code == 0
    assert gpuq("submit", "--nice", "3", "job.sh").exit_code == 0
    assert gpuq("submit", "--", "true").exit_code == 0
    assert [p.get("nice") for p in api.posts] == [50, 20, 3, None]
    assert api.jobs[1]["nice"] == 50


def test_submit_negative_nice_is_for_admins(api: FakeApi, gpuq, tmp_path: Path,
                                            monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = gpuq("submit", "--nice", "-5", "--", "true")
    assert (r.exit_code, r.stderr) == (
        1, "gpuq: job.nice: only admins may give a negative nice (it raises priority)\n")
    r = gpuq("submit", "--nice", "20000", "--", "true")
    assert r.exit_code == 2 and "--nice" in r.stderr
    script = tmp_path / "job.sh"
    script.write_text("#GPUQ --nice lots\necho hi\n")
    r = gpuq("submit", "job.sh")
    assert r.exit_code == 2 and r.stderr.startswith("gpuq: #GPUQ line 1: ")


# --- admin usage import ----------------------------------------------------------------


def test_usage_import_csv_file(api: FakeApi, gpuq, tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_text(CSV)
    r = gpuq("admin", "usage", "import", str(path), token=ADMIN_TOKEN)
    assert r.exit_code == 0, r.stderr
    # 36000 s that ended 7 days before the fake's now count half.
    assert r.stdout == "Imported 2 records (adding 18500 billed GPU-seconds after decay)\n"
    [(content_type, records)] = api.usage_imports
    assert content_type.startswith("text/csv")
    assert [(x["user"], x["billed_seconds"]) for x in records] == [("alice", 36000),
                                                                    ("bob", 500)]


def test_usage_import_json_from_stdin_and_by_extension(api: FakeApi, gpuq,
                                                       tmp_path: Path) -> None:
    records = [{"user": "alice", "account": "lab2a", "billed_seconds": 7200}]
    r = gpuq("admin", "usage", "import", "-", input=json.dumps(records).encode(),
             token=ADMIN_TOKEN)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "Imported 1 record (adding 7200 billed GPU-seconds after decay)\n"
    path = tmp_path / "history.json"
    path.write_text(json.dumps(records * 2))
    assert gpuq("admin", "usage", "import", str(path), token=ADMIN_TOKEN).exit_code == 0
    # Another extension: --format, or the content decides.
    path = tmp_path / "history.txt"
    path.write_bytes(b"\xef\xbb\xbf" + CSV.encode())  # with Excel's byte-order mark
    assert gpuq("admin", "usage", "import", str(path), token=ADMIN_TOKEN).exit_code == 0
    assert gpuq("admin", "usage", "import", "--format", "CSV", "-", input=CSV.encode(),
                token=ADMIN_TOKEN).exit_code == 0
    assert [(ct.split(";")[0], len(recs)) for ct, recs in api.usage_imports] == [
        ("application/json", 1), ("application/json", 2), ("text/csv", 2), ("text/csv", 2)]


def test_usage_import_errors_name_the_record(api: FakeApi, gpuq) -> None:
    bad = "user,account,billed_seconds\nalice,lab1,10\n\nbob,lab1,-5\nalice,lab1,lots\n"
    r = gpuq("admin", "usage", "import", "-", input=bad.encode(), token=ADMIN_TOKEN)
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == (
        "gpuq: record 2 (line 4): billed_seconds: Input should be greater than or equal to 0 "
        "(got '-5')\n"
        "gpuq: record 3 (line 5): billed_seconds: Input should be a valid number, unable to "
        "parse string as a number (got 'lots')\n")
    stranger = json.dumps([{"user": "alice", "account": "lab1", "billed_seconds": 1},
                           {"user": "carol", "account": "lab1", "billed_seconds": 1}])
    r = gpuq("admin", "usage", "import", "-", input=stranger.encode(), token=ADMIN_TOKEN)
    assert (r.exit_code, r.stderr) == (
        1, "gpuq: record 2: user 'carol' is not a member of account 'lab1'; create the user "
           "and membership first\n")
    zoneless = json.dumps([{"user": "alice", "account": "lab1", "billed_seconds": 1,
                            "end_time": "2024-12-25T12:00:00"}])
    r = gpuq("admin", "usage", "import", "-", input=zoneless.encode(), token=ADMIN_TOKEN)
    assert r.stderr == ("gpuq: record 1: end_time: give a time zone, e.g. "
                        "2026-01-31T12:00:00Z (got '2024-12-25T12:00:00')\n")
    assert api.usage_imports == []


@pytest.mark.parametrize(("data", "message"), [
    (b"", "gpuq: stdin: the file is empty; nothing to import\n"),
    (b"[{]", "gpuq: stdin: not valid JSON: "),
    (b'{"user": "alice"}', "gpuq: stdin: expected a JSON list of records"),
    (b"name,account,seconds\nalice,lab1,1\n",
     "gpuq: stdin: the first line must be the header user,account,billed_seconds[,end_time] "
     "(missing: user, billed_seconds)\n"),
    (b"\xff\xfe", "gpuq: stdin: not UTF-8 text"),
])
def test_usage_import_refuses_a_bad_file_itself(api: FakeApi, gpuq, data: bytes,
                                                message: str) -> None:
    r = gpuq("admin", "usage", "import", "-", input=data, token=ADMIN_TOKEN)
    assert r.exit_code == 2
    assert r.stderr.startswith(message)
    assert len(r.stderr.splitlines()) == 1
    assert api.usage_imports == []


def test_usage_import_needs_the_admin_token_and_a_file(api: FakeApi, gpuq,
                                                       tmp_path: Path) -> None:
    r = gpuq("admin", "usage", "import", "-", input=CSV.encode())
    assert r.exit_code == 4 and r.stderr.startswith("gpuq: permission denied: ")
    r = gpuq("admin", "usage", "import", str(tmp_path / "missing.csv"), token=ADMIN_TOKEN)
    assert r.exit_code == 2 and "missing.csv" in r.stderr
