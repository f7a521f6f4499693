"""Accounts, users, memberships and tokens (admin only). Never commits.

Every change writes one audit entry (``scheduler/services/audit.py``) in the caller's
transaction, with the object's read model before and after.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.scheduler.db.models import Account, ApiToken, Grant, Job, Membership, User
from gpuq.scheduler.errors import Conflict, Invalid, NotFound
from gpuq.scheduler.services.audit import Actor, record
from gpuq.scheduler.services.auth import issue_token
from gpuq.scheduler.services.nodes import get_or_create_node
from gpuq.wire.admin import (
    AccountCreate,
    AccountRead,
    AccountUpdate,
    MembershipCreate,
    MembershipRead,
    MembershipUpdate,
    TokenCreate,
    TokenRead,
    UsageImport,
    UsageImportResult,
    UserCreate,
    UserRead,
    UserUpdate,
)
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


def user_by_name(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user named {name!r}")
    return user


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
    if jobs:
        out.append(f"jobs {', '.join(map(str, jobs[:20]))}{' ...' if len(jobs) > 20 else ''}"
                   f" are pending or running (cancel them or let them end)")
    grants = list(session.scalars(select(Grant.id).where(
        Grant.account_id == acct.id, Grant.revoked_at.is_(None), Grant.end_at > now,
        Grant.exhausted_at.is_(None)).order_by(Grant.id)))
    if grants:
        out.append(f"grants {', '.join(map(str, grants))} have not ended (revoke them)")
    return out


# --- users and memberships --------------------------------------------------------------


def user_read(user: User) -> UserRead:
    return UserRead(
        name=user.name, admin=user.is_admin, unix_user=user.unix_user or user.name,
        default_account=user.default_account.name if user.default_account else None,
        accounts=[MembershipRead(account=m.account.name,
                                 shares=shares_value(m.shares, m.shares_parent))
                  for m in sorted(user.memberships, key=lambda m: m.id)],
        disabled=user.disabled_at is not None, allowed_qos=list(user.allowed_qos or []),
    )


def create_user(session: Session, body: UserCreate, *, actor: Actor, now: datetime) -> User:
    if session.scalar(select(User).where(User.name == body.name)) is not None:
        raise Conflict(f"user {body.name!r} already exists; add an account with "
                       f"POST /v1/admin/users/{body.name}/accounts")
    acct = live_account(session, body.account)
    user = User(name=body.name, is_admin=body.admin, default_account_id=acct.id,
                unix_user=body.unix_user, allowed_qos=[], created_at=now)
    session.add(user)
    session.flush()
    shares, is_parent = split_shares(body.shares)
    session.add(Membership(user_id=user.id, account_id=acct.id, shares=shares,
                           shares_parent=is_parent))
    session.flush()
    session.refresh(user)
    record(session, actor=actor, action="user.create", target=f"user:{user.name}", now=now,
           after=user_read(user))
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


def update_user(session: Session, user: User, body: UserUpdate, *, actor: Actor,
                now: datetime) -> User:
    """Change only the fields given. Disabling stops the user's tokens; its jobs stay."""
    before = user_read(user)
    given = body.model_fields_set
    if user.name == actor.name and (body.disabled or body.admin is False):
        raise Conflict("you cannot disable yourself or take away your own admin flag "
                       "(you would lock yourself out); ask another admin")
    if "unix_user" in given:
        user.unix_user = body.unix_user
    if body.admin is not None:
        user.is_admin = body.admin
    if body.disabled is not None:
        if body.disabled and user.disabled_at is None:
            user.disabled_at = now
        elif not body.disabled:
            user.disabled_at = None
    if body.default_account is not None:
        member = {m.account.name: m.account for m in user.memberships}
        if body.default_account not in member:
            raise Invalid(f"user {user.name!r} is not a member of account "
                          f"{body.default_account!r} (accounts: "
                          f"{', '.join(sorted(member)) or 'none'}); add the membership first",
                          field="default_account")
        if member[body.default_account].retired_at is not None:
            raise Invalid(f"account {body.default_account!r} is retired",
                          field="default_account")
        user.default_account_id = member[body.default_account].id
    if body.allowed_qos is not None:
        user.allowed_qos = list(dict.fromkeys(body.allowed_qos))
    session.flush()
    session.refresh(user)
    record(session, actor=actor, action="user.update", target=f"user:{user.name}", now=now,
           before=before, after=user_read(user))
    return user


def membership(user: User, account: str) -> Membership:
    for m in user.memberships:
        if m.account.name == account:
            return m
    raise NotFound(f"user {user.name!r} is not a member of account {account!r}")


def membership_read(m: Membership) -> dict[str, object]:
    return {"user": m.user.name, "account": m.account.name,
            "shares": shares_value(m.shares, m.shares_parent)}


def add_membership(session: Session, user: User, body: MembershipCreate, *, actor: Actor,
                   now: datetime) -> User:
    acct = live_account(session, body.account)
    if any(m.account_id == acct.id for m in user.memberships):
        raise Conflict(f"user {user.name!r} is already in account {acct.name!r}")
    shares, is_parent = split_shares(body.shares)
    m = Membership(user_id=user.id, account_id=acct.id, shares=shares,
                   shares_parent=is_parent)
    session.add(m)
    session.flush()
    session.refresh(user)
    record(session, actor=actor, action="membership.create",
           target=f"user:{user.name}/account:{acct.name}", now=now, after=membership_read(m))
    return user


def update_membership(session: Session, user: User, account: str, body: MembershipUpdate, *,
                      actor: Actor, now: datetime) -> User:
    m = membership(user, account)
    before = membership_read(m)
    m.shares, m.shares_parent = split_shares(body.shares)
    session.flush()
    record(session, actor=actor, action="membership.update",
           target=f"user:{user.name}/account:{account}", now=now, before=before,
           after=membership_read(m))
    return user


def delete_membership(session: Session, user: User, account: str, *, actor: Actor,
                      now: datetime) -> User:
    m = membership(user, account)
    if user.default_account_id == m.account_id:
        raise Conflict(f"{account!r} is {user.name!r}'s default account; set another "
                       f"default_account first (PATCH /v1/admin/users/{user.name})")
    jobs = list(session.scalars(select(Job.id).where(
        Job.user_id == user.id, Job.account_id == m.account_id,
        Job.state.in_(LIVE_JOB_STATES)).order_by(Job.id)))
    if jobs:
        raise Conflict(f"user {user.name!r} has pending or running jobs in {account!r} "
                       f"({', '.join(map(str, jobs[:20]))}); cancel them or let them end")
    before = membership_read(m)
    session.delete(m)
    session.flush()
    session.refresh(user)
    record(session, actor=actor, action="membership.delete",
           target=f"user:{user.name}/account:{account}", now=now, before=before)
    return user


# --- tokens -----------------------------------------------------------------------------


def token_read(row: ApiToken, *, now: datetime) -> dict[str, object]:
    return TokenRead(
        id=row.id, prefix=row.prefix, role=row.role,
        user=row.user.name if row.user else None, node=row.node.name if row.node else None,
        description=row.description, created_at=row.created_at,
        last_used_at=row.last_used_at, revoked=row.revoked_at is not None,
        expires_at=row.expires_at,
        expired=row.expires_at is not None and row.expires_at <= now,
    ).model_dump()


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def create_token(session: Session, body: TokenCreate, *, actor: Actor,
                 now: datetime) -> tuple[ApiToken, str]:
    expires = now + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    if body.role == "node":
        node = get_or_create_node(session, body.node or "")
        row, secret = issue_token(session, role="node", node=node, now=now,
                                  description=body.description)
    else:
        user = user_by_name(session, body.user or "")
        if body.role == "admin" and not user.is_admin:
            raise Invalid(f"user {user.name!r} is not an admin; only admins get admin tokens",
                          field="role")
        row, secret = issue_token(session, role=body.role, user=user, now=now,
                                  description=body.description)
    row.expires_at = expires
    session.flush()
    session.refresh(row)
    record(session, actor=actor, action="token.create", target=f"token:{row.id}", now=now,
           after=token_read(row, now=now))
    return row, secret


def revoke_token(session: Session, token_id: int, *, actor: Actor, now: datetime) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"no token {token_id}; list them with GET /v1/admin/tokens")
    if row.revoked_at is None:
        before = token_read(row, now=now)
        row.revoked_at = now
        session.flush()
        record(session, actor=actor, action="token.revoke", target=f"token:{row.id}", now=now,
               before=before, after=token_read(row, now=now))
    return row


# --- usage ------------------------------------------------------------------------------


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

