"""nodes.enforcement: the job limits a node's worker enforces (issue 16 item 5)

What the worker said at registration (``NodeRegister.enforcement``): the limits it puts
in each job's cgroups (memory, cpu, devices) and how, or ``none`` and why; ``gpuq nodes``
shows it. NULL for a node whose worker has not said (an older worker).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('enforcement', sa.String(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('enforcement')
