"""The plan applier: a cycle's decisions written in the cycle's transaction.

Every start is re-checked against the rows as they are now (Nomad's plan applier): the
job still pending, the node still up and not drained, its GPUs still free (and not two
starts on one GPU): a start that no longer holds is dropped, and the next cycle starts
from a fresh snapshot. The starts, the preemptions asked for and the borrowing notes go
through the lifecycle's rules and its writer; the pending jobs' reasons, priorities and
claims are written set-based, only where a value changes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.orm import Session

from gpuq.scheduler.db.models import GpuAllocation, Grant, Job, JobArray, Node
from gpuq.scheduler.domain.arrays import Element, split
from gpuq.scheduler.domain.snapshot import PENDING_COLUMNS
from gpuq.scheduler.lifecycle import rules, writes
from gpuq.scheduler.policy import Decisions, Snapshot
from gpuq.wire.states import JobState, NodeState


@dataclass
class CycleResult:
    ran: bool = True
    started: list[tuple[int, str]] = field(default_factory=list)  # (job id, node)
    dropped: list[int] = field(default_factory=list)  # starts that no longer held
    nodes_down: list[str] = field(default_factory=list)
    kills: list[tuple[int, str]] = field(default_factory=list)  # (job id, node)
    #: Jobs asked to stop for another's sake this cycle: (victim id, node, for job id).
    preempted: list[tuple[int, str, int]] = field(default_factory=list)
    #: When a grant starts or ends next (the loop wakes then).
    next_grant_change: datetime | None = None
    #: Jobs pending or running when the cycle read them (for ``PlannerStats``).
    active: int = field(default=0, compare=False)
    #: Whether the cycle looked at the whole queue (a quick cycle may not: ``depth``).
    whole: bool = field(default=True, compare=False)


def apply_decisions(session: Session, decisions: Decisions, now: datetime, result: CycleResult,
                    snapshot: Snapshot | None = None, rows: dict[int, Any] | None = None,
                    *, whole: bool = True) -> None:
    """Re-check every start against the current rows before committing it (Nomad's
    plan applier): the job is still pending, the node still up, its GPUs still free.
    ``rows``: the job rows (``snapshot.PENDING_COLUMNS``) the snapshot was read from: what the
    pending jobs hold, compared with what this cycle would write (read here without them).

    Only the jobs the cycle acts on (started, preempted, borrowing changes) are ORM objects;
    the pending jobs' reasons, priorities and claims are written by set-based UPDATEs, and
    only where a value changes (see ``_write_pending``).

    ``whole``: the snapshot held the whole queue. A quick cycle's (the first jobs in
    priority order only) writes no priorities or estimated starts: ranked against part
    of the queue they would be wrong, and the next full pass writes them."""
    rows = rows if rows is not None else {}
    # Arrays' waiting elements (no rows yet) that start or get a claim get rows first.
    elements = {i: r for i, r in rows.items() if isinstance(r, Element)}
    split_ids = _split_elements(session, decisions, elements)
    starts: list[tuple[Job, rules.Change]] = []
    claimed: set[tuple[int, int]] = set()
    for start in decisions.starts:
        if start.job_id in elements and start.job_id not in split_ids:
            result.dropped.append(start.job_id)  # its array was cancelled meanwhile
            continue
        # Read the rows as they are now, not as the snapshot loaded them, and lock the job:
        # on PostgreSQL an API transaction that is cancelling it commits first, and the
        # start is dropped instead of overwriting the cancel (FOR NO KEY UPDATE is the lock
        # the UPDATE below takes anyway; SQLite has one writer and ignores it).
        job = session.get(Job, start.job_id, populate_existing=True,
                          with_for_update={"key_share": True})
        node = session.scalar(select(Node).where(Node.name == start.node)
                              .execution_options(populate_existing=True))
        if job is None or node is None or job.state != JobState.PENDING.value:
            result.dropped.append(start.job_id)
            continue
        taken = set(session.scalars(select(GpuAllocation.gpu_index).where(
            GpuAllocation.node_id == node.id,
            GpuAllocation.gpu_index.in_(start.gpu_indices))))
        occupied = {g.index for g in node.gpus
                    if g.index in start.gpu_indices and (g.foreign_processes or not g.healthy)}
        if node.state != NodeState.UP.value or node.drain or taken or occupied:
            result.dropped.append(start.job_id)
            continue
        # Within the batch too: no two starts on one GPU, even if a policy asked for it.
        mine = {(node.id, i) for i in start.gpu_indices}
        if mine & claimed:
            result.dropped.append(start.job_id)
            continue
        claimed |= mine
        starts.append((job, rules.dispatched(rules.Facts.of(job), node_id=node.id,
                                             node=node.name,
                                             gpu_indices=tuple(start.gpu_indices))))
        result.started.append((job.id, node.name))
    writes.apply(session, starts, now=now)
    started = {j for j, _ in result.started}
    _apply_preemptions(session, decisions, now, result)
    pending = _PendingWrites()
    if snapshot is not None:  # what the jobs held before: claims and borrowing labels
        _apply_claims(session, snapshot, decisions, started, rows, pending)
        _apply_borrowing(session, snapshot, decisions, started, now)
    # (Arrays' elements that still have no rows hear theirs on their arrays' records.)
    waiting = [i for i in decisions.pending_reasons
               if i not in started and (i not in elements or i in split_ids)]
    held = _pending_rows(session, waiting, rows)
    for job_id in waiting:
        job = held.get(job_id)
        if job is None or job.state != JobState.PENDING.value:
            continue
        reason = decisions.pending_reasons[job_id]
        if job.reason != reason:
            pending.reasons[reason].append(job_id)
        changes = _record_priority(job, decisions, job_id) if whole else None
        if changes:
            pending.columns[job_id].update(changes)
    # The ORM's changes (starts, preemptions, borrowing labels) go now, not at whatever
    # query autoflushes next; then the pending rows' changes, set-based.
    session.flush()
    _write_pending(session, pending)
    _write_arrays(session, decisions, elements, split_ids, whole=whole)


def _split_elements(session: Session, decisions: Decisions,
                    elements: dict[int, Element]) -> set[int]:
    """Rows for the arrays' waiting elements the cycle starts or gives a claim
    (``domain.arrays.split``, which re-checks that each still waits); the ids made."""
    wanted: dict[int, list[int]] = defaultdict(list)
    for job_id in (*(s.job_id for s in decisions.starts), *decisions.claims):
        element = elements.get(job_id)
        if element is not None:
            wanted[element.array_id].append(element.pos)
    made: set[int] = set()
    for array_id, positions in sorted(wanted.items()):
        made.update(split(session, array_id, positions))
    return made


def _write_arrays(session: Session, decisions: Decisions, elements: dict[int, Element],
                  split_ids: set[int], *, whole: bool) -> None:
    """What each array's waiting elements hear: the reason, the factors and the estimated
    start of its first element that still has no row, on the array's record (while its
    elements still wait)."""
    first: dict[int, Element] = {}
    for element in elements.values():
        if element.id in split_ids or element.id not in decisions.pending_reasons:
            continue
        best = first.get(element.array_id)
        if best is None or element.pos < best.pos:
            first[element.array_id] = element
    arrays = JobArray.__table__
    for array_id, element in sorted(first.items()):
        changes = _record_priority(element, decisions, element.id) if whole else {}
        reason = decisions.pending_reasons[element.id]
        if reason != element.reason:
            changes["reason"] = reason
        if changes:
            session.execute(update(arrays).where(
                arrays.c.id == array_id, arrays.c.state == JobState.PENDING.value)
                .values(changes))


@dataclass
class _PendingWrites:
    """What the cycle changes of jobs that stay pending: job ids by their new reason, and
    other columns (priority_factors, estimated_start, claim) by job id."""

    reasons: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    columns: dict[int, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))


#: Bound parameters per IN list (SQLite's limit is 32,766; PostgreSQL's 65,535).
_CHUNK = 5000


def _pending_rows(session: Session, ids: list[int], rows: dict[int, Any]) -> dict[int, Any]:
    """The rows (``PENDING_COLUMNS``) of these jobs: from ``rows``, the others read now."""
    missing = [i for i in ids if i not in rows]
    if not missing:
        return rows
    held = dict(rows)
    for i in range(0, len(missing), _CHUNK):
        held.update((r.id, r) for r in session.execute(
            select(*PENDING_COLUMNS).where(Job.id.in_(missing[i:i + _CHUNK]))))
    return held


def _write_pending(session: Session, todo: _PendingWrites) -> None:
    """Write the pending jobs' changes: one UPDATE per new reason (``id IN (...)``) for
    rows with nothing else to write, one executemany per set of changed columns. Each
    row is written only while it is still PENDING, as it is when the UPDATE reaches it,
    not as the snapshot read it: a job cancelled since keeps its reason. On PostgreSQL an
    API transaction holding the row (``lock_job``, a cancel not yet committed) makes the
    UPDATE wait for its commit, and the condition is then checked on the committed row
    (READ COMMITTED)."""
    jobs = Job.__table__
    pending = jobs.c.state == JobState.PENDING.value
    # A row written anyway below takes its new reason along: one new row version, not two
    # (a new job gets its first reason and its factors in the same cycle).
    per_row = {job_id: dict(values) for job_id, values in todo.columns.items()}
    for reason, ids in todo.reasons.items():
        for job_id in ids:
            if job_id in per_row:
                per_row[job_id]["reason"] = reason
        ids = sorted(i for i in ids if i not in per_row)
        for i in range(0, len(ids), _CHUNK):
            session.execute(update(jobs).where(jobs.c.id.in_(ids[i:i + _CHUNK]), pending)
                            .values(reason=reason))
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for job_id in sorted(per_row):
        values = per_row[job_id]
        keys = tuple(sorted(values))
        groups[keys].append({"b_id": job_id, **{f"b_{k}": values[k] for k in keys}})
    postgres = session.get_bind().dialect.name == "postgresql"
    for keys, params in groups.items():
        if postgres:
            for i in range(0, len(params), _CHUNK):
                _update_from_arrays(session, keys, params[i:i + _CHUNK])
            continue
        stmt = (update(jobs).where(jobs.c.id == bindparam("b_id"), pending)
                .values({k: bindparam(f"b_{k}", type_=jobs.c[k].type) for k in keys}))
        session.execute(stmt, params)


#: How each column the cycle writes travels in ``_update_from_arrays``: the array's type,
#: and the cast from its element to the column (JSON goes as its text).
_ARRAYS = {"priority_factors": ("text[]", "::json"), "claim": ("text[]", "::json"),
           "estimated_start": ("timestamptz[]", ""), "reason": ("text[]", ""),
           "priority_key": ("float8[]", "")}


def _update_from_arrays(session: Session, keys: tuple[str, ...],
                        params: list[dict[str, Any]]) -> None:
    """PostgreSQL: the rows' changes of these columns in one statement (``UPDATE ... FROM
    unnest(arrays)``), not one statement per row: the first cycle after a 10,000-job array
    writes every one of them, and 10,000 statements took seconds of the database's time
    under load (bench/load.py's warm-up). The same rows and values as the executemany."""
    columns = ", ".join(f"{k} = v.{k}{_ARRAYS[k][1]}" for k in keys)
    arrays = ", ".join(f"CAST(:{k} AS {_ARRAYS[k][0]})" for k in keys)
    values: dict[str, Any] = {"ids": [p["b_id"] for p in params]}
    for k in keys:
        column = [p[f"b_{k}"] for p in params]
        values[k] = [json.dumps(v) for v in column] if _ARRAYS[k][1] else column
    # The names are _ARRAYS' keys (any other raises above); the values are bound.
    sql = (f"UPDATE jobs SET {columns} FROM unnest(CAST(:ids AS bigint[]), {arrays}) "  # noqa: S608
           f"AS v(id, {', '.join(keys)}) WHERE jobs.id = v.id AND jobs.state = :pending")
    session.execute(text(sql), {**values, "pending": JobState.PENDING.value})


def _apply_preemptions(session: Session, decisions: Decisions, now: datetime,
                       result: CycleResult) -> None:
    """Ask each victim's node to stop it (SIGTERM, the grace period, SIGKILL); its end
    report makes it PREEMPTED and requeues it. A victim that ended or was cancelled
    meanwhile is left alone."""
    asks: list[tuple[Job, rules.Change]] = []
    for p in decisions.preemptions:
        job = session.get(Job, p.victim_id, populate_existing=True,
                          with_for_update={"key_share": True})
        if job is None or job.node is None:
            continue
        ask = rules.request_preemption(rules.Facts.of(job), p.reason)
        if ask is None:
            continue
        asks.append((job, ask))
        if p.grant is not None:
            session.execute(update(Grant).where(Grant.id == p.grant)
                            .values(preemptions=Grant.preemptions + 1))
        result.preempted.append((job.id, job.node.name, p.for_job))
    writes.apply(session, asks, now=now)


def _apply_claims(session: Session, snapshot: Snapshot, decisions: Decisions,
                  started: set[int], rows: dict[int, Any] | None = None,
                  pending: _PendingWrites | None = None) -> None:
    """Keep each pending job's claim as the policy says (new, kept or dropped). A job
    started this cycle drops it with its start (its ORM object); the others' changes go
    to ``pending`` (written only while they are pending), or, without it, to their ORM
    objects."""
    had = {j.id for j in snapshot.pending if j.claim is not None}
    ids = sorted(had | set(decisions.claims))
    held = (_pending_rows(session, [i for i in ids if i not in started], rows or {})
            if pending is not None else {})
    for job_id in ids:
        c = decisions.claims.get(job_id)
        want = None if c is None or job_id in started else {
            "node": c.node, "gpus": list(c.gpu_indices), "victims": list(c.victims),
            "grant": c.grant}
        if job_id in started or pending is None:
            job = session.get(Job, job_id)
            if job is not None and job.claim != want:
                job.claim = want
            continue
        row = held.get(job_id)
        if row is not None and row.claim != want:
            pending.columns[job_id]["claim"] = want


def _apply_borrowing(session: Session, snapshot: Snapshot, decisions: Decisions,
                     started: set[int], now: datetime) -> None:
    """Label the jobs that run on idle GPUs of another account's reservation (they may be
    preempted); an event when a job starts or stops borrowing."""
    before = {j.id: (j.borrowed_grant, j.borrowed_gpus) for j in snapshot.running}
    active = set(before) | started
    notes: list[tuple[Job, rules.Change]] = []
    for job_id in active:
        b = decisions.borrowing.get(job_id)
        want = (b.grant, b.gpus) if b is not None else (None, 0)
        if before.get(job_id, (None, 0)) == want:
            continue
        job = session.get(Job, job_id)
        if job is None or job.state not in (JobState.DISPATCHED.value, JobState.RUNNING.value):
            continue
        old_grant = job.borrowed_grant_id
        job.borrowed_grant_id, job.borrowed_gpus = want
        if want[0] != old_grant:
            why = (f"borrowing {want[1]} idle GPU{'s' if want[1] != 1 else ''} reserved by "
                   f"grant {want[0]}: may be preempted when its account needs them"
                   if want[0] is not None else f"no longer borrowing GPUs of grant {old_grant}")
            notes.append((job, rules.note(rules.Facts.of(job), why)))
    writes.apply(session, notes, now=now)


#: How far a job's stored estimated start may be from the cycle's before it is written: each
#: job's end moves every waiting job's estimate by a little, and at 10,000 pending
#: rewriting them all was most of a full pass's writes (a freed GPU's next job waited
#: behind them). Slurm's own estimates move in steps of its backfill pass (30 s).
ESTIMATE_STEP_S = 60.0
#: The age factor a job's stored factors may lag behind by (about ten minutes of age with
#: the default week-long ``priority_max_age_s``).
AGE_STEP = 0.001


def _record_priority(job: Any, decisions: Decisions, job_id: int) -> dict[str, Any]:
    """Keep what `gpuq show` and `gpuq why` read: the factors and the estimated start.
    Rounded, so an unchanged value writes nothing. The age factor (and with it the
    total) grows every cycle; a change of nothing else is written once the age moved by
    ``AGE_STEP``: jobs submitted together (an array) cross a rounding step together, and
    10,000 of them rewritten every minute made a burst of writes that held up the API
    (bench/load.py); now it is every ten minutes at the default weights.

    ``job``: what the job holds (a row or a Job); returns the columns to write."""
    changes: dict[str, Any] = {}
    p = decisions.priorities.get(job_id)
    if p is not None:
        factors = {"total": round(p.total, 3), "fairshare": round(p.fairshare, 4),
                   "age": round(p.age, 4), "jobsize": round(p.jobsize, 4),
                   "qos": round(p.qos, 4), "nice": p.nice, "site": p.site}
        old = job.priority_factors
        if (old != factors and not _drift_only(old, factors)) or job.priority_key is None:
            changes["priority_factors"] = factors
            # The order quick cycles read the queue in (``snapshot.pending_rows``).
            changes["priority_key"] = -factors["total"]
    est = decisions.estimated_starts.get(job_id)
    when = datetime.fromtimestamp(round(est), UTC) if est is not None else None
    old_when = job.estimated_start
    if old_when != when and (old_when is None or when is None or abs(
            (when - old_when).total_seconds()) >= ESTIMATE_STEP_S):
        changes["estimated_start"] = when
    return changes


def _drift_only(old: dict | None, new: dict) -> bool:  # type: ignore[type-arg]
    """Only the age and the total differ, the age by less than ``AGE_STEP``."""
    if not old or old.keys() != new.keys():
        return False
    try:
        return ({**old, "total": new["total"], "age": new["age"]} == new
                and abs(float(old["age"]) - new["age"]) < AGE_STEP)
    except (TypeError, ValueError):
        return False
