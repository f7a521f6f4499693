"""Engine and session factory; brings the schema up to date with Alembic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from gpuq.files import FILE_MODE, create_private, private_dir, tighten

MIGRATIONS = Path(__file__).parent / "migrations"
#: Seconds to wait for a new PostgreSQL connection (libpq's ``connect_timeout``).
CONNECT_TIMEOUT_S = 5


def make_engine(url: str, *, idle_in_transaction_timeout_s: float = 0.0,
                **kw: Any) -> Engine:
    """``idle_in_transaction_timeout_s`` (PostgreSQL; 0: none): PostgreSQL ends a session
    of this engine that waits that long on its client inside a transaction, so that a
    server that vanished mid-transaction (its host down or cut off, its VM paused: no
    connection closes) does not keep its locks, the scheduling loop's among them."""
    # JSON columns (a job's priority factors, claim, environment...) decoded by orjson,
    # several times faster than the standard library's json (the same values).
    kw.setdefault("json_deserializer", orjson.loads)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:" and not path.startswith("file:"):
            _private_sqlite(Path(path))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               **kw)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, say when a transaction begins, so that
            # BEGIN IMMEDIATE below really takes the write lock.
            conn.isolation_level = None
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            # One writer at a time, taken at BEGIN: no "database is locked" halfway
            # through a transaction that read first.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # As many pooled connections as the API has request threads (AnyIO's 40) would be
    # too many for PostgreSQL's 100 with replicas; 20 kept open plus 20 on demand means
    # a burst of submits reuses connections instead of opening (a backend process each)
    # and closing one per request, which was the largest cost under 32 clients.
    kw.setdefault("pool_size", 20)
    kw.setdefault("max_overflow", 20)
    # A database host that does not answer is an error within seconds (an API request's
    # 503, a failed loop cycle), not a request that hangs for the system's TCP timeout.
    if url.startswith("postgresql") and "connect_timeout" not in url:
        kw.setdefault("connect_args", {}).setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    if url.startswith("postgresql"):
        # Plan each run of a prepared statement for its values (psycopg prepares one after
        # five runs): PostgreSQL's generic plan for "state = $1" or "state IN ($1, $2)"
        # assumes an average state, so at 100,000 pending jobs the few running ones were
        # looked for by reading the whole table (and a partial index on the pending ones
        # cannot serve "$1" at all). Planning these statements costs well under 1 ms.
        _session_option(url, kw, "plan_cache_mode", "force_custom_plan")
    if idle_in_transaction_timeout_s > 0:
        _session_option(url, kw, "idle_in_transaction_session_timeout",
                        f"{round(idle_in_transaction_timeout_s * 1000)}ms")
    return create_engine(url, pool_pre_ping=True, **kw)


def _session_option(url: str, kw: dict[str, Any], name: str, value: str) -> None:
    """Set a PostgreSQL setting for every session of the engine, in libpq's ``options``
    (sent when the connection starts: no statement, nothing a rollback undoes), after any
    ``options`` the URL gives (``make_url(url).query``) or the caller does."""
    connect_args = kw.setdefault("connect_args", {})
    given = connect_args.get("options") or make_url(url).query.get("options") or ""
    if isinstance(given, tuple):
        given = " ".join(given)
    connect_args["options"] = f"{given} -c {name}={value}".strip()


def _private_sqlite(path: Path) -> None:
    """The database file created 0600 before SQLite opens it (its -wal and -shm files
    take its mode), in a directory created 0700; an existing one of ours made 0600."""
    private_dir(path.parent, fix=False)
    create_private(path)
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        tighten(p, FILE_MODE)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (the server does this on start)."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
