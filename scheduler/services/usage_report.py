"""The usage report: sums of the usage records (one per charge interval of a job), so its
totals are the sums over the jobs. A record counts in the window when its interval ends
in it (intervals are ``usage_charge_interval_s`` long, 30 s by default); ``day`` is the
UTC date of that end. Admins see everything; users see the accounts they are members of
and the accounts below them (every user's usage there: what a PI reports on).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from gpuq.scheduler.db.models import Account, Membership, UsageRecord, User
from gpuq.scheduler.domain.accounting import J_PER_KWH
from gpuq.scheduler.errors import Forbidden, Invalid, NotFound
from gpuq.scheduler.services.auth import Principal
from gpuq.wire.common import check_time
from gpuq.wire.usage import UsageReport, UsageRow

KEYS = ("account", "user", "gpu-model", "day")
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str | None, now: datetime) -> datetime | None:
    """``30d``, ``12h``, ``2w`` (ago), or an ISO time with a zone; None: from the start."""
    if not value:
        return None
    m = _AGO.match(value.strip())
    if m:
        try:
            return now - timedelta(seconds=float(m[1]) * _UNIT_S[m[2]])
        except OverflowError:  # before year 1 (or more days than a timedelta holds)
            raise Invalid(f"since {value!r}: too long ago", field="since") from None
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(f"since {value!r}: give a duration ago (30d, 12h, 2w) or an ISO time "
                      "with a zone (2027-01-01T00:00:00Z)", field="since") from None
    if t.tzinfo is None:
        raise Invalid("give 'since' a time zone, e.g. 2027-01-01T00:00:00Z", field="since")
    try:
        return check_time(t)
    except ValueError as e:
        raise Invalid(f"since {value!r}: {e}", field="since") from None


def _below(session: Session, roots: set[int]) -> set[int]:
    """``roots`` and every account under them."""
    children: dict[int | None, list[int]] = {}
    for aid, parent in session.execute(select(Account.id, Account.parent_id)):
        children.setdefault(parent, []).append(aid)
    out, todo = set(), list(roots)
    while todo:
        a = todo.pop()
        if a not in out:
            out.add(a)
            todo += children.get(a, [])
    return out


def _day(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", UsageRecord.end), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", UsageRecord.end)  # stored in UTC


def report(session: Session, principal: Principal, *, now: datetime, by: Sequence[str],
           since: datetime | None, until: datetime | None, account: str | None,
           user: str | None) -> UsageReport:
    for k in by:
        if k not in KEYS:
            raise Invalid(f"cannot group by {k!r}: choose from {', '.join(KEYS)}", field="by")
    until = until or now
    where = [UsageRecord.end <= until]
    if since is not None:
        where.append(UsageRecord.end > since)
    scope: set[int] | None = None
    if not principal.is_admin:
        if principal.user is None:
            raise Forbidden("only user and admin tokens can read usage")
        mine = set(session.scalars(select(Membership.account_id)
                                   .where(Membership.user_id == principal.user.id)))
        scope = _below(session, mine)
    if account:
        acct = session.scalar(select(Account).where(Account.name == account))
        if acct is None:
            raise NotFound(f"no account {account!r}")
        ids = _below(session, {acct.id})
        if scope is not None and acct.id not in scope:
            raise Forbidden(f"you are not a member of {account} (or of an account above it)")
        scope = ids if scope is None else scope & ids
    if scope is not None:
        where.append(UsageRecord.account_id.in_(scope))
    if user:
        uid = session.scalar(select(User.id).where(User.name == user))
        if uid is None:
            raise NotFound(f"no user {user!r}")
        where.append(UsageRecord.user_id == uid)

    cols = {"account": Account.name, "user": User.name, "gpu-model": UsageRecord.gpu_model,
            "day": _day(session)}
    keys = [cols[k].label(k.replace("-", "_")) for k in by]
    sums = [func.sum(UsageRecord.gpu_seconds), func.sum(UsageRecord.billed_seconds),
            func.sum(UsageRecord.energy_j), func.sum(UsageRecord.carbon_g),
            func.count(distinct(UsageRecord.job_id)), func.sum(UsageRecord.busy_gpu_seconds),
            func.sum(UsageRecord.sampled_gpu_seconds), func.sum(UsageRecord.idle_gpu_seconds)]
    base = (select(*keys, *sums).select_from(UsageRecord)
            .join(Account, Account.id == UsageRecord.account_id)
            .join(User, User.id == UsageRecord.user_id).where(*where))
    rows = []
    if keys:
        for r in session.execute(base.group_by(*keys).order_by(*keys)):
            names = {k.replace("-", "_"): r[i] for i, k in enumerate(by)}
            rows.append(_row(names, r[len(keys):]))
    total = _row({}, session.execute(select(*sums).select_from(UsageRecord).where(*where))
                 .one())
    return UsageReport(since=since, until=until, by=list(by), rows=rows, total=total)


def _row(names: dict[str, Any], v: Sequence[Any]) -> UsageRow:
    gpu_s, billed, energy, carbon, jobs, busy, sampled, idle = (x or 0 for x in v)
    return UsageRow(**names, gpu_hours=round(gpu_s / 3600, 6),
                    billed_gpu_hours=round(billed / 3600, 6),
                    energy_kwh=round(energy / J_PER_KWH, 6),
                    carbon_kg=round(carbon / 1000, 6), jobs=int(jobs),
                    utilization_mean_pct=round(100 * busy / sampled, 2) if sampled else None,
                    idle_gpu_hours=round(idle / 3600, 6))
