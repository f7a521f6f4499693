"""Reads the database into the policy's frozen ``Snapshot``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Text, cast, literal, select, union_all
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.scheduler.db.models import Account, Gpu, Job, Membership, Node, User, inline
from gpuq.scheduler.domain import grants_in_effect as in_effect
from gpuq.scheduler.domain.arrays import Element, pending_arrays, rows_ahead, waiting
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
from gpuq.scheduler.policy.grants import boost_shares
from gpuq.scheduler.policy.usage import billed_seconds
from gpuq.wire.states import ACTIVE, JobState, NodeState


def job_view(job: Any, users: dict[int, str], accounts: dict[int, str],
             nodes: dict[int, str] | None = None) -> JobView:
    """``job``: a Job, or a row of ``PENDING_COLUMNS`` or ``ACTIVE_COLUMNS``."""
    running = job.state != JobState.PENDING.value
    return JobView(
        id=job.id,
        gpus=job.gpus,
        submitted_at=job.submitted_at.timestamp(),
        priority=job.priority,  # the site offset an admin set (0 by default)
        gpu_model=job.gpu_model,
        cpus=job.cpus,
        memory_mib=job.memory_mib,
        user=users.get(job.user_id, ""),
        account=accounts.get(job.account_id, ""),
        time_limit_s=float(job.time_limit_s),
        nice=job.nice,
        qos=job.qos,
        node=(nodes or {}).get(job.node_id or 0) if running else None,
        gpu_indices=tuple(job.gpu_indices or ()) if running else (),
        started_at=(job.started_at or job.dispatched_at or job.submitted_at).timestamp()
        if running else None,
        requeue=job.requeue,
        borrowed_grant=job.borrowed_grant_id if running else None,
        borrowed_gpus=job.borrowed_gpus if running else 0,
        preempting=running and job.preempt_requested_at is not None,
        claim=claim_view(job.claim) if not running and job.claim else None,
    )


def claim_view(claim: dict) -> ClaimView | None:  # type: ignore[type-arg]
    try:
        return ClaimView(node=str(claim["node"]),
                         gpu_indices=tuple(int(i) for i in claim["gpus"]),
                         victims=tuple(int(v) for v in claim.get("victims") or ()),
                         grant=int(claim["grant"]) if claim.get("grant") is not None else None)
    except (KeyError, TypeError, ValueError):
        return None  # not a claim this version wrote: the policy makes a new one


def policy_config(settings: Settings) -> PolicyConfig:
    return PolicyConfig(
        policy=settings.policy,
        fairshare_algorithm=settings.fairshare_algorithm,
        weight_fairshare=settings.priority_weight_fairshare,
        weight_age=settings.priority_weight_age,
        weight_jobsize=settings.priority_weight_jobsize,
        weight_qos=settings.priority_weight_qos,
        max_age_s=settings.priority_max_age_s,
    )


def tree_views(session: Session, now: datetime | None = None
               ) -> tuple[tuple[AccountView, ...], tuple[AssocView, ...],
                          dict[tuple[str, str], float]]:
    """The accounts tree, the user associations and their decayed usage. With ``now``,
    the shares of accounts with an active share grant are raised by it."""
    # Retired accounts have no jobs (retiring needs that) and leave the tree.
    conn = session.connection()
    accts = conn.execute(select(Account.id, Account.name, Account.parent_id, Account.shares,
                                Account.shares_parent).where(Account.retired_at.is_(None))
                         .order_by(Account.id)).all()
    names = {a.id: a.name for a in accts}
    accounts = tuple(AccountView(a.name, names.get(a.parent_id or 0), a.shares, a.shares_parent)
                     for a in accts)
    rows = conn.execute(select(User.name, Membership.account_id, Membership.shares,
                               Membership.shares_parent, Membership.usage)
                        .join(User, User.id == Membership.user_id)
                        .order_by(Membership.id))
    assocs, usage = [], {}
    for user, account_id, shares, parent, used in rows:
        if account_id not in names:
            continue
        assocs.append(AssocView(user, names[account_id], shares, parent))
        usage[(user, names[account_id])] = used
    if now is not None:
        accounts = boost_shares(accounts, in_effect.share_boosts(session, now))
    return accounts, tuple(assocs), usage


def _uncharged(job: Any, now: datetime, settings: Settings) -> float:
    """What a running job used since its last charge (charged every few seconds)."""
    since = job.charged_until or job.started_at
    if job.state != JobState.RUNNING.value or since is None:
        return 0.0
    return billed_seconds(job.gpus, (now - since).total_seconds(),
                          settings.billing_weight(job.gpu_model or ""))


def node_views(session: Session, active: Sequence[Any]) -> list[NodeView]:
    """``active``: the active jobs (Job objects or rows with node_id, gpu_indices, cpus and
    memory_mib)."""
    held: dict[int, set[int]] = defaultdict(set)
    cpus: dict[int, int] = defaultdict(int)
    mem: dict[int, int] = defaultdict(int)
    for job in active:
        if job.node_id is None:
            continue
        held[job.node_id].update(job.gpu_indices)
        cpus[job.node_id] += job.cpus
        mem[job.node_id] += job.memory_mib
    # Columns, not ORM objects: 200 nodes of 8 GPUs every cycle.
    gpus_of: dict[int, list[GpuView]] = defaultdict(list)
    conn = session.connection()
    for node_id, index, model, healthy, foreign in conn.execute(
            select(Gpu.node_id, Gpu.index, Gpu.model, Gpu.healthy, Gpu.foreign_processes)
            .order_by(Gpu.node_id, Gpu.index)):
        gpus_of[node_id].append(GpuView(index, model, healthy, bool(foreign)))
    views = []
    nodes = conn.execute(select(Node.id, Node.name, Node.cpus, Node.memory_mib, Node.state,
                                Node.drain).order_by(Node.name))
    for node in nodes:
        gpus = tuple(gpus_of.get(node.id, ()))
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


def array_elements(session: Session, nodes: Sequence[NodeView], depth: int = 0
                   ) -> tuple[list[Element], bool]:
    """The waiting elements of every array the cycle looks at: of each, as many as could
    start on the GPUs (CPUs, for jobs of no GPU) free now, and one more (the first that
    cannot start says why the rest wait, and holds the array's place for backfill). The
    elements are alike but for their index: the policy decides the same for the first
    ones of an array whether the rest are in its snapshot or not (``domain/arrays.py``).
    ``depth``: the arrays read, as ``pending_rows`` reads the jobs; and whether they are
    all of them."""
    arrays, whole = pending_arrays(session, depth)
    if not arrays:
        return [], whole
    up = [n for n in nodes if n.state == NodeState.UP.value]
    free_gpus = sum(len(n.free_gpus) for n in up)
    free_cpus = sum(max(n.free_cpus, 0) for n in up)
    taken = rows_ahead(session, [a.id for a in arrays])
    out: list[Element] = []
    for array in arrays:
        fits = free_gpus // array.gpus if array.gpus else free_cpus // max(array.cpus, 1)
        out.extend(waiting(array, fits + 1, taken.get(array.id, set())))
    return out, whole


#: The names of the users, accounts and nodes by id, in one statement.
_NAMES = union_all(select(literal(0), User.id, User.name),
                   select(literal(1), Account.id, Account.name),
                   select(literal(2), Node.id, Node.name))


def _names(session: Session) -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
    """Users', accounts' and nodes' names by id (one round trip, and Core: these reads
    are most of a quick cycle's statements, and the ORM's handling of each cost more
    than the database's answer)."""
    out: tuple[dict[int, str], ...] = ({}, {}, {})
    for kind, key, name in session.connection().execute(_NAMES):
        out[kind][key] = name
    return out  # type: ignore[return-value]


def build_snapshot(session: Session, now: datetime, settings: Settings | None = None
                   ) -> Snapshot:
    return build_snapshot_rows(session, now, settings)[0]


_jobs = Job.__table__.c
#: What the snapshot and the cycle read of a pending job: ``job_view``'s fields, and what
#: the cycle compares before it writes (reason, priority factors, estimated start, claim).
#: Read as rows of the table's columns, not ORM objects (10,000 pending jobs: loading an
#: ORM object each was a fifth of the cycle, writing them back through the unit of work a
#: third).
PENDING_COLUMNS = (
    _jobs.id, _jobs.state, _jobs.gpus, _jobs.submitted_at, _jobs.priority, _jobs.gpu_model,
    _jobs.cpus, _jobs.memory_mib, _jobs.user_id, _jobs.account_id, _jobs.time_limit_s,
    _jobs.nice, _jobs.qos, _jobs.requeue, _jobs.claim, _jobs.reason, _jobs.priority_factors,
    _jobs.priority_key, _jobs.estimated_start,
)
#: What the snapshot reads of an active job: ``job_view``'s fields and what charging needs.
ACTIVE_COLUMNS = (
    _jobs.id, _jobs.state, _jobs.gpus, _jobs.submitted_at, _jobs.priority, _jobs.gpu_model,
    _jobs.cpus, _jobs.memory_mib, _jobs.user_id, _jobs.account_id, _jobs.time_limit_s,
    _jobs.nice, _jobs.qos, _jobs.requeue, _jobs.node_id, _jobs.gpu_indices, _jobs.started_at,
    _jobs.dispatched_at, _jobs.borrowed_grant_id, _jobs.borrowed_gpus,
    _jobs.preempt_requested_at, _jobs.charged_until,
)


def pending_rows(session: Session, depth: int = 0) -> tuple[list[Any], bool]:
    """The pending jobs' rows (``PENDING_COLUMNS``) a cycle looks at, and whether they are
    the whole queue. ``depth`` 0: every pending job. Else (Slurm's ``default_queue_depth``)
    the first ``depth`` in priority order (``priority_key``, as the last full pass ranked
    them), the first ``depth`` not ranked yet (new since then) and every job holding a
    claim (GPUs set aside for it, which no other job may take): three index scans, not
    the whole queue."""
    pending = select(*PENDING_COLUMNS).where(_jobs.state == inline(JobState.PENDING.value))
    conn = session.connection()
    if not depth:
        return list(conn.execute(pending).all()), True
    # Ordered by (priority_key, id), which for these is by id: the order of
    # ix_jobs_pending_priority, whose NULL keys the scan starts at. Ordered by id alone,
    # statistics from while the queue was being submitted (every key NULL) had PostgreSQL
    # walk the primary key looking for unranked jobs among 100,000 ranked ones (80 ms a
    # cycle).
    new = conn.execute(pending.where(_jobs.priority_key.is_(None))
                       .order_by(_jobs.priority_key, _jobs.id).limit(depth)).all()
    ranked = conn.execute(pending.where(_jobs.priority_key.is_not(None))
                          .order_by(_jobs.priority_key, _jobs.id).limit(depth)).all()
    if len(new) < depth and len(ranked) < depth:
        return [*new, *ranked], True
    seen = {r.id for r in (*new, *ranked)}
    # A claim dropped is JSON null, not SQL NULL (the column is JSON); the same condition
    # as the partial index ix_jobs_pending_claim's, which the planner then reads.
    claimed = conn.execute(pending.where(_jobs.claim.is_not(None),
                                         cast(_jobs.claim, Text) != inline("null"))).all()
    return [*new, *ranked, *(r for r in claimed if r.id not in seen)], False


def build_snapshot_rows(session: Session, now: datetime, settings: Settings | None = None,
                        depth: int = 0) -> tuple[Snapshot, dict[int, Any], bool]:
    """The snapshot, the rows of the pending (``PENDING_COLUMNS``) and active
    (``ACTIVE_COLUMNS``) jobs it was built from (the cycle compares what it would write
    with them, and writes only what changes), and whether its pending jobs are the whole
    queue (``depth``: see ``pending_rows``)."""
    settings = settings or Settings()
    # The rows are read by plain (Core) queries, which do not autoflush: this
    # transaction's changes so far (nodes marked down, charges) go first.
    session.flush()
    users, account_names, node_names = _names(session)
    pending, whole = pending_rows(session, depth)
    active = session.connection().execute(
        select(*ACTIVE_COLUMNS).where(_jobs.state.in_([s.value for s in ACTIVE]))).all()
    nodes = node_views(session, active)
    elements, all_arrays = array_elements(session, nodes, depth)
    whole = whole and all_arrays
    accounts, assocs, usage = tree_views(session, now)
    grants = tuple(GrantView(id=gid, account=acct, gpus=gpus, gpu_model=model,
                             nodes=tuple(nodes))
                   for gid, acct, gpus, model, nodes in in_effect.reservations(session, now))
    for job in active:
        key = (users.get(job.user_id, ""), account_names.get(job.account_id, ""))
        if key in usage:
            usage[key] += _uncharged(job, now, settings)
    return Snapshot(
        now=now.timestamp(),
        nodes=tuple(nodes),
        pending=tuple(job_view(j, users, account_names) for j in (*pending, *elements)),
        running=tuple(job_view(j, users, account_names, node_names) for j in active),
        accounts=accounts,
        assocs=assocs,
        usage=usage,
        config=policy_config(settings),
        grants=grants,
    ), {j.id: j for j in (*pending, *elements, *active)}, whole
