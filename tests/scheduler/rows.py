"""Database row builders with defaults: a test says only what it is about. They flush,
never commit: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpuq.scheduler.db.models import Account, Gpu, GpuAllocation, Job, JobEvent, Node, User

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def owner(session: Session, user: str = "alice", account: str = "lab") -> User:
    """The user (and its account), created on first use."""
    acct = session.scalar(select(Account).where(Account.name == account))
    if acct is None:
        acct = Account(name=account, shares=1, description="", created_at=T0)
        session.add(acct)
        session.flush()
    row = session.scalar(select(User).where(User.name == user))
    if row is None:
        row = User(name=user, is_admin=False, default_account_id=acct.id, created_at=T0)
        session.add(row)
        session.flush()
    return row


def add_node(
    session: Session,
    name: str = "n1",
    gpus: int = 4,
    model: str = "A100-80GB",
    *,
    state: str = "UP",
    cpus: int = 0,
    memory_mib: int = 0,
    heartbeat: datetime | None = T0,
    unhealthy: Sequence[int] = (),
) -> Node:
    drain = state == "DRAIN"  # drained by an admin: up, but takes no new jobs
    node = Node(name=name, state="UP" if drain else state, state_reason="", cpus=cpus,
                memory_mib=memory_mib, registered_at=T0, last_heartbeat_at=heartbeat,
                drain=drain, drain_reason="drained" if drain else "")
    node.gpus = [Gpu(index=i, uuid=f"GPU-{name}-{i}", model=model, memory_mib=81920,
                     healthy=i not in unhealthy, last_sample={}) for i in range(gpus)]
    session.add(node)
    session.flush()
    return node


def add_job(
    session: Session,
    gpus: int = 1,
    *,
    priority: int = 0,
    gpu_model: str | None = None,
    cpus: int = 1,
    memory_mib: int = 0,
    submitted_at: datetime = T0,
    user: str = "alice",
    **fields: Any,
) -> Job:
    """A PENDING job, as submit leaves it (without the submit event)."""
    who = owner(session, user)
    job = Job(name="job", user_id=who.id, account_id=who.default_account_id,
              command=["true"], workdir="/tmp", environment={}, gpus=gpus,
              gpu_model=gpu_model, cpus=cpus, memory_mib=memory_mib, time_limit_s=3600,
              priority=priority, state="PENDING", reason="Submitted", gpu_indices=[],
              submitted_at=submitted_at, **fields)
    session.add(job)
    session.flush()
    return job


def allocations(session: Session) -> set[tuple[int, int, int]]:
    """Every GPU held, as (job id, node id, GPU index)."""
    return {(a.job_id, a.node_id, a.gpu_index) for a in session.scalars(select(GpuAllocation))}


def events(session: Session, job_id: int) -> list[JobEvent]:
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)
                                .order_by(JobEvent.id)))
