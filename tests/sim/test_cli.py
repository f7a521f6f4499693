"""``gpuq sim`` through click's runner: the job table, the metrics, the errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from click.testing import CliRunner

from gpuq.cli.sim import sim
from tests.sim.builders import write_trace

TRACE = [  # the hand-checked FIFO case of test_engine, with time limits
    "0,u1,a,2,100,120",
    "0,u2,b,2,50,60",
    "10,u1,a,4,10,",
    "20,u3,b,1,5,5",
    "60,u2,b,2,10,3600",
]


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(sim, [str(a) for a in args])
    return result.exit_code, result.output


def test_fifo_starts_in_the_jobs_table(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.csv", TRACE)
    code, out = run(trace, "--nodes", "1x4", "--policy", "fifo", "--jobs-out",
                    tmp_path / "jobs.csv", "--out", tmp_path / "out")
    assert code == 0, out
    with (tmp_path / "jobs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["id"], r["submit"], r["start"], r["end"], r["node"], r["gpu_indices"],
             r["wait"]) for r in rows] == [
        ("1", "0", "0", "100", "node0001", "0;1", "0"),
        ("2", "0", "0", "50", "node0001", "2;3", "0"),
        ("3", "10", "100", "110", "node0001", "0;1;2;3", "90"),
        ("4", "20", "110", "115", "node0001", "0", "90"),
        ("5", "60", "110", "120", "node0001", "1;2", "50"),
    ]
    assert [r["user"] for r in rows] == ["u1", "u2", "u1", "u3", "u2"]
    metrics = json.loads(out)
    assert metrics == json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["policy"] == "fifo" and metrics["jobs"] == 5
    assert metrics["makespan_s"] == 120
    # 2·100 + 2·50 + 4·10 + 1·5 + 2·10 = 365 GPU-s of 4 GPUs x 120 s.
    assert metrics["gpu_utilization"] == round(365 / 480, 6)
    assert metrics["wait_s"]["mean"] == 46 and metrics["wait_s"]["p50"] == 50


def test_cluster_and_shares_files_and_limit(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.csv", TRACE)
    cluster = tmp_path / "c.toml"
    cluster.write_text('[[nodes]]\ncount = 1\ngpus = 4\nmodel = "A100-80GB"\n')
    shares = tmp_path / "s.csv"
    shares.write_text("type,name,parent,shares\naccount,a,,3\naccount,b,,1\n")
    code, out = run(trace, "--cluster", cluster, "--shares", shares, "--limit", "3",
                    "--half-life", "1h")
    assert code == 0, out
    metrics = json.loads(out)
    assert metrics["jobs"] == 3 and metrics["policy"] == "fairshare+backfill"


def test_a_bad_row_is_reported_with_its_line_and_column(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.csv", [*TRACE[:2], "10,u1,a,four,10,"])
    code, out = run(trace, "--nodes", "1x4")
    assert code == 1
    assert f"Error: {trace}:4: column 'gpus': must be a whole number >= 1, got 'four'" in out


def test_a_job_too_big_for_the_cluster_is_reported(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.csv", TRACE)
    code, out = run(trace, "--nodes", "2x2")
    assert code == 1 and f"{trace}:4: column 'gpus': job 3 needs 4 GPUs on one node" in out


def test_usage_errors(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.csv", TRACE)
    code, out = run(trace)
    assert code == 2 and "give the cluster with --nodes" in out
    code, out = run(trace, "--nodes", "1x4", "--half-life", "soon")
    assert code == 2 and "--half-life" in out
    code, out = run(trace, "--nodes", "4")
    assert code == 1 and "expected NODESxGPUS[:MODEL]" in out
    code, out = run(trace, "--nodes", "1x4", "--policy", "lottery")
    assert code == 2
    (tmp_path / "a-file").write_text("")
    code, out = run(trace, "--nodes", "1x4", "--jobs-out", tmp_path / "a-file" / "j.csv")
    assert code == 1 and "cannot write the output" in out
    # A missing folder is made.
    code, out = run(trace, "--nodes", "1x4", "--jobs-out", tmp_path / "new" / "j.csv")
    assert code == 0 and (tmp_path / "new" / "j.csv").exists()


def test_no_decay(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.csv", TRACE)
    code, out = run(trace, "--nodes", "1x4", "--half-life", "0", "--policy", "fairshare")
    assert code == 0, out


def test_the_shipped_trace_by_its_name(tmp_path: Path) -> None:
    code, out = run("lanl-cm5-1994", "--nodes", "2x8", "--limit", "200")
    assert code == 0, out
    metrics = json.loads(out)
    assert metrics["jobs"] == 200 and metrics["gpus"] == 16
    code, out = run("lanl-cm5-1995", "--nodes", "2x8")
    assert code == 2 and "no file 'lanl-cm5-1995'" in out and "lanl-cm5-1994" in out
