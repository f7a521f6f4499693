"""Jobs on the wire: what a user submits (``JobCreate``) and what the API answers about a job
(``JobRead``, ``JobBrief``, ``WhyRead``, its events and accounting)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from gpuq.wire.common import (
    MAX_ARG_BYTES,
    MAX_ARGV,
    MAX_ARGV_BYTES,
    MAX_ENV,
    MAX_ENV_BYTES,
    MAX_ENV_NAME,
    MAX_ENV_VAR_BYTES,
    MAX_EXEC_BYTES,
    MAX_GPU_MODEL,
    MAX_IDEMPOTENCY_KEY,
    MAX_JOB_NAME,
    MAX_SCRIPT_BYTES,
    MAX_WORKDIR,
    Name,
    Qos,
    Strict,
)

#: An environment variable's name.
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: What to do about text too large for argv or the environment.
_USE_A_FILE = "pass large data in a file (in the workdir) and its path instead"


def utf8_len(text: str) -> int:
    """``len(text.encode())``, without encoding ASCII text."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def argv_bytes(argv: list[str] | None) -> int:
    """What argv takes at exec: each element's UTF-8 bytes and its NUL."""
    return sum(utf8_len(a) + 1 for a in argv) if argv else 0


def env_bytes(environment: dict[str, str]) -> int:
    """What the environment takes at exec: each ``NAME=value``'s UTF-8 bytes and its NUL."""
    return sum(utf8_len(k) + utf8_len(v) + 2 for k, v in environment.items())


class JobCreate(Strict):
    """A job to submit: exactly one of ``command`` (argv) or ``script`` (text). Every
    field is bounded (``gpuq.wire.common``: argv and the environment as Linux bounds them
    at exec); one over its limit is a 422 naming it."""

    command: list[Annotated[str, Field(max_length=MAX_ARG_BYTES)]] | None = Field(
        None, min_length=1, max_length=MAX_ARGV,
        description=f"argv: at most {MAX_ARGV} elements of at most {MAX_ARG_BYTES} bytes "
                    f"each, {MAX_ARGV_BYTES} bytes in all (UTF-8, a NUL after each)")
    script: str | None = Field(None, min_length=1, max_length=MAX_SCRIPT_BYTES,
                               description=f"at most {MAX_SCRIPT_BYTES} bytes (UTF-8)")
    name: str | None = Field(None, min_length=1, max_length=MAX_JOB_NAME)
    workdir: str = Field(..., min_length=1, max_length=MAX_WORKDIR,
                         description="absolute path on the GPU host")
    environment: dict[Annotated[str, Field(max_length=MAX_ENV_NAME)],
                      Annotated[str, Field(max_length=MAX_ENV_VAR_BYTES)]] = Field(
        default_factory=dict, max_length=MAX_ENV,
        description=f"at most {MAX_ENV} variables; each NAME=value at most "
                    f"{MAX_ENV_VAR_BYTES} bytes, {MAX_ENV_BYTES} bytes in all (UTF-8, a NUL "
                    f"after each); with argv, at most {MAX_EXEC_BYTES} bytes")
    gpus: int = Field(1, ge=0, le=64)
    gpu_model: str | None = Field(None, min_length=1, max_length=MAX_GPU_MODEL)
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
    idempotency_key: str | None = Field(None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY)

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path, e.g. /home/alice/project")
        if "\x00" in v:
            raise ValueError("must not contain NUL bytes")
        return v

    @field_validator("script")
    @classmethod
    def _script(cls, v: str | None) -> str | None:
        if v is not None and (n := utf8_len(v)) > MAX_SCRIPT_BYTES:
            raise ValueError(f"the script is {n} bytes (UTF-8); at most {MAX_SCRIPT_BYTES} "
                             f"(1 MiB): {_USE_A_FILE}")
        return v

    @field_validator("command")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v[0]:
                raise ValueError("the program (first element) must not be empty")
            if any("\x00" in a for a in v):
                raise ValueError("arguments must not contain NUL bytes")
            for i, arg in enumerate(v):
                if (n := utf8_len(arg)) > MAX_ARG_BYTES:
                    raise ValueError(f"element {i} is {n} bytes (UTF-8); at most "
                                     f"{MAX_ARG_BYTES} (128 KiB, Linux's MAX_ARG_STRLEN): "
                                     f"{_USE_A_FILE}")
            if (n := argv_bytes(v)) > MAX_ARGV_BYTES:
                raise ValueError(f"argv is {n} bytes in all (UTF-8, a NUL after each "
                                 f"element); at most {MAX_ARGV_BYTES} (1 MiB): {_USE_A_FILE}")
        return v

    @field_validator("environment")
    @classmethod
    def _env(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if len(v) > MAX_ENV:
            raise ValueError(f"at most {MAX_ENV} variables")
        for k, val in v.items():
            if len(k) > MAX_ENV_NAME:
                raise ValueError(f"the variable name {k[:40]}... is {len(k)} characters; at "
                                 f"most {MAX_ENV_NAME}")
            if not _ENV_KEY.match(k):
                raise ValueError(f"{k!r} is not a valid variable name")
            if "\x00" in val:
                raise ValueError(f"the value of {k} must not contain NUL bytes")
            if (n := utf8_len(k) + 1 + utf8_len(val)) > MAX_ENV_VAR_BYTES:
                raise ValueError(f"{k}=<value> is {n} bytes (UTF-8); at most "
                                 f"{MAX_ENV_VAR_BYTES} (128 KiB for NAME=value, Linux's "
                                 f"MAX_ARG_STRLEN): {_USE_A_FILE}")
        if (n := env_bytes(v)) > MAX_ENV_BYTES:
            raise ValueError(f"the environment is {n} bytes in all (UTF-8, NAME=value and a "
                             f"NUL each); at most {MAX_ENV_BYTES} (1 MiB): {_USE_A_FILE}")
        if (n := n + argv_bytes(info.data.get("command"))) > MAX_EXEC_BYTES:
            raise ValueError(f"the command and the environment are {n} bytes together; at "
                             f"most {MAX_EXEC_BYTES} (1.75 MiB: Linux's ARG_MAX of 2 MiB, "
                             f"less room for the variables the worker adds): {_USE_A_FILE}")
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
    #: The job array it is an element of (Slurm's ArrayJobId) and its index there ("7");
    #: for a line standing for an array's waiting elements (folded, as squeue shows
    #: them), their indices ("[8-9999]") and how many they are (``count``).
    array_id: int | None = None
    array_task: str | None = None
    count: int = 1
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
    #: The spec; ``None`` for other users' jobs unless the caller is an admin. A listing
    #: (``GET /v1/jobs``) leaves out ``script`` and ``environment``: the job's own page
    #: (``GET /v1/jobs/{id}``) has them.
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
    #: The job array it is an element of (Slurm's ArrayJobId) and its index there ("7");
    #: for a line standing for an array's waiting elements (folded, as squeue shows
    #: them), their indices ("[8-9999]") and how many they are (``count``).
    array_id: int | None = None
    array_task: str | None = None
    count: int = 1
