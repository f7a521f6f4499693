"""Reads the database into the policy's frozen ``Snapshot``."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from scheduler.db.models import Account, Job, Node, User
from scheduler.policy import GpuView, JobView, NodeView, Snapshot
from scheduler.states import ACTIVE, JobState, NodeState


def job_view(job: Job, users: dict[int, str], accounts: dict[int, str]) -> JobView:
    return JobView(
        id=job.id,
        gpus=job.gpus,
        submitted_at=job.submitted_at.timestamp(),
        priority=job.priority,
        gpu_model=job.gpu_model,
        cpus=job.cpus,
        memory_mib=job.memory_mib,
        user=users.get(job.user_id, ""),
        account=accounts.get(job.account_id, ""),
    )


def node_views(session: Session, active: list[Job]) -> list[NodeView]:
    held: dict[int, set[int]] = defaultdict(set)
    cpus: dict[int, int] = defaultdict(int)
    mem: dict[int, int] = defaultdict(int)
    for job in active:
        if job.node_id is None:
            continue
        held[job.node_id].update(job.gpu_indices)
        cpus[job.node_id] += job.cpus
        mem[job.node_id] += job.memory_mib
    views = []
    nodes = session.scalars(select(Node).options(selectinload(Node.gpus)).order_by(Node.name))
    for node in nodes:
        gpus = tuple(GpuView(g.index, g.model, g.healthy, bool(g.foreign_processes))
                     for g in node.gpus)
        views.append(
            NodeView(
                name=node.name,
                gpus=gpus,
                free_gpus=frozenset(g.index for g in gpus) - held[node.id],
                cpus=node.cpus,
                free_cpus=node.cpus - cpus[node.id],
                memory_mib=node.memory_mib,
                free_memory_mib=node.memory_mib - mem[node.id],
                state=NodeState.DRAIN.value if node.drain and node.state == NodeState.UP.value
                else node.state,
            )
        )
    return views


def build_snapshot(session: Session, now: datetime) -> Snapshot:
    users = {uid: name for uid, name in session.execute(select(User.id, User.name))}
    accounts = {aid: name for aid, name in session.execute(select(Account.id, Account.name))}
    states = [JobState.PENDING.value, *(s.value for s in ACTIVE)]
    jobs = list(session.scalars(select(Job).where(Job.state.in_(states))))
    active = [j for j in jobs if j.state != JobState.PENDING.value]
    pending = [j for j in jobs if j.state == JobState.PENDING.value]
    return Snapshot(
        now=now.timestamp(),
        nodes=tuple(node_views(session, active)),
        pending=tuple(job_view(j, users, accounts) for j in pending),
        running=tuple(job_view(j, users, accounts) for j in active),
    )
