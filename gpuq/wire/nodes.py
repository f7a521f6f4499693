"""The worker protocol and nodes on the wire: registration, heartbeats, state reports, the
launch spec a worker reads, and what the API shows of a node."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from gpuq.wire.common import (
    MAX_ID,
    Strict,
)
from gpuq.wire.states import ReportedState


class GpuInfo(Strict):
    index: int = Field(..., ge=0, le=1023)
    uuid: str = Field(..., min_length=1, max_length=96)
    model: str = Field(..., min_length=1, max_length=64)
    memory_mib: int = Field(..., ge=0)
    healthy: bool = True


class GpuProcess(Strict):
    """A process on a GPU that gpuq did not start (someone ran it by hand)."""

    pid: int = Field(..., ge=0)
    user: str | None = Field(None, max_length=64)
    command: str | None = Field(None, max_length=256)
    used_memory_mib: float | None = None


class GpuSample(Strict):
    index: int = Field(..., ge=0)
    utilization_pct: float | None = None
    memory_used_mib: float | None = None
    power_w: float | None = None
    energy_j: float | None = None
    temperature_c: float | None = None
    healthy: bool = True
    #: Why the GPU is unhealthy (XID error, ECC errors, GPU lost ...), for people.
    health_reason: str | None = Field(None, max_length=256)
    #: Processes on this GPU that gpuq did not start: while any runs, the GPU is occupied
    #: and no job is given it.
    foreign_processes: list[GpuProcess] = Field(default_factory=list, max_length=256)


class NodeRegister(Strict):
    cpus: int = Field(0, ge=0)
    memory_mib: int = Field(0, ge=0)
    gpu_backend: Literal["nvml", "simulated"]
    worker_version: str = Field("", max_length=32)
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=1024)


class JobGpuSample(Strict):
    """One GPU of a job's sample (units in the names)."""

    index: int = Field(..., ge=0)
    utilization_pct: float | None = None
    memory_used_mib: float | None = None
    power_w: float | None = None
    #: Energy of this GPU since the run started, joules.
    energy_j: float | None = None
    #: ``counter``: NVML's cumulative energy counter; ``power``: the integral of the
    #: sampled power (trapezoids between samples), for cards without a counter.
    energy_method: Literal["counter", "power"] | None = None


class JobSample(Strict):
    """What the job's GPUs are doing, measured by the worker (units in the names)."""

    #: Mean utilisation over the job's GPUs, percent.
    utilization_pct: float | None = None
    #: GPU memory used, summed over the job's GPUs, MiB.
    memory_used_mib: float | None = None
    #: Power draw, summed over the job's GPUs, watts.
    power_w: float | None = None
    #: Energy the job's GPUs used since the job started, joules.
    energy_j: float | None = None
    #: The same per GPU (additive: older workers send none).
    gpus: list[JobGpuSample] | None = Field(None, max_length=1024)


class WorkerJob(Strict):
    job_id: int = Field(..., ge=1, le=MAX_ID)
    #: Which run of the job this is (``LaunchSpec.attempt``).
    attempt: int = Field(1, ge=1)
    state: ReportedState
    sample: JobSample | None = None


class JobRef(BaseModel):
    job_id: int
    attempt: int
    #: Seconds between SIGTERM and SIGKILL for this kill (a preemption's grace period);
    #: None: the worker's own ``kill_grace_s``.
    grace_s: float | None = None


class Heartbeat(Strict):
    #: Every job the worker still has (running, or ended but not yet acknowledged).
    jobs: list[WorkerJob] = Field(default_factory=list)
    gpus: list[GpuSample] = Field(default_factory=list)


class HeartbeatReply(BaseModel):
    #: Jobs the node must (re)launch: DISPATCHED to it but not in its list.
    launch: list[int]
    #: Job runs the node must kill: cancelled, unknown to the scheduler, ended, or an old
    #: attempt of a job that was requeued.
    kill: list[JobRef]


class RegisterReply(BaseModel):
    node: str
    queue: str
    heartbeat_interval_s: float


class JobStateReport(Strict):
    #: Which run this report is about; a report about an older attempt changes nothing.
    attempt: int = Field(1, ge=1)
    state: ReportedState
    exit_code: int | None = None
    reason: str = Field("", max_length=256)


class LaunchSpec(BaseModel):
    """What a worker needs to start a job; read with the node token at launch time."""

    job_id: int
    attempt: int
    name: str
    user: str
    #: The Unix account the job runs as on a worker running as root (set by an admin;
    #: the gpuq user name unless the admin mapped it to another).
    unix_user: str
    account: str
    state: str
    cancel_requested: bool
    command: list[str] | None
    script: str | None
    workdir: str
    environment: dict[str, str]
    gpu_indices: list[int]
    gpu_uuids: list[str]
    cpus: int
    memory_mib: int
    time_limit_s: int
    #: The scheduler is preempting this run: stop it with this grace period (SIGTERM, then
    #: SIGKILL after ``kill_grace_s``) so that it can checkpoint.
    preempt_requested: bool = False
    kill_grace_s: float | None = None


class GpuRead(BaseModel):
    index: int
    uuid: str
    model: str
    memory_mib: int
    healthy: bool
    health_reason: str | None = None
    job_id: int | None
    #: Processes gpuq did not start; while there are any, no job is given this GPU.
    foreign_processes: list[GpuProcess] = Field(default_factory=list)
    sample: dict[str, float | bool | None]
    #: When ``sample`` was taken (samples are kept every ``gpu_sample_interval_s``).
    sampled_at: datetime | None = None


class NodeRead(BaseModel):
    name: str
    #: UP, DOWN, UNKNOWN, or DRAIN (up, but an admin stopped new jobs: see drain_reason).
    state: str
    state_reason: str
    drain: bool = False
    drain_reason: str = ""
    cpus: int
    memory_mib: int
    gpu_backend: str
    last_heartbeat_at: datetime | None
    gpus: list[GpuRead]
