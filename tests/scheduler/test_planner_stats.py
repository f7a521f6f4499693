"""``loop.PlannerStats``: the loop analyzes ``jobs`` when the number of active jobs moved
by at least ``MIN_CHANGE`` and by at least ``RATIO`` of the larger count since the last
time (either way: a queue that fills or drains), so that PostgreSQL's planner sees the
queue's real size; on SQLite it runs nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from gpuq.scheduler.db.models import Job
from gpuq.scheduler.runtime.context import Context
from gpuq.scheduler.runtime.loop import PlannerStats, SchedulerLoop, cycle
from tests.scheduler.rows import add_job, add_node
from tests.scheduler.test_loop import Loop, make_loop

# --- when an ANALYZE is due ----------------------------------------------------------------


@pytest.mark.parametrize(("analyzed_at", "active", "due"), [
    (0, 0, False),
    (0, 999, False),            # too few, however large a ratio
    (0, 1_000, True),
    (1_000, 1_999, False),
    (1_000, 2_000, True),       # +1,000 of 2,000: both hold
    (10_000, 11_000, False),    # +1,000, but not half of 11,000
    (10_000, 19_999, False),
    (10_000, 20_000, True),     # half of the larger count, exactly
    (10_000, 5_001, False),     # shrinking: half of 10,000 it must be
    (10_000, 5_000, True),
    (1_500, 600, False),        # half, but under 1,000
    (1_500, 400, True),
    (1_000, 0, True),           # the queue drained
])
def test_due(analyzed_at: int, active: int, due: bool) -> None:
    stats = PlannerStats()
    stats.analyzed_at = analyzed_at
    assert stats.due(active) is due


def test_the_rules_are_the_documented_ones() -> None:
    assert (PlannerStats.MIN_CHANGE, PlannerStats.RATIO) == (1000, 0.5)
    stats = PlannerStats()
    assert (stats.analyzed_at, stats.runs) == (0, 0)


# --- observe on the databases --------------------------------------------------------------


@pytest.fixture
def loop(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loop]:
    with make_loop(db_url, tmp_path, monkeypatch) as lp:
        yield lp


def analyze_count(ctx: Context) -> int:
    """Manual ANALYZEs of jobs so far (read in a new transaction: a fresh stats view)."""
    with ctx.sessions() as s:
        return s.execute(text("SELECT analyze_count FROM pg_stat_user_tables "
                              "WHERE relname = 'jobs'")).scalar_one()


def analyzed(ctx: Context, count: int, timeout: float = 5.0) -> int:
    """The analyze count once it reaches ``count`` (statistics may show a moment late)."""
    deadline = time.monotonic() + timeout
    while (now := analyze_count(ctx)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def fill(ctx: Context, n: int) -> None:
    """``n`` pending jobs, in one statement (as a job array or a burst of submits)."""
    with ctx.transaction() as s:
        add_job(s)
        cols = ", ".join(c.name for c in Job.__table__.c if c.name != "id")
        s.execute(text(f"INSERT INTO jobs ({cols}) SELECT {cols} FROM jobs "
                       f"CROSS JOIN generate_series(1, {n - 1})"))


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_observe_analyzes_jobs_on_postgresql_when_due(loop: Loop) -> None:
    """ANALYZE really runs (the table's analyze count goes up and the planner's row
    count becomes the real one), only when due, and is remembered."""
    ctx = loop.ctx
    fill(ctx, 1_200)
    stats = PlannerStats()
    before = analyze_count(ctx)
    assert stats.observe(ctx, 999) is False
    assert analyze_count(ctx) == before and stats.runs == 0

    assert stats.observe(ctx, 1_200) is True
    assert (stats.analyzed_at, stats.runs) == (1_200, 1)
    assert analyzed(ctx, before + 1) == before + 1
    with ctx.sessions() as s:
        assert s.execute(text("SELECT reltuples FROM pg_class WHERE relname = 'jobs'")
                         ).scalar_one() == 1_200

    assert stats.observe(ctx, 1_900) is False  # +700 only
    assert stats.observe(ctx, 0) is True  # drained
    assert (stats.analyzed_at, stats.runs) == (0, 2)
    assert analyzed(ctx, before + 2) == before + 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_observe_runs_nothing_on_sqlite(loop: Loop) -> None:
    """Due or not, SQLite is not analyzed (it would leave a sqlite_stat1 table)."""
    ctx = loop.ctx
    stats = PlannerStats()
    assert stats.observe(ctx, 5_000) is False
    assert stats.observe(ctx, 0) is False
    assert stats.runs == 0
    with ctx.sessions() as s:
        assert s.execute(text("SELECT count(*) FROM sqlite_master "
                              "WHERE name LIKE 'sqlite_stat%'")).scalar_one() == 0


def test_a_cycle_counts_the_active_jobs(loop: Loop) -> None:
    """What the loop hands ``observe``: the jobs pending or running when the cycle read
    them (not the ones that ended)."""
    with loop.ctx.transaction() as s:
        add_node(s, "n1", gpus=2)
        jobs = [add_job(s, gpus=1) for _ in range(3)]
        done = add_job(s, gpus=1)
        done.state = "COMPLETED"
    result = cycle(loop.ctx)
    assert result.ran and len(result.started) == 2
    assert result.active == 3
    with loop.ctx.transaction() as s:
        s.get(Job, jobs[0].id).state = "COMPLETED"
    assert cycle(loop.ctx).active == 2  # one running, one pending


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_loop_analyzes_after_the_queue_jumps(loop: Loop) -> None:
    """The loop's thread feeds each cycle's count to its ``PlannerStats``: 1,000 jobs
    submitted at once are analyzed after the next cycle."""
    ctx = loop.ctx
    fill(ctx, 1_000)
    before = analyze_count(ctx)
    runner = SchedulerLoop(ctx)
    runner.start()
    try:
        ctx.wake()
        deadline = time.monotonic() + 10
        while runner.stats.runs == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        runner.stop()
    assert (runner.stats.runs, runner.stats.analyzed_at) == (1, 1_000)
    assert analyzed(ctx, before + 1) == before + 1
