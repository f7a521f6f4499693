"""The wire contract of API v1 (pydantic). Kept apart from the ORM models: the name says
which way data flows (``JobCreate`` in, ``JobRead`` out)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_RE, description="letters, digits, '.', '_', '-'")]
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: normal; preemptible (runs on any idle GPU, reserved or not, and is preempted first);
#: high (higher priority; only users an admin allowed, see ``UserUpdate.allowed_qos``).
Qos = Literal["normal", "preemptible", "high"]
QOS_NAMES: tuple[str, ...] = ("normal", "preemptible", "high")

MAX_SCRIPT_BYTES = 1024 * 1024
MAX_ARGV = 4096
MAX_ENV = 4096


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- jobs -------------------------------------------------------------------------------


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


# --- nodes ------------------------------------------------------------------------------


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
    job_id: int
    #: Which run of the job this is (``LaunchSpec.attempt``).
    attempt: int = Field(1, ge=1)
    state: Literal["RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"]
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
    state: Literal["RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"]
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


# --- admin ------------------------------------------------------------------------------


Shares = int | Literal["parent"]


class AccountCreate(Strict):
    name: Name
    parent: Name = "root"
    #: Raw shares, or "parent" (Slurm's FairShare=parent: not a level of its own).
    shares: Annotated[int, Field(ge=0, le=1_000_000)] | Literal["parent"] = 1
    description: str = Field("", max_length=256)
    #: QOS of jobs submitted to it (and to accounts below) that name none; null: inherit.
    default_qos: Qos | None = None


class AccountUpdate(Strict):
    """Change an account: only the fields given change (``default_qos: null`` inherits)."""

    #: Move it (and everything below) under another account.
    parent: Name | None = None
    shares: Annotated[int, Field(ge=0, le=1_000_000)] | Literal["parent"] | None = None
    description: str | None = Field(None, max_length=256)
    default_qos: Qos | None = None


class AccountRead(BaseModel):
    name: str
    parent: str | None
    shares: Shares
    description: str
    default_qos: str | None = None
    #: Retired: takes no new jobs and is left out of the fair-share tree.
    retired: bool = False
    retired_at: datetime | None = None


UnixName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$",
                                description="a Unix account name, e.g. alice")]


class UserCreate(Strict):
    name: Name
    account: Name
    shares: Annotated[int, Field(ge=0, le=1_000_000)] | Literal["parent"] = 1
    admin: bool = False
    #: The Unix account this user's jobs run as on workers running as root (default: the
    #: same name). Only admins set it; users never choose it.
    unix_user: UnixName | None = None


class UserUpdate(Strict):
    """Only the fields given change (``unix_user: null``: the same name as the user)."""

    unix_user: UnixName | None = None
    admin: bool | None = None
    #: A disabled user's tokens stop working and it cannot submit; its jobs stay.
    disabled: bool | None = None
    #: The account its jobs go to when they name none (it must be a member).
    default_account: Name | None = None
    #: Restricted QOS the user may choose (only "high" is restricted).
    allowed_qos: list[Qos] | None = None


class MembershipUpdate(Strict):
    shares: Annotated[int, Field(ge=0, le=1_000_000)] | Literal["parent"]


class NodeDrain(Strict):
    reason: str = Field(..., min_length=1, max_length=256,
                        description="why, for people: e.g. 'replacing GPU 3'")


class MembershipCreate(Strict):
    account: Name
    shares: Annotated[int, Field(ge=0, le=1_000_000)] | Literal["parent"] = 1


class MembershipRead(BaseModel):
    account: str
    shares: Shares


class UserRead(BaseModel):
    name: str
    admin: bool
    unix_user: str
    default_account: str | None
    accounts: list[MembershipRead]
    disabled: bool = False
    allowed_qos: list[str] = Field(default_factory=list)


class TokenCreate(Strict):
    role: Literal["user", "admin", "node"]
    #: For user and admin tokens: whose token it is.
    user: Name | None = None
    #: For node tokens: the node (host) name; the node need not have registered yet.
    node: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    description: str = Field("", max_length=256)
    #: Seconds until the token stops working (at least 60); null: never expires.
    expires_in_s: int | None = Field(None, ge=60, le=10 * 366 * 86400)

    @model_validator(mode="after")
    def _owner(self) -> TokenCreate:
        if self.role == "node" and not self.node:
            raise ValueError("a node token needs 'node' (the host name)")
        if self.role != "node" and not self.user:
            raise ValueError(f"a {self.role} token needs 'user'")
        if self.role == "node" and self.user:
            raise ValueError("a node token belongs to a node, not a user: drop 'user'")
        return self


class TokenRead(BaseModel):
    id: int
    prefix: str
    role: str
    user: str | None
    node: str | None
    description: str
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool
    expires_at: datetime | None = None
    expired: bool = False


class TokenCreated(TokenRead):
    #: The secret; shown once, never stored.
    token: str


class UsageImport(Strict):
    """One record of historical usage from another scheduler."""

    user: Name
    account: Name
    billed_seconds: float = Field(..., ge=0, description="billed GPU-seconds")
    #: When the usage ended; it has decayed since. Default: now.
    end_time: datetime | None = None

    @field_validator("end_time")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-01-31T12:00:00Z")
        return v


class UsageImportResult(BaseModel):
    imported: int
    #: What the records add to the associations' usage now, after decay.
    decayed_billed_seconds: float


class FairShareRow(BaseModel):
    """One line of ``sshare -l``: an account (``user`` null), or a user in an account.
    Usage in billed GPU-seconds, decayed. ``level_fs`` "inf" means no usage yet."""

    name: str
    account: str
    user: str | None
    parent: str | None
    raw_shares: Shares
    norm_shares: float | None
    raw_usage: float
    norm_usage: float
    effective_usage: float | None
    level_fs: float | Literal["inf"] | None
    fairshare: float | None


class WhoAmI(BaseModel):
    role: str
    user: str | None
    node: str | None
    admin: bool
    accounts: list[str]
    default_account: str | None


# --- grants -----------------------------------------------------------------------------

GrantKind = Literal["share", "reservation"]
GrantState = Literal["scheduled", "active", "expired", "revoked"]


class GrantCreate(Strict):
    """An allocation award to ``account`` for the window [``start``, ``end``).

    ``share``: ``shares`` raw shares are added to the account's while the grant is active
    (fair share then works toward the larger target), until the account has used
    ``gpu_hours`` billed GPU-hours in the window (if a budget is given).
    ``reservation``: ``gpus`` GPUs (of ``gpu_model``, on ``nodes`` if given) are kept for
    the account's jobs; other jobs borrow them while idle and are preempted (SIGTERM,
    grace period, SIGKILL, requeued) when the account's jobs need them back.
    """

    account: Name
    kind: GrantKind
    #: Default: now.
    start: datetime | None = None
    end: datetime
    note: str = Field("", max_length=512)
    shares: int | None = Field(None, ge=1, le=1_000_000)
    gpu_hours: float | None = Field(None, gt=0)
    gpus: int | None = Field(None, ge=1, le=100_000)
    gpu_model: str | None = Field(None, min_length=1, max_length=64)
    nodes: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]] = \
        Field(default_factory=list, max_length=1000)

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2027-01-31T00:00:00Z")
        return v

    @model_validator(mode="after")
    def _kind_fields(self) -> GrantCreate:
        if self.start is not None and self.end <= self.start:
            raise ValueError("'end' must be after 'start'")
        if self.kind == "share":
            if self.shares is None:
                raise ValueError("a share grant needs 'shares' (raw shares to add)")
            extra = [f for f in ("gpus", "gpu_model") if getattr(self, f) is not None]
            if self.nodes:
                extra.append("nodes")
            if extra:
                raise ValueError(f"a share grant takes no {', '.join(extra)}: those are "
                                 f"for reservation grants")
        else:
            if self.gpus is None:
                raise ValueError("a reservation grant needs 'gpus' (how many to reserve)")
            extra = [f for f in ("shares", "gpu_hours") if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"a reservation grant takes no {', '.join(extra)}: those "
                                 f"are for share grants")
        return self


class GrantUpdate(Strict):
    """Change a grant that has not ended: only the fields given change."""

    end: datetime | None = None
    note: str | None = Field(None, max_length=512)
    gpu_hours: float | None = Field(None, gt=0)

    @field_validator("end")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2027-01-31T00:00:00Z")
        return v


class GrantRevoke(Strict):
    reason: str = Field(..., min_length=1, max_length=256)


class GrantUsage(BaseModel):
    """What the grant's account used in the window so far (up to now or the end)."""

    #: GPU-hours the account's jobs (and those of accounts below it) ran in the window.
    gpu_hours: float
    #: The same, billed (GPU-hours x the model's billing weight): what a budget counts.
    billed_gpu_hours: float
    #: Share grants: the budget, and what is left of it (null: no budget).
    budget_gpu_hours: float | None = None
    budget_left_gpu_hours: float | None = None
    #: Reservation grants: GPUs x hours of the window so far (what was reserved).
    reserved_gpu_hours: float | None = None
    #: Reservation grants: GPU-hours other accounts' jobs borrowed of it.
    borrowed_gpu_hours: float = 0.0
    #: Preemptions of borrowers it caused.
    preemptions: int = 0
    #: Energy of the account's jobs in the window, kWh (where the GPUs report it).
    energy_kwh: float | None = None


class GrantRead(BaseModel):
    id: int
    account: str
    kind: GrantKind
    start: datetime
    end: datetime
    note: str
    shares: int | None
    gpu_hours: float | None
    gpus: int | None
    gpu_model: str | None
    nodes: list[str]
    state: GrantState
    #: Why it is in its state: "budget used up", "revoked by bob: ...", "end reached".
    state_reason: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    usage: GrantUsage


# --- audit log ----------------------------------------------------------------------------


class AuditRead(BaseModel):
    """One admin change: who made it (the user behind the token; "gpuq" for the
    scheduler's own, such as a grant starting), when, what, before and after."""

    id: int
    time: datetime
    actor: str
    token_id: int | None
    #: ``<object>.<verb>``: account.create, account.update, account.retire, user.create,
    #: user.update, membership.create, membership.update, membership.delete, token.create,
    #: token.revoke, node.drain, node.resume, grant.create, grant.update, grant.revoke,
    #: grant.activate, grant.expire, usage.import.
    action: str
    #: ``<object>:<name or id>``: account:qlab, user:alice, token:12, node:gpu01, grant:3.
    target: str
    before: dict[str, object] | None
    after: dict[str, object] | None


# --- the brief queue listing -------------------------------------------------------------


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
