"""First start: the root account, an admin user and its token (written 0600)."""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.files import private_dir
from gpuq.scheduler.clock import Clock, system_clock
from gpuq.scheduler.db.models import ApiToken, User
from gpuq.scheduler.runtime.context import Context, Dispatcher, open_context
from gpuq.scheduler.services.accounts import ensure_root
from gpuq.scheduler.services.auth import issue_token

log = logging.getLogger(__name__)

ADMIN_USER = "admin"


def write_secret(path: Path, secret: str) -> None:
    """Write a secret readable only by its owner (created 0600, never world-readable)."""
    private_dir(path.parent, fix=False)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def bootstrap(session: Session, *, now: datetime, admin_token_file: Path) -> str | None:
    """Make sure the tree has a root and an admin exists. On the very first start, create
    the admin token and write it to ``admin_token_file``; returns it (else ``None``)."""
    root = ensure_root(session, now=now)
    admin = session.scalar(select(User).where(User.name == ADMIN_USER))
    if admin is None:
        admin = User(name=ADMIN_USER, is_admin=True, default_account_id=None, created_at=now)
        session.add(admin)
        session.flush()
    _ = root
    has_admin_token = session.scalar(
        select(ApiToken.id).where(ApiToken.role == "admin", ApiToken.revoked_at.is_(None)))
    if has_admin_token is not None:
        return None
    _, secret = issue_token(session, role="admin", user=admin, now=now,
                            description="created on first start")
    write_secret(admin_token_file, secret)
    log.warning("created the first admin token in %s", admin_token_file)
    return secret


def build_context(settings: Settings, *, clock: Clock = system_clock,
                  dispatcher: Dispatcher | None = None) -> Context:
    """Open the database (bringing its schema up to date) and make the shared context."""
    from gpuq.scheduler.db.session import upgrade

    ctx = open_context(settings, clock=clock, dispatcher=dispatcher)
    upgrade(ctx.sessions.kw["bind"])
    with ctx.transaction() as session:
        bootstrap(session, now=clock(), admin_token_file=settings.effective_admin_token_file)
    return ctx
