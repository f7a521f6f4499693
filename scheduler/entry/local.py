"""``gpuq up`` provisioning: the local user, its account and tokens, the local node's token.

Tokens are kept in files under ``data_dir`` (mode 0600) and reused while they still work,
so running ``gpuq up`` again keeps the CLI configuration valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.files import private_dir
from gpuq.scheduler.db.models import Account, Membership, User
from gpuq.scheduler.db.session import make_engine, make_sessionmaker, upgrade
from gpuq.scheduler.entry.bootstrap import ADMIN_USER, bootstrap, write_secret
from gpuq.scheduler.services.accounts import ensure_root
from gpuq.scheduler.services.auth import authenticate, issue_token
from gpuq.scheduler.services.nodes import get_or_create_node

LOCAL_ACCOUNT = "local"


@dataclass(frozen=True)
class LocalCredentials:
    user_token: str
    admin_token: str
    node_token_file: Path


def _valid(session: Session, path: Path, role: str, now: datetime) -> str | None:
    if not path.is_file():
        return None
    secret = path.read_text().strip()
    p = authenticate(session, secret, now=now)
    return secret if p is not None and p.role == role else None


def _local_user(session: Session, name: str, now: datetime) -> User:
    root = ensure_root(session, now=now)
    acct = session.scalar(select(Account).where(Account.name == LOCAL_ACCOUNT))
    if acct is None:
        acct = Account(name=LOCAL_ACCOUNT, parent_id=root.id, shares=1,
                       description="created by gpuq up", created_at=now)
        session.add(acct)
        session.flush()
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        user = User(name=name, is_admin=name == ADMIN_USER, default_account_id=acct.id,
                    created_at=now)
        session.add(user)
        session.flush()
    if not any(m.account_id == acct.id for m in user.memberships):
        session.add(Membership(user_id=user.id, account_id=acct.id, shares=1))
        if user.default_account_id is None:
            user.default_account_id = acct.id
    return user


def provision(settings: Settings, *, unix_user: str, now: datetime) -> LocalCredentials:
    """Bring the database up to date and make sure the local user and node can log in."""
    private_dir(settings.data_dir)
    engine = make_engine(settings.effective_database_url)
    try:
        upgrade(engine)
        sessions = make_sessionmaker(engine)
        admin_file = settings.effective_admin_token_file
        user_file = settings.data_dir / "local-user.token"
        node_file = settings.data_dir / f"node-{settings.node_name}.token"
        with sessions() as session, session.begin():
            bootstrap(session, now=now, admin_token_file=admin_file)
            admin_token = _valid(session, admin_file, "admin", now)
            if admin_token is None:
                admin = session.scalar(select(User).where(User.name == ADMIN_USER))
                _, admin_token = issue_token(session, role="admin", user=admin, now=now,
                                             description="gpuq up")
                write_secret(admin_file, admin_token)
            user_token = _valid(session, user_file, "user", now)
            if user_token is None:
                user = _local_user(session, unix_user, now)
                _, user_token = issue_token(session, role="user", user=user, now=now,
                                            description="gpuq up")
                write_secret(user_file, user_token)
            if _valid(session, node_file, "node", now) is None:
                node = get_or_create_node(session, settings.node_name)
                _, secret = issue_token(session, role="node", node=node, now=now,
                                        description="gpuq up")
                write_secret(node_file, secret)
    finally:
        engine.dispose()
    return LocalCredentials(user_token=user_token, admin_token=admin_token,
                            node_token_file=node_file)
