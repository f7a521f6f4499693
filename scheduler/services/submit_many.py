"""Many single-job submits in one transaction (the group commit of ``scheduler/group_commit.py``).

Each submit is checked as ``jobs.submit`` checks it (a failing one gets its own 4xx and
takes nothing from the others); the accepted ones are inserted together (their ids from
one query, the rows and their first events in one bulk insert each) and answered with
the ``JobRead`` that ``jobs.submit`` would give. Submits whose idempotency key is already
taken (a retry) are left to ``jobs.submit`` one by one: they are rare, and it answers
them with the job they made before. Like every service this never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from scheduler.api.schemas import JobCreate, JobRead
from scheduler.auth import Principal
from scheduler.config import Settings
from scheduler.db.models import Job, JobEvent
from scheduler.errors import ServiceError
from scheduler.services.arrays import _reserve_ids, bulk_insert
from scheduler.services.jobs import (
    Accepted,
    check_runnable,
    check_submit,
    job_fields,
    read_fields,
)
from scheduler.states import JobState


@dataclass(frozen=True)
class Created:
    """A job made by the batch: its answer, serialised."""

    body: bytes


#: One answer per submit: made, refused (its 4xx), or None: submit it alone (a retry).
Outcome = Created | ServiceError | None


def submit_many(session: Session, items: Sequence[tuple[Principal, JobCreate]], *,
                now: datetime, settings: Settings) -> list[Outcome]:
    outcomes: list[Outcome] = [None] * len(items)
    taken = _taken_keys(session, items)
    seen: set[tuple[int, str]] = set()
    runnable = _Runnable()
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
    ids = _reserve_ids(session, len(accepted))
    rows = []
    for job_id, (_, fields, _) in zip(ids, accepted, strict=True):
        fields["id"] = job_id
        rows.append(fields)
    bulk_insert(session, Job, rows)
    bulk_insert(session, JobEvent, [
        {"job_id": r["id"], "time": now, "old_state": None,
         "new_state": JobState.PENDING.value, "reason": "submitted"} for r in rows])
    for i, fields, ok in accepted:
        job = SimpleNamespace(**{**_column_defaults(), **fields})
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
    rows = session.execute(select(Job.user_id, Job.idempotency_key).where(
        tuple_(Job.user_id, Job.idempotency_key).in_(list(keys))))
    return {(u, k) for u, k in rows}


class _Runnable:
    """``check_runnable``, asked once per job shape in a batch (the same shape gets the
    same answer within one transaction)."""

    def __init__(self) -> None:
        self.answers: dict[tuple[Any, ...], ServiceError | None] = {}

    def __call__(self, session: Session, spec: JobCreate) -> None:
        shape = (spec.gpus, spec.gpu_model, spec.cpus, spec.memory_mib)
        if shape not in self.answers:
            try:
                check_runnable(session, spec)
                self.answers[shape] = None
            except ServiceError as e:
                self.answers[shape] = e
        refusal = self.answers[shape]
        if refusal is not None:
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
