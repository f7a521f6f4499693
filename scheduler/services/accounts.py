"""Accounts (admin only): the account lookups other services use, the shares helpers,
the root account, and creating, changing and retiring accounts. Never commits.

Every change writes one audit entry (``scheduler/services/audit.py``) in the caller's
transaction, with the object's read model before and after.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpuq.scheduler.db.models import Account, Grant, Job, JobArray
from gpuq.scheduler.errors import Conflict, Invalid, NotFound
from gpuq.scheduler.services.audit import Actor, record
from gpuq.wire.admin import AccountCreate, AccountRead, AccountUpdate
from gpuq.wire.states import ACTIVE, JobState

ROOT = "root"
#: Jobs that keep an account or a membership in use.
LIVE_JOB_STATES = tuple(s.value for s in (JobState.PENDING, *ACTIVE))


def ensure_root(session: Session, *, now: datetime) -> Account:
    root = session.scalar(select(Account).where(Account.name == ROOT))
    if root is None:
        root = Account(name=ROOT, parent_id=None, shares=1, description="the whole cluster",
                       created_at=now)
        session.add(root)
        session.flush()
    return root


def account_by_name(session: Session, name: str, *, field: str = "account") -> Account:
    acct = session.scalar(select(Account).where(Account.name == name))
    if acct is None:
        raise Invalid(f"no account named {name!r}; create it first "
                      f"(POST /v1/admin/accounts)", field=field)
    return acct


def account_or_404(session: Session, name: str) -> Account:
    acct = session.scalar(select(Account).where(Account.name == name))
    if acct is None:
        raise NotFound(f"no account named {name!r}; list them with GET /v1/admin/accounts")
    return acct


def live_account(session: Session, name: str, *, field: str = "account") -> Account:
    acct = account_by_name(session, name, field=field)
    if acct.retired_at is not None:
        raise Invalid(f"account {name!r} is retired; choose a live account", field=field)
    return acct


def subtree_ids(session: Session, account_id: int) -> set[int]:
    """The account and every account below it."""
    children: dict[int | None, list[int]] = {}
    for aid, parent in session.execute(select(Account.id, Account.parent_id)):
        children.setdefault(parent, []).append(aid)
    out, todo = {account_id}, [account_id]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def split_shares(shares: int | str) -> tuple[int, bool]:
    """(raw shares, shares_parent) from an API value: a number, or "parent"."""
    return (0, True) if shares == "parent" else (int(shares), False)


def shares_value(shares: int, parent: bool) -> int | str:
    return "parent" if parent else shares


# --- accounts ---------------------------------------------------------------------------


def account_read(acct: Account) -> AccountRead:
    return AccountRead(name=acct.name, parent=acct.parent.name if acct.parent else None,
                       shares=shares_value(acct.shares, acct.shares_parent),
                       description=acct.description, default_qos=acct.default_qos,
                       retired=acct.retired_at is not None, retired_at=acct.retired_at)


def create_account(session: Session, body: AccountCreate, *, actor: Actor,
                   now: datetime) -> Account:
    if body.name == ROOT:
        raise Conflict("'root' is the top of the tree and always exists")
    if session.scalar(select(Account).where(Account.name == body.name)) is not None:
        raise Conflict(f"account {body.name!r} already exists")
    parent = live_account(session, body.parent, field="parent")
    shares, is_parent = split_shares(body.shares)
    acct = Account(name=body.name, parent_id=parent.id, shares=shares, shares_parent=is_parent,
                   description=body.description, default_qos=body.default_qos,
                   created_at=now)
    session.add(acct)
    session.flush()
    session.refresh(acct)
    record(session, actor=actor, action="account.create", target=f"account:{acct.name}",
           now=now, after=account_read(acct))
    return acct


def list_accounts(session: Session, *, include_retired: bool = False) -> list[Account]:
    q = select(Account).order_by(Account.id)
    if not include_retired:
        q = q.where(Account.retired_at.is_(None))
    return list(session.scalars(q))


def update_account(session: Session, acct: Account, body: AccountUpdate, *, actor: Actor,
                   now: datetime) -> Account:
    """Change only the fields given; ``parent`` moves it with everything below it."""
    before = account_read(acct)
    given = body.model_fields_set
    if acct.retired_at is not None:
        raise Conflict(f"account {acct.name!r} is retired; retired accounts do not change")
    if body.parent is not None and (acct.parent is None or body.parent != acct.parent.name):
        if acct.name == ROOT:
            raise Conflict("'root' is the top of the tree; it cannot move")
        parent = live_account(session, body.parent, field="parent")
        if parent.id in subtree_ids(session, acct.id):
            raise Invalid(f"cannot move {acct.name!r} under {parent.name!r}: "
                          f"{parent.name!r} is {acct.name!r} itself or below it; choose a "
                          f"parent outside its subtree", field="parent")
        acct.parent_id = parent.id
    if body.shares is not None:
        acct.shares, acct.shares_parent = split_shares(body.shares)
    if body.description is not None:
        acct.description = body.description
    if "default_qos" in given:
        acct.default_qos = body.default_qos
    session.flush()
    session.refresh(acct)
    record(session, actor=actor, action="account.update", target=f"account:{acct.name}",
           now=now, before=before, after=account_read(acct))
    return acct


def retire_account(session: Session, acct: Account, *, actor: Actor, now: datetime) -> Account:
    """Retire an account: no new jobs, out of the fair-share tree; the row (and its
    history) stays. Refused while something still uses it; retiring twice changes nothing."""
    if acct.name == ROOT:
        raise Conflict("'root' is the top of the tree; it cannot be retired")
    if acct.retired_at is not None:
        return acct
    blockers = _retire_blockers(session, acct, now=now)
    if blockers:
        raise Conflict(f"account {acct.name!r} cannot be retired yet: "
                       f"{'; '.join(blockers)}")
    before = account_read(acct)
    acct.retired_at = now
    session.flush()
    record(session, actor=actor, action="account.retire", target=f"account:{acct.name}",
           now=now, before=before, after=account_read(acct))
    return acct


def _retire_blockers(session: Session, acct: Account, *, now: datetime) -> list[str]:
    out = []
    children = list(session.scalars(select(Account.name).where(
        Account.parent_id == acct.id, Account.retired_at.is_(None)).order_by(Account.name)))
    if children:
        out.append(f"it has live child accounts {', '.join(children)} (move or retire "
                   f"them first)")
    jobs = list(session.scalars(select(Job.id).where(
        Job.account_id == acct.id, Job.state.in_(LIVE_JOB_STATES)).order_by(Job.id)))
    # Arrays whose elements wait without rows: the array's id stands for them.
    jobs += list(session.scalars(select(JobArray.id).where(
        JobArray.account_id == acct.id, JobArray.state == JobState.PENDING.value)
        .order_by(JobArray.id)))
    if jobs:
        out.append(f"jobs {', '.join(map(str, jobs[:20]))}{' ...' if len(jobs) > 20 else ''}"
                   f" are pending or running (cancel them or let them end)")
    grants = list(session.scalars(select(Grant.id).where(
        Grant.account_id == acct.id, Grant.revoked_at.is_(None), Grant.end_at > now,
        Grant.exhausted_at.is_(None)).order_by(Grant.id)))
    if grants:
        out.append(f"grants {', '.join(map(str, grants))} have not ended (revoke them)")
    return out
