"""The grants in effect at a moment, as the scheduler reads them each cycle: the shares
they add, the GPUs they reserve, and when the next one starts or ends. Read-only."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from gpuq.scheduler.db.models import Account, Grant

SHARE, RESERVATION = "share", "reservation"


def _in_effect(now: datetime):  # noqa: ANN202 - a where clause
    return (Grant.revoked_at.is_(None), Grant.start_at <= now, Grant.end_at > now)


def share_boosts(session: Session, now: datetime) -> dict[str, int]:
    """Raw shares to add to each account now (active share grants, budget not used up)."""
    rows = session.execute(
        select(Account.name, func.sum(Grant.shares)).join(Account, Account.id == Grant.account_id)
        .where(Grant.kind == SHARE, Grant.exhausted_at.is_(None), *_in_effect(now))
        .group_by(Account.name))
    return {name: int(total or 0) for name, total in rows}


def reservations(session: Session, now: datetime,
                 ) -> list[tuple[int, str, int, str | None, tuple[str, ...]]]:
    """Reservation grants in effect now: (id, account, gpus, gpu model, nodes), by id."""
    rows = session.execute(
        select(Grant.id, Account.name, Grant.gpus, Grant.gpu_model, Grant.nodes)
        .join(Account, Account.id == Grant.account_id)
        .where(Grant.kind == RESERVATION, *_in_effect(now)).order_by(Grant.id))
    return [(gid, acct, gpus or 0, model, tuple(nodes or ())) for gid, acct, gpus, model, nodes
            in rows]


def next_change(session: Session, now: datetime) -> datetime | None:
    """The next start or end of any grant not revoked, after ``now`` (None: none)."""
    # One query: a grant that starts after now also ends after now.
    start, end = session.execute(
        select(func.min(case((Grant.start_at > now, Grant.start_at))), func.min(Grant.end_at))
        .where(Grant.revoked_at.is_(None), Grant.end_at > now)).one()
    times = [_aware(t) for t in (start, end) if t is not None]
    return min(times) if times else None


def _aware(t: datetime) -> datetime:
    # In case an aggregate bypasses the column type: SQLite keeps naive UTC (or a string).
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
