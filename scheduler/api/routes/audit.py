"""/v1/admin/audit: the audit log of admin changes, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from gpuq.scheduler.api.deps import Admin, Ctx, StorableText, StorableTime
from gpuq.scheduler.errors import Invalid
from gpuq.scheduler.services import audit as svc
from gpuq.wire.admin import AuditRead

router = APIRouter(prefix="/v1/admin/audit", tags=["audit"])


@router.get("", response_model=list[AuditRead], summary="Read the audit log")
def list_audit(
    ctx: Ctx, _: Admin,
    actor: Annotated[str | None, Query(description="who: a user name, or gpuq for the "
                                       "scheduler's own changes", examples=["bob"]),
                     StorableText] = None,
    action: Annotated[str | None, Query(
        description="exact (grant.create) or every action of an object (grant)",
        examples=["grant"]), StorableText] = None,
    target: Annotated[str | None, Query(description="the object: account:qlab, user:alice, "
                                        "grant:3, token:12, node:gpu01",
                                        examples=["account:qlab"]), StorableText] = None,
    since: Annotated[datetime | None, Query(description="from this time (inclusive)",
                                            examples=["2027-01-01T00:00:00Z"]),
                     StorableTime] = None,
    until: Annotated[datetime | None, Query(description="before this time",
                                            examples=["2027-02-01T00:00:00Z"]),
                     StorableTime] = None,
    limit: Annotated[int, Query(ge=1, le=svc.MAX_LIMIT, description="at most this many",
                                examples=[20])] = svc.DEFAULT_LIMIT,
) -> list[AuditRead]:
    """Every admin change, newest first: who (the user behind the token, and the token),
    when, the action, the object, and the object before and after."""
    for name, t in (("since", since), ("until", until)):
        if t is not None and t.tzinfo is None:
            raise Invalid(f"give '{name}' a time zone, e.g. 2027-01-31T00:00:00Z", field=name)
    with ctx.transaction() as session:
        return [svc.audit_read(e) for e in svc.list_entries(
            session, actor=actor, action=action, target=target, since=since, until=until,
            limit=limit)]
