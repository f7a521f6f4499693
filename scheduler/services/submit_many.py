"""Many single-job submits in one transaction (the group commit of
``scheduler/runtime/group_commit.py``).

Each submit is checked as ``jobs.submit`` checks it (a failing one gets its own 4xx and
takes nothing from the others); the accepted ones are inserted together (their ids from
one query, the rows and their first events in one bulk insert each) and answered with
the ``JobRead`` that ``jobs.submit`` would give. Submits whose idempotency key is already
taken (a retry) are left to ``jobs.submit`` one by one: they are rare, and it answers
them with the job they made before. Like every service this never commits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.scheduler.db.models import Job, JobEvent
from gpuq.scheduler.errors import ServiceError
from gpuq.scheduler.services.arrays import bulk_insert, reserve_ids
from gpuq.scheduler.services.auth import Principal
from gpuq.scheduler.services.jobs import (
    Accepted,
    check_runnable,
    check_submit,
    job_fields,
    read_fields,
)
from gpuq.wire.jobs import JobCreate, JobRead
from gpuq.wire.states import JobState


@dataclass(frozen=True)
class Created:
    """A job made by the batch: its answer, serialised."""

    body: bytes


#: One answer per submit: made, refused (its 4xx), or None: submit it alone (a retry).
Outcome = Created | ServiceError | None


def submit_many(session: Session, items: Sequence[tuple[Principal, JobCreate]], *,
                now: datetime, settings: Settings,
                runnable: Runnable | None = None) -> list[Outcome]:
    """One outcome per item, in order (see ``Outcome``); ``runnable`` carries what the
    batches before knew about job shapes the nodes can run."""
    outcomes: list[Outcome] = [None] * len(items)
    taken = _taken_keys(session, items)
    seen: set[tuple[int, str]] = set()
    runnable = (runnable or Runnable()).new_batch()
    accepted: list[tuple[int, dict[str, Any], Accepted]] = []
    for i, (principal, spec) in enumerate(items):
        user = principal.user
        key = (user.id, spec.idempotency_key) if user is not None and \
            spec.idempotency_key is not None else None
        if key is not None and (key in taken or key in seen):
            continue  # a retry (or a twin in this batch): jobs.submit answers it
        try:
            ok = check_submit(session, principal, spec, settings=settings, runnable=runnable)
        except ServiceError as e:
            outcomes[i] = e
            continue
        if key is not None:
            seen.add(key)
        accepted.append((i, job_fields(spec, ok, now=now), ok))
    if not accepted:
        return outcomes
    ids = reserve_ids(session, len(accepted))
    rows = []
    for job_id, (_, fields, _) in zip(ids, accepted, strict=True):
        fields["id"] = job_id
        rows.append(fields)
    bulk_insert(session, Job, rows)
    bulk_insert(session, JobEvent, [
        {"job_id": r["id"], "time": now, "old_state": None,
         "new_state": JobState.PENDING.value, "reason": "submitted"} for r in rows])
    defaults = _column_defaults()  # read only below: shared by the batch's answers
    for i, fields, ok in accepted:
        job = SimpleNamespace(**{**defaults, **fields})
        job.user = SimpleNamespace(name=ok.user.name)
        job.account = SimpleNamespace(name=ok.account.name)
        job.node = None
        outcomes[i] = Created(JobRead(**read_fields(job, True)).model_dump_json().encode())
    return outcomes


def _taken_keys(session: Session, items: Sequence[tuple[Principal, JobCreate]]
                ) -> set[tuple[int, str]]:
    """The (user id, idempotency key) pairs of the batch that jobs already have."""
    keys = {(p.user.id, s.idempotency_key) for p, s in items
            if p.user is not None and s.idempotency_key is not None}
    if not keys:
        return set()
    # Core, not the ORM session: no ORM objects come back (and no autoflush).
    rows = session.connection().execute(select(Job.user_id, Job.idempotency_key).where(
        tuple_(Job.user_id, Job.idempotency_key).in_(list(keys))))
    return {(u, k) for u, k in rows}


class Runnable:
    """``check_runnable`` with memory: a job shape that some node can run is not asked
    again for ``ttl_s`` seconds (nodes come and go rarely; a job accepted in that window
    for a node that just left waits, as it would had the node left a moment later). A
    refusal is remembered only within one batch: a node that registers is seen at once."""

    def __init__(self, ttl_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self._runs: dict[tuple[Any, ...], float] = {}   # shape -> until (monotonic)
        self._refused: dict[tuple[Any, ...], ServiceError] = {}

    def new_batch(self) -> Runnable:
        self._refused = {}
        return self

    def __call__(self, session: Session, spec: JobCreate) -> None:
        shape = (spec.gpus, spec.gpu_model, spec.cpus, spec.memory_mib)
        if self._runs.get(shape, 0.0) > time.monotonic():
            return
        refusal = self._refused.get(shape)
        if refusal is None:
            try:
                check_runnable(session, spec)
                if len(self._runs) > 1000:
                    self._runs.clear()
                self._runs[shape] = time.monotonic() + self.ttl_s
                return
            except ServiceError as e:
                self._refused[shape] = refusal = e
        raise refusal


def _column_defaults() -> dict[str, Any]:
    """Every Job column's value in a new row before the submit's own: its default (a
    callable one called, as an insert does), else None."""
    out: dict[str, Any] = {}
    for col in Job.__table__.columns:
        d = col.default
        value = None
        if d is not None and getattr(d, "is_scalar", False):
            value = d.arg
        elif d is not None and getattr(d, "is_callable", False):
            value = d.arg(None)
        out[col.key] = value
    return out
