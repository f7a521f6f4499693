"""What the policy decides: plain data that the loop applies in one transaction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Start:
    job_id: int
    node: str
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Preemption:
    """Stop running job ``victim_id`` (SIGTERM, grace period) so that ``for_job`` gets its
    GPUs; the loop requeues it or not by its ``requeue``."""

    victim_id: int
    for_job: int
    node: str
    #: The reservation grant whose GPUs are reclaimed; None: a QOS preemption.
    grant: int | None
    #: For the victim's record, e.g. "preempted for job 42 (qlab): reservation grant 3 needs
    #: its GPUs back".
    reason: str


@dataclass(frozen=True, slots=True)
class Claim:
    """Pending job ``job_id`` starts on exactly these GPUs once ``victims`` have stopped;
    until then no other job gets them."""

    job_id: int
    node: str
    gpu_indices: tuple[int, ...]
    victims: tuple[int, ...]
    grant: int | None


@dataclass(frozen=True, slots=True)
class Borrow:
    """An active job holds ``gpus`` GPUs reserved by grant ``grant`` that its grantees do not
    use now: it may be preempted when they need them back."""

    grant: int
    gpus: int


@dataclass(frozen=True, slots=True)
class Priority:
    """A pending job's multifactor priority. Every factor is in [0, 1]; the weights come from
    ``PolicyConfig``: ``total = site + Σ weight·factor − nice``."""

    total: float
    fairshare: float
    age: float
    jobsize: float
    qos: float
    nice: int
    #: The job's own ``JobView.priority`` (an admin's offset, Slurm's "site" factor).
    site: int = 0


@dataclass(frozen=True, slots=True)
class Reservation:
    """GPUs promised to the top blocked job: on ``node`` from ``start_at`` (seconds since the
    epoch) for its time limit. Lower jobs start only where they do not delay it."""

    job_id: int
    node: str
    start_at: float
    end_at: float
    gpus: int
    gpu_model: str | None = None
    cpus: int = 0
    memory_mib: int = 0


@dataclass(frozen=True, slots=True)
class Decisions:
    starts: tuple[Start, ...] = ()
    #: A reason for every pending job that does not start this cycle.
    pending_reasons: dict[int, str] = field(default_factory=dict)
    #: Every pending job's priority (fair-share policies), by job id; read-only (the
    #: policy makes each ``Priority`` when it is read: see ``priority.Priorities``).
    priorities: Mapping[int, Priority] = field(default_factory=dict)
    #: Seconds since the epoch: the reserved job's start, and estimates for other waiting jobs.
    estimated_starts: dict[int, float] = field(default_factory=dict)
    #: Pending job ids in priority order (`gpuq why`: a job's position).
    order: tuple[int, ...] = ()
    #: The backfill reservation of this cycle, if one was made.
    reservation: Reservation | None = None
    #: Preemptions to request this cycle (not those requested by earlier cycles).
    preemptions: tuple[Preemption, ...] = ()
    #: Every pending job's claim after this cycle, new and kept, by job id; a job whose
    #: claim is absent here has lost it.
    claims: dict[int, Claim] = field(default_factory=dict)
    #: Every active job (running, or started this cycle) that borrows reserved GPUs now, by
    #: job id; absent: it borrows nothing.
    borrowing: dict[int, Borrow] = field(default_factory=dict)
