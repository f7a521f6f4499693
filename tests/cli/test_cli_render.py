"""Tables and details rendered from the API's JSON (JobRead / NodeRead dicts)."""

from __future__ import annotations

from datetime import timedelta

from cli_fakeapi import T0, make_gpu, make_job, make_node

from gpuq.cli.admin_accounts import accounts_table
from gpuq.cli.jobs import cancel_message
from gpuq.cli.nodes import foreign_process_line, gpus_summary, node_state, nodes_text, whoami_text
from gpuq.cli.render import job_detail, jobs_table, render, where

NOW = T0 + timedelta(hours=2)


def lines(table) -> list[list[str]]:
    return [line.split() for line in render(table, width=200).splitlines()]


def test_jobs_table_like_squeue() -> None:
    jobs = [
        make_job(3, state="PENDING", reason="Priority", priority=10),
        make_job(4, state="PENDING", reason="Resources", priority=50, gpus=2,
                 gpu_model="A100-80GB"),
        make_job(1, state="RUNNING", reason="", node="gpu01", gpu_indices=[0, 1],
                 started_at=T0 + timedelta(minutes=30), user="bob"),
        make_job(2, state="COMPLETED", reason="", node="gpu01", exit_code=0,
                 started_at=T0, ended_at=T0 + timedelta(days=1, seconds=5)),
    ]
    assert lines(jobs_table(jobs, NOW)) == [
        ["JOBID", "NAME", "USER", "ACCOUNT", "STATE", "TIME", "GPUS", "NODE(GPUS)/REASON"],
        ["1", "train", "bob", "lab1", "RUNNING", "1:30:00", "1", "gpu01(0,1)"],
        ["4", "train", "alice", "lab1", "PENDING", "0:00", "2:A100-80GB", "(Resources)"],
        ["3", "train", "alice", "lab1", "PENDING", "0:00", "1", "(Priority)"],
        ["2", "train", "alice", "lab1", "COMPLETED", "1-00:00:05", "1", "gpu01"],
    ]


def test_rendering_keeps_brackets_and_does_not_wrap_in_pipes() -> None:
    job = make_job(1, name="[bold]x" + "n" * 150)
    text = render(jobs_table([job], NOW))
    assert "[bold]x" + "n" * 150 in text
    assert all(line == line.rstrip() for line in text.splitlines())


def test_where_and_cancelling() -> None:
    running = make_job(1, state="RUNNING", node="gpu02", gpu_indices=[3], cancel_requested=True,
                       started_at=T0)
    assert where(running) == "gpu02(3)"
    assert lines(jobs_table([running], NOW))[1][4] == "CANCELLING"
    assert where(make_job(2, state="FAILED", reason="exit code 1", node="gpu02")) == \
        "(exit code 1)"


def test_job_detail_shows_fields_script_and_events() -> None:
    job = make_job(7, state="RUNNING", reason="", node="gpu01", gpu_indices=[0], started_at=T0,
                   memory_mib=16384, script="#!/bin/sh\n" + "echo x\n" * 30,
                   workdir="/home/alice", environment={"A": "1"},
                   events=[{"time": T0.isoformat(), "old_state": None, "new_state": "PENDING",
                            "reason": "submitted"}])
    text = job_detail(job, NOW)
    assert "Job:         7 (train)" in text
    assert "memory 16G" in text
    assert "Node:        gpu01 GPUs 0" in text
    assert "Time:        2:00:00 of 1:00:00" in text
    assert "Environment: 1 variables" in text
    assert "... (11 more lines; --json)" in text
    assert "PENDING" in text.split("Events:")[1] and "submitted" in text


def test_job_detail_of_a_requeued_job() -> None:
    job = make_job(8, state="RUNNING", reason="", node="gpu02", gpu_indices=[1],
                   started_at=T0, attempt=2, requeue=True, gpu_energy_j=12_300.0,
                   max_gpu_memory_mib=40_960.0)
    text = job_detail(job, NOW).splitlines()
    assert "Attempt:     2 (requeued)" in text
    assert "Requeue:     yes" in text
    assert "GPU energy:  12.3 kJ (3.4 Wh)" in text
    assert "GPU memory:  40G peak" in text
    labels = [line.split(":")[0] for line in text]
    assert labels.index("Attempt") < labels.index("Resources") < labels.index("Requeue") \
        < labels.index("Node") < labels.index("Time") < labels.index("GPU energy") \
        < labels.index("GPU memory") < labels.index("Priority")


def test_job_detail_first_attempt_without_samples() -> None:
    text = job_detail(make_job(9, attempt=1, requeue=False), NOW)
    assert "Requeue:     no" in text.splitlines()
    assert "Attempt" not in text and "GPU energy" not in text and "GPU memory" not in text
    # An older server's job (no such fields) shows neither.
    old = {k: v for k, v in make_job(9).items()
           if k not in ("requeue", "attempt", "gpu_energy_j", "max_gpu_memory_mib")}
    assert "Requeue" not in job_detail(old, NOW)
    assert "GPU energy:  0 J (0.0 Wh)" in job_detail(make_job(9, gpu_energy_j=0), NOW)


def test_cancel_messages() -> None:
    assert cancel_message(make_job(1, state="CANCELLED")) == "Cancelled job 1"
    assert cancel_message(make_job(2, state="RUNNING", node="gpu01", cancel_requested=True)) \
        == "Cancel requested for job 2 (running on gpu01)"
    assert cancel_message(make_job(3, state="COMPLETED")) == \
        "Job 3 had already ended (COMPLETED)"


NODE = {"name": "gpu01", "state": "UP", "state_reason": "", "cpus": 64, "memory_mib": 512000,
        "gpu_backend": "nvml", "last_heartbeat_at": None, "gpus": [
            {"index": 1, "uuid": "GPU-b", "model": "A100-80GB", "memory_mib": 81920,
             "healthy": True, "job_id": None, "sample": {}},
            {"index": 0, "uuid": "GPU-a", "model": "A100-80GB", "memory_mib": 81920,
             "healthy": True, "job_id": 42, "sample": {"utilization_pct": 97.4,
                                                       "memory_used_mib": 40960.0,
                                                       "power_w": 301.2, "healthy": True}},
            {"index": 2, "uuid": "GPU-c", "model": "T4-16GB", "memory_mib": 16384,
             "healthy": False, "job_id": None, "sample": {"healthy": False}},
        ]}


def test_nodes_table_has_a_row_per_gpu() -> None:
    assert gpus_summary(NODE) == "1/3 free  2xA100-80GB,1xT4-16GB"
    assert [line.split() for line in nodes_text([NODE]).splitlines()] == [
        ["NAME", "STATE", "GPUS", "JOB", "UTIL", "MEMORY", "POWER", "LIMITS"],
        ["gpu01", "UP", "1/3", "free", "2xA100-80GB,1xT4-16GB"],
        ["0", "busy", "A100-80GB", "42", "97%", "40G/80G", "301", "W"],
        ["1", "idle", "A100-80GB", "-", "80G"],
        ["2", "unhealthy", "T4-16GB", "-", "16G"],
    ]
    down = dict(NODE, state="DOWN", state_reason="no heartbeat for 60 s")
    assert gpus_summary(down).startswith("0/3 free")


def test_drained_node_and_its_gpus() -> None:
    drained = make_node("gpu02", state="DRAIN", drain=True, drain_reason="replacing GPU 3",
                        gpus=2)
    assert node_state(drained) == "DRAIN (replacing GPU 3)"
    assert gpus_summary(drained) == "0/2 free  2xA100-80GB"  # nothing new starts there
    # A server may say UP with the drain flag, or DOWN for a drained node that died.
    assert node_state(dict(drained, state="UP")) == "DRAIN (replacing GPU 3)"
    assert gpus_summary(dict(drained, state="UP")).startswith("0/2 free")
    down = dict(drained, state="DOWN", state_reason="no heartbeat for 60 s")
    assert node_state(down) == "DOWN+DRAIN (no heartbeat for 60 s; replacing GPU 3)"
    assert node_state(dict(drained, drain_reason="")) == "DRAIN"
    assert node_state(make_node(state="DOWN", state_reason="lost")) == "DOWN (lost)"
    text = nodes_text([drained]).splitlines()
    assert text[1].split()[:4] == ["gpu02", "DRAIN", "(replacing", "GPU"]
    assert text[2].split()[:2] == ["0", "idle"]


def test_unhealthy_and_occupied_gpus() -> None:
    bob = {"pid": 1234, "user": "bob", "command": "python train.py",
           "used_memory_mib": 12288.0}
    node = make_node("gpu01", gpus=[
        make_gpu(0),
        make_gpu(1, healthy=False, health_reason="XID 79: GPU has fallen off the bus"),
        make_gpu(2, foreign_processes=[bob, {"pid": 77, "user": None, "command": None,
                                             "used_memory_mib": None}],
                 sample={"utilization_pct": 50.0, "memory_used_mib": 12288.0}),
        make_gpu(3, job_id=9, foreign_processes=[dict(bob, pid=4321, used_memory_mib=512.0)]),
        make_gpu(4, job_id=8),
    ])
    assert gpus_summary(node) == "1/5 free  5xA100-80GB"  # only GPU 0
    text = nodes_text([node])
    out = text.splitlines()
    assert [line.split()[:2] for line in out[2:]] == [
        ["0", "idle"], ["1", "unhealthy"], ["2", "occupied"], ["pid", "1234"], ["pid", "77"],
        ["3", "occupied"], ["pid", "4321"], ["4", "busy"]]
    assert "unhealthy (XID 79: GPU has fallen off the bus)" in out[3]
    # Each process on its own line under its GPU, from the STATE column on.
    state_col = out[0].index("STATE")
    assert out[5] == " " * state_col + "pid 1234 bob: python train.py (12.0G)"
    assert out[6] == " " * state_col + "pid 77 ?"
    assert out[7].split()[2:4] == ["A100-80GB", "9"]  # the job's id still shows
    assert out[8] == " " * state_col + "pid 4321 bob: python train.py (512M)"
    # The columns are as wide as without the processes.
    bare = dict(node, gpus=[dict(g, foreign_processes=[]) for g in node["gpus"]])
    assert out[0] == nodes_text([bare]).splitlines()[0]


def test_nodes_show_the_limits_their_workers_enforce_and_why_not() -> None:
    full = make_node("gpu01", enforcement="memory,cpu,devices (cgroup v1 memory,cpu; "
                                          "cgroup v2 BPF devices)")
    part = make_node("gpu02", enforcement="memory,cpu (cgroup v2 memory,cpu); not devices: "
                                          "no device node for GPU(s) 0")
    off = make_node("gpu03", enforcement="none: job cgroups are off (worker_cgroup_root is "
                                         "empty)")
    old = make_node("gpu04")  # a worker that does not say
    out = nodes_text([full, part, off, old], width=120).splitlines()
    assert out[0].split()[-1] == "LIMITS"
    limits_col = out[0].index("LIMITS")
    state_col = out[0].index("STATE")
    rows = {line.split()[0]: line for line in out[1:] if line.startswith("gpu")}
    assert {n: line[limits_col:].strip() for n, line in rows.items()} == {
        "gpu01": "memory,cpu,devices", "gpu02": "memory,cpu", "gpu03": "none", "gpu04": ""}
    # What is not enforced, and why, on a line of its own under the node.
    assert out[out.index(rows["gpu02"]) + 1] == " " * state_col + (
        "limits: memory,cpu (cgroup v2 memory,cpu); not devices: no device node for GPU(s) 0")
    assert out[out.index(rows["gpu03"]) + 1] == " " * state_col + (
        "limits: none: job cgroups are off (worker_cgroup_root is empty)")
    assert out[out.index(rows["gpu01"]) + 1].split()[:2] == ["0", "idle"]
    assert out[out.index(rows["gpu04"]) + 1].split()[:2] == ["0", "idle"]


def test_foreign_process_text_cannot_drive_the_terminal() -> None:
    line = foreign_process_line({"pid": 1, "user": "eve\x1b[2J", "command": "x\x1b]0;hi\x07\ny",
                                 "used_memory_mib": 1.0})
    assert line == "pid 1 eve?[2J: x?]0;hi??y (1M)"
    assert line.isprintable()


def test_accounts_table_is_a_tree() -> None:
    accts = [{"name": "lab1", "parent": "physics", "shares": 2, "description": ""},
             {"name": "root", "parent": None, "shares": 1, "description": ""},
             {"name": "physics", "parent": "root", "shares": 5, "description": "dept"}]
    text = render(accounts_table(accts), width=200).splitlines()
    assert [line.split()[0] for line in text] == ["ACCOUNT", "root", "physics", "lab1"]
    assert text[3].startswith("    lab1")


def test_whoami_text() -> None:
    me = {"role": "user", "user": "alice", "node": None, "admin": False,
          "accounts": ["lab1", "lab2"], "default_account": "lab2"}
    assert whoami_text(me, "http://h:1").splitlines() == [
        "user:     alice", "role:     user", "accounts: lab1, lab2 (default)",
        "server:   http://h:1"]
