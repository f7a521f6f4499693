"""Job arrays end to end, as a user runs them: PostgreSQL, Redis, `gpuq server`, a `gpuq
worker` with simulated GPUs, the real CLI. The array is one record; its elements run
with their indices, `gpuq q` folds the ones that wait, and `gpuq cancel --array` stops
the rest at once."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.e2e.conftest import Cluster, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def cluster(redis_cluster: Cluster) -> Cluster:
    redis_cluster.add_worker(f"arr-{uuid.uuid4().hex[:6]}", "2xA100-80GB")
    redis_cluster.add_user("alice")
    return redis_cluster


def test_an_array_runs_its_elements_and_folds_the_waiting_ones(cluster: Cluster) -> None:
    c = cluster
    out = c.gpuq("submit", "--array", "0-5", "--json", "--", "sh", "-c",
                 "echo TASK=$GPUQ_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    array = json.loads(out.stdout)
    first = array["array_job_id"]
    assert array["count"] == 6 and array["ids"] == list(range(first, first + 6))
    for job_id, index in zip(array["ids"], array["indices"], strict=True):
        c.wait_state(job_id, {"COMPLETED"}, timeout_s=60)
        assert f"TASK={index}/6" in c.log(job_id)

    # A long array on 2 GPUs: two run, the rest wait as one line (squeue's 12_[2-999]).
    out = c.gpuq("submit", "--array", "0-999", "--parsable", "--", "sleep", "60")
    big = int(out.stdout.strip())
    wait_for(lambda: c.job(big)["state"] == "RUNNING" and c.job(big + 1)["state"] == "RUNNING",
             30, "two elements running")
    queue = c.gpuq("q").stdout
    assert f"{big}_[2-999]" in queue and f"{big}_0 " in queue and f"{big}_1 " in queue, queue
    shown = c.gpuq("show", str(big + 500)).stdout
    assert "PENDING" in shown and f"{big}_500" in shown, shown
    stop = c.gpuq("cancel", "--array", str(big)).stdout
    assert stop.strip() == (f"Cancelled array job {big}: 998 waiting; cancel requested for "
                            f"2 running"), stop
    c.wait_state(big, {"CANCELLED"}, timeout_s=30)
    c.wait_state(big + 1, {"CANCELLED"}, timeout_s=30)
    assert c.job(big + 999)["state"] == "CANCELLED"
    assert str(big) not in c.gpuq("q").stdout
