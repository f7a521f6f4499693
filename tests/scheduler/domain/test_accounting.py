"""The accounting of a run's end (issue 16 item 7): the final report's end sample is the
run's last, at its end's time; heartbeats alone stop up to an interval before the end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpuq.config import Settings
from gpuq.scheduler.db.models import Job, UsageRecord
from gpuq.scheduler.domain import accounting
from gpuq.wire.nodes import JobEndSample, JobGpuSample, JobSample

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WATTS = 400.0  # each of the job's two GPUs, all the time; GPU 0 at 90 %, GPU 1 at 0 %


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def sample(t: float) -> JobSample:
    """The job's sample ``t`` s after its start: the energy from the start to then."""
    return JobSample(utilization_pct=45.0, power_w=2 * WATTS, energy_j=2 * WATTS * t,
                     gpus=[JobGpuSample(index=i, utilization_pct=u, power_w=WATTS,
                                        energy_j=WATTS * t, energy_method="counter")
                           for i, u in ((0, 90.0), (1, 0.0))])


def running_job() -> Job:
    return Job(id=7, user_id=1, account_id=1, state="RUNNING", attempt=1, gpus=2,
               gpu_indices=[0, 1], started_at=T0, gpu_energy_earlier_j=0.0)


def beat(job: Job, t: float, settings: Settings) -> None:
    """What a heartbeat records of the job's sample (``record_sample``'s totals)."""
    s = sample(t)
    job.gpu_energy_j = (job.gpu_energy_earlier_j or 0.0) + (s.energy_j or 0.0)
    accounting.observe(None, job, s, now=at(t), settings=settings)  # type: ignore[arg-type]


def charged(job: Job, settings: Settings) -> UsageRecord:
    record = UsageRecord(gpu_seconds=0.0, billed_seconds=0.0)
    accounting.charge_interval(job, record, node="n1", settings=settings)
    return record


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return Settings(data_dir=tmp_path)


def test_heartbeats_alone_stop_at_the_last_one(settings: Settings) -> None:
    """The issue's figure, in miniature: 12 s at 2 x 400 W, heartbeats at 5 and 10 s."""
    job = running_job()
    for t in (5.0, 10.0):
        beat(job, t, settings)
    assert charged(job, settings).energy_j == 8000.0  # of 9,600: the last 2 s are missing


def test_the_end_sample_charges_the_run_up_to_its_end(settings: Settings) -> None:
    job = running_job()
    for t in (5.0, 10.0):
        beat(job, t, settings)
    first = charged(job, settings)
    # The final report arrives 0.5 s after the end (12 s after the start).
    end = JobEndSample(sample=sample(12.0), ended_s_ago=0.5)
    ended = accounting.observe_end(None, job, end, now=at(12.5),  # type: ignore[arg-type]
                                   settings=settings)
    assert ended == at(12.0)
    rest = charged(job, settings)
    assert first.energy_j + rest.energy_j == pytest.approx(2 * WATTS * 12.0)
    assert rest.energy_j == pytest.approx(2 * WATTS * 2.0)
    # Sampled, busy and idle GPU-seconds reach the end, and start at the start (the first
    # heartbeat's sample covers the 5 s before it).
    assert job.gpu_sampled_s == pytest.approx(2 * 12.0)
    assert job.gpu_busy_s == pytest.approx(0.9 * 12.0)
    assert job.idle_gpu_s == pytest.approx(12.0)  # GPU 1, the whole run
    gpus = job.gpu_stats["gpus"]
    assert gpus["0"]["energy_j"] == gpus["1"]["energy_j"] == WATTS * 12.0
    assert first.sampled_gpu_seconds + rest.sampled_gpu_seconds == pytest.approx(24.0)
    assert rest.carbon_g == pytest.approx(rest.energy_j / 3.6e6 * settings.carbon_intensity("n1"))


def test_a_run_shorter_than_a_heartbeat_is_charged_from_its_end_sample(
        settings: Settings) -> None:
    job = running_job()
    accounting.observe_end(None, job, JobEndSample(sample=sample(3.0)),  # type: ignore[arg-type]
                           now=at(3.0), settings=settings)
    assert charged(job, settings).energy_j == pytest.approx(2400.0)
    assert job.gpu_sampled_s == pytest.approx(6.0) and job.idle_gpu_s == pytest.approx(3.0)


def test_the_end_never_lowers_the_energy_nor_goes_back_before_the_start(
        settings: Settings) -> None:
    job = running_job()
    beat(job, 10.0, settings)
    low = sample(12.0).model_copy(update={"energy_j": 100.0})
    ended = accounting.observe_end(
        None, job, JobEndSample(sample=low, ended_s_ago=3600.0),  # type: ignore[arg-type]
        now=at(12.0), settings=settings)
    assert ended == T0, "an end older than the start is the start"
    assert job.gpu_energy_j == 8000.0
    assert job.gpu_sampled_s == pytest.approx(20.0), "nothing integrated backwards"


def test_an_earlier_attempts_energy_is_kept(settings: Settings) -> None:
    job = running_job()
    job.attempt, job.gpu_energy_earlier_j, job.gpu_energy_j = 2, 5000.0, 5000.0
    job.gpu_stats = {"at": at(-60).timestamp(), "attempt": 1,
                     "gpus": {"0": {"sampled_s": 99.0}}, "charged": {"energy_j": 5000.0}}
    accounting.observe_end(None, job, JobEndSample(sample=sample(12.0)),  # type: ignore[arg-type]
                           now=at(12.0), settings=settings)
    assert job.gpu_energy_j == 5000.0 + 9600.0
    assert charged(job, settings).energy_j == 9600.0
    assert job.gpu_stats["gpus"]["0"]["sampled_s"] == pytest.approx(12.0), "this run's"
