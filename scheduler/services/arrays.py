"""Job arrays: one request makes one record (``JobArray``) for all its elements, in one
transaction, whatever their number: the spec stored once (``job_specs``), the indices as
runs, a block of job ids reserved. The elements get rows of their own as they start or
are touched (``domain/arrays.py``)."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.scheduler.db.models import Job, JobArray
from gpuq.scheduler.domain.arrays import (
    EVENT_REASON,
    INDEX_KEYS,
    array_common_env,
    array_name,
    index_env,
    owner_of,
    split,
)
from gpuq.scheduler.errors import Forbidden, NotFound
from gpuq.scheduler.lifecycle import rules, writes
from gpuq.scheduler.services.auth import Principal
from gpuq.scheduler.services.jobs import Accepted, check_owner, check_submit, job_fields
from gpuq.wire.arrays import MAX_LISTED, JobArrayCreate, JobArrayRead, Ranges
from gpuq.wire.states import ACTIVE, TERMINAL

__all__ = ["EVENT_REASON", "INDEX_KEYS", "array_env", "submit_array", "cancel_array",
           "element_of", "array_read"]


def array_env(array_id: int, index: int, indices: list[int]) -> dict[str, str]:
    """What an element finds in its environment (gpuq's names, and Slurm's for scripts
    written for sbatch --array): the common part stored once in the array's shared spec,
    the index in the element's own row."""
    return {**array_common_env(array_id, indices[0], indices[-1], len(indices)),
            **index_env(index)}


def array_read(array: Any) -> JobArrayRead:
    """The answer to an array's submit (and to its retry)."""
    ranges = Ranges.of(array.ranges)
    listed = array.count <= MAX_LISTED
    return JobArrayRead(array_job_id=array.id, name=array.name, count=array.count,
                        array=ranges.text(), indices=ranges.indices() if listed else [],
                        ids=list(range(array.id, array.id + array.count)) if listed else [])


def replayed(session: Session, user_id: int, key: str | None) -> JobArrayRead | None:
    """The array a submit with this idempotency key made before, if any. (An array made
    before arrays had records is not found by its key: a retry of one across the upgrade
    makes a new array.)"""
    if key is None:
        return None
    array = session.scalars(select(JobArray).where(JobArray.user_id == user_id,
                                                   JobArray.idempotency_key == key)).first()
    return array_read(array) if array is not None else None


def check_array(session: Session, principal: Principal, spec: JobArrayCreate, *,
                settings: Settings) -> JobArrayRead | Accepted:
    """Before an array's ids are reserved: the array a retry made (its key seen before),
    or what every check a submit makes settled (else their 4xx)."""
    if principal.user is None:
        raise Forbidden("only user and admin tokens can submit jobs")
    old = replayed(session, principal.user.id, spec.idempotency_key)
    if old is not None:
        return old
    return check_submit(session, principal, spec, settings=settings)


def reserve(session_factory: Any, spec: JobArrayCreate) -> int | None:
    """PostgreSQL: the array's block of job ids, reserved before its transaction begins
    (``writes.reserve_block_apart``); None on SQLite (reserved inside it)."""
    bind = session_factory.kw.get("bind")
    if bind is None or bind.dialect.name != "postgresql":
        return None
    return writes.reserve_block_apart(bind, spec.ranges.count)


def create_array(session: Session, principal: Principal, spec: JobArrayCreate,
                 ok: Accepted, *, now: datetime, first_id: int | None = None
                 ) -> tuple[JobArrayRead, bool]:
    """Make the array that ``check_array`` accepted, every element PENDING, with the ids
    from ``first_id`` (reserved by ``reserve``; None: reserved here, SQLite); returns (the
    array, created). A parallel retry with the same key that won answers instead."""
    ranges = spec.ranges
    base = job_fields(spec, ok, now=now)
    try:
        with session.begin_nested():
            first = first_id if first_id is not None else writes.reserve_block(
                session, ranges.count)
            spec_id = writes.create_spec(
                session, command=base["command"], script=base["script"],
                environment={**base["environment"], **array_common_env(
                    first, ranges.first, ranges.last, ranges.count)})
            fields = {k: base[k] for k in (
                "user_id", "account_id", "idempotency_key", "workdir", "gpus", "gpu_model",
                "cpus", "memory_mib", "time_limit_s", "requeue", "nice", "qos", "reason",
                "submitted_at")}
            record = {**fields, "id": first, "name": array_name(base["name"]), "priority": 0,
                      "ranges": ranges.stored(), "count": ranges.count, "spec_id": spec_id}
            writes.create_array(session, record)
    except IntegrityError:
        # The same key raced in from a parallel retry: answer with the array it made.
        assert principal.user is not None
        old = replayed(session, principal.user.id, spec.idempotency_key)
        if old is None:
            raise
        return old, False
    return array_read(SimpleNamespace(**record)), True


def submit_array(session: Session, principal: Principal, spec: JobArrayCreate, *,
                 now: datetime, settings: Settings) -> tuple[JobArrayRead, bool]:
    """Make the array in one transaction (its ids reserved in it: SQLite); returns (the
    array, created). A seen idempotency key returns the array it made before."""
    checked = check_array(session, principal, spec, settings=settings)
    if isinstance(checked, JobArrayRead):
        return checked, False
    return create_array(session, principal, spec, checked, now=now)


def element_of(session: Session, job_id: int) -> tuple[JobArray, int] | None:
    """``domain.arrays.owner_of``: the array holding job ``job_id`` without a row."""
    return owner_of(session, job_id)


def split_one(session: Session, job_id: int) -> Job | None:
    """The row of job ``job_id``: made now (PENDING) if it is an array's waiting element,
    to be touched (cancelled alone, ...). None: no such job, or an element cancelled
    with its array."""
    found = owner_of(session, job_id)
    if found is not None:
        split(session, found[0].id, [found[1]])
    return session.get(Job, job_id, populate_existing=True)


def cancel_array(session: Session, principal: Principal, array_id: int, *,
                 now: datetime) -> tuple[int, list[Job]]:
    """Cancel every element of the array (Slurm's ``scancel ARRAY_ID``): those waiting in
    its record at once, those with rows through the job lifecycle. Returns (how many
    waiting ones were cancelled, the active elements whose nodes must be told)."""
    array = session.get(JobArray, array_id, populate_existing=True, with_for_update=True)
    if array is None:
        raise NotFound(f"no job array {array_id}")
    if not principal.is_admin and (principal.user is None
                                   or principal.user.id != array.user_id):
        raise Forbidden(f"job array {array_id} belongs to another user")
    by = principal.user.name if principal.user else "admin"
    waiting = writes.cancel_array_waiting(session, array, by=by, now=now)
    jobs = list(session.scalars(select(Job).where(
        Job.array_id == array_id, Job.state.not_in([s.value for s in TERMINAL]))
        .order_by(Job.id).with_for_update(key_share=True)))
    for job in jobs:
        check_owner(principal, job)
    writes.apply(session, [(job, change) for job in jobs
                           if (change := rules.cancelled(rules.Facts.of(job), by=by))],
                 now=now)
    return waiting, [job for job in jobs if job.state in ACTIVE]
