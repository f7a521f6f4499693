"""job_arrays: a job array as one record; element rows only once started or touched

A 10,000-element array wrote 10,000 job rows and 10,000 events at submit (0.5-0.9 s),
and every scheduling pass read, ranked and rewrote all of them. Now the array is one
``job_arrays`` row (what the elements share, their indices as runs, the block of job ids
reserved for them) and an element gets its ``jobs`` row (``jobs.array_id``) when it is
started or touched (cancelled alone, given a claim); the scheduling loop sees the next
few waiting elements of each array, not all of them. Arrays submitted before keep their
element rows and work as before. PostgreSQL: the same NOTIFY as the jobs table's
(migration 0007) after a change a queue listing shows.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 23:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

PENDING_ARRAYS = sa.text("state = 'PENDING'")
#: The job_arrays columns a brief listing shows.
LISTED = ("name", "state", "reason", "split", "next_pos", "qos", "gpus", "gpu_model",
          "priority", "time_limit_s", "ended_at")


#: The first of ``n`` consecutive job ids no other job can take (an array's block), in one
#: statement (scheduler/lifecycle/writes.py ``reserve_block_apart``). ALTER SEQUENCE first:
#: it takes the lock that blocks every other nextval until this transaction ends, so that
#: nothing moves the sequence between reading it and setting it past the block.
RESERVE = """
CREATE OR REPLACE FUNCTION gpuq_reserve_job_ids(n bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    seq regclass := pg_get_serial_sequence('jobs', 'id')::regclass;
    last bigint;
    called boolean;
    first bigint;
BEGIN
    EXECUTE format('ALTER SEQUENCE %s INCREMENT BY 1', seq);
    EXECUTE format('SELECT last_value, is_called FROM %s', seq) INTO last, called;
    first := CASE WHEN called THEN last + 1 ELSE last END;
    PERFORM setval(seq, first + n - 1, true);
    RETURN first;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        'job_arrays',
        sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('account_id', sa.Integer(), nullable=False),
        sa.Column('idempotency_key', sa.String(length=128), nullable=True),
        sa.Column('ranges', sa.JSON(), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('split', sa.Integer(), nullable=False),
        sa.Column('next_pos', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.String(length=256), nullable=False),
        sa.Column('spec_id', sa.Integer(), nullable=False),
        sa.Column('workdir', sa.String(length=1024), nullable=False),
        sa.Column('gpus', sa.Integer(), nullable=False),
        sa.Column('gpu_model', sa.String(length=64), nullable=True),
        sa.Column('cpus', sa.Integer(), nullable=False),
        sa.Column('memory_mib', sa.BigInteger(), nullable=False),
        sa.Column('time_limit_s', sa.Integer(), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('requeue', sa.Boolean(), nullable=False),
        sa.Column('nice', sa.Integer(), nullable=False),
        sa.Column('qos', sa.String(length=16), nullable=False),
        sa.Column('priority_factors', sa.JSON(), nullable=True),
        sa.Column('priority_key', sa.Float(), nullable=True),
        sa.Column('estimated_start', sa.DateTime(timezone=True), nullable=True),
        sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['account_id'], ['accounts.id'],
                                name=op.f('fk_job_arrays_account_id_accounts')),
        sa.ForeignKeyConstraint(['spec_id'], ['job_specs.id'],
                                name=op.f('fk_job_arrays_spec_id_job_specs')),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'],
                                name=op.f('fk_job_arrays_user_id_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_job_arrays')),
        sa.UniqueConstraint('user_id', 'idempotency_key',
                            name=op.f('uq_job_arrays_user_id')),
    )
    op.create_index('ix_job_arrays_pending', 'job_arrays', ['priority_key', 'id'],
                    unique=False, postgresql_where=PENDING_ARRAYS,
                    sqlite_where=PENDING_ARRAYS)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('array_id', sa.BigInteger(), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_array_id'), ['array_id'], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RESERVE)
        # gpuq_jobs_changed() is migration 0007's.
        op.execute(f"CREATE TRIGGER gpuq_jobs_changed AFTER INSERT OR DELETE OR UPDATE OF "
                   f"{', '.join(LISTED)} ON job_arrays FOR EACH STATEMENT "
                   f"EXECUTE FUNCTION gpuq_jobs_changed()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS gpuq_jobs_changed ON job_arrays")
        op.execute("DROP FUNCTION IF EXISTS gpuq_reserve_job_ids(bigint)")
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_array_id'))
        batch_op.drop_column('array_id')
    op.drop_index('ix_job_arrays_pending', table_name='job_arrays')
    op.drop_table('job_arrays')
