"""Accounts, users, memberships and tokens (admin only). Never commits."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.api.schemas import (
    AccountCreate,
    AccountRead,
    MembershipCreate,
    MembershipRead,
    TokenCreate,
    TokenRead,
    UsageImport,
    UsageImportResult,
    UserCreate,
    UserRead,
    UserUpdate,
)
from scheduler.auth import issue_token
from scheduler.config import Settings
from scheduler.db.models import Account, ApiToken, Membership, User
from scheduler.errors import Conflict, Invalid, NotFound
from scheduler.services.nodes import get_or_create_node

ROOT = "root"


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


def account_read(acct: Account) -> AccountRead:
    return AccountRead(name=acct.name, parent=acct.parent.name if acct.parent else None,
                       shares=shares_value(acct.shares, acct.shares_parent),
                       description=acct.description)


def create_account(session: Session, body: AccountCreate, *, now: datetime) -> Account:
    if body.name == ROOT:
        raise Conflict("'root' is the top of the tree and always exists")
    if session.scalar(select(Account).where(Account.name == body.name)) is not None:
        raise Conflict(f"account {body.name!r} already exists")
    parent = account_by_name(session, body.parent, field="parent")
    shares, is_parent = split_shares(body.shares)
    acct = Account(name=body.name, parent_id=parent.id, shares=shares, shares_parent=is_parent,
                   description=body.description, created_at=now)
    session.add(acct)
    session.flush()
    session.refresh(acct)
    return acct


def list_accounts(session: Session) -> list[Account]:
    return list(session.scalars(select(Account).order_by(Account.id)))


def user_read(user: User) -> UserRead:
    return UserRead(
        name=user.name, admin=user.is_admin, unix_user=user.unix_user or user.name,
        default_account=user.default_account.name if user.default_account else None,
        accounts=[MembershipRead(account=m.account.name,
                                 shares=shares_value(m.shares, m.shares_parent))
                  for m in user.memberships],
    )


def create_user(session: Session, body: UserCreate, *, now: datetime) -> User:
    if session.scalar(select(User).where(User.name == body.name)) is not None:
        raise Conflict(f"user {body.name!r} already exists; add an account with "
                       f"POST /v1/admin/users/{body.name}/accounts")
    acct = account_by_name(session, body.account)
    user = User(name=body.name, is_admin=body.admin, default_account_id=acct.id,
                unix_user=body.unix_user, created_at=now)
    session.add(user)
    session.flush()
    shares, is_parent = split_shares(body.shares)
    session.add(Membership(user_id=user.id, account_id=acct.id, shares=shares,
                           shares_parent=is_parent))
    session.flush()
    session.refresh(user)
    return user


def update_user(session: Session, user: User, body: UserUpdate) -> User:
    if "unix_user" in body.model_fields_set:
        user.unix_user = body.unix_user
    if body.admin is not None:
        user.is_admin = body.admin
    session.flush()
    return user


def add_membership(session: Session, user: User, body: MembershipCreate) -> User:
    acct = account_by_name(session, body.account)
    if any(m.account_id == acct.id for m in user.memberships):
        raise Conflict(f"user {user.name!r} is already in account {acct.name!r}")
    shares, is_parent = split_shares(body.shares)
    session.add(Membership(user_id=user.id, account_id=acct.id, shares=shares,
                           shares_parent=is_parent))
    session.flush()
    session.refresh(user)
    return user


def token_read(row: ApiToken) -> dict[str, object]:
    return TokenRead(
        id=row.id, prefix=row.prefix, role=row.role,
        user=row.user.name if row.user else None, node=row.node.name if row.node else None,
        description=row.description, created_at=row.created_at,
        last_used_at=row.last_used_at, revoked=row.revoked_at is not None,
    ).model_dump()


def create_token(session: Session, body: TokenCreate, *, now: datetime) -> tuple[ApiToken, str]:
    if body.role == "node":
        node = get_or_create_node(session, body.node or "")
        return issue_token(session, role="node", node=node, now=now,
                           description=body.description)
    user = user_by_name(session, body.user or "")
    if body.role == "admin" and not user.is_admin:
        raise Invalid(f"user {user.name!r} is not an admin; only admins get admin tokens",
                      field="role")
    row, secret = issue_token(session, role=body.role, user=user, now=now,
                              description=body.description)
    session.refresh(row)
    return row, secret


def revoke_token(session: Session, token_id: int, *, now: datetime) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = now
    return row


def import_usage(session: Session, records: list[UsageImport], *, now: datetime,
                 settings: Settings) -> UsageImportResult:
    """Import history; all records or none (the request's transaction)."""
    from scheduler.usage import import_usage as add

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
    return UsageImportResult(imported=len(records), decayed_billed_seconds=total)
