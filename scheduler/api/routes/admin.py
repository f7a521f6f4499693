"""/v1/admin: accounts, users, tokens (admin tokens only)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from scheduler.api.deps import Admin, Ctx
from scheduler.api.schemas import (
    AccountCreate,
    AccountRead,
    MembershipCreate,
    TokenCreate,
    TokenCreated,
    TokenRead,
    UserCreate,
    UserRead,
)
from scheduler.db.models import ApiToken, User
from scheduler.services import admin as svc

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/accounts", status_code=201, response_model=AccountRead)
def create_account(body: AccountCreate, ctx: Ctx, _: Admin) -> AccountRead:
    """Create an account under ``parent`` (default: root) with raw ``shares``."""
    with ctx.transaction() as session:
        return svc.account_read(svc.create_account(session, body, now=ctx.clock()))


@router.get("/accounts", response_model=list[AccountRead])
def list_accounts(ctx: Ctx, _: Admin) -> list[AccountRead]:
    with ctx.transaction() as session:
        return [svc.account_read(a) for a in svc.list_accounts(session)]


@router.post("/users", status_code=201, response_model=UserRead)
def create_user(body: UserCreate, ctx: Ctx, _: Admin) -> UserRead:
    """Create a user in ``account`` (its default account) with ``shares`` there."""
    with ctx.transaction() as session:
        return svc.user_read(svc.create_user(session, body, now=ctx.clock()))


@router.post("/users/{name}/accounts", status_code=201, response_model=UserRead)
def add_account(name: str, body: MembershipCreate, ctx: Ctx, _: Admin) -> UserRead:
    """Add the user to another account (a user may belong to several)."""
    with ctx.transaction() as session:
        user = svc.user_by_name(session, name)
        return svc.user_read(svc.add_membership(session, user, body))


@router.get("/users", response_model=list[UserRead])
def list_users(ctx: Ctx, _: Admin) -> list[UserRead]:
    with ctx.transaction() as session:
        return [svc.user_read(u) for u in session.scalars(select(User).order_by(User.id))]


@router.post("/tokens", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, ctx: Ctx, _: Admin) -> TokenCreated:
    """Create a token; the secret is in this answer only."""
    with ctx.transaction() as session:
        row, secret = svc.create_token(session, body, now=ctx.clock())
        return TokenCreated(token=secret, **svc.token_read(row))


@router.get("/tokens", response_model=list[TokenRead])
def list_tokens(ctx: Ctx, _: Admin) -> list[TokenRead]:
    with ctx.transaction() as session:
        rows = session.scalars(select(ApiToken).order_by(ApiToken.id))
        return [TokenRead(**svc.token_read(r)) for r in rows]


@router.delete("/tokens/{token_id}", response_model=TokenRead)
def revoke_token(token_id: int, ctx: Ctx, _: Admin) -> TokenRead:
    with ctx.transaction() as session:
        return TokenRead(**svc.token_read(svc.revoke_token(session, token_id, now=ctx.clock())))
