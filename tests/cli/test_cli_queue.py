"""`gpuq q` reads the brief listing (``view=brief``) and prints what it printed from whole
jobs; ``--json`` prints whole jobs unless ``--brief`` is given."""

from __future__ import annotations

import json
from typing import Any

from cli_fakeapi import T0, FakeApi, brief, make_job

from gpuq.cli.render import BORROW_NOTE, IDLE_MARK, IDLE_NOTE, jobs_table, render
from gpuq.wire.jobs import JobBrief

ACCOUNTING: dict[str, Any] = {
    "gpu_hours": 1.0, "billed_gpu_hours": 1.0, "energy_kwh": None, "energy_method": None,
    "carbon_kg": 0.0, "carbon_intensity_g_per_kwh": None, "utilization_mean_pct": 1.0,
    "utilization_peak_pct": 2.0, "idle_gpu_hours": 1.0, "gpus": [], "idle": True,
    "idle_since": None, "idle_flagged_at": None, "idle_action": "notified", "final": False}


def queue_jobs() -> list[dict[str, Any]]:
    return [
        make_job(1, state="RUNNING", reason="", node="gpu01", gpu_indices=[0], started_at=T0,
                 qos="preemptible", borrowed_grant=3, borrowed_gpus=1),
        make_job(2, state="RUNNING", reason="", node="gpu01", gpu_indices=[1, 2],
                 started_at=T0, gpus=2, gpu_model="A100-80GB", accounting=ACCOUNTING),
        make_job(3, state="RUNNING", reason="", node="gpu02", gpu_indices=[0], started_at=T0,
                 cancel_requested=True, command=["python", "x.py"], workdir="/w"),
        make_job(4, state="PENDING", reason="Priority", priority=7, environment={"A": "1"}),
        make_job(5, state="COMPLETED", reason="", node="gpu02", gpu_indices=[0],
                 started_at=T0, ended_at=T0, exit_code=0),
    ]


def test_q_prints_from_the_brief_listing_what_it_printed_from_whole_jobs(
        api: FakeApi, gpuq) -> None:
    jobs = queue_jobs()
    api.jobs.update({j["id"]: j for j in jobs})
    r = gpuq("q", "--all")
    assert r.exit_code == 0, r.stderr
    assert api.queries == [[("view", "brief")]]
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["JOBID", "NAME", "USER", "ACCOUNT", "QOS", "STATE", "TIME",
                                "GPUS", "NODE(GPUS)/REASON"]
    rows = {line.split()[0]: line.split() for line in lines[1:6]}
    assert [line.split()[0] for line in lines[1:6]] == ["1", "2", "3", "4", "5"]
    assert rows["1"][:6] == ["1", "train", "alice", "lab1", "preemptible", "RUNNING"]
    assert rows["1"][-1] == "gpu01(0)*"
    assert rows["2"][-1] == f"gpu01(1,2){IDLE_MARK}" and rows["2"][-2] == "2:A100-80GB"
    assert rows["3"][4] == "CANCELLING" and rows["3"][-1] == "gpu02(0)"
    assert rows["4"][4:] == ["PENDING", "0:00", "1", "(Priority)"]
    assert rows["5"][4] == "COMPLETED"
    assert lines[6:] == [BORROW_NOTE, IDLE_NOTE]


def test_the_jobs_table_is_the_same_from_brief_and_whole_jobs() -> None:
    jobs = queue_jobs()
    now = T0.replace(hour=13)
    assert render(jobs_table([brief(j) for j in jobs], now)) == render(jobs_table(jobs, now))


def test_q_json_prints_whole_jobs_and_brief_ones_with_brief(api: FakeApi, gpuq) -> None:
    jobs = queue_jobs()
    api.jobs.update({j["id"]: j for j in jobs})
    r = gpuq("q", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == jobs
    r = gpuq("q", "--json", "--brief", "-u", "alice")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert [list(j) for j in out] == [list(JobBrief.model_fields)] * len(jobs)
    assert out[1]["idle"] is True and out[0]["borrowed_grant"] == 3
    assert api.queries == [[("active", "true")],
                           [("active", "true"), ("user", "alice"), ("view", "brief")]]
