"""Job specs stored once: an array's command, script and common environment in one
``job_specs`` row that its elements point to (``jobs.spec_id``), not copied into each
element's row (issue 16: 100 elements of a 1 MB request stored 103 MB).

Jobs made before keep their spec in their own rows (``spec_id`` NULL), as single jobs
still do. A downgrade copies each shared spec back into its jobs' rows.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 17:00:00.000000
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

FK = 'fk_jobs_spec_id_job_specs'


def upgrade() -> None:
    op.create_table(
        'job_specs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('command', sa.JSON(), nullable=True),
        sa.Column('script', sa.Text(), nullable=True),
        sa.Column('environment', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_job_specs')),
    )
    column = sa.Column('spec_id', sa.Integer(), sa.ForeignKey('job_specs.id', name=FK),
                       nullable=True)
    if op.get_bind().dialect.name == 'sqlite':
        # ALTER TABLE ... ADD COLUMN ... REFERENCES: no copy of the jobs table.
        op.add_column('jobs', column, inline_references=True)
    else:
        op.add_column('jobs', sa.Column('spec_id', sa.Integer(), nullable=True))
        op.create_foreign_key(FK, 'jobs', 'job_specs', ['spec_id'], ['id'])


def downgrade() -> None:
    conn = op.get_bind()
    jobs = sa.table('jobs', sa.column('id', sa.Integer()), sa.column('spec_id', sa.Integer()),
                    sa.column('command', sa.JSON()), sa.column('script', sa.Text()),
                    sa.column('environment', sa.JSON()))
    specs = sa.table('job_specs', sa.column('id', sa.Integer()),
                     sa.column('command', sa.JSON()), sa.column('script', sa.Text()),
                     sa.column('environment', sa.JSON()))
    # Each shared spec back into its jobs' rows (their own variables win).
    for spec in conn.execute(sa.select(specs)).all():
        common = spec.environment or {}
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.environment)
                            .where(jobs.c.spec_id == spec.id)).all()
        for job_id, own in rows:
            if isinstance(own, str):
                own = json.loads(own)
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(
                command=spec.command, script=spec.script,
                environment={**common, **(own or {})}, spec_id=None))
    if conn.dialect.name == 'sqlite':
        with op.batch_alter_table('jobs', schema=None) as batch_op:
            batch_op.drop_column('spec_id')
    else:
        op.drop_constraint(FK, 'jobs', type_='foreignkey')
        op.drop_column('jobs', 'spec_id')
    op.drop_table('job_specs')
