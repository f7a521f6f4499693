"""Submitting jobs: many single-job submits in one transaction (a lone submit is a batch
of one; ``scheduler/runtime/group_commit.py`` gathers the submits that arrive together).

Each submit is checked alone (``jobs.check_submit``: a failing one gets its own 4xx and
takes nothing from the others); the accepted ones are created together by the lifecycle's
writer (the rows in one ``INSERT ... RETURNING``, their first events in one bulk insert).
A submit whose idempotency key is taken already (a retry) is answered with the job it
made before (200), as is a second submit of one key in the same batch. The new jobs'
answers are read from their rows as inserted; those of the jobs made before, from the
database. Like every service this never commits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.scheduler.db.models import Job, JobArray
from gpuq.scheduler.domain.arrays import owner_of
from gpuq.scheduler.errors import ServiceError
from gpuq.scheduler.lifecycle import writes
from gpuq.scheduler.services.auth import Principal
from gpuq.scheduler.services.jobs import (
    Accepted,
    check_runnable,
    check_submit,
    element_read,
    job_fields,
    read_fields,
    read_own_jobs,
)
from gpuq.wire.jobs import JobCreate, JobRead


@dataclass(frozen=True)
class Answer:
    """A submit's answer: the job as JSON (``JobRead``), and whether it was made now (201)
    or found by its idempotency key (200)."""

    body: bytes
    created: bool


#: One answer per submit: the job, or the 4xx that refused it.
Outcome = Answer | ServiceError


def submit_many(session: Session, items: Sequence[tuple[Principal, JobCreate]], *,
                now: datetime, settings: Settings,
                runnable: Runnable | None = None) -> list[Outcome]:
    """One outcome per item, in order; ``runnable`` carries what the batches before knew
    about job shapes the nodes can run."""
    outcomes: list[Outcome | None] = [None] * len(items)
    taken = _taken_keys(session, items)
    runnable = (runnable or Runnable()).new_batch()
    # The submits answered with a job made before: (its id, None), or (None, the position
    # of the batch's own submit of the same key).
    found: dict[int, tuple[int | None, int | None]] = {}
    first_of: dict[tuple[int, str], int] = {}
    accepted: list[tuple[int, dict[str, Any], Accepted]] = []
    for i, (principal, spec) in enumerate(items):
        user = principal.user
        key = (user.id, spec.idempotency_key) if user is not None and \
            spec.idempotency_key is not None else None
        if key is not None and key in taken:
            found[i] = (taken[key], None)
            continue
        if key is not None and key in first_of:
            found[i] = (None, first_of[key])
            continue
        try:
            ok = check_submit(session, principal, spec, settings=settings, runnable=runnable)
        except ServiceError as e:
            outcomes[i] = e
            continue
        if key is not None:
            first_of[key] = i
        accepted.append((i, job_fields(spec, ok, now=now), ok))
    made = writes.create(session, [fields for _, fields, _ in accepted], now=now) \
        if accepted else []
    answers: dict[int, bytes] = {}  # job id -> its JobRead
    for (_, _, ok), job in zip(accepted, made, strict=True):
        # Read from the row as inserted (RETURNING); the submitter owns it: the spec shows.
        answers[job.id] = JobRead(**read_fields(
            job, user=ok.user.name, account=ok.account.name, node=None, gpu_memory={},
            mine=True)).model_dump_json().encode()
    new = {i: job.id for (i, _, _), job in zip(accepted, made, strict=True)}
    for i, (job_id, twin) in found.items():
        if job_id is None:
            found[i] = (new[twin], twin)  # type: ignore[index]
    older = sorted({job_id for job_id, _ in found.values()} - set(answers))
    if older:  # jobs made before, by the same keys: read as GET /v1/jobs/{id} reads them
        for fields in read_own_jobs(session, older):  # type: ignore[arg-type]
            answers[fields["id"]] = JobRead(**fields).model_dump_json().encode()
        for job_id in older:  # an array's first element, waiting in its array (its key)
            element = owner_of(session, job_id) if job_id not in answers else None
            if element is not None:
                answers[job_id] = element_read(session, *element, None
                                               ).model_dump_json().encode()
    for i, job_id in new.items():
        outcomes[i] = Answer(answers[job_id], True)
    for i, (job_id, _) in found.items():
        outcomes[i] = Answer(answers[job_id], False)  # type: ignore[index]
    return outcomes  # type: ignore[return-value]


def _taken_keys(session: Session, items: Sequence[tuple[Principal, JobCreate]]
                ) -> dict[tuple[int, str], int]:
    """The (user id, idempotency key) pairs of the batch that jobs already have, and
    those jobs' ids."""
    keys = {(p.user.id, s.idempotency_key) for p, s in items
            if p.user is not None and s.idempotency_key is not None}
    if not keys:
        return {}
    # Core, not the ORM session: no ORM objects come back (and no autoflush).
    rows = session.connection().execute(select(Job.user_id, Job.idempotency_key, Job.id).where(
        tuple_(Job.user_id, Job.idempotency_key).in_(list(keys))))
    taken = {(u, k): job_id for u, k, job_id in rows}
    # An array's key: the answer is its first element (as before arrays had records).
    arrays = session.connection().execute(
        select(JobArray.user_id, JobArray.idempotency_key, JobArray.id).where(
            tuple_(JobArray.user_id, JobArray.idempotency_key).in_(list(keys))))
    taken.update(((u, k), array_id) for u, k, array_id in arrays if (u, k) not in taken)
    return taken


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
