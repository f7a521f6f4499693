"""Grants, the database side: create (with the exact overcommit check), list, change,
revoke, usage; and the grants' state changes the scheduling loop makes each cycle
(``refresh_states``). What is in effect now: ``domain/grants_in_effect.py``. Never
commits."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.scheduler.db.models import Gpu, Grant, Job, Node, UsageRecord
from gpuq.scheduler.domain import grants as pure
from gpuq.scheduler.domain.grants_in_effect import RESERVATION, SHARE
from gpuq.scheduler.errors import Conflict, Invalid, NotFound, Overcommitted
from gpuq.scheduler.services.accounts import account_by_name, subtree_ids
from gpuq.scheduler.services.audit import SYSTEM, Actor, record
from gpuq.wire.grants import GrantCreate, GrantRead, GrantRevoke, GrantUpdate, GrantUsage

#: ``Grant.state_reason``'s size.
STATE_REASON_CHARS = 256
#: Stored states the loop still moves (the others are final).
LIVE_STATES = (pure.SCHEDULED, pure.ACTIVE)


# --- reading ----------------------------------------------------------------------------


def get_grant(session: Session, grant_id: int) -> Grant:
    grant = session.get(Grant, grant_id)
    if grant is None:
        raise NotFound(f"no grant {grant_id}; list them with GET /v1/admin/grants")
    return grant


def list_grants(session: Session, *, now: datetime, account: str | None = None,
                state: str | None = None, kind: str | None = None) -> list[Grant]:
    """Grants by id; ``account`` matches that account only; ``state`` is the state now."""
    q = select(Grant).order_by(Grant.id)
    if account:
        q = q.where(Grant.account_id == account_by_name(session, account).id)
    if kind:
        q = q.where(Grant.kind == kind)
    rows = list(session.scalars(q))
    if state:
        rows = [g for g in rows if pure.state_at(g, now)[0] == state]
    return rows


def grant_read(session: Session, grant: Grant, *, now: datetime, live: bool = True,
               ) -> GrantRead:
    """The wire form; ``live``: the state at ``now`` (else the stored one)."""
    state, reason = pure.state_at(grant, now) if live else (grant.state, grant.state_reason)
    return GrantRead(
        id=grant.id, account=grant.account.name, kind=grant.kind,  # type: ignore[arg-type]
        start=grant.start_at, end=grant.end_at, note=grant.note, shares=grant.shares,
        gpu_hours=grant.gpu_hours, gpus=grant.gpus, gpu_model=grant.gpu_model,
        nodes=list(grant.nodes or []), state=state, state_reason=reason,  # type: ignore[arg-type]
        created_by=grant.created_by, created_at=grant.created_at,
        revoked_at=grant.revoked_at, usage=usage(session, grant, now=now))


def usage(session: Session, grant: Grant, *, now: datetime) -> GrantUsage:
    """What the account (and every account below it) used in the window so far: usage
    records prorated by their overlap with [start, min(end, now, revoked)]. Imported
    history (records of no length) is not usage in a window and is left out."""
    start, end = grant.start_at, _window_end(grant, now)
    gpu_s = billed_s = 0.0
    per_job: dict[int, float] = defaultdict(float)
    if end > start:
        accounts = subtree_ids(session, grant.account_id)
        rows = session.execute(select(
            UsageRecord.job_id, UsageRecord.start, UsageRecord.end, UsageRecord.gpu_seconds,
            UsageRecord.billed_seconds,
        ).where(UsageRecord.account_id.in_(accounts), UsageRecord.start < end,
                UsageRecord.end > start, UsageRecord.end > UsageRecord.start))
        for job_id, r_start, r_end, gpu, billed in rows:
            frac = _overlap(r_start, r_end, start, end) / (r_end - r_start).total_seconds()
            gpu_s += gpu * frac
            billed_s += billed * frac
            if job_id is not None:
                per_job[job_id] += gpu * frac
    hours_elapsed = max(0.0, (end - start).total_seconds()) / 3600
    budget = grant.gpu_hours if grant.kind == SHARE else None
    return GrantUsage(
        gpu_hours=gpu_s / 3600, billed_gpu_hours=billed_s / 3600,
        budget_gpu_hours=budget,
        budget_left_gpu_hours=max(0.0, budget - billed_s / 3600) if budget else None,
        reserved_gpu_hours=(grant.gpus or 0) * hours_elapsed
        if grant.kind == RESERVATION else None,
        borrowed_gpu_hours=(grant.borrowed_gpu_seconds or 0.0) / 3600,
        preemptions=grant.preemptions or 0,
        energy_kwh=_energy_kwh(session, per_job),
    )


def _window_end(grant: Grant, now: datetime) -> datetime:
    end = min(grant.end_at, now)
    return min(end, grant.revoked_at) if grant.revoked_at is not None else end


def _overlap(a0: datetime, a1: datetime, b0: datetime, b1: datetime) -> float:
    return max(0.0, (min(a1, b1) - max(a0, b0)).total_seconds())


def _energy_kwh(session: Session, in_window: dict[int, float]) -> float | None:
    """Each job's GPU energy, shared out by the part of its GPU-seconds in the window."""
    if not in_window:
        return None
    ids = list(in_window)
    totals = dict(session.execute(
        select(UsageRecord.job_id, func.sum(UsageRecord.gpu_seconds))
        .where(UsageRecord.job_id.in_(ids)).group_by(UsageRecord.job_id)).all())
    energy = dict(session.execute(
        select(Job.id, Job.gpu_energy_j).where(Job.id.in_(ids),
                                               Job.gpu_energy_j.is_not(None))).all())
    if not energy:
        return None
    joules = sum(e * in_window[j] / totals[j] for j, e in energy.items() if totals.get(j))
    return joules / 3.6e6


# --- the overcommit check ---------------------------------------------------------------


def supply(session: Session) -> dict[tuple[str, str], int]:
    """The registered GPUs: how many of each model on each node (healthy or not: a
    reservation is for the window, not for this minute)."""
    rows = session.execute(
        select(Node.name, Gpu.model, func.count(Gpu.id)).join(Gpu, Gpu.node_id == Node.id)
        .where(Node.registered_at.is_not(None)).group_by(Node.name, Gpu.model))
    return {(node, model): n for node, model, n in rows}


def as_reservation(grant: Grant) -> pure.Reservation:
    return pure.Reservation(id=grant.id, gpus=grant.gpus or 0, start=grant.start_at,
                            end=grant.end_at, model=grant.gpu_model,
                            nodes=tuple(grant.nodes or ()))


#: PostgreSQL advisory lock key: one reservation check at a time ("gpuq" + 1).
_RESERVATION_LOCK = 0x67707571_0001


def check_overcommit(session: Session, new: pure.Reservation, *, now: datetime) -> None:
    """Raise ``Overcommitted`` if ``new`` does not fit beside the reservation grants that
    overlap it (scheduled or active, not revoked, not expired). Two admins creating
    reservations at once are checked one after the other: on PostgreSQL a transaction
    lock (SQLite transactions already take the write lock when they begin)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _RESERVATION_LOCK})
    q = select(Grant).where(Grant.kind == RESERVATION, Grant.revoked_at.is_(None),
                            Grant.start_at < new.end, Grant.end_at > new.start,
                            Grant.end_at > now)
    if new.id is not None:
        q = q.where(Grant.id != new.id)
    others = [as_reservation(g) for g in session.scalars(q)]
    found = pure.find_overcommit(new, others, supply(session))
    if found is not None:
        raise Overcommitted(found.message(new), conflicts=list(found.conflicts))


# --- changing ---------------------------------------------------------------------------


def create_grant(session: Session, body: GrantCreate, *, actor: Actor, now: datetime) -> Grant:
    acct = account_by_name(session, body.account)
    if acct.retired_at is not None:
        raise Invalid(f"account {acct.name!r} is retired; grants go to live accounts",
                      field="account")
    start = body.start or now
    if body.end <= start:
        raise Invalid(f"'end' must be after the start ({pure.iso(start)})", field="end")
    if body.end <= now:
        raise Invalid(f"'end' ({pure.iso(body.end)}) is in the past; give a later end",
                      field="end")
    nodes = list(dict.fromkeys(body.nodes))
    if body.kind == RESERVATION:
        _check_reservation_fits_cluster(session, body, nodes)
        check_overcommit(session, pure.Reservation(
            id=None, gpus=body.gpus or 0, start=start, end=body.end, model=body.gpu_model,
            nodes=tuple(nodes)), now=now)
    grant = Grant(account_id=acct.id, kind=body.kind, start_at=start, end_at=body.end,
                  note=body.note, shares=body.shares, gpu_hours=body.gpu_hours,
                  gpus=body.gpus, gpu_model=body.gpu_model, nodes=nodes,
                  state_reason="", created_by=actor.name, created_at=now,
                  borrowed_gpu_seconds=0.0, preemptions=0)
    grant.state, grant.state_reason = pure.state_at(grant, now)
    session.add(grant)
    session.flush()
    session.refresh(grant)
    record(session, actor=actor, action="grant.create", target=f"grant:{grant.id}", now=now,
           after=grant_read(session, grant, now=now))
    return grant


def _check_reservation_fits_cluster(session: Session, body: GrantCreate,
                                    nodes: list[str]) -> None:
    cluster = supply(session)
    registered = {node for node, _ in cluster} | set(session.scalars(
        select(Node.name).where(Node.registered_at.is_not(None))))
    unknown = [n for n in nodes if n not in registered]
    if unknown:
        raise Invalid(f"no registered node named {', '.join(unknown)}; registered: "
                      f"{', '.join(sorted(registered)) or 'none yet'}", field="nodes")
    where = f"on {', '.join(nodes)}" if nodes else "in the cluster"
    if body.gpu_model is not None:
        models = sorted({m for (n, m) in cluster if not nodes or n in nodes})
        if body.gpu_model not in models:
            raise Invalid(f"no GPU of model {body.gpu_model!r} {where}; models there: "
                          f"{', '.join(models) or 'none'}", field="gpu_model")
    eligible = pure.eligible_gpus(cluster, model=body.gpu_model, nodes=nodes)
    if (body.gpus or 0) > eligible:
        raise Invalid(f"{body.gpus} GPUs asked for, but {where} there are only {eligible} "
                      f"GPUs{' of ' + body.gpu_model if body.gpu_model else ''}; ask for "
                      f"at most {eligible}", field="gpus")


def _refuse_if_over(grant: Grant, now: datetime, verb: str) -> None:
    state, reason = pure.state_at(grant, now)
    if state in pure.FINAL:
        raise Conflict(f"grant {grant.id} is {state} ({reason}); a grant that has ended "
                       f"cannot be {verb}: create a new one")


def update_grant(session: Session, grant: Grant, body: GrantUpdate, *, actor: Actor,
                 now: datetime) -> Grant:
    _refuse_if_over(grant, now, "changed")
    before = grant_read(session, grant, now=now)
    if body.gpu_hours is not None and grant.kind != SHARE:
        raise Invalid("only share grants have a budget ('gpu_hours'); a reservation "
                      "grant's size is 'gpus'", field="gpu_hours")
    if body.end is not None and body.end != grant.end_at:
        if body.end <= grant.start_at:
            raise Invalid(f"'end' must be after the start ({pure.iso(grant.start_at)})",
                          field="end")
        if body.end <= now:
            raise Invalid("'end' is in the past; to stop a grant now, revoke it "
                          f"(POST /v1/admin/grants/{grant.id}/revoke)", field="end")
        if grant.kind == RESERVATION and body.end > grant.end_at:
            new = as_reservation(grant)
            check_overcommit(session, pure.Reservation(
                id=grant.id, gpus=new.gpus, start=new.start, end=body.end, model=new.model,
                nodes=new.nodes), now=now)
        grant.end_at = body.end
    if body.note is not None:
        grant.note = body.note
    if body.gpu_hours is not None:
        grant.gpu_hours = body.gpu_hours
    grant.state, grant.state_reason = pure.state_at(grant, now)
    session.flush()
    record(session, actor=actor, action="grant.update", target=f"grant:{grant.id}", now=now,
           before=before, after=grant_read(session, grant, now=now))
    return grant


def revoke_grant(session: Session, grant: Grant, body: GrantRevoke, *, actor: Actor,
                 now: datetime) -> Grant:
    """End a grant now; revoking a revoked grant changes nothing."""
    if grant.revoked_at is not None:
        return grant
    _refuse_if_over(grant, now, "revoked")
    before = grant_read(session, grant, now=now)
    grant.revoked_at = now
    reason = f"revoked by {actor.name}: {body.reason}"
    grant.state, grant.state_reason = pure.REVOKED, reason[:STATE_REASON_CHARS]
    session.flush()
    record(session, actor=actor, action="grant.revoke", target=f"grant:{grant.id}", now=now,
           before=before, after=grant_read(session, grant, now=now))
    return grant


# --- what the scheduling loop calls -----------------------------------------------------


def refresh_states(session: Session, now: datetime, settings: Settings | None = None, *,
                   check_budgets: bool = True) -> None:
    """Store every grant's state at ``now``: a share grant whose account used its budget in
    the window is exhausted; grants that start or end are audited ("grant.activate",
    "grant.expire") with the actor "gpuq". ``settings``: unused (usage records are
    already billed), kept for the loop's call. ``check_budgets``: sum the budgeted grants'
    usage (the loop asks only after a charge pass: usage changes nowhere else)."""
    del settings
    rows = session.scalars(select(Grant).where(Grant.state.in_(LIVE_STATES))
                           .order_by(Grant.id))
    for grant in rows:
        before = None
        if (check_budgets and grant.kind == SHARE and grant.gpu_hours is not None
                and grant.exhausted_at is None
                and grant.revoked_at is None and grant.start_at <= now < grant.end_at):
            used = usage(session, grant, now=now).billed_gpu_hours
            if used >= grant.gpu_hours:
                before = grant_read(session, grant, now=now, live=False)
                grant.exhausted_at = now
        state, reason = pure.state_at(grant, now)
        if state == grant.state:
            grant.state_reason = reason
            continue
        before = before or grant_read(session, grant, now=now, live=False)
        action = {pure.ACTIVE: "grant.activate", pure.EXPIRED: "grant.expire"}.get(state)
        grant.state, grant.state_reason = state, reason
        session.flush()
        if action is not None:
            record(session, actor=SYSTEM, action=action, target=f"grant:{grant.id}", now=now,
                   before=before, after=grant_read(session, grant, now=now, live=False))
