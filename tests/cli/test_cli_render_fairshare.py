"""share, why and usage-import output rendered from given dicts (FairShareRow, WhyRead,
JobRead, FastAPI 422 details): no server."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cli_fakeapi import T0, make_factors, make_job, make_share_row, share_tree

from gpuq.cli.client import CliError
from gpuq.cli.fairshare import depths, filter_rows, fraction, share_table
from gpuq.cli.render import estimate_text, factors_text, job_detail, render
from gpuq.cli.usage import csv_record_lines, guess_format, import_error_text, read_usage_file
from gpuq.cli.why import not_pending_text, why_text

NOW = T0 + timedelta(hours=2)


def local(t, fmt: str = "%Y-%m-%d %H:%M:%S %Z") -> str:
    return t.astimezone().strftime(fmt)


# --- share ------------------------------------------------------------------------------


def test_fractions_like_sshare() -> None:
    assert [fraction(v) for v in (0.5, 1 / 3, 0, None, "inf", 12.0)] == [
        "0.500000", "0.333333", "0.000000", "", "inf", "12.000000"]


def test_share_table_columns_and_alignment() -> None:
    text = render(share_table(share_tree()), width=200).splitlines()
    assert text[0].split() == ["Account", "User", "RawShares", "NormShares", "RawUsage",
                               "GPUHours", "NormUsage", "EffectvUsage", "FairShare", "LevelFS"]
    assert text[1].split() == ["root", "1", "72000", "20.0", "1.000000", "1.000000"]
    assert text[4].split() == ["lab1", "bob", "1", "0.500000", "0", "0.0", "0.000000",
                               "0.000000", "1.000000", "inf"]
    # Numbers are right-aligned under their headers, as sshare does.
    header_end = text[0].index("LevelFS") + len("LevelFS")
    assert all(len(line) == header_end for line in text[2:4])
    assert text[4].endswith("inf") and len(text[4]) == header_end
    # The blank User cell of an account row, and the parent shares of a FairShare=parent one.
    assert text[5].split()[:2] == ["lab2", "parent"]


def test_share_depths_survive_odd_trees() -> None:
    rows = [make_share_row("root", parent=None), make_share_row("a", parent="root"),
            make_share_row("b", parent="a"), make_share_row("u", "b", "u", parent="b"),
            make_share_row("orphan", parent="gone"), make_share_row("x", parent="y"),
            make_share_row("y", parent="x")]
    d = depths(rows)
    assert (d["root"], d["a"], d["b"], d["orphan"]) == (0, 1, 2, 0)
    assert {d["x"], d["y"]} == {0, 1}  # a cycle (a server bug) still renders
    accounts = [line[:9] for line in render(share_table(rows), width=200).splitlines()[1:5]]
    assert accounts == ["root     ", " a       ", "  b      ", "   b     "]


def test_filter_rows_keeps_absolute_depth() -> None:
    rows = share_tree()
    shown = filter_rows(rows, account="lab2a")
    assert [(r["name"], r["user"]) for r in shown] == [("lab2a", None), ("alice", "alice")]
    text = render(share_table(shown, depth=depths(rows)), width=200).splitlines()
    assert text[1].startswith("  lab2a ") and text[2].startswith("   lab2a  alice")
    mine = filter_rows(rows, user="alice")
    assert [(r["account"], r["user"]) for r in mine] == [
        ("root", None), ("lab1", None), ("lab1", "alice"), ("lab2", None), ("lab2a", None),
        ("lab2a", "alice")]
    assert filter_rows(rows) == rows
    with pytest.raises(CliError, match="no account lab3"):
        filter_rows(rows, account="lab3")
    with pytest.raises(CliError, match="user carol has no association"):
        filter_rows(rows, user="carol")
    with pytest.raises(CliError, match="no account alice"):  # a user is not an account
        filter_rows(rows, account="alice")


# --- priority and estimates --------------------------------------------------------------


def test_factors_text() -> None:
    assert factors_text(make_factors()) == (
        "5123.4 (fair share 0.5000, age 0.1234, job size 0.0500, QOS 0.0000, nice 0)")
    assert factors_text(make_factors(-2.04, fairshare=1, qos=0.25, nice=-100, site=7)) == (
        "-2.0 (fair share 1.0000, age 0.1234, job size 0.0500, QOS 0.2500, nice -100, site 7)")


def test_estimate_text() -> None:
    later = T0 + timedelta(hours=4, minutes=13)
    assert estimate_text(later.isoformat(), NOW) == (
        f"{local(later, '%Y-%m-%d %H:%M %Z').rstrip()} (in 2:13:00)")
    assert estimate_text((NOW + timedelta(days=1, hours=1)).isoformat(), NOW).endswith(
        "(in 1-01:00:00)")
    assert estimate_text(T0.isoformat(), NOW).endswith("(2:00:00 ago)")
    assert estimate_text(None, NOW) == "no estimate yet"
    # An API time without a zone is UTC.
    assert estimate_text("2025-01-01T15:00:00", NOW).endswith("(in 1:00:00)")


def test_job_detail_priority_lines() -> None:
    job = make_job(9, priority_factors=make_factors(42.0, nice=5), nice=5,
                   estimated_start=(NOW + timedelta(minutes=30)).isoformat())
    out = job_detail(job, NOW).splitlines()
    assert ("Priority:    42.0 (fair share 0.5000, age 0.1234, job size 0.0500, QOS 0.0000, "
            "nice 5)") in out
    assert out[out.index(next(x for x in out if x.startswith("Priority:"))) + 1] == (
        f"Est. start:  {local(NOW + timedelta(minutes=30), '%Y-%m-%d %H:%M %Z').rstrip()} "
        "(in 30:00)")
    plain = job_detail(make_job(9, priority=100), NOW).splitlines()
    assert "Priority:    100" in plain
    assert not any(x.startswith(("Est. start", "QOS")) for x in plain)


# --- why --------------------------------------------------------------------------------


def why(**kw) -> dict:
    base = dict(id=42, state="PENDING", reason="Priority: waiting behind job 17", position=3,
                pending=12, factors=make_factors(), estimated_start=None,
                ahead={"id": 17, "user": "bob", "account": "lab2",
                       "factors": make_factors(6001.2, fairshare=0.6)})
    base.update(kw)
    return base


def test_why_text_pending() -> None:
    start = NOW + timedelta(hours=2, minutes=13)
    assert why_text(why(estimated_start=start.isoformat()), NOW).splitlines() == [
        "Job 42 is PENDING: Priority: waiting behind job 17",
        "Position:    3 of 12 pending",
        "Priority:    5123.4 (fair share 0.5000, age 0.1234, job size 0.0500, QOS 0.0000, "
        "nice 0)",
        "Ahead:       job 17 (bob, lab2), priority 6001.2 (fair share 0.6000, age 0.1234, "
        "job size 0.0500, QOS 0.0000, nice 0)",
        f"Est. start:  {local(start, '%Y-%m-%d %H:%M %Z').rstrip()} (in 2:13:00)",
    ]


def test_why_text_pending_without_numbers_yet() -> None:
    text = why_text(why(reason="", factors=None, position=1, pending=1,
                        ahead=None), NOW).splitlines()
    assert text == [
        "Job 42 is PENDING",
        "Position:    1 of 1 pending (next in line)",
        "Priority:    not computed yet (no scheduling cycle since the job was submitted)",
        "Est. start:  no estimate yet",
    ]
    ahead = why(ahead={"id": 17, "user": "bob", "account": "lab2", "factors": None})
    assert "Ahead:       job 17 (bob, lab2), priority not computed yet" in \
        why_text(ahead, NOW).splitlines()


def test_why_text_for_jobs_that_do_not_wait() -> None:
    running = make_job(42, state="RUNNING", reason="", node="gpu01", gpu_indices=[0, 1],
                       started_at=T0)
    answer = why(state="RUNNING", reason="", position=None, ahead=None)
    assert why_text(answer, NOW, running) == (
        f"Job 42 is not waiting: it is RUNNING on gpu01 (GPUs 0,1) since {local(T0)} "
        "(for 2:00:00)")
    dispatched = make_job(42, state="DISPATCHED", reason="", node="gpu01", gpu_indices=[3])
    assert not_pending_text(dispatched, NOW) == (
        "Job 42 is not waiting: it is DISPATCHED on gpu01 (GPUs 3), starting")
    cancelling = make_job(42, state="RUNNING", node="gpu01", cancel_requested=True,
                          started_at=T0)
    assert " it is CANCELLING on gpu01 " in not_pending_text(cancelling, NOW)
    ended = make_job(42, state="TIMEOUT", reason="time limit 1:00:00 reached",
                     started_at=T0, ended_at=T0 + timedelta(hours=1))
    assert not_pending_text(ended, NOW) == (
        f"Job 42 is not waiting: it ended TIMEOUT at {local(T0 + timedelta(hours=1))} "
        "(time limit 1:00:00 reached)")
    failed = make_job(42, state="FAILED", reason="exit code 2", exit_code=2,
                      ended_at=T0.isoformat())
    assert not_pending_text(failed, NOW).endswith(" (exit code 2)")
    cancelled = make_job(42, state="CANCELLED", reason="")
    assert not_pending_text(cancelled, NOW) == "Job 42 is not waiting: it ended CANCELLED"
    # Without the job (the WhyRead alone), still a sentence.
    assert why_text(why(state="COMPLETED", reason="", position=None), NOW) == (
        "Job 42 is not waiting: it ended COMPLETED")
    assert why_text(why(state="HELD", reason="by admin"), NOW) == "Job 42 is HELD: by admin"


# --- usage import -----------------------------------------------------------------------


def test_csv_record_lines_count_like_dictreader() -> None:
    text = 'user,account,billed_seconds\n\na,b,1\n\n\nc,"multi\nline",2\nd,e,3'
    assert csv_record_lines(text) == [3, 6, 8]
    assert csv_record_lines("user,account,billed_seconds\n") == []


def test_guess_format() -> None:
    assert guess_format("h.CSV", "[") == "csv"
    assert guess_format("h.json", "user,") == "json"
    assert guess_format("stdin", "  \n[{}]") == "json"
    assert guess_format("history.txt", "user,account") == "csv"


def test_read_usage_file() -> None:
    f = read_usage_file("h.csv", b"\xef\xbb\xbfuser , account,billed_seconds\nalice,a,1\n", None)
    assert (f.format, f.content_type, f.lines) == ("csv", "text/csv; charset=utf-8", [2])
    assert f.body.startswith(b"user ,")
    f = read_usage_file("h.txt", b"[]", "json")
    assert (f.format, f.body, f.lines) == ("json", b"[]", None)
    with pytest.raises(CliError, match=r"missing: billed_seconds\)") as e:
        read_usage_file("h.csv", b"user,account,end_time\n", None)
    assert e.value.exit_code == 2


def test_import_error_text() -> None:
    detail = [
        {"loc": ["body", 1, "billed_seconds"], "msg": "Input should be greater than or "
         "equal to 0", "type": "greater_than_equal", "input": "-5"},
        {"loc": ["body", "3"], "msg": "record 4: user 'x' is not a member of account 'y'",
         "type": "value_error"},
        {"loc": ["body", 0, "user"], "msg": "Field required", "type": "missing",
         "input": {"account": "a"}},
        {"loc": ["body"], "msg": "Input should be a valid list", "type": "list_type"},
        {"loc": ["body", 9, "end_time"], "msg": "Value error, give a time zone",
         "input": "x" * 60},
    ]
    assert import_error_text(detail, [2, 3, 5, 9]).splitlines() == [
        "record 2 (line 3): billed_seconds: Input should be greater than or equal to 0 "
        "(got '-5')",
        "record 4 (line 9): user 'x' is not a member of account 'y'",
        "record 1 (line 2): user: Field required",
        "Input should be a valid list",
        f"record 10: end_time: give a time zone (got '{'x' * 36}...)",
    ]
    assert import_error_text("cannot read the body as CSV: boom") == (
        "cannot read the body as CSV: boom")
    many = [{"loc": ["body", i, "user"], "msg": "Field required"} for i in range(15)]
    text = import_error_text(many).splitlines()
    assert len(text) == 11 and text[-1] == "... and 5 more problems"
