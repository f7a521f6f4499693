"""Jobs on the wire: what a user submits (``JobCreate``) and what the API answers about a job
(``JobRead``, ``JobBrief``, ``WhyRead``, its events and accounting)."""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, Field, field_validator, model_validator

from gpuq.wire.common import (
    MAX_ARGV,
    MAX_ENV,
    MAX_SCRIPT_BYTES,
    Name,
    Qos,
    Strict,
)

#: An environment variable's name.
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class JobCreate(Strict):
    """A job to submit: exactly one of ``command`` (argv) or ``script`` (text)."""

    command: list[str] | None = Field(None, min_length=1, max_length=MAX_ARGV)
    script: str | None = Field(None, min_length=1, max_length=MAX_SCRIPT_BYTES)
    name: str | None = Field(None, min_length=1, max_length=128)
    workdir: str = Field(..., min_length=1, max_length=1024,
                         description="absolute path on the GPU host")
    environment: dict[str, str] = Field(default_factory=dict)
    gpus: int = Field(1, ge=0, le=64)
    gpu_model: str | None = Field(None, min_length=1, max_length=64)
    cpus: int = Field(1, ge=1, le=1024)
    memory_mib: int = Field(0, ge=0, le=64 * 1024 * 1024)
    time_limit_s: int | None = Field(None, ge=1, description="seconds; default from the server")
    account: Name | None = None
    #: Put the job back in the queue if its node fails (Slurm's --requeue); default yes.
    requeue: bool = True
    #: Lowers the job's own priority (Slurm's --nice); only admins may give a negative one.
    nice: int = Field(0, ge=-10_000, le=10_000)
    #: The job's QOS; default: its account's default QOS (inherited down the tree), else
    #: normal.
    qos: Qos | None = None
    idempotency_key: str | None = Field(None, min_length=1, max_length=128)

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path, e.g. /home/alice/project")
        if "\x00" in v:
            raise ValueError("must not contain NUL bytes")
        return v

    @field_validator("command")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v[0]:
                raise ValueError("the program (first element) must not be empty")
            if any("\x00" in a for a in v):
                raise ValueError("arguments must not contain NUL bytes")
        return v

    @field_validator("environment")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_ENV:
            raise ValueError(f"at most {MAX_ENV} variables")
        for k, val in v.items():
            if not _ENV_KEY.match(k):
                raise ValueError(f"{k!r} is not a valid variable name")
            if "\x00" in val:
                raise ValueError(f"the value of {k} must not contain NUL bytes")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> JobCreate:
        if (self.command is None) == (self.script is None):
            raise ValueError("give exactly one of 'command' (argv list) or 'script' (text)")
        return self


class PriorityFactors(BaseModel):
    """The last scheduling cycle's multifactor priority: each factor in [0, 1]; total =
    site + Σ weight x factor - nice."""

    total: float
    fairshare: float
    age: float
    jobsize: float
    qos: float
    nice: int
    site: int = 0


class JobAhead(BaseModel):
    id: int
    user: str
    account: str
    factors: PriorityFactors | None


class WhyRead(BaseModel):
    """Why a job waits: its place in the queue, its reason, its priority beside the job
    ahead of it, and when it is expected to start (if the scheduler has planned it)."""

    id: int
    state: str
    reason: str
    #: 1 = next in line; None once the job is no longer pending.
    position: int | None
    pending: int
    factors: PriorityFactors | None
    ahead: JobAhead | None
    estimated_start: datetime | None


class JobEventRead(BaseModel):
    time: datetime
    old_state: str | None
    new_state: str
    reason: str


class GpuAccounting(BaseModel):
    """One GPU of a job, over its runs (from the worker's samples)."""

    index: int
    utilization_mean_pct: float | None = None
    utilization_peak_pct: float | None = None
    memory_peak_mib: float | None = None
    #: The GPU's memory, MiB (for the headroom).
    memory_mib: int | None = None
    energy_j: float | None = None
    energy_method: str | None = None


class JobAccounting(BaseModel):
    """What a job used and wasted (``gpuq show``, ``gpuq eff``)."""

    gpu_hours: float
    billed_gpu_hours: float
    #: Energy of its GPUs, kWh: NVML's energy counter where the card has one, else the
    #: integral of the sampled power.
    energy_kwh: float | None = None
    #: ``counter``, ``power`` or ``mixed``: how the energy was measured.
    energy_method: str | None = None
    #: Charged energy x the node's grid intensity, kg CO2e.
    carbon_kg: float
    carbon_intensity_g_per_kwh: float | None = None
    #: Time-weighted over the samples and the job's GPUs.
    utilization_mean_pct: float | None = None
    utilization_peak_pct: float | None = None
    #: GPU-hours its GPUs spent under the idle threshold.
    idle_gpu_hours: float = 0.0
    gpus: list[GpuAccounting] = Field(default_factory=list)
    #: Flagged idle now: every GPU under ``idle_utilization_pct`` for ``idle_window_s``.
    idle: bool = False
    idle_since: datetime | None = None
    idle_flagged_at: datetime | None = None
    #: none | notified | cancel-pending | cancelled ("" : never flagged).
    idle_action: str = ""
    #: When the job's accounting was closed (after its end was charged).
    final: bool = False


class JobRead(BaseModel):
    id: int
    name: str
    user: str
    account: str
    state: str
    reason: str
    gpus: int
    gpu_model: str | None
    cpus: int
    memory_mib: int
    time_limit_s: int
    priority: int
    node: str | None
    gpu_indices: list[int]
    exit_code: int | None
    cancel_requested: bool
    requeue: bool = True
    #: How many times the job was dispatched (a requeued job runs again as attempt 2 ...).
    attempt: int = 0
    #: Energy of the job's GPUs so far (NVML's counters, or the simulation's), joules.
    gpu_energy_j: float | None = None
    #: Highest GPU memory the job held (sum over its GPUs), MiB.
    max_gpu_memory_mib: float | None = None
    #: Accounting (charged so far while it runs; final once it has ended and been charged).
    accounting: JobAccounting | None = None
    nice: int = 0
    qos: str = "normal"
    #: The last cycle's priority factors (pending jobs).
    priority_factors: PriorityFactors | None = None
    estimated_start: datetime | None = None
    #: How many times it was preempted (each time requeued, unless it asked not to be).
    preemptions: int = 0
    #: Running on idle GPUs reserved for another account's grant: may be preempted.
    borrowed_grant: int | None = None
    borrowed_gpus: int = 0
    #: A preemption was asked for: the node is stopping it (SIGTERM, grace, SIGKILL).
    preempt_requested: bool = False
    preempt_reason: str = ""
    #: A pending job's claim on GPUs being freed for it by preemption:
    #: {"node": str, "gpus": [int], "victims": [job id], "grant": int | null}.
    claim: dict[str, object] | None = None
    submitted_at: datetime
    dispatched_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    #: The spec; ``None`` for other users' jobs unless the caller is an admin.
    command: list[str] | None = None
    script: str | None = None
    workdir: str | None = None
    environment: dict[str, str] | None = None
    events: list[JobEventRead] | None = None


class JobBrief(BaseModel):
    """A job as a queue listing shows it (``GET /v1/jobs?view=brief``, what ``gpuq q``
    reads): the fields of ``JobRead`` of the same names, without the spec (command,
    script, workdir, environment), the accounting, the priority factors or the events."""

    id: int
    name: str
    user: str
    account: str
    state: str
    #: Why it waits (pending) or how it ended; "" for none.
    reason: str
    qos: str
    gpus: int
    gpu_model: str | None
    #: The node it runs on (or last ran on) and its GPUs there.
    node: str | None
    gpu_indices: list[int]
    priority: int
    time_limit_s: int
    #: The user asked to cancel; the node has not confirmed yet.
    cancel_requested: bool
    #: A preemption was asked for: the node is stopping it.
    preempt_requested: bool
    #: Running on idle GPUs reserved for this grant (another account's): may be preempted.
    borrowed_grant: int | None
    #: Flagged idle: its GPUs have been under the idle threshold for the idle window
    #: (``JobRead.accounting.idle``).
    idle: bool
    submitted_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
