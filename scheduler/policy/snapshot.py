"""The immutable view of the cluster that the policy reads. Plain frozen data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass(frozen=True, slots=True)
class Snapshot:
    #: Seconds since the epoch, from the injected clock.
    now: float
    nodes: tuple[NodeView, ...]
    pending: tuple[JobView, ...]
    running: tuple[JobView, ...] = field(default=())
