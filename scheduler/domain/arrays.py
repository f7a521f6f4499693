"""Job arrays as one record (``JobArray``): an element has a ``jobs`` row only once it is
started or touched (cancelled alone, given a claim); until then it waits in the record.

Position ``p`` of an array (its ``p``-th index in ascending order, ``Ranges``) is job
``array.id + p``. Elements get their rows in position order as they start (``next_pos``:
below it every element has one), and out of order when touched. What the scheduling
loop sees of an array is its next few waiting elements (``waiting``), as many as could
start now, not all of them: they are alike but for their index, so the first of them
that cannot start says what the rest would hear.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from gpuq.scheduler.db.models import Account, Job, JobArray, User, inline
from gpuq.scheduler.lifecycle import writes
from gpuq.wire.arrays import Ranges
from gpuq.wire.states import JobState

#: The reason of an element's first event.
EVENT_REASON = "submitted (array)"

#: The variables holding an element's own index (the rest are the same in every element).
INDEX_KEYS = ("GPUQ_ARRAY_TASK_ID", "GPUQ_ARRAY_INDEX", "SLURM_ARRAY_TASK_ID")


def array_common_env(array_id: int, first: int, last: int, count: int) -> dict[str, str]:
    """The array variables that every element of the array has alike."""
    values = {"ARRAY_JOB_ID": str(array_id), "ARRAY_TASK_COUNT": str(count),
              "ARRAY_TASK_MIN": str(first), "ARRAY_TASK_MAX": str(last)}
    return {f"{prefix}_{k}": v for prefix in ("GPUQ", "SLURM") for k, v in values.items()}


def index_env(index: int) -> dict[str, str]:
    """An element's own variables: its index."""
    return dict.fromkeys(INDEX_KEYS, str(index))


def array_name(name: str) -> str:
    """The array's name: the job name, short enough for ``NAME[INDEX]`` to fit its column."""
    return name[:120]


#: The columns of an array record that its elements' rows take as they are.
SHARED = ("user_id", "account_id", "spec_id", "workdir", "gpus", "gpu_model", "cpus",
          "memory_mib", "time_limit_s", "priority", "requeue", "nice", "qos", "submitted_at")


def element_row(array: Any, pos: int, index: int) -> dict[str, Any]:
    """The job row of the element at ``pos`` (index ``index``) of ``array`` (a record or a
    row of one): what the array shares, and its own index."""
    return {**{k: getattr(array, k) for k in SHARED}, "id": array.id + pos,
            "name": f"{array.name}[{index}]", "array_id": array.id, "command": None,
            "script": None, "environment": index_env(index), "reason": array.reason,
            "gpu_indices": [], "priority_factors": array.priority_factors,
            "priority_key": array.priority_key, "estimated_start": array.estimated_start}


@dataclass(frozen=True)
class Element:
    """A waiting element of an array, without a row: what the snapshot, the cycle and the
    readers use of a pending job (``snapshot.PENDING_COLUMNS``' names), from its array."""

    id: int
    array_id: int
    pos: int
    index: int
    name: str
    gpus: int
    submitted_at: datetime
    priority: int
    gpu_model: str | None
    cpus: int
    memory_mib: int
    user_id: int
    account_id: int
    time_limit_s: int
    nice: int
    qos: str
    requeue: bool
    reason: str
    priority_factors: dict[str, Any] | None
    priority_key: float | None
    estimated_start: datetime | None
    state: str = JobState.PENDING.value
    claim: None = None

    @classmethod
    def of(cls, array: Any, pos: int, index: int) -> Element:
        return cls(id=array.id + pos, array_id=array.id, pos=pos, index=index,
                   name=f"{array.name}[{index}]", gpus=array.gpus,
                   submitted_at=array.submitted_at, priority=array.priority,
                   gpu_model=array.gpu_model, cpus=array.cpus, memory_mib=array.memory_mib,
                   user_id=array.user_id, account_id=array.account_id,
                   time_limit_s=array.time_limit_s, nice=array.nice, qos=array.qos,
                   requeue=array.requeue, reason=array.reason,
                   priority_factors=array.priority_factors, priority_key=array.priority_key,
                   estimated_start=array.estimated_start)


_arrays = JobArray.__table__.c
#: What the loop reads of an array with waiting elements.
ARRAY_COLUMNS = (
    _arrays.id, _arrays.name, _arrays.ranges, _arrays.count, _arrays.split, _arrays.next_pos,
    _arrays.gpus, _arrays.submitted_at, _arrays.priority, _arrays.gpu_model, _arrays.cpus,
    _arrays.memory_mib, _arrays.user_id, _arrays.account_id, _arrays.time_limit_s,
    _arrays.nice, _arrays.qos, _arrays.requeue, _arrays.reason, _arrays.priority_factors,
    _arrays.priority_key, _arrays.estimated_start,
)


def pending_arrays(session: Session, depth: int = 0) -> tuple[list[Any], bool]:
    """The arrays with waiting elements (rows of ``ARRAY_COLUMNS``) a cycle looks at, and
    whether they are all of them: every one (``depth`` 0), or, as ``snapshot.pending_rows``
    reads the jobs, the first ``depth`` not ranked yet and the first ``depth`` in the
    order the last full pass ranked them (``priority_key``, then id)."""
    q = select(*ARRAY_COLUMNS).where(_arrays.state == inline(JobState.PENDING.value))
    conn = session.connection()
    if not depth:
        return list(conn.execute(q.order_by(_arrays.priority_key, _arrays.id))), True
    new = conn.execute(q.where(_arrays.priority_key.is_(None))  # see snapshot.pending_rows
                       .order_by(_arrays.priority_key, _arrays.id)
                       .limit(depth)).all()
    ranked = conn.execute(q.where(_arrays.priority_key.is_not(None))
                          .order_by(_arrays.priority_key, _arrays.id).limit(depth)).all()
    return [*new, *ranked], len(new) < depth and len(ranked) < depth


def rows_ahead(session: Session, array_ids: list[int]) -> dict[int, set[int]]:
    """For each array, the positions at or above its ``next_pos`` that have rows already
    (elements touched out of order): the waiting ones skip them."""
    if not array_ids:
        return {}
    jobs = Job.__table__.c
    out: dict[int, set[int]] = defaultdict(set)
    for array_id, job_id in session.connection().execute(
            select(jobs.array_id, jobs.id).join(JobArray.__table__, and_(
                _arrays.id == jobs.array_id, jobs.id >= _arrays.id + _arrays.next_pos))
            .where(jobs.array_id.in_(array_ids))):
        out[array_id].add(job_id - array_id)
    return out


def waiting(array: Any, n: int, taken: set[int] | frozenset[int] = frozenset()
            ) -> list[Element]:
    """The first ``n`` waiting elements of ``array`` (a row of ``ARRAY_COLUMNS``), in
    position order, skipping ``taken`` (``rows_ahead``)."""
    ranges = Ranges.of(array.ranges)
    out: list[Element] = []
    pos = array.next_pos
    while len(out) < n and pos < array.count:
        if pos not in taken:
            out.append(Element.of(array, pos, ranges.index_at(pos)))
        pos += 1
    return out


def lock_array(session: Session, array_id: int) -> JobArray | None:
    """The array's record, locked for the rest of the transaction (PostgreSQL), as it is
    now: a cancel of the array and the loop's splitting of it take turns."""
    return session.get(JobArray, array_id, populate_existing=True, with_for_update=True)


def owner_of(session: Session, job_id: int) -> tuple[JobArray, int] | None:
    """The array whose block holds job ``job_id`` and the element's position, if the
    element has no row (it waits in its array, or was cancelled with it). The row is
    looked for first: most ids asked about are jobs with rows (``gpuq logs -f`` polls
    one), and the caller's read of it then comes from the session, not a second query."""
    if session.get(Job, job_id) is not None:
        return None
    array = session.scalars(select(JobArray).where(JobArray.id <= job_id)
                            .order_by(JobArray.id.desc()).limit(1)).first()
    if array is None or job_id >= array.id + array.count:
        return None
    return array, job_id - array.id


def split(session: Session, array_id: int, positions: list[int], *,
          fields: dict[int, dict[str, Any]] | None = None) -> list[int]:
    """Give these elements of the array rows of their own, PENDING (to start them, to
    cancel one alone, to hold a claim for it): returns the ids made, in order. Elements
    that have rows already, or that no longer wait (the array was cancelled), are left
    out. ``fields``: more columns for an element's row, by position."""
    array = lock_array(session, array_id)
    if array is None or array.state != JobState.PENDING.value:
        return []
    wanted = sorted({p for p in positions if 0 <= p < array.count})
    if not wanted:
        return []
    # The rows made before out of order, at or above next_pos (below it every element
    # has its row): the wanted ones among them have theirs already.
    session.flush()  # the record's lock above; rows_ahead reads by Core
    ahead = rows_ahead(session, [array_id]).get(array_id, set())
    todo = [p for p in wanted if p >= array.next_pos and p not in ahead]
    if not todo:
        return []
    ranges = Ranges.of(array.ranges)
    rows = [{**element_row(array, p, ranges.index_at(p)), **(fields or {}).get(p, {})}
            for p in todo]
    made = set(todo)
    nxt = array.next_pos
    while nxt < array.count and (nxt in made or nxt in ahead):
        nxt += 1
    writes.split_array(session, array, rows, nxt, reason=EVENT_REASON)
    return [array.id + p for p in todo]


def waiting_text(array: Any, taken: set[int]) -> str:
    """The indices of ``array``'s waiting elements in Slurm's notation (``8-9999``):
    from ``next_pos`` on, but for ``taken`` (``rows_ahead``)."""
    ranges = Ranges.of(array.ranges)
    if not taken:
        return ranges.text(array.next_pos)
    left = [ranges.index_at(p) for p in range(array.next_pos, array.count) if p not in taken]
    return Ranges.from_indices(left).text() if left else ""


def first_waiting(array: Any, taken: set[int]) -> int:
    """The position of ``array``'s first waiting element."""
    pos = array.next_pos
    while pos in taken:
        pos += 1
    return pos


def waiting_arrays(session: Session, *, states: list[str] | None, user: str | None,
                   account: str | None, node: str | None,
                   ids: list[int] | None = None) -> list[tuple[JobArray, str, str, set[int]]]:
    """The arrays whose elements without rows a listing shows (waiting, or cancelled with
    the array when ``states`` asks for CANCELLED), with their user's and account's names
    and ``rows_ahead``: (record, user, account, taken)."""
    wanted = [s for s in (states or [JobState.PENDING.value, JobState.CANCELLED.value])
              if s in (JobState.PENDING.value, JobState.CANCELLED.value)]
    if node or not wanted:
        return []
    q = (select(JobArray, User.name, Account.name)
         .join(User, JobArray.user_id == User.id)
         .join(Account, JobArray.account_id == Account.id)
         .where(JobArray.state.in_(wanted)))
    if states is None:  # every state: the waiting, and the cancelled with rows left out
        q = q.where(JobArray.split < JobArray.count)
    if user:
        q = q.where(User.name == user)
    if account:
        q = q.where(Account.name == account)
    if ids is not None:
        q = q.where(JobArray.id.in_(ids))
    found = session.execute(q).all()
    ahead = rows_ahead(session, [a.id for a, _, _ in found])
    return [(a, u, acct, ahead.get(a.id, set())) for a, u, acct in found
            if a.count - a.split > 0]
