"""The whole path as deployed: PostgreSQL, Redis, `gpuq server`, two `gpuq worker`s with
simulated GPUs, jobs submitted with the real CLI."""

from __future__ import annotations

import itertools
import os
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, parse_env_dump, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

JOB = textwrap.dedent("""
    import os, sys, time
    print("CUDA_VISIBLE_DEVICES=" + os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
    print("GPUQ_JOB_ID=" + os.environ.get("GPUQ_JOB_ID", ""))
    print("GPUQ_GPUS=" + os.environ.get("GPUQ_GPUS", ""))
    print("TOKEN_LEAK=" + str(any("TOKEN" in k for k in os.environ)))
    print("PID=%d" % os.getpid())
    print("START=%f" % time.time(), flush=True)
    time.sleep(float(sys.argv[1]))
    print("END=%f" % time.time())
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
""")


@pytest.fixture
def cluster(redis_cluster: Cluster) -> Cluster:
    tag = uuid.uuid4().hex[:6]
    redis_cluster.add_worker(f"a-{tag}", "4xA100-80GB")
    redis_cluster.add_worker(f"b-{tag}", "4xA100-80GB")
    redis_cluster.add_user("alice")
    (redis_cluster.tmp / "job.py").write_text(JOB)
    return redis_cluster


def submit(cluster: Cluster, *args: str) -> int:
    r = cluster.gpuq("submit", "--parsable", *args)
    return int(r.stdout.strip())


def test_jobs_see_exactly_their_gpus_and_never_share(cluster: Cluster) -> None:
    job_py = str(cluster.tmp / "job.py")
    ids = [submit(cluster, "--gpus", "2", "--", sys.executable, job_py, "1.5")
           for _ in range(6)]
    jobs = [cluster.wait_state(i, {"COMPLETED", "FAILED"}, 60) for i in ids]
    assert all(j["state"] == "COMPLETED" and j["exit_code"] == 0 for j in jobs), jobs

    runs = []
    for j in jobs:
        env = parse_env_dump(cluster.log(j["id"]))
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, j["gpu_indices"]))
        assert len(j["gpu_indices"]) == 2
        assert env["GPUQ_JOB_ID"] == str(j["id"]) and env["GPUQ_GPUS"] == "2"
        assert env["TOKEN_LEAK"] == "False"
        runs.append((j["node"], set(j["gpu_indices"]), float(env["START"]), float(env["END"])))
    overlapping = 0
    for (n1, g1, s1, e1), (n2, g2, s2, e2) in itertools.combinations(runs, 2):
        if n1 == n2 and s1 < e2 and s2 < e1:
            overlapping += 1
            assert not g1 & g2, "two running jobs shared a GPU"
    assert overlapping >= 1, "8 GPUs for six 2-GPU jobs: some must have run together"
    assert len({r[0] for r in runs}) == 2, "both nodes were used"


def test_exit_codes_and_logs(cluster: Cluster) -> None:
    job_py = str(cluster.tmp / "job.py")
    bad = submit(cluster, "--gpus", "1", "--", sys.executable, job_py, "0", "3")
    script = cluster.tmp / "hello.sh"
    script.write_text("#!/bin/sh\n#GPUQ --gpus 1\n#GPUQ --name greeter\n"
                      "echo out-line\necho err-line >&2\n")
    good = submit(cluster, str(script))
    failed = cluster.wait_state(bad, {"COMPLETED", "FAILED"})
    assert failed["state"] == "FAILED" and failed["exit_code"] == 3
    done = cluster.wait_state(good, {"COMPLETED", "FAILED"})
    assert done["state"] == "COMPLETED" and done["name"] == "greeter"
    out = cluster.gpuq("logs", str(good)).stdout
    assert out.splitlines() == ["out-line", "err-line"]
    shown = cluster.gpuq("show", str(bad), "--json").stdout
    assert '"exit_code": 3' in shown


def test_cancel_kills_the_running_process(cluster: Cluster) -> None:
    job_py = str(cluster.tmp / "job.py")
    job_id = submit(cluster, "--gpus", "1", "--", sys.executable, job_py, "300")
    cluster.wait_state(job_id, {"RUNNING"})
    pid = int(wait_for(lambda: parse_env_dump(cluster.log(job_id)).get("PID"), 20, "the PID"))
    os.kill(pid, 0)  # alive
    r = cluster.gpuq("cancel", str(job_id))
    assert str(job_id) in r.stdout
    job = cluster.wait_state(job_id, {"CANCELLED"}, 30)
    assert job["ended_at"] is not None

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    wait_for(gone, 10, f"process {pid} to die")
    # Its GPU is free again: a job asking for all 4 GPUs of a node starts.
    big = submit(cluster, "--gpus", "4", "--", sys.executable, job_py, "0")
    assert cluster.wait_state(big, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"


def test_logs_follow_streams_until_the_end(cluster: Cluster) -> None:
    script = cluster.tmp / "ticker.sh"
    script.write_text("#!/bin/sh\nfor i in 1 2 3 4 5; do echo tick $i; sleep 0.3; done\n")
    job_id = submit(cluster, "--gpus", "1", str(script))
    r = cluster.gpuq("logs", "-f", str(job_id))
    assert r.stdout.splitlines() == [f"tick {i}" for i in range(1, 6)]
    assert cluster.job(job_id)["state"] == "COMPLETED"


def test_cli_errors_are_one_line(cluster: Cluster) -> None:
    r = cluster.gpuq("show", "999999", check=False)
    assert r.returncode != 0 and "999999" in r.stderr and "Traceback" not in r.stderr
    r = cluster.gpuq("submit", "--gpus", "9", "--", "true", check=False)
    assert r.returncode != 0 and "largest node has 4" in r.stderr
    assert "Traceback" not in r.stderr
