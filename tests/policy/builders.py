"""Builders with defaults for the policy's frozen views: say only what a test is about."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gpuq.scheduler.policy import (
    AccountView,
    AssocView,
    ClaimView,
    GpuView,
    GrantView,
    JobView,
    NodeView,
    PolicyConfig,
    Snapshot,
)

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
    time_limit_s: float = 3600.0,
    nice: int = 0,
    qos: str = "normal",
    claim: ClaimView | None = None,
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
        time_limit_s=time_limit_s,
        nice=nice,
        qos=qos,
        claim=claim,
    )


def make_running(
    id: int,
    node: str = "n1",
    gpu_indices: Iterable[int] = (0,),
    *,
    started_at: float | None = 0.0,
    time_limit_s: float = 3600.0,
    cpus: int = 1,
    memory_mib: int = 0,
    user: str = "alice",
    account: str = "lab",
    qos: str = "normal",
    borrowed_grant: int | None = None,
    borrowed_gpus: int = 0,
    preempting: bool = False,
) -> JobView:
    """A running job on ``node``: it frees its GPUs at ``started_at + time_limit_s``."""
    gpus = tuple(gpu_indices)
    return JobView(id=id, gpus=len(gpus), submitted_at=0.0, cpus=cpus, memory_mib=memory_mib,
                   user=user, account=account, time_limit_s=time_limit_s, node=node,
                   gpu_indices=gpus, started_at=started_at, qos=qos,
                   borrowed_grant=borrowed_grant, borrowed_gpus=borrowed_gpus,
                   preempting=preempting)


def make_snapshot(
    nodes: Iterable[NodeView] = (),
    pending: Iterable[JobView] = (),
    *,
    running: Iterable[JobView] = (),
    now: float = 1_000_000.0,
    accounts: Iterable[AccountView] = (),
    assocs: Iterable[AssocView] = (),
    usage: dict[tuple[str, str], float] | None = None,
    config: PolicyConfig | None = None,
    policy: str | None = None,
    grants: Iterable[GrantView] = (),
) -> Snapshot:
    """A snapshot; ``policy`` is a shortcut for ``config=PolicyConfig(policy=...)``.

    Nodes' free GPUs are as given: a test says which GPUs its running jobs hold."""
    if config is None:
        config = PolicyConfig() if policy is None else PolicyConfig(policy=policy)
    return Snapshot(now=now, nodes=tuple(nodes), pending=tuple(pending),
                    running=tuple(running), accounts=tuple(accounts), assocs=tuple(assocs),
                    usage={} if usage is None else usage, config=config,
                    grants=tuple(grants))


def make_tree(spec: dict[str, tuple[str | None, int]],
              users: dict[tuple[str, str], int]) -> tuple[list[AccountView], list[AssocView]]:
    """Accounts from ``{name: (parent, shares)}`` and associations from
    ``{(user, account): shares}``; a share of ``-1`` means FairShare=parent."""
    accounts = [AccountView(name, parent, max(shares, 0), shares_parent=shares < 0)
                for name, (parent, shares) in spec.items()]
    assocs = [AssocView(user, account, max(shares, 0), shares_parent=shares < 0)
              for (user, account), shares in users.items()]
    return accounts, assocs
