from __future__ import annotations

from pathlib import Path

import pytest

from gpuq.scheduler.sim.errors import SimInputError
from gpuq.scheduler.sim.trace import load_trace, shipped_traces
from tests.sim.builders import write_trace


def test_reads_columns_sorts_by_submit_and_numbers_jobs_by_row(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.csv", [
        "10,alice,lab1,2,100,3600,A100-80GB,train",
        "5,bob,lab2,1,50.5,,,",
        "10,carol,lab1,8,7200,60,,big",
    ], header="submit_time,user,account,gpus,duration,time_limit,gpu_model,name")
    jobs = load_trace(path)
    assert [j.id for j in jobs] == [2, 1, 3]  # stable: equal submit times keep file order
    bob, alice, carol = jobs
    assert (bob.submit_s, bob.duration_s, bob.time_limit_s, bob.gpu_model) == (5, 50.5, None,
                                                                               None)
    assert (alice.gpus, alice.gpu_model, alice.name, alice.line) == (2, "A100-80GB", "train", 2)
    assert carol.time_limit_s == 60


def test_the_estimate_is_the_limit_capped_at_the_duration(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.csv", ["0,u,a,1,100,3600", "0,u,a,1,100,60",
                                            "0,u,a,1,100,"])
    assert [j.estimate_s for j in load_trace(path)] == [3600, 100, 100]


def test_columns_in_any_order_optional_ones_absent_limit(tmp_path: Path) -> None:
    rows = [f"10,1,a,u,{i}" for i in range(5)]
    path = write_trace(tmp_path / "t.csv", rows, header="duration,gpus,account,user,submit_time")
    jobs = load_trace(path, limit=3)
    assert [j.submit_s for j in jobs] == [0, 1, 2]
    assert jobs[0].time_limit_s is None and jobs[0].name == ""


@pytest.mark.parametrize(("row", "where"), [
    ("x,u,a,1,10,", "t.csv:3: column 'submit_time': must be a number"),
    ("-1,u,a,1,10,", "t.csv:3: column 'submit_time': must be a finite number >= 0"),
    ("nan,u,a,1,10,", "t.csv:3: column 'submit_time'"),
    ("0,,a,1,10,", "t.csv:3: column 'user': must not be empty"),
    ("0,u,,1,10,", "t.csv:3: column 'account': must not be empty"),
    ("0,u,a,0,10,", "t.csv:3: column 'gpus': must be a whole number >= 1, got '0'"),
    ("0,u,a,1.5,10,", "t.csv:3: column 'gpus'"),
    ("0,u,a,1,-5,", "t.csv:3: column 'duration': must be a finite number >= 0"),
    ("0,u,a,1,inf,", "t.csv:3: column 'duration'"),
    ("0,u,a,1,10,0", "t.csv:3: column 'time_limit': must be a finite number > 0"),
    ("0,u,a,1,10", "t.csv:3: has 5 fields, the header has 6"),
])
def test_a_bad_row_names_its_line_and_column(tmp_path: Path, row: str, where: str) -> None:
    path = write_trace(tmp_path / "t.csv", ["0,u,a,1,10,", row, "0,u,a,1,10,"])
    with pytest.raises(SimInputError) as e:
        load_trace(path)
    assert str(e.value).startswith(str(tmp_path / where.split(":")[0]))
    assert where in str(e.value)


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("submit_time,user,account,gpus,duration\n0,u,a,1,1\n\n0,u,a,zero,1\n")
    with pytest.raises(SimInputError, match=r"t\.csv:4: column 'gpus'"):
        load_trace(path)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty file"),
    ("submit_time,user,account,gpus\n", "missing column(s): duration"),
    ("submit_time,user,account,gpus,duration,time_limt\n",
     "t.csv:1: column 'time_limt': unknown column"),
    ("submit_time,user,account,gpus,duration\n", "no jobs in the trace"),
])
def test_bad_headers_and_empty_traces(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(SimInputError) as e:
        load_trace(path)
    assert message in str(e.value)


def test_an_unreadable_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"submit_time,user\n\xff\xfe\n")
    with pytest.raises(SimInputError, match="cannot read the trace"):
        load_trace(path)


def test_a_gzipped_trace_reads_as_its_csv(tmp_path: Path) -> None:
    import gzip

    rows = ["10,alice,lab1,2,100,3600", "5,bob,lab2,1,50,"]
    plain = load_trace(write_trace(tmp_path / "t.csv", rows))
    packed = tmp_path / "t.csv.gz"
    packed.write_bytes(gzip.compress((tmp_path / "t.csv").read_bytes()))
    assert load_trace(packed) == plain
    (tmp_path / "bad.csv.gz").write_bytes(b"not gzip")
    with pytest.raises(SimInputError, match="cannot read the trace"):
        load_trace(tmp_path / "bad.csv.gz")


def test_the_shipped_trace_is_the_noted_one() -> None:
    """gpuq comes with the LANL CM-5 trace; its note gives the checksum of the CSV."""
    import gzip
    import hashlib

    path = shipped_traces()["lanl-cm5-1994"]
    note = path.with_name("lanl-cm5-1994.md").read_text()
    digest = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
    assert digest in note
    jobs = load_trace(path, limit=10)
    assert len(jobs) == 10 and jobs[0].submit_s == 0
