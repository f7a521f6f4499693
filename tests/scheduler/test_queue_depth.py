"""Quick cycles (Slurm's ``default_queue_depth``): a cycle an event woke reads the first
``depth`` pending jobs in priority order, the new ones and those holding a claim; the full
pass reads them all and keeps the order (``priority_key``) up to date."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpuq.scheduler.db.models import Job
from gpuq.scheduler.domain.snapshot import pending_rows
from gpuq.scheduler.lifecycle.writes import transition
from gpuq.scheduler.policy import Decisions
from gpuq.scheduler.runtime import applier as loop_module
from gpuq.scheduler.runtime.applier import ESTIMATE_STEP_S, _record_priority
from gpuq.scheduler.runtime.loop import cycle
from gpuq.wire.states import JobState
from tests.scheduler.rows import T0, add_job, add_node
from tests.scheduler.test_cycle_writes import Cluster, make_cluster
from tests.statements import sent

CLAIM = {"node": "n1", "gpus": [0], "victims": [], "grant": None}


@pytest.fixture
def cluster(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with make_cluster(db_url, tmp_path, monkeypatch) as c:
        yield c


def test_the_queue_s_head_the_new_jobs_and_the_claims(cluster: Cluster) -> None:
    with cluster.ctx.transaction() as s:
        ranked = [add_job(s, priority_key=key).id for key in (-5.0, -9.0, -1.0, -9.0)]
        new = [add_job(s).id for _ in range(3)]
        deep = add_job(s, priority_key=100.0, claim=CLAIM).id  # last in order, but claimed
        add_job(s, priority_key=200.0, claim=None)  # a claim given up (JSON null)
        ended = add_job(s, priority_key=-50.0)  # not pending
        ended.state = JobState.COMPLETED.value
    with cluster.ctx.sessions() as s:
        rows, whole = pending_rows(s, 2)
        assert [r.id for r in rows] == [*new[:2], ranked[1], ranked[3], deep]
        assert whole is False
        rows, whole = pending_rows(s, 0)
        assert len(rows) == 9 and whole is True
        rows, whole = pending_rows(s, 7)  # fewer than 7 of each: the whole queue
        assert sorted(r.id for r in rows) == sorted([*ranked, *new, deep, deep + 1])
        assert whole is True


def test_a_quick_cycle_starts_the_head_and_writes_no_priorities(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[loop_module._PendingWrites] = []
    real = loop_module._write_pending
    monkeypatch.setattr(loop_module, "_write_pending",
                        lambda session, w: (seen.append(w), real(session, w)))
    with cluster.ctx.transaction() as s:
        add_node(s, "n1", gpus=1)
        jobs = [add_job(s, submitted_at=T0 - timedelta(minutes=i)).id for i in range(6)]
    cluster.clock.advance(10)
    r = cycle(cluster.ctx)  # the full pass: the oldest job starts, every other one is ranked
    assert r.whole and [j for j, _ in r.started] == [jobs[5]]
    waiting = jobs[:5]
    keys = {j: cluster.job(j).priority_key for j in waiting}
    assert all(k is not None for k in keys.values())
    assert {j: cluster.job(j).priority_factors["total"] for j in waiting} == {
        j: -k for j, k in keys.items()}

    with cluster.ctx.transaction() as s:  # the running job ends; a newer job arrives
        done = s.get(Job, jobs[5])
        assert done is not None
        transition(s, done, JobState.RUNNING, now=cluster.clock())
        transition(s, done, JobState.COMPLETED, now=cluster.clock(), reason="exit code 0")
        late = add_job(s, submitted_at=cluster.clock()).id
    seen.clear()
    r = cycle(cluster.ctx, housekeeping=False, depth=2)
    # The head of the queue (the oldest waiting job ranks first), not the whole queue.
    assert not r.whole and [j for j, _ in r.started] == [jobs[4]]
    (w,) = seen
    assert w.columns == {}  # no priorities, no estimates from a partial view
    considered = {i for ids in w.reasons.values() for i in ids}
    assert considered <= {jobs[3], late}  # reasons for what it looked at only
    assert cluster.job(late).priority_key is None  # ranked by the next full pass

    r = cycle(cluster.ctx)
    assert r.whole and cluster.job(late).priority_key is not None


@pytest.mark.parametrize("moved_s, written", [(0, False), (30, False), (-59, False),
                                              (60, True), (-600, True)])
def test_an_estimate_is_rewritten_only_when_it_moved_by_a_step(moved_s: int,
                                                               written: bool) -> None:
    """Each job's end moves every waiting job's estimate a little; writing them all each
    pass was most of a full pass's writes at 10,000 pending."""
    stored = T0 + timedelta(hours=1)
    row = SimpleNamespace(priority_factors=None, priority_key=None, estimated_start=stored)
    est = (stored + timedelta(seconds=moved_s)).timestamp()
    changes = _record_priority(row, Decisions(estimated_starts={1: est}), 1)
    assert ("estimated_start" in changes) is written
    assert moved_s < ESTIMATE_STEP_S or changes["estimated_start"].timestamp() == est
    # None <-> a time is always written.
    assert "estimated_start" in _record_priority(row, Decisions(), 1)
    fresh = SimpleNamespace(priority_factors=None, priority_key=None, estimated_start=None)
    assert "estimated_start" in _record_priority(fresh, Decisions(estimated_starts={1: est}), 1)


def test_the_quick_reads_name_the_partial_indexes_conditions(cluster: Cluster) -> None:
    """The conditions the partial indexes are built on are written into the SQL, not sent
    as parameters: a prepared statement's generic plan for ``state = $1`` cannot use an
    index built for ``state = 'PENDING'`` (it read the whole queue, 11 ms a cycle at
    10,000 pending jobs)."""
    with cluster.ctx.transaction() as s:
        for key in range(3):
            add_job(s, priority_key=float(key))
        add_job(s)
    with sent(cluster.ctx.sessions.kw["bind"]) as seen, cluster.ctx.sessions() as s:
        pending_rows(s, 1)
    reads = [q for q in seen if "FROM jobs" in q]
    assert len(reads) == 3
    assert all("jobs.state = 'PENDING'" in q for q in reads)
    assert "CAST(jobs.claim AS TEXT) != 'null'" in reads[2]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_new_jobs_are_found_through_the_index_whatever_the_statistics_say(
        cluster: Cluster) -> None:
    """Statistics taken while the queue was being submitted (every job unranked) must not
    make the read of the unranked jobs walk the whole table once they are all ranked: it
    goes through ``ix_jobs_pending_priority`` (at 100,000 pending the walk took 80 ms a
    cycle)."""
    import re

    from sqlalchemy import insert, text

    from tests.scheduler.rows import owner

    with cluster.ctx.transaction() as s:
        who = owner(s)
        s.execute(insert(Job), [dict(
            name="job", user_id=who.id, account_id=who.default_account_id, command=["true"],
            workdir="/tmp", environment={}, gpus=1, cpus=1, memory_mib=0, time_limit_s=60,
            priority=0, state="PENDING", reason="Submitted", gpu_indices=[],
            submitted_at=T0) for _ in range(20_000)])
    with cluster.ctx.transaction() as s:
        s.execute(text("ANALYZE jobs"))  # every key NULL
        s.execute(text("UPDATE jobs SET priority_key = -id"))  # then all ranked
    with sent(cluster.ctx.sessions.kw["bind"]) as seen, cluster.ctx.sessions() as s:
        rows, _ = pending_rows(s, 100)
    assert len(rows) == 100  # the ranked head; none new
    new = next(q for q in seen if "priority_key IS NULL" in q)
    with cluster.ctx.sessions() as s:
        plan = "\n".join(r[0] for r in s.execute(
            text("EXPLAIN " + re.sub(r"%\(param_\d+\)s::INTEGER", "100", new))))
    assert "ix_jobs_pending_priority" in plan, plan
