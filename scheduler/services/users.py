"""Users and memberships (admin only). Never commits.

Every change writes one audit entry (``scheduler/services/audit.py``) in the caller's
transaction, with the object's read model before and after.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpuq.scheduler.db.models import Job, JobArray, Membership, User
from gpuq.scheduler.errors import Conflict, Invalid, NotFound
from gpuq.scheduler.services.accounts import (
    LIVE_JOB_STATES,
    live_account,
    shares_value,
    split_shares,
)
from gpuq.scheduler.services.audit import Actor, record
from gpuq.wire.admin import (
    MembershipCreate,
    MembershipRead,
    MembershipUpdate,
    UserCreate,
    UserRead,
    UserUpdate,
)
from gpuq.wire.states import JobState


def user_by_name(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user named {name!r}")
    return user


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
    # Arrays whose elements wait without rows: the array's id stands for them.
    jobs += list(session.scalars(select(JobArray.id).where(
        JobArray.user_id == user.id, JobArray.account_id == m.account_id,
        JobArray.state == JobState.PENDING.value).order_by(JobArray.id)))
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
