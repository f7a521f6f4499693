"""NOTIFY gpuq_auth after any change to what a caller check reads (PostgreSQL only)

Each API process keeps the callers it authenticated (``scheduler/api/callers.py``). With
a listener on ``gpuq_auth`` it empties that cache as soon as a token, user, membership,
account or node name changes in any process, and so can trust an entry for a minute
instead of ``auth_cache_s``. Statement triggers, on the columns a check reads only: the
usage the loop charges to memberships every 30 s and a token's ``last_used_at`` (touched
by the check itself) notify nothing.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 20:40:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION gpuq_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gpuq_auth', '');
    RETURN NULL;
END
$$
"""

#: table -> the events that change a caller check (``scheduler.auth.check_token``).
EVENTS = {
    "api_tokens": "DELETE OR UPDATE OF token_hash, role, user_id, node_id, expires_at, "
                  "revoked_at",
    "users": "INSERT OR DELETE OR UPDATE",
    "memberships": "INSERT OR DELETE OR UPDATE OF user_id, account_id, shares, "
                   "shares_parent",
    "accounts": "INSERT OR DELETE OR UPDATE",
    "nodes": "DELETE OR UPDATE OF name",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    for table, events in EVENTS.items():
        op.execute(f"CREATE TRIGGER gpuq_auth_changed AFTER {events} ON {table} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION gpuq_auth_changed()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in EVENTS:
        op.execute(f"DROP TRIGGER IF EXISTS gpuq_auth_changed ON {table}")
    op.execute("DROP FUNCTION IF EXISTS gpuq_auth_changed()")
