"""Builders with defaults for the policy's frozen views: say only what a test is about."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from scheduler.policy import GpuView, JobView, NodeView, Snapshot

A100 = "A100-80GB"
H100 = "H100-80GB"


def make_node(
    name: str = "n1",
    gpus: int = 8,
    model: str = A100,
    free: Iterable[int] | None = None,
    state: str = "UP",
    cpus: int = 0,
    memory_mib: int = 0,
    *,
    unhealthy: Iterable[int] = (),
    models: Sequence[str] | None = None,
    free_cpus: int | None = None,
    free_memory_mib: int | None = None,
) -> NodeView:
    """A node with GPUs ``0..gpus-1`` of ``model`` (or one per entry of ``models``).

    ``free=None`` means every GPU is free; ``cpus=0`` / ``memory_mib=0`` mean "not known",
    which the filters treat as no limit. Free CPUs and memory default to all of them.
    """
    kinds = list(models) if models is not None else [model] * gpus
    bad = set(unhealthy)
    views = tuple(GpuView(i, m, healthy=i not in bad) for i, m in enumerate(kinds))
    return NodeView(
        name=name,
        gpus=views,
        free_gpus=frozenset(range(len(kinds)) if free is None else free),
        cpus=cpus,
        free_cpus=cpus if free_cpus is None else free_cpus,
        memory_mib=memory_mib,
        free_memory_mib=memory_mib if free_memory_mib is None else free_memory_mib,
        state=state,
    )


def make_job(
    id: int,
    gpus: int = 1,
    priority: int = 0,
    submitted_at: float | None = None,
    gpu_model: str | None = None,
    *,
    cpus: int = 1,
    memory_mib: int = 0,
    user: str = "alice",
    account: str = "lab",
) -> JobView:
    """A pending job; by default submitted at ``id`` seconds, so ids give submit order."""
    return JobView(
        id=id,
        gpus=gpus,
        submitted_at=float(id) if submitted_at is None else submitted_at,
        priority=priority,
        gpu_model=gpu_model,
        cpus=cpus,
        memory_mib=memory_mib,
        user=user,
        account=account,
    )


def make_snapshot(
    nodes: Iterable[NodeView] = (),
    pending: Iterable[JobView] = (),
    *,
    running: Iterable[JobView] = (),
    now: float = 1_000_000.0,
) -> Snapshot:
    return Snapshot(now=now, nodes=tuple(nodes), pending=tuple(pending),
                    running=tuple(running))
