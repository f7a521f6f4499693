"""Accounting for real: `gpuq server` on PostgreSQL, a `gpuq worker` whose simulated GPUs
play a known power/utilisation trace, a job run by its supervisor, and the real CLI
(`gpuq eff`, `gpuq usage`) and `/metrics` read back."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuq.worker import jobdir as jd
from gpuq.worker.gpus.sim import FAULTS_FILE, write_faults
from tests.e2e.conftest import Cluster, start_server, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

BUSY_W, IDLE_W = 250.0, 50.0


def test_a_jobs_energy_carbon_and_idle_gpu_through_the_cli(redis_cluster: Cluster) -> None:
    c = redis_cluster
    node = f"acct-{uuid.uuid4().hex[:6]}"
    state = c.tmp / "worker" / node
    state.mkdir(parents=True)
    # GPU 0 works at 80 % and 250 W (it has an energy counter); GPU 1 sits at 0 % and 50 W
    # and has no counter (its energy is integrated from the sampled power).
    write_faults(state / FAULTS_FILE,
                 trace={0: {"utilization_pct": 80, "power_w": BUSY_W},
                        1: {"utilization_pct": 0, "power_w": IDLE_W}},
                 no_energy_counter=[1])
    c.add_worker(node, "2xA100-80GB")
    c.add_user("alice", "lab1")
    r = c.gpuq("submit", "--parsable", "--gpus", "2", "--", sys.executable, "-c",
               "import time; time.sleep(6)")
    job_id = int(r.stdout.strip())
    job = c.wait_state(job_id, {"COMPLETED", "FAILED"}, 60)
    assert job["state"] == "COMPLETED", job

    def accounted() -> dict | None:
        acct = c.job(job_id).get("accounting")
        return acct if acct and acct["final"] else None

    acct = wait_for(accounted, 60, "the job's final accounting")
    ran_s = (datetime.fromisoformat(job["ended_at"])
             - datetime.fromisoformat(job["started_at"])).total_seconds()
    # Energy: the job's process, from its start to its end (the server's started_at and
    # ended_at are when the worker's reports came in, a little after each).
    expected_kwh = (BUSY_W + IDLE_W) * ran_s / 3.6e6
    assert acct["energy_kwh"] == pytest.approx(expected_kwh, rel=0.35), (acct, ran_s)
    assert acct["energy_method"] == "mixed"
    per_gpu = {g["index"]: g for g in acct["gpus"]}
    assert per_gpu[0]["utilization_mean_pct"] == pytest.approx(80, abs=1)
    assert per_gpu[1]["utilization_peak_pct"] == 0
    # kg CO2e at the default 475 g/kWh (the API rounds to the gram/1000)
    assert acct["carbon_kg"] == pytest.approx(acct["energy_kwh"] * 475 / 1000, abs=1e-6)

    eff = c.gpuq("eff", str(job_id)).stdout
    assert "0%" in eff and "--gpus 1" in eff, eff  # the idle GPU is called out

    report = json.loads(c.gpuq("usage", "--json", "--since", "1d").stdout)
    assert report["total"]["jobs"] == 1
    assert report["total"]["gpu_hours"] == pytest.approx(acct["gpu_hours"], rel=1e-6)
    assert report["total"]["energy_kwh"] == pytest.approx(acct["energy_kwh"], rel=1e-6)

    metrics = httpx.get(c.url + "/metrics", timeout=10,
                        headers={"Authorization": f"Bearer {c.admin_token}"})
    assert metrics.status_code == 200
    names = {f.name for f in text_string_to_metric_families(metrics.text)}
    assert any(n.startswith("gpuq_") for n in names), names


@pytest.fixture
def slow_beat_cluster(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[Cluster]:
    """A deployment whose workers beat every 5 s: a job of 12 s ends between two beats."""
    db = int(uuid.uuid4().int % 15) + 1
    broker = redis_url.rsplit("/", 1)[0] + f"/{db}"
    cluster = start_server(tmp_path, {"GPUQ_DATABASE_URL": pg_url, "GPUQ_BROKER_URL": broker,
                                      "GPUQ_HEARTBEAT_INTERVAL_S": "5"})
    try:
        yield cluster
    finally:
        for p in reversed(cluster.procs):
            p.stop()


def test_a_job_is_charged_up_to_its_end_not_its_last_heartbeat(
        slow_beat_cluster: Cluster) -> None:
    """Issue 16 item 7: 2 GPUs at a fixed 400 W for 12 s, heartbeats every 5 s. The energy
    from the last heartbeat to the end (and from the start to the first) is charged, and
    the sampled GPU-seconds cover the whole run (GPU 1 sits at 0 %: its idle time is the
    run's)."""
    c = slow_beat_cluster
    node = f"end-{uuid.uuid4().hex[:6]}"
    state = c.tmp / "worker" / node
    state.mkdir(parents=True)
    write_faults(state / FAULTS_FILE, trace={0: {"utilization_pct": 90, "power_w": 400},
                                             1: {"utilization_pct": 0, "power_w": 400}})
    c.add_worker(node, "2xA100-80GB")
    c.add_user("alice", "lab1")
    r = c.gpuq("submit", "--parsable", "--gpus", "2", "--", sys.executable, "-c",
               "import time; time.sleep(12)")
    job_id = int(r.stdout.strip())
    job = c.wait_state(job_id, {"COMPLETED", "FAILED"}, 60)
    assert job["state"] == "COMPLETED", job

    def accounted() -> dict | None:
        acct = c.job(job_id).get("accounting")
        return acct if acct and acct["final"] else None

    acct = wait_for(accounted, 60, "the job's final accounting")
    ran_s = (datetime.fromisoformat(job["ended_at"])
             - datetime.fromisoformat(job["started_at"])).total_seconds()
    # The job's process, as its supervisor recorded it (the server's start and end are
    # when the worker's reports came in, a little after each).
    run = wait_for(lambda: jd.find_run(state / "done", jd.RunKey(job_id, 1)), 10, "retired")
    process = jd.read_json(run / jd.STATE) or {}
    process_s = (datetime.fromisoformat(process["ended_at"])
                 - datetime.fromisoformat(process["started_at"])).total_seconds()
    charged_j = acct["energy_kwh"] * 3.6e6
    # Before the fix: 6,908 J of 9,653 (0.72), the energy after the last heartbeat lost.
    assert charged_j == pytest.approx(2 * 400.0 * process_s, rel=0.01), (charged_j, process_s)
    assert charged_j > 0.85 * 2 * 400.0 * ran_s, (charged_j, ran_s)
    assert acct["idle_gpu_hours"] * 3600 == pytest.approx(ran_s, rel=0.04), (acct, ran_s)
    assert acct["gpu_hours"] * 3600 == pytest.approx(2 * ran_s, rel=1e-3)
    report = json.loads(c.gpuq("usage", "--json", "--since", "1d").stdout)
    assert report["total"]["energy_kwh"] == pytest.approx(acct["energy_kwh"], rel=1e-6)
