"""jobs.priority_key: minus the pending job's priority, as the last full pass computed it

A scheduling cycle that an event woke (a job's end, a submit) looks at the first
``schedule_queue_depth`` pending jobs only (Slurm's ``default_queue_depth``), in the
order of this column (ascending: the highest priority first; ties by id), through a
partial index of the pending jobs, after the jobs not ranked yet (NULL: new since the
last full pass), oldest first. The timer's full pass looks at all of them and keeps the
column up to date with ``priority_factors``. The pending jobs that hold a claim (GPUs set
aside for them) are read too, through a partial index of their own. Before, every cycle read, ranked and rewrote the whole queue:
at 10,000 pending a freed GPU waited 1.5 s for its next job.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 20:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

PENDING_JOBS = sa.text("state = 'PENDING'")
#: A claim given up is JSON null, not SQL NULL (the column is JSON).
CLAIMED_JOBS = sa.text("state = 'PENDING' AND claim IS NOT NULL AND CAST(claim AS TEXT) <> 'null'")


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority_key', sa.Float(), nullable=True))
        batch_op.create_index('ix_jobs_pending_priority', ['priority_key', 'id'],
                              unique=False, postgresql_where=PENDING_JOBS,
                              sqlite_where=PENDING_JOBS)
        batch_op.create_index('ix_jobs_pending_claim', ['id'], unique=False,
                              postgresql_where=CLAIMED_JOBS, sqlite_where=CLAIMED_JOBS)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_pending_claim')
        batch_op.drop_index('ix_jobs_pending_priority')
        batch_op.drop_column('priority_key')
