"""Empty databases (no schema at all), for tests of the migrations themselves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_ADMIN_URL, service_missing


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    name = f"gpuq_empty_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001
        admin.dispose()
        service_missing(f"PostgreSQL at {PG_ADMIN_URL}", e)
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def empty_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'empty.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request: pytest.FixtureRequest) -> str:
    """A database with no tables, once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"empty_{'pg' if request.param == 'postgres' else 'sqlite'}_url")
