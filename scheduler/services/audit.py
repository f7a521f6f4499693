"""The audit log: one row per admin change (who, when, what, before and after), written in
the same transaction as the change. Never commits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy import select
from sqlalchemy.orm import Session

from gpuq.scheduler.db.models import AuditEntry
from gpuq.wire.admin import AuditRead

#: The actor of the scheduler's own changes (a grant starting or ending).
SYSTEM_ACTOR = "gpuq"
#: Listing: default and largest page.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True)
class Actor:
    """Who makes a change: the user behind the token (and the token), or the scheduler."""

    name: str
    token_id: int | None = None


SYSTEM = Actor(SYSTEM_ACTOR)


def record(session: Session, *, actor: Actor, action: str, target: str, now: datetime,
           before: Any = None, after: Any = None) -> AuditEntry:
    """Write one entry. ``before``/``after``: a read model (dumped as JSON) or a dict."""
    entry = AuditEntry(time=now, actor=actor.name, token_id=actor.token_id, action=action,
                       target=target, before=_dump(before), after=_dump(after))
    session.add(entry)
    return entry


def _dump(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return to_jsonable_python(dict(obj))


def list_entries(session: Session, *, actor: str | None = None, action: str | None = None,
                 target: str | None = None, since: datetime | None = None,
                 until: datetime | None = None, limit: int = DEFAULT_LIMIT,
                 ) -> list[AuditEntry]:
    """Newest first. ``action``: exact (``grant.create``) or a prefix without the verb
    (``grant`` matches every ``grant.*``). ``since`` inclusive, ``until`` exclusive."""
    q = select(AuditEntry)
    if actor:
        q = q.where(AuditEntry.actor == actor)
    if action:
        if "." in action:
            q = q.where(AuditEntry.action == action)
        else:
            q = q.where(AuditEntry.action.startswith(action + ".", autoescape=True))
    if target:
        q = q.where(AuditEntry.target == target)
    if since is not None:
        q = q.where(AuditEntry.time >= since)
    if until is not None:
        q = q.where(AuditEntry.time < until)
    q = q.order_by(AuditEntry.time.desc(), AuditEntry.id.desc()).limit(min(limit, MAX_LIMIT))
    return list(session.scalars(q))


def audit_read(entry: AuditEntry) -> AuditRead:
    return AuditRead(id=entry.id, time=entry.time, actor=entry.actor, token_id=entry.token_id,
                     action=entry.action, target=entry.target, before=entry.before,
                     after=entry.after)
