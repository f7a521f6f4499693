"""/v1/usage: GPU-hours, billed hours, energy, carbon, utilisation and idle GPU-hours,
grouped as asked (what a PI puts in a grant report)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from gpuq.scheduler.api.deps import Ctx, StorableText, StorableTime, UserOrAdmin
from gpuq.scheduler.errors import Invalid
from gpuq.scheduler.services import usage_report as svc
from gpuq.wire.usage import UsageReport

router = APIRouter(tags=["usage"])


@router.get("/v1/usage", response_model=UsageReport, summary="Usage report")
def usage(
    ctx: Ctx, principal: UserOrAdmin,
    by: Annotated[str, Query(description="comma-separated keys: account, user, gpu-model, "
                             "day", examples=["account", "day,account"])] = "account",
    since: Annotated[str | None, Query(description="30d, 12h, 2w (ago) or an ISO time",
                                       examples=["30d"])] = None,
    until: Annotated[datetime | None, Query(description="up to this time (default now)"),
                     StorableTime] = None,
    account: Annotated[str | None, Query(description="this account and those under it"),
                       StorableText] = None,
    user: Annotated[str | None, Query(description="only this user's usage"),
                    StorableText] = None,
) -> UsageReport:
    """Sums of the usage records (one per charge interval), so the totals equal the sum
    over the jobs. Users see the accounts they are in (and those below them)."""
    if until is not None and until.tzinfo is None:
        raise Invalid("give 'until' a time zone, e.g. 2027-02-01T00:00:00Z", field="until")
    now = ctx.clock()
    keys = [k.strip() for k in by.split(",") if k.strip()]
    with ctx.transaction() as session:
        return svc.report(session, principal, now=now, by=keys,
                          since=svc.parse_since(since, now), until=until, account=account,
                          user=user)
