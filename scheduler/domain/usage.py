"""Charging usage to user associations, with decay (the database side of fair share).

Each association (membership) keeps its decayed usage in billed GPU-seconds. Every charge
pass first decays all of it by the time since the last pass (one UPDATE), then charges
each running job for the time since it was last charged, so current load counts at once,
and charges ended jobs up to their end. Every charge also writes a ``UsageRecord``.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, selectinload

from gpuq.config import Settings
from gpuq.scheduler.db.models import Grant, Job, Membership, Node, SchedulerState, UsageRecord
from gpuq.scheduler.domain import accounting
from gpuq.scheduler.policy.usage import billed_seconds, decay_factor
from gpuq.wire.states import JobState


def _state(session: Session) -> SchedulerState:
    row = session.get(SchedulerState, 1, with_for_update=True)
    if row is None:
        row = SchedulerState(id=1, usage_decayed_at=None)
        session.add(row)
        session.flush()
    return row


def decay_all(session: Session, *, now: datetime, half_life_s: float) -> None:
    state = _state(session)
    if state.usage_decayed_at is not None:
        factor = decay_factor((now - state.usage_decayed_at).total_seconds(), half_life_s)
        if factor < 1.0:
            session.execute(update(Membership).values(usage=Membership.usage * factor))
    state.usage_decayed_at = now


def add_usage(session: Session, *, user_id: int, account_id: int, billed: float) -> None:
    session.execute(update(Membership)
                    .where(Membership.user_id == user_id, Membership.account_id == account_id)
                    .values(usage=Membership.usage + billed))


def charge_job(session: Session, job: Job, *, until: datetime, settings: Settings,
               usage: dict[tuple[int, int], float] | None = None) -> float:
    """Charge ``job`` from where it was last charged up to ``until``; returns billed s.
    ``usage``: add the billed seconds there, by (user, account), instead of to the
    association at once (``charge`` adds them up and writes each association once)."""
    start = job.charged_until or job.started_at
    if start is None or until <= start:
        return 0.0
    seconds = (until - start).total_seconds()
    model = _model(job)
    billed = billed_seconds(job.gpus, seconds, settings.billing_weight(model))
    if usage is None:
        add_usage(session, user_id=job.user_id, account_id=job.account_id, billed=billed)
    else:
        usage[(job.user_id, job.account_id)] += billed
    record = UsageRecord(job_id=job.id, user_id=job.user_id, account_id=job.account_id,
                         start=start, end=until, gpu_seconds=job.gpus * seconds,
                         billed_seconds=billed, gpu_model=model)
    accounting.charge_interval(job, record, node=job.node.name if job.node else None,
                               settings=settings)
    session.add(record)
    job.charged_until = until
    if job.borrowed_grant_id is not None and job.borrowed_gpus:
        # Borrowed of a reservation grant: `gpuq admin grants` shows it.
        session.execute(update(Grant).where(Grant.id == job.borrowed_grant_id).values(
            borrowed_gpu_seconds=Grant.borrowed_gpu_seconds + job.borrowed_gpus * seconds))
    return billed


def _model(job: Job) -> str:
    if job.node is None:
        return job.gpu_model or ""
    models = {g.index: g.model for g in job.node.gpus}
    return next((models[i] for i in job.gpu_indices or [] if i in models), job.gpu_model or "")


def charge(session: Session, *, now: datetime, settings: Settings) -> None:
    """One charge pass: decay everything, then charge running and newly ended jobs.

    The jobs come with their nodes and GPUs in three queries (not two per job), and each
    association's usage is written once. The pass holds every running job's row until
    the loop commits it: at 200 running jobs it took 4 s of one query per job on a busy
    2-core machine, and each heartbeat recording its job's sample waited for it."""
    decay_all(session, now=now, half_life_s=settings.usage_half_life_s)
    usage: dict[tuple[int, int], float] = defaultdict(float)
    with_node = selectinload(Job.node).selectinload(Node.gpus)
    running = session.scalars(select(Job).where(Job.state == JobState.RUNNING.value)
                              .options(with_node).order_by(Job.id))
    for job in running:
        charge_job(session, job, until=now, settings=settings, usage=usage)
    ended = session.scalars(select(Job).where(
        Job.started_at.is_not(None), Job.ended_at.is_not(None),
        (Job.charged_until.is_(None)) | (Job.charged_until < Job.ended_at))
        .options(with_node).order_by(Job.id))
    for job in ended:
        if job.ended_at is not None:
            charge_job(session, job, until=job.ended_at, settings=settings, usage=usage)
    if usage:
        m = Membership.__table__.c
        session.execute(
            update(Membership.__table__).where(m.user_id == bindparam("u"),
                                               m.account_id == bindparam("a"))
            .values(usage=m.usage + bindparam("billed")),
            [{"u": u, "a": a, "billed": billed} for (u, a), billed in sorted(usage.items())])
    accounting.close_ended(session, now=now, settings=settings)


def import_usage(session: Session, *, user_id: int, account_id: int, billed: float,
                 end: datetime, now: datetime, settings: Settings) -> float:
    """Add history from another scheduler, decayed from ``end`` to now; returns what it
    adds to the association's current usage."""
    decay_all(session, now=now, half_life_s=settings.usage_half_life_s)
    worth = billed * decay_factor((now - end).total_seconds(), settings.usage_half_life_s)
    add_usage(session, user_id=user_id, account_id=account_id, billed=worth)
    session.add(UsageRecord(job_id=None, user_id=user_id, account_id=account_id, start=end,
                            end=end, gpu_seconds=0.0, billed_seconds=billed, gpu_model=""))
    return worth
