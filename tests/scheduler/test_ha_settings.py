"""High availability's settings: a multi-host PostgreSQL URL (a standby behind the primary,
``target_session_attrs=read-write``) in libpq's form or SQLAlchemy's, and Redis through
Sentinel for the broker; and the loop's retry when another replica's loop held the lock."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from gpuq.broker import make_celery
from gpuq.config import Settings, sqlalchemy_database_url
from gpuq.scheduler.runtime import loop as loop_module
from gpuq.scheduler.runtime.applier import CycleResult
from gpuq.scheduler.runtime.loop import SchedulerLoop


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in list(os.environ):
        if k.startswith("GPUQ_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("GPUQ_CONFIG", str(tmp_path / "absent.toml"))


# --- PostgreSQL: several hosts -------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    ("postgresql+psycopg://gpuq:pw@db1:5432,db2:5433/gpuq?target_session_attrs=read-write",
     "postgresql+psycopg://gpuq:pw@/gpuq?host=db1:5432&host=db2:5433"
     "&target_session_attrs=read-write"),
    ("postgresql+psycopg://gpuq@db1,db2/gpuq", "postgresql+psycopg://gpuq@/gpuq?host=db1&host=db2"),
    ("postgresql+psycopg://db1:5432,db2:5432/gpuq",
     "postgresql+psycopg:///gpuq?host=db1:5432&host=db2:5432"),
    # Not libpq's multi-host form: as given.
    ("postgresql+psycopg://gpuq@db1:5432/gpuq", "postgresql+psycopg://gpuq@db1:5432/gpuq"),
    ("postgresql+psycopg://gpuq@/gpuq?host=db1:5432&host=db2:5432",
     "postgresql+psycopg://gpuq@/gpuq?host=db1:5432&host=db2:5432"),
    ("sqlite:////var/lib/gpuq/a,b.db", "sqlite:////var/lib/gpuq/a,b.db"),
])
def test_libpq_multi_host_urls_become_sqlalchemy_ones(given: str, expected: str) -> None:
    assert sqlalchemy_database_url(given) == expected


def test_the_engine_gets_every_host_and_the_session_attrs(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://gpuq@db1:5432,"
                 "db2:5433/gpuq?target_session_attrs=read-write&connect_timeout=3")
    engine = create_engine(s.effective_database_url)
    _, params = engine.dialect.create_connect_args(make_url(s.effective_database_url))
    assert {k: params[k] for k in ("host", "port", "dbname", "user", "target_session_attrs",
                                   "connect_timeout")} == {
        "host": "db1,db2", "port": "5432,5433", "dbname": "gpuq", "user": "gpuq",
        "target_session_attrs": "read-write", "connect_timeout": "3"}


# --- Redis through Sentinel ----------------------------------------------------------------


def test_a_sentinel_broker_names_its_master(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, broker_url="sentinel://127.0.0.1:26379;"
                 "sentinel://127.0.0.1:26380", broker_master_name="gpuq-redis",
                 broker_sentinel_password="s3cret")
    app = make_celery(s)
    assert app.conf.broker_transport_options == {
        "visibility_timeout": 3600, "master_name": "gpuq-redis",
        "sentinel_kwargs": {"password": "s3cret"}}
    with app.connection_for_write() as conn:
        assert conn.transport_cls == "sentinel"
        # Every Sentinel is tried in turn (Celery's failover list).
        assert [u.split("//")[1] for u in conn.alt] == ["127.0.0.1:26379", "127.0.0.1:26380"]


def test_the_default_master_name_is_redis_own(tmp_path: Path) -> None:
    app = make_celery(Settings(data_dir=tmp_path, broker_url="sentinel://127.0.0.1:26379"))
    assert app.conf.broker_transport_options == {"visibility_timeout": 3600,
                                                 "master_name": "mymaster"}


# --- the loop, beside another replica's --------------------------------------------------


def test_a_cycle_that_found_the_lock_taken_is_tried_again_soon(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Another replica's cycle may have read the queue before the event that woke this
    loop: this loop tries again after LOCK_RETRY_S, not at its timer (30 s here)."""
    seen: list[tuple[float, bool]] = []

    def fake_cycle(ctx: Any, housekeeping: bool = True, **_: Any) -> CycleResult:
        seen.append((time.monotonic(), housekeeping))
        return CycleResult(ran=len(seen) > 2)  # the lock is taken twice, then free

    monkeypatch.setattr(loop_module, "cycle", fake_cycle)
    ctx = SimpleNamespace(settings=Settings(schedule_interval_s=30, schedule_coalesce_s=0.0,
                                            data_dir=tmp_path),
                          clock=lambda: datetime.now(UTC), wake=None)
    loop = SchedulerLoop(ctx)  # type: ignore[arg-type]
    loop.start()
    try:
        time.sleep(0.2)
        woken = time.monotonic()
        ctx.wake()
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(3 * SchedulerLoop.LOCK_RETRY_S)  # no cycle more: it ran
    finally:
        loop.stop()
    assert len(seen) == 3, seen
    assert seen[2][0] - woken < 1.0, seen


@pytest.mark.postgres
def test_a_cycle_without_housekeeping_says_it_did_not_run_while_the_lock_is_taken(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ran`` False (what makes the loop try again soon) also when the lock is taken only
    for the scheduling transaction (a cycle an event woke skips the housekeeping)."""
    from sqlalchemy import text

    from gpuq.scheduler.db.session import make_engine
    from gpuq.scheduler.runtime.loop import LOCK_KEY, cycle
    from tests.scheduler.test_loop import add_job, add_node, make_loop

    with make_loop(pg_url, tmp_path, monkeypatch) as lp:
        with lp.ctx.transaction() as s:
            add_node(s, "n1", gpus=1)
            job_id = add_job(s).id
        other = make_engine(pg_url)
        try:
            with other.connect() as conn, conn.begin():
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
                assert cycle(lp.ctx, housekeeping=False).ran is False
                assert lp.job(job_id).state == "PENDING" and lp.dispatcher.calls == []
        finally:
            other.dispose()
        result = cycle(lp.ctx, housekeeping=False)
        assert result.ran and result.started == [(job_id, "n1")]


@pytest.mark.postgres
def test_each_run_of_a_prepared_statement_is_planned_for_its_values(pg_url: str) -> None:
    """psycopg prepares a statement after five runs; PostgreSQL's generic plan for it
    assumes average values (``state = $1``: an average state), so gpuq's sessions ask for a
    plan per run, alongside the options the URL or the caller give."""
    from sqlalchemy import text

    from gpuq.scheduler.db.session import make_engine

    engine = make_engine(pg_url, idle_in_transaction_timeout_s=7)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW plan_cache_mode")).scalar() == "force_custom_plan"
            assert conn.execute(
                text("SHOW idle_in_transaction_session_timeout")).scalar() == "7s"
    finally:
        engine.dispose()
