"""Job services: submit, cancel, read. They never commit: the caller owns the transaction."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Text, cast, func, or_, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.scheduler.db.models import (
    Account,
    Gpu,
    Job,
    JobArray,
    JobEvent,
    JobSpec,
    Node,
    User,
    effective_spec,
    inline,
)
from gpuq.scheduler.domain import accounting
from gpuq.scheduler.domain.arrays import (
    EVENT_REASON,
    element_row,
    first_waiting,
    waiting_arrays,
    waiting_text,
)
from gpuq.scheduler.domain.snapshot import node_views
from gpuq.scheduler.errors import Forbidden, Invalid, NotFound
from gpuq.scheduler.lifecycle import rules, writes
from gpuq.scheduler.policy.filters import INSTALLED, first_failure
from gpuq.scheduler.policy.snapshot import JobView
from gpuq.scheduler.services.auth import Principal
from gpuq.wire.arrays import Ranges
from gpuq.wire.jobs import JobAhead, JobCreate, JobEventRead, JobRead, WhyRead
from gpuq.wire.states import ACTIVE, JobState, NodeState


def _account_for(session: Session, user: User, name: str | None) -> Account:
    member_of = {m.account.name: m.account for m in user.memberships}
    if name is None:
        if user.default_account is not None and user.default_account.name in member_of:
            return user.default_account
        if len(member_of) == 1:
            return next(iter(member_of.values()))
        raise Invalid(
            f"user {user.name} has no default account; choose one of: "
            f"{', '.join(sorted(member_of)) or '(none: ask an admin to add you to one)'}",
            field="account",
        )
    if name not in member_of:
        raise Invalid(
            f"user {user.name} is not a member of account {name!r} (member of: "
            f"{', '.join(sorted(member_of)) or 'none'})",
            field="account",
        )
    return member_of[name]


#: QOS a user needs an admin's permission for (``User.allowed_qos``).
RESTRICTED_QOS = frozenset({"high"})


def default_qos(account: Account) -> str:
    """The account's default QOS, else the nearest ancestor's, else normal."""
    node: Account | None = account
    while node is not None:
        if node.default_qos:
            return node.default_qos
        node = node.parent
    return "normal"


def check_qos(principal: Principal, user: User, qos: str) -> None:
    if qos in RESTRICTED_QOS and not principal.is_admin and qos not in (user.allowed_qos or []):
        raise Forbidden(f"QOS {qos!r} is limited to users an admin allowed; ask an admin "
                        f"(gpuq admin user set {user.name} --allow-qos {qos}) or use normal "
                        f"or preemptible", field="qos")


def _fits_somewhere(session: Session, spec: JobCreate) -> bool:
    """Some registered node has the GPUs, CPUs and memory installed (the ``INSTALLED``
    filters as one query, so that a submit does not load every node and GPU)."""
    gpus = select(func.count(Gpu.id)).where(Gpu.node_id == Node.id)
    if spec.gpu_model is not None:
        gpus = gpus.where(Gpu.model == spec.gpu_model)
    need = max(spec.gpus, 1 if spec.gpu_model is not None else 0)
    q = select(Node.id).where(
        Node.state != NodeState.UNKNOWN.value,
        gpus.scalar_subquery() >= need,
        or_(Node.cpus == 0, Node.cpus >= spec.cpus),
        or_(Node.memory_mib == 0, Node.memory_mib >= spec.memory_mib)).limit(1)
    return session.scalar(q) is not None


def check_runnable(session: Session, spec: JobCreate) -> None:
    """Refuse a job that no registered node could ever run, saying why."""
    if _fits_somewhere(session, spec):
        return
    nodes = [n for n in node_views(session, []) if n.state != NodeState.UNKNOWN.value]
    probe = JobView(id=0, gpus=spec.gpus, submitted_at=0.0, gpu_model=spec.gpu_model,
                    cpus=spec.cpus, memory_mib=spec.memory_mib)
    if not nodes:
        if spec.gpus > 0:
            raise Invalid("no GPU node has registered yet; start `gpuq worker` on a GPU host",
                          field="gpus")
        return
    misses = [first_failure(INSTALLED, n, probe) for n in nodes]
    if any(m is None for m in misses):
        return
    models = sorted({g.model for n in nodes for g in n.gpus})
    if spec.gpu_model is not None and spec.gpu_model not in models:
        raise Invalid(f"no node has {spec.gpu_model} GPUs; models here: "
                      f"{', '.join(models) or 'none'}", field="gpu_model")
    most = max(n.gpu_count(spec.gpu_model) for n in nodes)
    if most < spec.gpus:
        kind = f"{spec.gpu_model} " if spec.gpu_model else ""
        raise Invalid(f"asks for {spec.gpus} {kind}GPUs on one node, but the largest node has "
                      f"{most}; all GPUs of a job must be on one node", field="gpus")
    if max(n.cpus for n in nodes) < spec.cpus:
        raise Invalid(f"asks for {spec.cpus} CPUs; the largest node has "
                      f"{max(n.cpus for n in nodes)}", field="cpus")
    raise Invalid(f"asks for {spec.memory_mib} MiB of memory; the largest node has "
                  f"{max(n.memory_mib for n in nodes)} MiB", field="memory_mib")


@dataclass(frozen=True)
class Accepted:
    """What a submit's checks settled: who, which account, QOS and time limit."""

    user: User
    account: Account
    qos: str
    time_limit_s: int


def check_submit(session: Session, principal: Principal, spec: JobCreate, *,
                 settings: Settings,
                 runnable: Callable[[Session, JobCreate], None] | None = None) -> Accepted:
    """Every check a submit makes (one job or an array), or the 4xx that says what to
    change. ``runnable`` replaces ``check_runnable`` (a batch remembers its answers)."""
    user = principal.user
    if user is None:
        raise Forbidden("only user and admin tokens can submit jobs")
    if spec.nice < 0 and not principal.is_admin:
        raise Invalid("only admins may give a negative nice (it raises priority)",
                      field="nice")
    if user.disabled_at is not None:
        raise Forbidden(f"user {user.name} is disabled; ask an admin")
    account = _account_for(session, user, spec.account)
    if account.retired_at is not None:
        raise Invalid(f"account {account.name!r} is retired and takes no new jobs; choose "
                      f"another", field="account")
    qos = spec.qos or default_qos(account)
    check_qos(principal, user, qos)
    limit = spec.time_limit_s or settings.default_time_limit_s
    if limit > settings.max_time_limit_s:
        raise Invalid(f"{limit} s is over the maximum time limit of "
                      f"{settings.max_time_limit_s} s", field="time_limit_s")
    (runnable or check_runnable)(session, spec)
    return Accepted(user, account, qos, limit)


def job_fields(spec: JobCreate, ok: Accepted, *, now: datetime) -> dict[str, Any]:
    """The new job's columns (its state is the lifecycle writer's to set)."""
    return dict(
        name=spec.name or (spec.command[0].rsplit("/", 1)[-1] if spec.command else "script"),
        user_id=ok.user.id,
        account_id=ok.account.id,
        idempotency_key=spec.idempotency_key,
        command=spec.command,
        script=spec.script,
        workdir=spec.workdir,
        environment=spec.environment,
        gpus=spec.gpus,
        gpu_model=spec.gpu_model,
        cpus=spec.cpus,
        memory_mib=spec.memory_mib,
        time_limit_s=ok.time_limit_s,
        requeue=spec.requeue,
        nice=spec.nice,
        qos=ok.qos,
        reason="Submitted",
        gpu_indices=[],
        submitted_at=now,
    )


def get_job(session: Session, job_id: int, *, lock: bool = False) -> Job:
    """The job; with ``lock``, its row is locked for the rest of the transaction (on
    PostgreSQL), so a state change cannot race the scheduling loop's."""
    job = lock_job(session, job_id) if lock else session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def lock_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id, populate_existing=True,
                       with_for_update={"key_share": True})


def check_owner(principal: Principal, job: Job) -> None:
    check_owner_of(principal, job.user_id, job.id)


def check_owner_of(principal: Principal, user_id: int, job_id: int) -> None:
    if principal.is_admin:
        return
    if principal.user is None or principal.user.id != user_id:
        raise Forbidden(f"job {job_id} belongs to another user")


def cancel(session: Session, principal: Principal, job: Job, *, now: datetime) -> bool:
    """Cancel a job (``rules.cancelled``). Returns True when the node must be told to
    kill it."""
    check_owner(principal, job)
    change = rules.cancelled(rules.Facts.of(job),
                             by=principal.user.name if principal.user else "admin")
    writes.apply_one(session, job, change, now=now)
    return job.state in ACTIVE


def list_jobs(session: Session, *, states: list[str] | None, user: str | None,
              account: str | None, node: str | None, limit: int,
              principal: Principal) -> list[dict[str, Any]]:
    """The queue as ``JobRead`` fields, newest first (see ``_read``), without the jobs'
    scripts and environments (``GET /v1/jobs/{id}`` shows them): up to 10,000 jobs of up
    to 2 MiB of spec each would make a listing of gigabytes."""
    q = _filtered(_LISTING_SLIM, states=states, user=user, account=account, node=node)
    rows = _read(session, q.order_by(Job.id.desc()).limit(limit), principal, spec=False)
    return _merged(rows, _groups_read(session, principal, states=states, user=user,
                                      account=account, node=node), limit)


def read_own_jobs(session: Session, ids: list[int]) -> list[dict[str, Any]]:
    """These jobs as ``JobRead`` fields as their owners see them, by id (the answers to
    their submits; see ``_read``)."""
    return _read(session, _LISTING.where(Job.id.in_(ids)).order_by(Job.id), None)


def _read(session: Session, q: Any, principal: Principal | None, *, spec: bool = True
          ) -> list[dict[str, Any]]:
    """The jobs of ``q`` (a ``_LISTING`` query; ``_LISTING_SLIM`` with ``spec=False``: no
    script or environment) as ``JobRead`` fields, as ``principal`` sees them (None: as
    their owners do): one query of
    columns (the user, account and node names joined in; no ORM objects), one more for
    the GPU memory that the accounting of jobs that ran shows. Read as ``to_read`` reads
    a job."""
    rows = session.connection().execute(q).all()
    ran = {r.node_id for r in rows if r.node_id is not None and _ran(r)}
    memory: dict[int, dict[int, int]] = {}
    if ran:
        for node_id, index, mib in session.connection().execute(
                select(Gpu.node_id, Gpu.index, Gpu.memory_mib).where(Gpu.node_id.in_(ran))):
            memory.setdefault(node_id, {})[index] = mib
    mine = [principal is None or _mine(principal, r.user_id) for r in rows]
    # The specs the caller's array elements share: each read once, however many share it.
    shared_ids = {r.spec_id for r, m in zip(rows, mine, strict=True)
                  if m and r.spec_id is not None}
    spec_columns = JobSpec.__table__.c if spec else (JobSpec.id, JobSpec.command)
    shared = {s.id: s for s in session.connection().execute(
        select(*spec_columns).where(JobSpec.id.in_(shared_ids)))} if shared_ids else {}
    return [read_fields(r, user=r.user_name, account=r.account_name, node=r.node_name,
                        gpu_memory=memory.get(r.node_id, {}), mine=m,
                        shared=shared.get(r.spec_id) if m else None, spec=spec)
            for r, m in zip(rows, mine, strict=True)]


#: The Job columns the listing reads (all but the idempotency key), by attribute name.
_LISTED = [getattr(Job, a.key) for a in sa_inspect(Job).column_attrs
           if a.key != "idempotency_key"]
#: The jobs with the names of their user, account and node.
_LISTING = (select(*_LISTED, User.name.label("user_name"), Account.name.label("account_name"),
                   Node.name.label("node_name"))
            .join(User, Job.user_id == User.id).join(Account, Job.account_id == Account.id)
            .outerjoin(Node, Job.node_id == Node.id))
#: The same without the jobs' scripts and environments (the queue listing).
_LISTING_SLIM = _LISTING.with_only_columns(
    *(c for c in _LISTING.selected_columns if c.name not in ("script", "environment")))


def _filtered(q: Any, *, states: list[str] | None, user: str | None, account: str | None,
              node: str | None) -> Any:
    """The listing's filters (``q`` joins User, Account and, outer, Node)."""
    if states:
        q = q.where(Job.state.in_(inline(states)))
    if user:
        q = q.where(User.name == user)
    if account:
        q = q.where(Account.name == account)
    if node:
        q = q.where(Node.name == node)
    return q


#: What ``JobBrief`` shows, as labelled columns: the flags computed by the database.
_BRIEF = (Job.id, Job.name, User.name.label("user"), Account.name.label("account"),
          Job.state, Job.reason, Job.qos, Job.gpus, Job.gpu_model, Node.name.label("node"),
          cast(Job.gpu_indices, Text).label("gpu_indices"), Job.priority, Job.time_limit_s,
          Job.cancel_requested_at.is_not(None).label("cancel_requested"),
          Job.preempt_requested_at.is_not(None).label("preempt_requested"),
          Job.borrowed_grant_id.label("borrowed_grant"),
          Job.idle_flagged_at.is_not(None).label("idle"),
          Job.submitted_at, Job.started_at, Job.ended_at, Job.array_id)


def list_brief(session: Session, *, states: list[str] | None, user: str | None,
               account: str | None, node: str | None, limit: int) -> list[dict[str, Any]]:
    """The queue as ``JobBrief`` dicts, newest first (``gpuq q``): one query of just those
    columns, the names joined in. Nothing in it is private (the reasons as everyone sees
    them: ``rules.public_reason``), so it is the same for everyone."""
    q = (select(*_BRIEF).join(User, Job.user_id == User.id)
         .join(Account, Job.account_id == Account.id)
         .outerjoin(Node, Job.node_id == Node.id))
    q = _filtered(q, states=states, user=user, account=account, node=node)
    # On the connection: a Core statement needs none of the ORM's result handling.
    result = session.connection().execute(q.order_by(Job.id.desc()).limit(limit))
    keys = tuple(result.keys())
    rows = [dict(zip(keys, r, strict=True)) for r in result.all()]
    for r in rows:
        # The JSON as text, decoded only when not empty (most jobs are pending, on no GPU).
        r["gpu_indices"] = [] if r["gpu_indices"] in _NO_GPUS else json.loads(r["gpu_indices"])
        r["reason"] = rules.public_reason(r["state"], r["reason"])
        r.update(array_fields(SimpleNamespace(array_id=r["array_id"], name=r["name"])))
    return _merged(rows, _groups_brief(session, states=states, user=user, account=account,
                                       node=node), limit)


_NO_GPUS = (None, "[]", "null")


def _ran(job: Any) -> bool:
    """``accounting.read`` shows something (it reads the node's GPUs)."""
    return not (job.started_at is None and not job.gpu_seconds and job.attempt == 0)


def _mine(principal: Principal, user_id: int) -> bool:
    return principal.is_admin or (principal.user is not None and principal.user.id == user_id)


def to_read(job: Job, principal: Principal, *, events: list[JobEvent] | None = None) -> JobRead:
    node = job.node
    memory = {g.index: g.memory_mib for g in node.gpus} if node is not None and _ran(job) \
        else {}
    mine = _mine(principal, job.user_id)
    return JobRead(
        **read_fields(job, user=job.user.name, account=job.account.name,
                      node=node.name if node is not None else None, gpu_memory=memory,
                      mine=mine, shared=job.spec if mine else None),
        events=[JobEventRead(time=e.time, old_state=e.old_state, new_state=e.new_state,
                             reason=e.reason if mine or e.old_state == e.new_state
                             else rules.public_reason(e.new_state, e.reason))
                for e in events] if events is not None else None,
    )


def read_fields(job: Any, *, user: str, account: str, node: str | None,
                gpu_memory: dict[int, int], mine: bool, shared: Any = None,
                spec: bool = True) -> dict[str, Any]:
    """What ``JobRead`` shows of a job but its events (the spec, and the reason in the
    node's own words, only if ``mine``: ``rules.public_reason``): ``job``
    has the Job columns as attributes (a ``Job`` or a row); its user's, account's and
    node's names, its node's GPUs' memory by index, and the spec it shares (``shared``: an
    array element's ``JobSpec`` or a row of one; ``effective_spec``) come beside it."""
    command = script = environment = None
    if mine and spec:
        command, script, environment = effective_spec(job, shared)
    elif mine:  # a listing: the command only (``list_jobs``)
        command = job.command if job.command is not None or shared is None else shared.command
    return dict(
        id=job.id,
        name=job.name,
        user=user,
        account=account,
        state=job.state,
        reason=job.reason if mine else rules.public_reason(job.state, job.reason),
        gpus=job.gpus,
        gpu_model=job.gpu_model,
        cpus=job.cpus,
        memory_mib=job.memory_mib,
        time_limit_s=job.time_limit_s,
        priority=job.priority,
        **array_fields(job),
        node=node,
        gpu_indices=list(job.gpu_indices or []),
        exit_code=job.exit_code,
        cancel_requested=job.cancel_requested_at is not None,
        requeue=job.requeue,
        attempt=job.attempt,
        gpu_energy_j=job.gpu_energy_j,
        max_gpu_memory_mib=job.max_gpu_memory_mib,
        accounting=accounting.read(job, gpu_memory),
        nice=job.nice,
        qos=job.qos,
        priority_factors=job.priority_factors,
        estimated_start=job.estimated_start,
        preemptions=job.preemptions,
        borrowed_grant=job.borrowed_grant_id,
        borrowed_gpus=job.borrowed_gpus,
        preempt_requested=job.preempt_requested_at is not None,
        preempt_reason=job.preempt_reason,
        claim=job.claim,
        submitted_at=job.submitted_at,
        dispatched_at=job.dispatched_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        command=command,
        script=script,
        workdir=job.workdir if mine else None,
        environment=environment,
    )


def array_fields(job: Any) -> dict[str, Any]:
    """``array_id``, ``array_task`` and ``count`` of a job (a row or a ``Job``): an array
    element's index is in its name (``NAME[7]``)."""
    array_id = getattr(job, "array_id", None)
    if array_id is None:
        return {"array_id": None, "array_task": None, "count": 1}
    name = job.name
    return {"array_id": array_id, "array_task": name[name.rfind("[") + 1:-1], "count": 1}


# --- an array's elements without rows (domain/arrays.py) -------------------------------------

#: What an element without a row has of the job columns it has no value for.
_ELEMENT_DEFAULTS: dict[str, Any] = {
    **{a.key: None for a in sa_inspect(Job).column_attrs},
    "attempt": 0, "gpu_seconds": 0.0, "billed_seconds": 0.0, "carbon_g": 0.0,
    "gpu_sampled_s": 0.0, "gpu_busy_s": 0.0, "idle_gpu_s": 0.0, "preemptions": 0,
    "borrowed_gpus": 0, "preempt_reason": "", "idle_action": "", "gpu_indices": [],
    "gpu_energy_earlier_j": 0.0, "environment": {},
}


def element_job(array: JobArray, pos: int, index: int) -> SimpleNamespace:
    """An array's element that has no row, as a job with the Job columns' names (for
    ``read_fields``): waiting in its array, or cancelled with it."""
    return SimpleNamespace(**{**_ELEMENT_DEFAULTS, **element_row(array, pos, index),
                              "state": array.state, "ended_at": array.ended_at})


def element_read(session: Session, array: JobArray, pos: int, principal: Principal | None,
                 *, events: bool = True) -> JobRead:
    """``to_read`` for an element without a row: its history is its array's. The element
    as ``principal`` sees it (None: as its owner does)."""
    index = Ranges.of(array.ranges).index_at(pos)
    job = element_job(array, pos, index)
    mine = principal is None or _mine(principal, array.user_id)
    history = None
    if events:
        history = [JobEventRead(time=array.submitted_at, old_state=None,
                                new_state=JobState.PENDING.value, reason=EVENT_REASON)]
        if array.state == JobState.CANCELLED.value and array.ended_at is not None:
            history.append(JobEventRead(
                time=array.ended_at, old_state=JobState.PENDING.value,
                new_state=JobState.CANCELLED.value,
                reason=array.reason if mine else rules.public_reason(
                    JobState.CANCELLED.value, array.reason)))
    return JobRead(**read_fields(job, user=array.user.name, account=array.account.name,
                                 node=None, gpu_memory={}, mine=mine,
                                 shared=array.spec if mine else None), events=history)


def _group_fields(array: JobArray, taken: set[int]) -> tuple[Any, dict[str, Any]]:
    """The element standing for ``array``'s elements without rows in a listing (its
    first), and what the line shows of the group."""
    pos = first_waiting(array, taken)
    index = Ranges.of(array.ranges).index_at(pos)
    text = waiting_text(array, taken)
    group = {"array_id": array.id, "count": array.count - array.split,
             "array_task": f"[{text}]" if "," in text or "-" in text else text,
             "name": array.name}
    return element_job(array, pos, index), group


def _groups_brief(session: Session, **filters: Any) -> list[dict[str, Any]]:
    out = []
    for array, user, account, taken in waiting_arrays(session, **filters):
        job, group = _group_fields(array, taken)
        out.append({"id": job.id, "name": group["name"], "user": user, "account": account,
                    "state": job.state, "reason": rules.public_reason(job.state, job.reason),
                    "qos": job.qos, "gpus": job.gpus, "gpu_model": job.gpu_model,
                    "node": None, "gpu_indices": [], "priority": job.priority,
                    "time_limit_s": job.time_limit_s, "cancel_requested": False,
                    "preempt_requested": False, "borrowed_grant": None, "idle": False,
                    "submitted_at": job.submitted_at, "started_at": None,
                    "ended_at": job.ended_at, **group})
    return out


def _groups_read(session: Session, principal: Principal, **filters: Any
                 ) -> list[dict[str, Any]]:
    out = []
    for array, user, account, taken in waiting_arrays(session, **filters):
        job, group = _group_fields(array, taken)
        mine = _mine(principal, array.user_id)
        fields = read_fields(job, user=user, account=account, node=None, gpu_memory={},
                             mine=mine, shared=array.spec if mine else None, spec=False)
        out.append({**fields, **group})
    return out


def _merged(rows: list[dict[str, Any]], groups: list[dict[str, Any]], limit: int
            ) -> list[dict[str, Any]]:
    """Jobs and arrays' folded lines, newest (largest id) first, ``limit`` of them."""
    if not groups:
        return rows
    return sorted([*rows, *groups], key=lambda r: r["id"], reverse=True)[:limit]


def job_events(session: Session, job_id: int) -> list[JobEvent]:
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)
                                .order_by(JobEvent.id)))


def _rank_key(factors: dict[str, Any] | None, priority: int, submitted_at: datetime,
              job_id: int) -> tuple[float, float, int]:
    total = (factors or {}).get("total", float(priority))
    return (-total, submitted_at.timestamp(), job_id)


_WAITING = (select(Job.id, Job.priority_factors, Job.priority, Job.submitted_at,
                   User.name.label("user"), Account.name.label("account"))
            .join(User, Job.user_id == User.id).join(Account, Job.account_id == Account.id)
            .where(Job.state == JobState.PENDING.value))


def why(session: Session, job: Any, principal: Principal | None = None) -> WhyRead:
    """Read what the last cycle recorded; nothing is recomputed here. ``job``: a Job, or an
    array's element without a row (``element_job``). The queue ranked as the last cycle
    ranked it: each pending job, and each array's waiting elements in position order.
    The reason as ``principal`` may see it (None: as the owner does; ``read_fields``)."""
    position = ahead = None
    pending = 0
    if job.state == JobState.PENDING.value:
        mine = _rank_key(job.priority_factors, job.priority, job.submitted_at, job.id)
        before: tuple[tuple[float, float, int], Any] | None = None
        ranked_ahead = 0
        for r in session.connection().execute(_WAITING):
            pending += 1
            key = _rank_key(r.priority_factors, r.priority, r.submitted_at, r.id)
            if key < mine:
                ranked_ahead += 1
                if before is None or key > before[0]:
                    before = (key, (r.id, r.user, r.account, r.priority_factors))
        for array, user, account, taken in waiting_arrays(
                session, states=[JobState.PENDING.value], user=None, account=None, node=None):
            n = array.count - array.split
            pending += n
            first = array.id + first_waiting(array, taken)
            key = _rank_key(array.priority_factors, array.priority, array.submitted_at, first)
            if key[:2] < mine[:2]:
                k = n  # all of them are ahead
            elif key[:2] == mine[:2]:  # the same priority: by id (position)
                k = max(0, min(n, job.id - first - sum(1 for t in taken
                                                       if array.id + t < job.id)))
            else:
                k = 0
            if k:
                ranked_ahead += k
                last = (key[0], key[1], first + k - 1)
                if before is None or last > before[0]:
                    before = (last, (first + k - 1, user, account, array.priority_factors))
        position = ranked_ahead + 1
        if before is not None:
            a_id, a_user, a_account, a_factors = before[1]
            ahead = JobAhead(id=a_id, user=a_user, account=a_account, factors=a_factors)
    else:
        pending = session.scalar(select(func.count()).select_from(Job).where(
            Job.state == JobState.PENDING.value)) or 0
        pending += sum(a.count - a.split for a, _, _, _ in waiting_arrays(
            session, states=[JobState.PENDING.value], user=None, account=None, node=None))
    reason = (job.reason if principal is None or _mine(principal, job.user_id)
              else rules.public_reason(job.state, job.reason))
    return WhyRead(id=job.id, state=job.state, reason=reason, position=position,
                   pending=pending, factors=job.priority_factors, ahead=ahead,
                   estimated_start=job.estimated_start)
