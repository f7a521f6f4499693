"""API tokens (admin only): list, create, revoke. Never commits.

Every change writes one audit entry (``scheduler/services/audit.py``) in the caller's
transaction, with the object's read model before and after.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpuq.scheduler.db.models import ApiToken
from gpuq.scheduler.errors import Invalid, NotFound
from gpuq.scheduler.services.audit import Actor, record
from gpuq.scheduler.services.auth import issue_token
from gpuq.scheduler.services.nodes import get_or_create_node
from gpuq.scheduler.services.users import user_by_name
from gpuq.wire.admin import TokenCreate, TokenRead


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
