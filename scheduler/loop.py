"""The scheduling loop: snapshot -> policy -> apply in one transaction -> dispatch.

It wakes on events (submit, job end, node change) after a short coalescing delay, and on
a timer. Exactly one loop acts at a time: on PostgreSQL a transaction-scoped advisory lock
guards each cycle, so several server replicas can run a loop each; SQLite serialises
writers itself (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from scheduler.context import Context
from scheduler.db.models import GpuAllocation, Job, Node, SchedulerState
from scheduler.policy import Decisions, schedule
from scheduler.services.nodes import mark_down
from scheduler.snapshot import build_snapshot
from scheduler.states import JobState, NodeState, set_pending_reason, transition
from scheduler.usage import charge

log = logging.getLogger(__name__)

#: Key of the PostgreSQL advisory lock held by the acting loop ("gpuq" in ASCII).
LOCK_KEY = 0x67707571


@dataclass
class CycleResult:
    ran: bool = True
    started: list[tuple[int, str]] = field(default_factory=list)  # (job id, node)
    dropped: list[int] = field(default_factory=list)  # starts that no longer held
    nodes_down: list[str] = field(default_factory=list)
    kills: list[tuple[int, str]] = field(default_factory=list)


def _take_lock(session: Session) -> bool:
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                {"k": LOCK_KEY}).scalar())


def _apply(session: Session, decisions: Decisions, now, result: CycleResult) -> None:  # noqa: ANN001
    """Re-check every start against the current rows before committing it (Nomad's
    plan applier): the job is still pending, the node still up, its GPUs still free."""
    for start in decisions.starts:
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
        for index in start.gpu_indices:
            session.add(GpuAllocation(job_id=job.id, node_id=node.id, gpu_index=index))
        job.node_id = node.id
        job.gpu_indices = list(start.gpu_indices)
        job.attempt += 1
        gpus = ",".join(map(str, start.gpu_indices)) or "none"
        transition(session, job, JobState.DISPATCHED, now=now,
                   reason=f"dispatched to {node.name} GPUs [{gpus}]")
        result.started.append((job.id, node.name))
    started = {j for j, _ in result.started}
    for job_id, reason in decisions.pending_reasons.items():
        if job_id in started:
            continue
        job = session.get(Job, job_id)
        if job is None:
            continue
        set_pending_reason(job, reason)
        _record_priority(job, decisions, job_id)


def _record_priority(job: Job, decisions: Decisions, job_id: int) -> None:
    """Keep what `gpuq show` and `gpuq why` read: the factors and the estimated start.
    Rounded, so an unchanged value writes nothing."""
    p = decisions.priorities.get(job_id)
    if p is not None:
        factors = {"total": round(p.total, 3), "fairshare": round(p.fairshare, 4),
                   "age": round(p.age, 4), "jobsize": round(p.jobsize, 4),
                   "qos": round(p.qos, 4), "nice": p.nice, "site": p.site}
        if job.priority_factors != factors:
            job.priority_factors = factors
    est = decisions.estimated_starts.get(job_id)
    when = datetime.fromtimestamp(round(est), UTC) if est is not None else None
    if job.estimated_start != when:
        job.estimated_start = when


def _charge_due(session: Session, now: datetime, interval_s: float) -> bool:
    last = session.scalar(select(SchedulerState.usage_decayed_at).where(SchedulerState.id == 1))
    return last is None or (now - last).total_seconds() >= interval_s


def cycle(ctx: Context) -> CycleResult:
    """One scheduling cycle. Safe to call from tests with a manual clock."""
    now = ctx.clock()
    result = CycleResult()
    with ctx.transaction() as session:
        if not _take_lock(session):
            return CycleResult(ran=False)
        deadline = now - timedelta(seconds=ctx.settings.node_down_after_s)
        stale = session.scalars(select(Node).where(
            Node.state == NodeState.UP.value,
            Node.last_heartbeat_at < deadline))
        for node in stale:
            secs = int(ctx.settings.node_down_after_s)
            for job in mark_down(session, node, now=now, settings=ctx.settings,
                                 reason=f"no heartbeat for {secs} s"):
                log.warning("job %s: NODE_FAIL on %s", job.id, node.name)
            result.nodes_down.append(node.name)
        if _charge_due(session, now, ctx.settings.usage_charge_interval_s):
            charge(session, now=now, settings=ctx.settings)
        decisions = schedule(build_snapshot(session, now, ctx.settings))
        _apply(session, decisions, now, result)
    for job_id, node in result.started:
        ctx.dispatcher.launch(node, job_id)
    if result.started or result.nodes_down:
        log.info("cycle: started %s, nodes down %s", result.started, result.nodes_down)
    return result


class SchedulerLoop:
    """Runs ``cycle`` in a thread: on ``wake()`` (after ``schedule_coalesce_s``) and every
    ``schedule_interval_s``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        ctx.wake = self.wake

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpuq-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        settings = self.ctx.settings
        while not self._stop.is_set():
            woken = self._wake.wait(settings.schedule_interval_s)
            if self._stop.is_set():
                return
            if woken:
                time.sleep(settings.schedule_coalesce_s)
            self._wake.clear()
            try:
                cycle(self.ctx)
            except Exception:
                log.exception("scheduling cycle failed; retrying at the next wake-up")
                self._stop.wait(1.0)
