"""jobs: NOTIFY gpuq_jobs after any change a queue listing shows (PostgreSQL only)

Each API process keeps the brief queue listing it last built (``GET /v1/jobs?view=brief``,
what ``gpuq q`` reads) until PostgreSQL says the jobs changed: a statement trigger on
``jobs`` (and on the names a listing shows: users, accounts, nodes) sends
``NOTIFY gpuq_jobs``. A notification is delivered only once its transaction has
committed, and PostgreSQL folds a transaction's notifications into one. Statement
triggers: a 10,000-row COPY notifies once, not 10,000 times; an UPDATE of columns no
listing shows (the loop's priority factors and estimated starts, the accounting
heartbeats write) does not fire at all.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 19:40:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

#: The jobs columns a brief listing shows (scheduler/services/jobs.py ``_BRIEF``).
LISTED = ("name", "user_id", "account_id", "state", "reason", "qos", "gpus", "gpu_model",
          "node_id", "gpu_indices", "priority", "time_limit_s", "cancel_requested_at",
          "preempt_requested_at", "borrowed_grant_id", "idle_flagged_at", "submitted_at",
          "started_at", "ended_at")

FUNCTION = """
CREATE OR REPLACE FUNCTION gpuq_jobs_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gpuq_jobs', '');
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    op.execute(f"CREATE TRIGGER gpuq_jobs_changed AFTER INSERT OR DELETE OR UPDATE OF "
               f"{', '.join(LISTED)} ON jobs FOR EACH STATEMENT "
               f"EXECUTE FUNCTION gpuq_jobs_changed()")
    op.execute("CREATE TRIGGER gpuq_jobs_truncated AFTER TRUNCATE ON jobs "
               "FOR EACH STATEMENT EXECUTE FUNCTION gpuq_jobs_changed()")
    for table in ("users", "accounts", "nodes"):
        op.execute(f"CREATE TRIGGER gpuq_jobs_changed AFTER UPDATE OF name ON {table} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION gpuq_jobs_changed()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in ("jobs", "users", "accounts", "nodes"):
        op.execute(f"DROP TRIGGER IF EXISTS gpuq_jobs_changed ON {table}")
    op.execute("DROP TRIGGER IF EXISTS gpuq_jobs_truncated ON jobs")
    op.execute("DROP FUNCTION IF EXISTS gpuq_jobs_changed()")
