"""Usage import (admin only): load past usage into the fair-share history. Never commits.

The import writes one audit entry (``scheduler/services/audit.py``) in the caller's
transaction.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.scheduler.db.models import Account, User
from gpuq.scheduler.errors import Invalid
from gpuq.scheduler.services.audit import Actor, record
from gpuq.wire.admin import UsageImport, UsageImportResult


def import_usage(session: Session, records: list[UsageImport], *, actor: Actor, now: datetime,
                 settings: Settings) -> UsageImportResult:
    """Import history; all records or none (the request's transaction)."""
    from gpuq.scheduler.domain.usage import import_usage as add

    total = 0.0
    for i, rec in enumerate(records):
        user = session.scalar(select(User).where(User.name == rec.user))
        acct = session.scalar(select(Account).where(Account.name == rec.account))
        member = user is not None and acct is not None and any(
            m.account_id == acct.id for m in user.memberships)
        if not member:
            raise Invalid(f"record {i + 1}: user {rec.user!r} is not a member of account "
                          f"{rec.account!r}; create the user and membership first",
                          field=f"{i}")
        end = rec.end_time or now
        if end > now:
            raise Invalid(f"record {i + 1}: end_time is in the future", field=f"{i}")
        total += add(session, user_id=user.id, account_id=acct.id,  # type: ignore[union-attr]
                     billed=rec.billed_seconds, end=end, now=now, settings=settings)
    result = UsageImportResult(imported=len(records), decayed_billed_seconds=total)
    record(session, actor=actor, action="usage.import", target="usage:import", now=now,
           after={**result.model_dump(mode="json"),
                  "records": len(records),
                  "billed_seconds": sum(r.billed_seconds for r in records),
                  "associations": sorted({f"{r.user}/{r.account}" for r in records})})
    return result
