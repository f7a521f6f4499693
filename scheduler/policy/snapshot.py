"""The immutable view of the cluster that the policy reads. Plain frozen data, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

POLICIES = ("fifo", "fairshare", "fairshare+backfill")
#: Jobs of this QOS may be preempted by any job of another (known) QOS, and never preempt.
PREEMPTIBLE_QOS = "preemptible"
FAIRSHARE_ALGORITHMS = ("fair_tree", "classic")
DEFAULT_QOS_PRIORITY: tuple[tuple[str, int], ...] = (("high", 100), ("normal", 0),
                                                     ("preemptible", 0))


@dataclass(frozen=True, slots=True)
class GpuView:
    index: int
    model: str
    healthy: bool = True
    #: Held by processes gpuq did not start: not given to jobs until they end.
    occupied: bool = False


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    gpus: tuple[GpuView, ...]
    #: Indices of the GPUs not held by an active job.
    free_gpus: frozenset[int]
    cpus: int = 0
    free_cpus: int = 0
    memory_mib: int = 0
    free_memory_mib: int = 0
    #: UP nodes take new jobs; DOWN, DRAIN (up, drained by an admin) and UNKNOWN do not.
    state: str = "UP"

    @property
    def schedulable(self) -> bool:
        return self.state == "UP"

    def usable_gpus(self, model: str | None) -> list[int]:
        """Free, healthy, unoccupied GPU indices of the wanted model, in index order."""
        return sorted(
            g.index
            for g in self.gpus
            if g.index in self.free_gpus and g.healthy and not g.occupied
            and (model is None or g.model == model)
        )

    def gpu_count(self, model: str | None, *, healthy_only: bool = False) -> int:
        return sum(1 for g in self.gpus if (model is None or g.model == model)
                   and (g.healthy or not healthy_only))


@dataclass(frozen=True, slots=True)
class GrantView:
    """A reservation grant in effect now: ``gpus`` GPUs (of ``gpu_model``, on ``nodes``; empty
    = any node) reserved for jobs of ``account`` and of every account below it in the tree.
    Others may borrow them while they are idle; the grantee takes them back by preemption."""

    id: int
    account: str
    gpus: int
    gpu_model: str | None = None
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClaimView:
    """A pending job's claim, made by an earlier cycle's preemption: it starts on exactly
    these GPUs once they are free; meanwhile nobody else gets them."""

    node: str
    gpu_indices: tuple[int, ...]
    #: Running job ids being preempted for it.
    victims: tuple[int, ...]
    #: The reservation grant reclaimed; None: a QOS preemption.
    grant: int | None = None


@dataclass(frozen=True, slots=True)
class JobView:
    id: int
    gpus: int
    #: Seconds since the epoch; with ``id`` it breaks priority ties.
    submitted_at: float
    priority: int = 0
    gpu_model: str | None = None
    cpus: int = 1
    memory_mib: int = 0
    user: str = ""
    account: str = ""
    #: The most a job may run; backfill plans with it (running jobs end by started_at + it).
    time_limit_s: float = 3600.0
    #: Subtracted from the priority (users: >= 0; admins may go below).
    nice: int = 0
    qos: str = "normal"
    # Running jobs (``Snapshot.running``) only: where and since when they run.
    node: str | None = None
    gpu_indices: tuple[int, ...] = ()
    started_at: float | None = None
    #: Whether a preempted job goes back to the queue (the loop's business, not the policy's).
    requeue: bool = True
    #: Running jobs only: the reservation grant whose GPUs it borrowed (last cycle's label),
    #: how many, and whether its preemption was already requested (it is stopping).
    borrowed_grant: int | None = None
    borrowed_gpus: int = 0
    preempting: bool = False
    #: Pending jobs only: GPUs an earlier preemption claimed for it.
    claim: ClaimView | None = None


@dataclass(frozen=True, slots=True)
class AccountView:
    """A node of the account tree; the root has ``parent`` None."""

    name: str
    parent: str | None
    shares: int = 1
    #: Slurm's FairShare=parent: not a level of its own (its children count as its parent's).
    shares_parent: bool = False


@dataclass(frozen=True, slots=True)
class AssocView:
    """A user association: a user in an account (a leaf of the tree)."""

    user: str
    account: str
    shares: int = 1
    #: Slurm's FairShare=parent: LevelFS +inf, left out of its siblings' share sum.
    shares_parent: bool = False


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The policy's knobs. Weights are applied to factors in [0, 1] (see priority.py)."""

    policy: str = "fairshare+backfill"  # "fifo" | "fairshare" | "fairshare+backfill"
    fairshare_algorithm: str = "fair_tree"  # or "classic": 2^(-UE/S/d)
    classic_dampening: float = 1.0
    weight_fairshare: float = 10_000
    weight_age: float = 1_000
    weight_jobsize: float = 0
    weight_qos: float = 0
    max_age_s: float = 7 * 86400
    jobsize_favor_small: bool = False
    #: QOS name -> priority; a mapping given here is stored as sorted (name, priority) pairs.
    qos_priority: tuple[tuple[str, int], ...] | Mapping[str, int] = DEFAULT_QOS_PRIORITY
    #: Backfill plans this far ahead; a job that cannot start within it gets no reservation.
    backfill_window_s: float = 14 * 86400

    def __post_init__(self) -> None:
        if isinstance(self.qos_priority, Mapping):
            object.__setattr__(self, "qos_priority", tuple(sorted(self.qos_priority.items())))
        else:
            object.__setattr__(self, "qos_priority", tuple(sorted(self.qos_priority)))
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {self.policy!r}")
        if self.fairshare_algorithm not in FAIRSHARE_ALGORITHMS:
            raise ValueError(f"fairshare_algorithm must be one of "
                             f"{', '.join(FAIRSHARE_ALGORITHMS)}, "
                             f"not {self.fairshare_algorithm!r}")
        if not self.classic_dampening > 0:
            raise ValueError("classic_dampening must be > 0")
        for name in ("weight_fairshare", "weight_age", "weight_jobsize", "weight_qos",
                     "max_age_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        if not self.backfill_window_s > 0:
            raise ValueError("backfill_window_s must be > 0")


@dataclass(frozen=True, slots=True)
class Snapshot:
    #: Seconds since the epoch, from the injected clock.
    now: float
    nodes: tuple[NodeView, ...]
    pending: tuple[JobView, ...]
    running: tuple[JobView, ...] = field(default=())
    accounts: tuple[AccountView, ...] = ()
    assocs: tuple[AssocView, ...] = ()
    #: (user, account) -> decayed billed GPU-seconds, running jobs' charge up to now included.
    usage: Mapping[tuple[str, str], float] = field(default_factory=dict)
    config: PolicyConfig = PolicyConfig()
    #: Reservation grants in effect now (share grants are already in ``AccountView.shares``).
    grants: tuple[GrantView, ...] = ()
