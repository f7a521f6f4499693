"""The one writer of jobs: it creates them, applies the rules' changes to them and writes
their events. No other module writes a job's state or a ``JobEvent``
(tests/test_architecture.py holds the rest of the code to that).

Batch-first: ``create`` takes many new jobs (``create_rows`` many with their ids reserved:
an array's elements as they start, which point to the one spec they share, stored by
``create_spec``; the array itself is one record, ``create_array``), ``apply`` many
changes. A single submit, a
single report or a single heartbeat is a batch of one, so the fast paths and the simple
paths are the same path. Like the services, nothing here commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine, Row
from sqlalchemy.orm import Session

from gpuq.scheduler.db.models import GpuAllocation, Job, JobArray, JobEvent, JobSpec
from gpuq.scheduler.lifecycle import rules
from gpuq.scheduler.lifecycle.rules import Change, InvalidTransition, Step, submitted
from gpuq.wire.states import TERMINAL, JobState

#: A job's columns that belong to one run: reset when it goes back to the queue.
_RUN_RESET: dict[str, Any] = {
    "node_id": None, "gpu_indices": [], "started_at": None, "charged_until": None,
    "ended_at": None, "exit_code": None, "borrowed_grant_id": None, "borrowed_gpus": 0,
    "preempt_requested_at": None, "preempt_reason": "",
}


# --- new jobs ------------------------------------------------------------------------------


def create(session: Session, rows: list[dict[str, Any]], *, now: datetime,
           reason: str = "submitted") -> list[Row[Any]]:
    """Insert new PENDING jobs (their columns: ``rows``, without ids) and their first
    events; returns the new jobs as the database holds them (every column), in the order
    given: one ``INSERT ... RETURNING`` for the jobs, one bulk insert for the events."""
    made = _insert_returning(session, [{**row, "state": JobState.PENDING.value}
                                       for row in rows])
    _first_events(session, [job.id for job in made], now=now, reason=reason)
    return made


def _insert_returning(session: Session, rows: list[dict[str, Any]]) -> list[Row[Any]]:
    """Insert the job rows (the same keys each) and return them as inserted, in order:
    one ``INSERT ... RETURNING``. More than ``_RETURNING_ROWS`` rows on PostgreSQL: ids
    from the sequence, the rows by ``COPY``, read back by id; a multi-row ``INSERT ...
    RETURNING`` is a new statement text for each batch size, and psycopg's parsing of it
    took longer than the batch's other work (32 submits: 0.29 -> 0.18 ms a job)."""
    table = Job.__table__
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        # Ids after every array's block (``reserve_ids``), not SQLite's own choice.
        rows = [{**row, "id": job_id} for job_id, row in zip(reserve_ids(session, len(rows)),
                                                           rows, strict=True)]
    if conn.dialect.name != "postgresql" or len(rows) <= _RETURNING_ROWS:
        return conn.execute(insert(table).returning(*table.c, sort_by_parameter_order=True),
                            rows).all()
    ids = reserve_ids(session, len(rows))
    bulk_insert(session, Job, [{**row, "id": job_id} for job_id, row in zip(ids, rows,
                                                                          strict=True)])
    by_id = {job.id: job for job in conn.execute(_JOBS_BY_ID, {"ids": ids})}
    return [by_id[job_id] for job_id in ids]


#: Up to this many rows, one ``INSERT ... RETURNING`` (a lone submit: 1.4 ms, against
#: 2.4 ms for the ``COPY`` and the read back).
_RETURNING_ROWS = 4
_JOBS_BY_ID = select(Job.__table__).where(Job.__table__.c.id == func.any(bindparam("ids")))


def create_rows(session: Session, rows: list[dict[str, Any]], *, now: datetime,
                reason: str) -> None:
    """Insert new PENDING jobs whose ids are reserved already (``reserve_ids``; each row
    has its ``id``) and their first events."""
    bulk_insert(session, Job, [{**row, "state": JobState.PENDING.value} for row in rows])
    _first_events(session, [row["id"] for row in rows], now=now, reason=reason)


def _first_events(session: Session, ids: list[int], *, now: datetime, reason: str) -> None:
    """The new jobs' first events (``rules.submitted``)."""
    first = submitted(0, reason).steps[0]
    bulk_insert(session, JobEvent, [_event(job_id, first, now) for job_id in ids])


def create_spec(session: Session, *, command: list[str] | None, script: str | None,
                environment: dict[str, str]) -> int:
    """Store a spec that many new jobs share (an array's elements: their rows then hold
    ``spec_id`` and only their own variables, ``db.models.effective_spec``); its id."""
    return session.connection().execute(
        insert(JobSpec).values(command=command, script=script, environment=environment)
        .returning(JobSpec.id)).scalar_one()


def reserve_ids(session: Session, n: int) -> list[int]:
    """``n`` new job ids, increasing (PostgreSQL: from the sequence, so a concurrent
    submit cannot take one; SQLite: after the largest, under its write lock)."""
    if session.get_bind().dialect.name == "postgresql":
        rows = session.connection().execute(
            text("SELECT nextval(pg_get_serial_sequence('jobs', 'id')) "
                 "FROM generate_series(1, :n)"), {"n": n})
        return sorted(r[0] for r in rows)
    top = _sqlite_top(session)
    return list(range(top + 1, top + n + 1))


#: SQLite: the largest job id taken, by a row or by an array's block (whose elements have
#: no rows yet). New rows are given ids after it: SQLite's own choice (the largest rowid
#: plus one) would fall inside a block.
_SQLITE_TOP = text("SELECT max(coalesce((SELECT max(id) FROM jobs), 0), "
                   "coalesce((SELECT max(id + count - 1) FROM job_arrays), 0))")


def _sqlite_top(session: Session) -> int:
    return int(session.scalar(_SQLITE_TOP) or 0)


def reserve_block(session: Session, n: int) -> int:
    """SQLite: the first of ``n`` consecutive new job ids (an array's elements: job
    ``first + p`` is the element at position ``p``), after the largest taken, under the
    write lock the session's transaction holds. PostgreSQL: ``reserve_block_apart``."""
    return _sqlite_top(session) + 1


def reserve_block_apart(engine: Engine, n: int, *, lock_timeout_ms: int = 5000) -> int:
    """PostgreSQL: the first of ``n`` consecutive new job ids that no other job can take,
    in a short transaction of its own, before the array's (whose block it becomes; if
    that one fails, the block is a gap in the ids, as a rolled-back ``nextval`` leaves).

    ``ALTER SEQUENCE`` first: it takes the lock that blocks every other ``nextval`` (and
    waits for the transactions that called one to end), so that nothing moves the
    sequence between reading where it is and setting it past the block. Taking it after a
    ``nextval`` of its own would be a lock upgrade, and two arrays doing so at once
    deadlock. Taken before the array's own transaction holds any lock, so a single submit
    that waits on that transaction cannot be what this waits on."""
    with engine.connect() as conn, conn.begin():
        conn.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
        # Migration 0012's function: ALTER SEQUENCE, where it is, setval past the block.
        return int(conn.execute(text("SELECT gpuq_reserve_job_ids(:n)"), {"n": n}
                                ).scalar_one())


def bulk_insert(session: Session, model: type[Job] | type[JobEvent],
                rows: list[dict[str, Any]]) -> None:
    """Insert many rows at once: PostgreSQL's COPY (one round trip for 10,000 jobs, where
    an executemany sends a statement per row); elsewhere an executemany. Column defaults
    are applied here, as the ORM would."""
    if session.get_bind().dialect.name != "postgresql" or len(rows) <= _RETURNING_ROWS:
        # A few rows: one INSERT (a COPY is two round trips and more work for a handful).
        if rows:
            session.connection().execute(insert(model.__table__), _with_defaults(model, rows))
        return
    from psycopg.types.json import Json

    table = model.__table__
    defaults: dict[str, Any] = {}
    for col in table.columns:
        d = col.default
        if d is not None and (getattr(d, "is_scalar", False)
                              or getattr(d, "is_callable", False)):
            defaults[col.key] = d.arg  # a callable one is called per row below
    # The columns the rows give or that have a default; the rest (a serial id, nullable
    # columns) are the database's.
    given = set(rows[0]) if rows else set()
    cols = [c for c in table.columns if c.key in given or c.key in defaults]
    json_cols = {c.key for c in cols if isinstance(c.type, JSON)}
    names = ", ".join(f'"{c.name}"' for c in cols)
    raw = session.connection().connection.driver_connection
    with raw.cursor() as cur, cur.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
        for row in rows:
            values = []
            for col in cols:
                key = col.key
                if key in row:
                    v = row[key]
                else:
                    v = defaults.get(key)
                    if callable(v):
                        v = v(None)
                if v is not None and key in json_cols:
                    v = Json(v)
                values.append(v)
            copy.write_row(values)


def _with_defaults(model: type[Job] | type[JobEvent], rows: list[dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    """The rows with the columns' Python defaults the ORM would apply (every row the same
    keys: an executemany's rows must agree)."""
    keys = set().union(*rows)
    extra: dict[str, Any] = {}
    for col in model.__table__.columns:
        d = col.default
        if col.key not in keys and d is not None and (
                getattr(d, "is_scalar", False) or getattr(d, "is_callable", False)):
            extra[col.key] = d.arg
    if not extra:
        return rows
    out = []
    for row in rows:
        filled = dict(row)
        for key, value in extra.items():
            filled[key] = value(None) if callable(value) else value
        out.append(filled)
    return out


# --- changes -------------------------------------------------------------------------------


def apply(session: Session, changes: Sequence[tuple[Job, Change]], *, now: datetime) -> None:
    """Apply each rule's change to its job (a ``Job`` of this session, read for the rule):
    its columns, the GPUs it takes (a dispatch) or frees (it stops being active), and its
    events, all of the batch's in one insert."""
    events: list[dict[str, Any]] = []
    freed: list[int] = []
    for job, change in changes:
        if change.old is not None and job.state != change.old.value:
            raise InvalidTransition(job.id, job.state, change.steps[0].new.value)
        events.extend(_event(job.id, step, now) for step in change.steps)
        if change.cancel_requested:
            job.cancel_requested_at = now
        if change.preempt_reason is not None:
            job.preempt_requested_at, job.preempt_reason = now, change.preempt_reason
        if change.moves and _move(session, job, change, now):
            freed.append(job.id)
    if freed:
        session.execute(delete(GpuAllocation).where(GpuAllocation.job_id.in_(freed)))
    if events:
        session.execute(insert(JobEvent), events)


def apply_one(session: Session, job: Job, change: Change | None, *, now: datetime) -> None:
    """``apply`` for a batch of one (nothing if ``change`` is None)."""
    if change is not None:
        apply(session, [(job, change)], now=now)


def transition(session: Session, job: Job, new: JobState, *, now: datetime, reason: str = "",
               exit_code: int | None = None) -> None:
    """Move ``job`` to ``new`` as the machine allows (``rules.move``), at once."""
    apply_one(session, job, rules.move(rules.Facts.of(job), new, reason, exit_code=exit_code),
              now=now)


def _move(session: Session, job: Job, change: Change, now: datetime) -> bool:
    """The job's columns after its state change; True if it frees GPUs."""
    first: Step = change.steps[0]
    job.state, job.reason = first.new.value, first.reason
    if first.new == JobState.DISPATCHED:
        job.dispatched_at = now
        if change.node_id is not None:  # a start (``rules.dispatched``): a new attempt
            job.node_id, job.gpu_indices = change.node_id, list(change.gpu_indices)
            job.attempt += 1
            session.add_all(GpuAllocation(job_id=job.id, node_id=change.node_id,
                                          gpu_index=i) for i in change.gpu_indices)
    elif first.new == JobState.RUNNING:
        job.started_at = now
    frees = change.ends_run
    if first.new in TERMINAL:
        job.ended_at = now
        if change.exit_code is not None:
            job.exit_code = change.exit_code
    if change.preempted:
        job.preemptions += 1
    if change.requeued:
        for key, value in _RUN_RESET.items():
            setattr(job, key, list(value) if isinstance(value, list) else value)
        job.gpu_energy_earlier_j = job.gpu_energy_j or 0.0
        job.state, job.reason = JobState.PENDING.value, change.steps[1].reason
    return frees


def _event(job_id: int, step: Step, now: datetime) -> dict[str, Any]:
    return {"job_id": job_id, "time": now, "old_state": step.old.value if step.old else None,
            "new_state": step.new.value, "reason": step.reason}


# --- arrays as one record (``JobArray``; domain/arrays.py) ----------------------------------


def create_array(session: Session, fields: dict[str, Any]) -> None:
    """Store a new array's record: its elements wait in it, PENDING, with no rows."""
    session.execute(insert(JobArray), [{**fields, "state": JobState.PENDING.value,
                                        "split": 0, "next_pos": 0}])


def split_array(session: Session, array: JobArray, rows: list[dict[str, Any]],
                next_pos: int, *, reason: str) -> None:
    """Give these waiting elements of ``array`` (a record locked for this transaction)
    their own rows (``rows``: their columns, ids from the array's block), PENDING since the
    array's submit, as if they had been made with it; ``next_pos``: below it every
    element has its row now. An array whose elements all have rows is SPLIT."""
    create_rows(session, rows, now=array.submitted_at, reason=reason)
    array.split += len(rows)
    array.next_pos = next_pos
    if array.split >= array.count:
        array.state = ARRAY_SPLIT


def cancel_array_waiting(session: Session, array: JobArray, *, by: str,
                         now: datetime) -> int:
    """Cancel the elements of ``array`` (locked) that have no rows: they end with the
    record (Slurm cancels a pending array's record at once). Returns how many."""
    if array.state != JobState.PENDING.value:
        return 0
    array.state, array.ended_at = JobState.CANCELLED.value, now
    array.reason = rules.cancelled_reason(by)
    return array.count - array.split


#: The state of an array record whose elements all have rows of their own.
ARRAY_SPLIT = "SPLIT"
