"""SQLAlchemy 2 models: the database is the source of truth (see DESIGN.md).

Every schema change is an Alembic migration in ``scheduler/db/migrations/versions``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from gpuq.wire.states import JobState, NodeState

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        # SQLite keeps only the wall-clock digits: store them in UTC, or an aware time in
        # another zone would come back shifted by its offset.
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Account(Base):
    """A node of the accounts tree (department -> lab -> sub-group)."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    shares: Mapped[int] = mapped_column(Integer, default=1)
    #: Slurm's FairShare=parent: not a level of its own (its children count as its parent's).
    shares_parent: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(String(256), default="")
    #: The QOS of jobs submitted to this account that name none; None: the parent's.
    default_qos: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Retired accounts take no new jobs and leave the fair-share tree; the row stays.
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    parent: Mapped[Account | None] = relationship(remote_side=[id])


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The Unix account this user's jobs run as on a root worker; None: the same name.
    unix_user: Mapped[str | None] = mapped_column(String(32))
    default_account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    #: Restricted QOS (``high``) this user may choose; admins may choose any.
    allowed_qos: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: A disabled user's tokens stop working and it cannot submit; its jobs are kept.
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    default_account: Mapped[Account | None] = relationship()
    memberships: Mapped[list[Membership]] = relationship(back_populates="user")


class Membership(Base):
    """A user association: a user in an account, with its own shares (Slurm's user assoc)."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "account_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    shares: Mapped[int] = mapped_column(Integer, default=1)
    shares_parent: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Decayed usage of this association, billed GPU-seconds, as of ``usage_at``.
    usage: Mapped[float] = mapped_column(Float, default=0.0)

    user: Mapped[User] = relationship(back_populates="memberships")
    account: Mapped[Account] = relationship()


class ApiToken(Base):
    """A bearer token. Only the SHA-256 of the secret is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: The first characters of the token, to tell tokens apart in listings.
    prefix: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(8))  # user | admin | node
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    description: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: None: never expires.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User | None] = relationship()
    node: Mapped[Node | None] = relationship()


class Node(Base):
    """A GPU host running ``gpuq worker``."""

    __tablename__ = "nodes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    #: UP or DOWN (see ``scheduler.states.NodeState``); UNKNOWN until it registers.
    state: Mapped[str] = mapped_column(String(16), default=NodeState.UNKNOWN.value)
    state_reason: Mapped[str] = mapped_column(String(256), default="")
    #: Drained by an admin: running jobs finish, nothing new starts. Kept across DOWN/UP.
    drain: Mapped[bool] = mapped_column(Boolean, default=False)
    drain_reason: Mapped[str] = mapped_column(String(256), default="")
    cpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    gpu_backend: Mapped[str] = mapped_column(String(16), default="")
    worker_version: Mapped[str] = mapped_column(String(32), default="")
    #: The job limits its worker enforces (``NodeRegister.enforcement``); NULL: unknown.
    enforcement: Mapped[str | None] = mapped_column(String(256))
    registered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    gpus: Mapped[list[Gpu]] = relationship(
        back_populates="node", order_by="Gpu.index", cascade="all, delete-orphan"
    )


class Gpu(Base):
    __tablename__ = "gpus"
    __table_args__ = (UniqueConstraint("node_id", "index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    uuid: Mapped[str] = mapped_column(String(96))
    model: Mapped[str] = mapped_column(String(64))
    memory_mib: Mapped[int] = mapped_column(BigInteger)
    healthy: Mapped[bool] = mapped_column(Boolean, default=True)
    health_reason: Mapped[str | None] = mapped_column(String(256))
    #: Processes gpuq did not start that hold this GPU (from the last heartbeat).
    foreign_processes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: Last sample sent by the worker (utilization, memory used, power ...), for display.
    last_sample: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    node: Mapped[Node] = relationship(back_populates="gpus")


class JobSpec(Base):
    """What the elements of a job array share, stored once (not once per element): the
    command or the script, and the environment common to all of them. An element's own
    row holds only its index variables; ``effective_spec`` puts the two together."""

    __tablename__ = "job_specs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    command: Mapped[list[str] | None] = mapped_column(JSON)
    script: Mapped[str | None] = mapped_column(Text)
    environment: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)


def effective_spec(job: Any, shared: Any | None
                   ) -> tuple[list[str] | None, str | None, dict[str, str]]:
    """A job's command, script and environment as it runs: ``job`` (a ``Job`` or a row of
    its columns) over the spec it shares (``shared``: its ``JobSpec`` or a row of one;
    None for a job whose spec is all in its own row). The job's own variables win."""
    own = job.environment or {}
    if shared is None:
        return job.command, job.script, own
    return (job.command if job.command is not None else shared.command,
            job.script if job.script is not None else shared.script,
            {**(shared.environment or {}), **own})


def inline(value: Any) -> Any:
    """``value`` (a constant, or a list of them for ``IN``) written into the statement, not
    sent as a parameter. Where a condition must match a partial index's (``state =
    'PENDING'``), it has to be in the SQL: psycopg prepares a statement after five runs,
    and PostgreSQL's generic plan for ``state = $1`` cannot use an index built for
    ``state = 'PENDING'`` (with the queue's reads planned that way, a quick cycle at
    10,000 pending single jobs took 14.5 ms; 8.8 ms with the conditions written in)."""
    if isinstance(value, list | tuple):
        return bindparam(None, list(value), expanding=True, literal_execute=True)
    return bindparam(None, value, literal_execute=True)


#: The arrays with elements that have no row yet and wait (``ix_job_arrays_pending``).
PENDING_ARRAYS = text("state = 'PENDING'")


class JobArray(Base):
    """A job array (Slurm's ``--array``) as one record: what its elements share, which
    indices it has, and how far it has been split into rows. An element gets its own
    ``jobs`` row only when it is started or touched (cancelled alone, given a claim); the
    others wait here, one record for all of them (``services/arrays.py``). The elements'
    job ids are the block ``id .. id + count - 1`` reserved at submit: position ``p`` (the
    ``p``-th index of ``ranges``) is job ``id + p``."""

    __tablename__ = "job_arrays"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key"),
        Index("ix_job_arrays_pending", "priority_key", "id",
              postgresql_where=PENDING_ARRAYS, sqlite_where=PENDING_ARRAYS),
    )
    #: The array's job id (Slurm's ArrayJobId): its first element's.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    #: The indices, as ascending disjoint runs ``[first, last, step]`` (gpuq.wire.arrays).
    ranges: Mapped[list[list[int]]] = mapped_column(JSON)
    count: Mapped[int] = mapped_column(Integer)
    #: Element rows made so far (started or touched), and the position below which every
    #: element has its row (the next to start is the first at or above it without one).
    split: Mapped[int] = mapped_column(Integer, default=0)
    next_pos: Mapped[int] = mapped_column(Integer, default=0)
    #: PENDING: elements without a row wait; CANCELLED: they were cancelled with the
    #: array; SPLIT: every element has its row (the record only names the array then).
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING.value)
    reason: Mapped[str] = mapped_column(String(256), default="Submitted")
    #: What every element shares (the spec and the job's columns but its index).
    spec_id: Mapped[int] = mapped_column(ForeignKey("job_specs.id"))
    workdir: Mapped[str] = mapped_column(String(1024))
    gpus: Mapped[int] = mapped_column(Integer, default=1)
    gpu_model: Mapped[str | None] = mapped_column(String(64))
    cpus: Mapped[int] = mapped_column(Integer, default=1)
    memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    time_limit_s: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    requeue: Mapped[bool] = mapped_column(Boolean, default=True)
    nice: Mapped[int] = mapped_column(Integer, default=0)
    qos: Mapped[str] = mapped_column(String(16), default="normal")
    #: The waiting elements' factors, order and estimated start (the first of them), as
    #: the scheduling loop last wrote them (``Job``'s columns of the same names).
    priority_factors: Mapped[dict[str, float] | None] = mapped_column(JSON)
    priority_key: Mapped[float | None] = mapped_column(Float)
    estimated_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: When the waiting elements were cancelled (with the array).
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()
    account: Mapped[Account] = relationship()
    spec: Mapped[JobSpec] = relationship()

    @property
    def waiting(self) -> int:
        """Elements without a row of their own."""
        return self.count - self.split


#: The states of jobs in the queue (pending or on a node): ``ix_jobs_active_id``'s rows.
ACTIVE_JOBS = text("state IN ('PENDING', 'DISPATCHED', 'RUNNING')")
PENDING_JOBS = text("state = 'PENDING'")
#: The pending jobs holding a claim (a claim given up is JSON null, not SQL NULL).
CLAIMED_JOBS = text("state = 'PENDING' AND claim IS NOT NULL AND CAST(claim AS TEXT) <> 'null'")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key"),
        Index("ix_jobs_state", "state"),
        #: The queue listing (``state IN (...) ORDER BY id DESC LIMIT n``) reads the active
        #: jobs newest first through this, not backwards through every ended job's id.
        Index("ix_jobs_active_id", "id", postgresql_where=ACTIVE_JOBS, sqlite_where=ACTIVE_JOBS),
        #: A cycle an event woke reads the first pending jobs in priority order through this
        #: (``schedule_queue_depth``), not the whole queue.
        Index("ix_jobs_pending_priority", "priority_key", "id",
              postgresql_where=PENDING_JOBS, sqlite_where=PENDING_JOBS),
        Index("ix_jobs_pending_claim", "id", postgresql_where=CLAIMED_JOBS,
              sqlite_where=CLAIMED_JOBS),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(128))

    # --- the spec (immutable after submit) ----------------------------------------------
    command: Mapped[list[str] | None] = mapped_column(JSON)
    script: Mapped[str | None] = mapped_column(Text)
    workdir: Mapped[str] = mapped_column(String(1024))
    environment: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    #: The spec this job shares with others (an array's elements: then ``command`` and
    #: ``script`` are None and ``environment`` holds only the element's own variables);
    #: None: the spec is all in this row. Read a job's spec with ``effective_spec``.
    spec_id: Mapped[int | None] = mapped_column(ForeignKey("job_specs.id"))
    #: The array this job is an element of (``JobArray``; its index is in its name and
    #: environment); None: a job of its own, or an element made before arrays had records.
    array_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    gpus: Mapped[int] = mapped_column(Integer, default=1)
    gpu_model: Mapped[str | None] = mapped_column(String(64))
    cpus: Mapped[int] = mapped_column(Integer, default=1)
    memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    time_limit_s: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    #: Back to the queue when its node fails (else it ends as NODE_FAIL).
    requeue: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Lowers the job's priority by this much (users: >= 0; admins may go below).
    nice: Mapped[int] = mapped_column(Integer, default=0)
    qos: Mapped[str] = mapped_column(String(16), default="normal")
    #: The factors of the last scheduling cycle (pending jobs), for `gpuq show` / `why`.
    priority_factors: Mapped[dict[str, float] | None] = mapped_column(JSON)
    #: Minus ``priority_factors["total"]``: the order (ascending, then id) a quick cycle
    #: reads the pending jobs in (NULL: not ranked by a full pass yet; read first).
    priority_key: Mapped[float | None] = mapped_column(Float)
    estimated_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Usage has been charged for this job up to here (running jobs charge as they run).
    charged_until: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # --- reservations and preemption (see scheduler/policy/preemption.py) ---------------------
    #: The reservation grant whose idle GPUs this running job borrows (may be preempted).
    borrowed_grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id",
                                                                     ondelete="SET NULL"))
    borrowed_gpus: Mapped[int] = mapped_column(Integer, default=0)
    #: A preemption of this (active) job was asked for; the node is stopping it.
    preempt_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    preempt_reason: Mapped[str] = mapped_column(String(256), default="")
    #: A pending job's claim on GPUs being freed for it: {"node", "gpus", "victims", "grant"}.
    claim: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: How many times this job was preempted.
    preemptions: Mapped[int] = mapped_column(Integer, default=0)

    # --- observed and desired state -------------------------------------------------------
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING.value)
    reason: Mapped[str] = mapped_column(String(256), default="")
    #: Desired state: the user asked to cancel; the node has not confirmed yet.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id"))
    gpu_indices: Mapped[list[int]] = mapped_column(JSON, default=list)
    #: Dispatches so far: the current run is this attempt (0: never dispatched).
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    #: Energy of the job's GPUs over all its attempts, joules (from the worker's samples).
    gpu_energy_j: Mapped[float | None] = mapped_column(Float)
    #: The part of ``gpu_energy_j`` used by earlier attempts (set when requeued).
    gpu_energy_earlier_j: Mapped[float] = mapped_column(Float, default=0.0)
    max_gpu_memory_mib: Mapped[float | None] = mapped_column(Float)

    # --- accounting (scheduler/domain/accounting.py) ---------------------------------------------
    #: GPU-seconds and billed GPU-seconds charged so far (the sum of its usage records).
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    billed_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    #: Carbon estimate charged so far, grams CO2e (energy x the node's grid intensity).
    carbon_g: Mapped[float] = mapped_column(Float, default=0.0)
    #: From the GPU samples, over all attempts: GPU-seconds sampled, the part of them the
    #: GPUs were busy (utilisation x time), and GPU-seconds under the idle threshold.
    gpu_sampled_s: Mapped[float] = mapped_column(Float, default=0.0)
    gpu_busy_s: Mapped[float] = mapped_column(Float, default=0.0)
    idle_gpu_s: Mapped[float] = mapped_column(Float, default=0.0)
    gpu_util_peak_pct: Mapped[float | None] = mapped_column(Float)
    #: Per GPU figures, what was charged already, the last sample's time: see accounting.py.
    gpu_stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: Every GPU of the running job under ``idle_utilization_pct`` since this time.
    idle_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Flagged idle (``idle_window_s`` reached); cleared when its GPUs get busy again.
    idle_flagged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: What was done about it: "" | none | notified | cancel-pending | cancelled.
    idle_action: Mapped[str] = mapped_column(String(16), default="")
    #: The job's accounting was closed (it ended and was charged up to its end).
    accounted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()
    account: Mapped[Account] = relationship()
    node: Mapped[Node | None] = relationship()
    spec: Mapped[JobSpec | None] = relationship()


class GpuAllocation(Base):
    """One row per GPU held by an active (DISPATCHED or RUNNING) job.

    The unique constraint is the last line of defence: no GPU is ever given to two jobs,
    even if two scheduler replicas race.
    """

    __tablename__ = "gpu_allocations"
    __table_args__ = (UniqueConstraint("node_id", "gpu_index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    gpu_index: Mapped[int] = mapped_column(Integer)


class JobEvent(Base):
    """Every state change of a job, with its time and reason."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    old_state: Mapped[str | None] = mapped_column(String(16))
    new_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(256), default="")


class UsageRecord(Base):
    """GPU usage charged to a user association over an interval (billed GPU-seconds).
    ``job_id`` is None for imported history."""

    __tablename__ = "usage_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                               index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    start: Mapped[datetime] = mapped_column(UTCDateTime)
    end: Mapped[datetime] = mapped_column(UTCDateTime)
    gpu_seconds: Mapped[float] = mapped_column(Float)
    billed_seconds: Mapped[float] = mapped_column(Float)
    gpu_model: Mapped[str] = mapped_column(String(64), default="")
    #: Charged with the interval (deltas of the job's totals): GPU energy, joules; its
    #: carbon estimate, grams CO2e; GPU-seconds sampled, busy, and under the idle threshold.
    energy_j: Mapped[float] = mapped_column(Float, default=0.0)
    carbon_g: Mapped[float] = mapped_column(Float, default=0.0)
    sampled_gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    busy_gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    idle_gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class JobSample(Base):
    """What a job's GPUs were doing, at most one row a minute per job (for accounting)."""

    __tablename__ = "job_samples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    utilization_pct: Mapped[float | None] = mapped_column(Float)
    memory_used_mib: Mapped[float | None] = mapped_column(Float)
    power_w: Mapped[float | None] = mapped_column(Float)
    #: Energy of this attempt's GPUs since it started, joules.
    energy_j: Mapped[float | None] = mapped_column(Float)


class Grant(Base):
    """An allocation award to an account for a time window.

    ``share``: ``shares`` raw shares added to the account's while active, until
    ``gpu_hours`` (billed GPU-hours used by the account in the window) if a budget is set.
    ``reservation``: ``gpus`` GPUs (of ``gpu_model``, on ``nodes``) kept for the account;
    others borrow them while idle and are preempted when the account needs them.
    ``state`` (scheduled, active, expired, revoked) is kept up to date by the scheduling
    loop; the policy reads the window itself, so it is exact even between cycles.
    """

    __tablename__ = "grants"
    __table_args__ = (Index("ix_grants_window", "start_at", "end_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # share | reservation
    start_at: Mapped[datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[datetime] = mapped_column(UTCDateTime)
    note: Mapped[str] = mapped_column(String(512), default="")
    shares: Mapped[int | None] = mapped_column(Integer)
    gpu_hours: Mapped[float | None] = mapped_column(Float)
    gpus: Mapped[int | None] = mapped_column(Integer)
    gpu_model: Mapped[str | None] = mapped_column(String(64))
    nodes: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default="scheduled")
    state_reason: Mapped[str] = mapped_column(String(256), default="")
    #: Share grants: the budget ran out at this time (the boost stopped).
    exhausted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Reservation grants: GPU-seconds other accounts' jobs borrowed of it, and how many
    #: preemptions it caused.
    borrowed_gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    preemptions: Mapped[int] = mapped_column(Integer, default=0)

    account: Mapped[Account] = relationship()


class AuditEntry(Base):
    """One admin change: who, when, what, the object before and after."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_time", "time"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The user behind the token, or "gpuq" for the scheduler's own changes.
    actor: Mapped[str] = mapped_column(String(64))
    token_id: Mapped[int | None] = mapped_column(Integer)
    #: ``<object>.<verb>``, e.g. ``account.create``, ``grant.revoke``, ``token.create``.
    action: Mapped[str] = mapped_column(String(64), index=True)
    #: ``<object>:<name or id>``, e.g. ``account:qlab``, ``grant:3``.
    target: Mapped[str] = mapped_column(String(160), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class SchedulerState(Base):
    """One row of cluster-wide bookkeeping: when usage was last decayed."""

    __tablename__ = "scheduler_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    usage_decayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
