"""The worker protocol and nodes on the wire: registration, heartbeats, state reports, the
launch spec a worker reads, and what the API shows of a node."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from gpuq.wire.common import (
    MAX_ID,
    MAX_MEASURE,
    MAX_NODE_JOBS,
    Strict,
)
from gpuq.wire.states import ReportedState

#: The largest values of the database's integer columns (``Integer``, ``BigInteger``): a
#: larger number a worker sends is a 422 naming it (it overflowed the column: a 500).
_MAX_INT = 2**31 - 1
_MAX_BIGINT = 2**63 - 1
#: A measurement of a GPU or a job (percent, MiB, watts, joules, degrees).
Measure = Annotated[float, Field(ge=-MAX_MEASURE, le=MAX_MEASURE)]


class GpuInfo(Strict):
    index: int = Field(..., ge=0, le=1023)
    uuid: str = Field(..., min_length=1, max_length=96)
    model: str = Field(..., min_length=1, max_length=64)
    memory_mib: int = Field(..., ge=0, le=_MAX_BIGINT)
    healthy: bool = True


class GpuProcess(Strict):
    """A process on a GPU that gpuq did not start (someone ran it by hand)."""

    pid: int = Field(..., ge=0)
    user: str | None = Field(None, max_length=64)
    command: str | None = Field(None, max_length=256)
    used_memory_mib: Measure | None = None


class GpuSample(Strict):
    index: int = Field(..., ge=0)
    utilization_pct: Measure | None = None
    memory_used_mib: Measure | None = None
    power_w: Measure | None = None
    energy_j: Measure | None = None
    temperature_c: Measure | None = None
    healthy: bool = True
    #: Why the GPU is unhealthy (XID error, ECC errors, GPU lost ...), for people.
    health_reason: str | None = Field(None, max_length=256)
    #: Processes on this GPU that gpuq did not start: while any runs, the GPU is occupied
    #: and no job is given it.
    foreign_processes: list[GpuProcess] = Field(default_factory=list, max_length=256)


class NodeRegister(Strict):
    cpus: int = Field(0, ge=0, le=_MAX_INT)
    memory_mib: int = Field(0, ge=0, le=_MAX_BIGINT)
    gpu_backend: Literal["nvml", "simulated"]
    worker_version: str = Field("", max_length=32)
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=1024)
    #: Which job limits the worker enforces (``gpuq.worker.limits``): ``memory,cpu,devices
    #: (how)``, or ``none``, then ``; not <what>: <why>`` for each it cannot. ``None``:
    #: an older worker that does not say.
    enforcement: str | None = Field(None, max_length=256)


class JobGpuSample(Strict):
    """One GPU of a job's sample (units in the names)."""

    index: int = Field(..., ge=0)
    utilization_pct: Measure | None = None
    memory_used_mib: Measure | None = None
    power_w: Measure | None = None
    #: Energy of this GPU since the run started, joules.
    energy_j: Measure | None = None
    #: ``counter``: NVML's cumulative energy counter; ``power``: the integral of the
    #: sampled power (trapezoids between samples), for cards without a counter.
    energy_method: Literal["counter", "power"] | None = None


class JobSample(Strict):
    """What the job's GPUs are doing, measured by the worker (units in the names)."""

    #: Mean utilisation over the job's GPUs, percent.
    utilization_pct: Measure | None = None
    #: GPU memory used, summed over the job's GPUs, MiB.
    memory_used_mib: Measure | None = None
    #: Power draw, summed over the job's GPUs, watts.
    power_w: Measure | None = None
    #: Energy the job's GPUs used since the job started, joules.
    energy_j: Measure | None = None
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


class FenceTerms(BaseModel):
    """How long a node may run its jobs without contact with the scheduler (fencing).

    The node stops every job (SIGTERM, then SIGKILL after ``grace_s``; the run ends
    NODE_FAIL) once ``after_s`` seconds have passed since it *sent* the last heartbeat (or
    registration) the scheduler accepted; the scheduler marks a node down and runs its jobs
    elsewhere only after ``node_down_after_s`` >= after_s + grace_s + a margin."""

    after_s: float = Field(..., gt=0)
    grace_s: float = Field(..., ge=0)
    #: A 503 that says the scheduler's database is unavailable (header
    #: ``X-Gpuq-Unavailable: database``) counts as contact too.
    hold_on_database_outage: bool = True


class Heartbeat(Strict):
    #: Every job the worker still has (running, or ended but not yet acknowledged).
    jobs: list[WorkerJob] = Field(default_factory=list, max_length=MAX_NODE_JOBS)
    gpus: list[GpuSample] = Field(default_factory=list, max_length=1024)
    #: The fence this node keeps (``None``: an older worker); when the scheduler's differs
    #: (its settings changed), the reply's ``fence`` says the scheduler's.
    fence: FenceTerms | None = None
    #: When the worker listed ``jobs`` (its clock; ``None``: an older worker). A heartbeat
    #: can reach the scheduler after a later report (another server replica answered that
    #: one first, a proxy or a paused replica held this one): a job that started after it
    #: was listed is not missing from the node (``rules.seen_in_heartbeat``).
    listed_at: datetime | None = None


class HeartbeatReply(BaseModel):
    #: Jobs the node must (re)launch: DISPATCHED to it but not in its list.
    launch: list[int]
    #: Job runs the node must kill: cancelled, unknown to the scheduler, ended, or an old
    #: attempt of a job that was requeued.
    kill: list[JobRef]
    #: The scheduler's fence, when the heartbeat named another one (``None``: keep yours).
    fence: FenceTerms | None = None


class RegisterReply(BaseModel):
    node: str
    queue: str
    heartbeat_interval_s: float
    #: The fence the node keeps (``None``: an older scheduler; the node does not fence).
    fence: FenceTerms | None = None


class JobEndSample(Strict):
    """The job's GPUs read when its process ended (by the worker, as soon as it saw the
    end), sent with the final report: the heartbeats' samples stop at the last heartbeat,
    this one covers the run up to its end."""

    #: The run's figures at its end: ``energy_j`` (and each GPU's) is the energy used
    #: from the launch to the end, as in a heartbeat's sample.
    sample: JobSample
    #: Seconds from the end to this report, by the worker's clock (worked out again at
    #: each sending, so neither a clock skew nor a late report moves the end).
    ended_s_ago: float = Field(0.0, ge=0.0, le=365 * 86400.0)


class JobStateReport(Strict):
    #: Which run this report is about; a report about an older attempt changes nothing.
    attempt: int = Field(1, ge=1)
    state: ReportedState
    exit_code: int | None = Field(None, ge=-_MAX_INT - 1, le=_MAX_INT)
    reason: str = Field("", max_length=256)
    #: With a final state: the job's GPUs at its end (additive: older workers send none,
    #: and the server charges their runs up to the last heartbeat's sample).
    end_sample: JobEndSample | None = None

    @model_serializer(mode="wrap")
    def _without_no_end_sample(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No ``end_sample`` key when there is none: a server older than the field refuses
        any field it does not know, even a null one."""
        out: dict[str, Any] = handler(self)
        if out.get("end_sample", 0) is None:
            del out["end_sample"]
        return out


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
    #: The job limits its worker enforces, as it registered them (``NodeRegister``);
    #: ``None``: unknown (a worker older than this field, or never registered).
    enforcement: str | None = None
