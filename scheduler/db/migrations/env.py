"""Alembic environment: uses the connection handed in by ``scheduler.db.session.upgrade``
or, from the ``alembic`` command line, the URL in the configuration."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from gpuq.scheduler.db.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, target_metadata=target_metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
