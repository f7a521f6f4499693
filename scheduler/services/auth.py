"""Bearer tokens: random secrets, stored only as SHA-256 hashes, each with one role.

A token may expire (``expires_at``); a disabled user's tokens stop working.

Roles (least privilege): ``user`` submits and manages its own jobs; ``admin`` manages
accounts, users, tokens and every job; ``node`` does worker calls for its own node only.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from gpuq.scheduler.db.models import ApiToken, Membership, Node, User

TOKEN_PREFIX = "gpuq_"


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's role and its owner."""

    role: str
    token_id: int
    user: User | None = None
    node: Node | None = None
    #: When the token stops working (None: never).
    expires_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def issue_token(
    session: Session,
    *,
    role: str,
    now: datetime,
    user: User | None = None,
    node: Node | None = None,
    description: str = "",
) -> tuple[ApiToken, str]:
    """Create a token; returns the row and the secret (shown once, never stored)."""
    secret = new_secret()
    row = ApiToken(
        token_hash=hash_token(secret),
        prefix=secret[: len(TOKEN_PREFIX) + 6],
        role=role,
        user_id=user.id if user else None,
        node_id=node.id if node else None,
        description=description,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row, secret


#: What the routes read of a caller, loaded with the token in one round of queries
#: instead of one lazy load each.
_CALLER = (
    joinedload(ApiToken.user).joinedload(User.default_account),
    joinedload(ApiToken.user).selectinload(User.memberships).joinedload(Membership.account),
    joinedload(ApiToken.node),
)


class AuthError(Exception):
    """A token that does not (or no longer) work; the message says why, for the caller."""


def check_token(session: Session, secret: str, *, now: datetime) -> Principal:
    """The caller behind ``secret``, or ``AuthError``: unknown or revoked, expired, or its
    user disabled."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret))
                         .options(*_CALLER))
    if row is None or row.revoked_at is not None:
        raise AuthError("invalid or revoked token")
    if row.expires_at is not None and row.expires_at <= now:
        raise AuthError(expired_message(row.expires_at))
    if row.user is not None and row.user.disabled_at is not None:
        raise AuthError(f"user {row.user.name} is disabled; ask an admin")
    # Touch last_used at most once a minute: no write on every request.
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        row.last_used_at = now
    return Principal(role=row.role, token_id=row.id, user=row.user, node=row.node,
                     expires_at=row.expires_at)


def expired_message(expires_at: datetime) -> str:
    return (f"token expired on {expires_at.strftime('%Y-%m-%dT%H:%M:%SZ')}; "
            f"ask an admin for a new one")


def authenticate(session: Session, secret: str, *, now: datetime) -> Principal | None:
    """The caller behind ``secret``, or None if the token does not work (see
    ``check_token`` for why)."""
    try:
        return check_token(session, secret, now=now)
    except AuthError:
        return None
