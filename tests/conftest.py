"""Shared fixtures: real databases (a fresh one per test, SQLite and PostgreSQL), builders."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gpuq.scheduler.db.session import make_engine, upgrade

PG_ADMIN_URL = os.environ.get("GPUQ_TEST_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GPUQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: CI sets this: a missing PostgreSQL or Redis is then a failure, not a skip.
REQUIRE_SERVICES = os.environ.get("GPUQ_REQUIRE_SERVICES", "") not in ("", "0")


def service_missing(what: str, error: object) -> None:
    msg = f"{what} is not answering ({error}); start it (see README, 'Running the tests')"
    if REQUIRE_SERVICES:
        pytest.fail(msg)
    pytest.skip(msg)


def _worker_id(request: pytest.FixtureRequest) -> str:
    return getattr(request.config, "workerinput", {}).get("workerid", "main")


def _pg_admin():  # noqa: ANN202
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


def _with_db(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def pg_template(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated PostgreSQL database that each test copies (CREATE DATABASE ... TEMPLATE)."""
    name = f"gpuq_tpl_{_worker_id(request)}_{os.getpid()}"
    admin = _pg_admin()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001
        service_missing(f"PostgreSQL at {PG_ADMIN_URL}", e)
    engine = make_engine(_with_db(PG_ADMIN_URL, name))
    upgrade(engine)
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "gpuq.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    name = f"gpuq_t_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield _with_db(PG_ADMIN_URL, name)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "gpuq.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{'pg' if request.param == 'postgres' else 'sqlite'}_url")


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except Exception as e:  # noqa: BLE001
        service_missing(f"Redis at {REDIS_URL}", e)
    return REDIS_URL
