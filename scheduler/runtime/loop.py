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
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from gpuq.scheduler import measures
from gpuq.scheduler.db.models import Node, SchedulerState
from gpuq.scheduler.domain import grants_in_effect as in_effect
from gpuq.scheduler.domain import idle
from gpuq.scheduler.domain.snapshot import build_snapshot_rows
from gpuq.scheduler.domain.usage import charge
from gpuq.scheduler.policy import schedule
from gpuq.scheduler.runtime.applier import CycleResult, apply_decisions
from gpuq.scheduler.runtime.context import Context
from gpuq.scheduler.runtime.outages import (
    Listening,
    OutageMarker,
    database_unavailable,
    down_deadline,
)
from gpuq.scheduler.services import grants as grant_service
from gpuq.scheduler.services.runs import mark_down
from gpuq.wire.states import NodeState

log = logging.getLogger(__name__)

#: Key of the PostgreSQL advisory lock held by the acting loop ("gpuq" in ASCII).
LOCK_KEY = 0x67707571


def _take_lock(session: Session) -> bool:
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                {"k": LOCK_KEY}).scalar())


def _charge_due(session: Session, now: datetime, interval_s: float) -> bool:
    last = session.scalar(select(SchedulerState.usage_decayed_at).where(SchedulerState.id == 1))
    return last is None or (now - last).total_seconds() >= interval_s


def cycle(ctx: Context, *, housekeeping: bool = True,
          listening_since: datetime | None = None, depth: int = 0) -> CycleResult:
    """One scheduling cycle. Safe to call from tests with a manual clock.

    ``housekeeping`` (nodes without heartbeats marked down, usage charged, grant states
    refreshed, idle jobs cancelled) comes first, in its own transaction; the loop skips
    it in a cycle an event woke shortly after the last one (``SchedulerLoop``).
    ``listening_since``: since when the scheduler could hear heartbeats (a node's silence
    counts from then at the earliest: ``outages.down_deadline``); ``None``: always.
    ``depth``: a quick cycle, which looks at the first ``depth`` pending jobs in priority
    order (``snapshot.pending_rows``, Slurm's ``default_queue_depth``); 0: a full pass."""
    with measures.cycle_timer():
        return _cycle(ctx, housekeeping, listening_since, depth)


def _cycle(ctx: Context, housekeeping: bool = True,
           listening_since: datetime | None = None, depth: int = 0) -> CycleResult:
    now = ctx.clock()
    result = CycleResult()
    notices: list[dict[str, Any]] = []
    if housekeeping:
        idle_result = _housekeeping(ctx, now, result, listening_since)
        if idle_result is None:
            return CycleResult(ran=False)
        notices = idle_result.notices
    # The housekeeping above (nodes down, usage charged to the running jobs, idle jobs)
    # is committed now: charging locks every running job's row, and held through the
    # scheduling below (seconds at 10,000 pending on a busy machine) it held up each
    # heartbeat that records its job's sample (bench/load.py: p99 3.7 s).
    with ctx.transaction() as session:
        if _take_lock(session):
            snapshot, rows, whole = build_snapshot_rows(session, now, ctx.settings, depth)
            result.whole = whole
            result.active = len(snapshot.pending) + len(snapshot.running)
            decisions = schedule(snapshot)
            apply_decisions(session, decisions, now, result, snapshot, rows, whole=whole)
            result.next_grant_change = in_effect.next_change(session, now)
        else:
            # Another replica's loop acts now. Its cycle may have read the queue before
            # what woke this one committed: ``ran`` False has the loop try again shortly.
            # What the housekeeping above committed (idle kills, notices) is sent below.
            result.ran = False
    for job_id, node, for_job in result.preempted:
        log.info("job %s on %s: preempting for job %s", job_id, node, for_job)
        ctx.dispatcher.kill(node, job_id)
    for job_id, node in result.kills:
        log.info("job %s on %s: cancelled for idle GPUs", job_id, node)
        ctx.dispatcher.kill(node, job_id)
    idle.send_notices(ctx.settings.idle_webhook_url, notices)
    for job_id, node in result.started:
        ctx.dispatcher.launch(node, job_id)
    if result.started or result.nodes_down:
        log.info("cycle: started %s, nodes down %s", result.started, result.nodes_down)
    return result


def _housekeeping(ctx: Context, now: datetime, result: CycleResult,
                  listening_since: datetime | None = None) -> idle.IdleResult | None:
    """Nodes without heartbeats marked down (silent for ``node_down_after_s`` while the
    scheduler listened), usage charged, grant states refreshed, idle jobs cancelled:
    committed (``None`` if another replica's loop holds the lock)."""
    with ctx.transaction() as session:
        if not _take_lock(session):
            return None
        deadline = down_deadline(now, ctx.settings.node_down_after_s, listening_since)
        stale = [] if deadline is None else session.scalars(select(Node).where(
            Node.state == NodeState.UP.value,
            Node.last_heartbeat_at < deadline))
        for node in stale:
            secs = int(ctx.settings.node_down_after_s)
            for job in mark_down(session, node, now=now, settings=ctx.settings,
                                 reason=f"no heartbeat for {secs} s"):
                log.warning("job %s: NODE_FAIL on %s", job.id, node.name)
            result.nodes_down.append(node.name)
        charged = _charge_due(session, now, ctx.settings.usage_charge_interval_s)
        if charged:
            charge(session, now=now, settings=ctx.settings)
        grant_service.refresh_states(session, now, check_budgets=charged)
        idle_result = idle.enforce(session, now=now, settings=ctx.settings)
        result.kills += idle_result.kills
    return idle_result


class PlannerStats:
    """Keeps PostgreSQL's statistics of ``jobs`` up with the queue's size.

    A job array or a burst of submits can take the queue from nothing to 10,000 jobs in a
    second, while autovacuum analyzes a table only after 10 % of it changed (and a
    minute later at best): on a table holding a long history that can be never. With
    stale statistics the planner takes the active jobs for a handful and reads all of
    them for a ``LIMIT 1000`` listing (40 ms instead of 4 ms at 10,000 pending: the load
    benchmark's listings spent most of their time there). So the loop, which counts the
    active jobs every cycle anyway, runs ``ANALYZE jobs`` when that count moved by at
    least ``MIN_CHANGE`` jobs and by half since the last one (PostgreSQL's own advice
    after a bulk load). On SQLite it does nothing."""

    MIN_CHANGE = 1000
    #: The least relative change (of the larger count) that calls for a new ANALYZE.
    RATIO = 0.5

    def __init__(self) -> None:
        self.analyzed_at: int = 0
        self.runs = 0

    def due(self, active: int) -> bool:
        change = abs(active - self.analyzed_at)
        return change >= self.MIN_CHANGE and change >= self.RATIO * max(active,
                                                                        self.analyzed_at)

    def observe(self, ctx: Context, active: int) -> bool:
        """Analyze ``jobs`` if the active count calls for it; True if it did."""
        if not self.due(active):
            return False
        with ctx.sessions() as session:
            if session.get_bind().dialect.name != "postgresql":
                self.analyzed_at = active
                return False
            session.execute(text("ANALYZE jobs"))
            session.commit()
        self.analyzed_at = active
        self.runs += 1
        log.info("analyzed jobs: %d active", active)
        return True


class SchedulerLoop:
    """Runs ``cycle`` in a thread: on ``wake()`` and every ``schedule_interval_s``.

    A wake-up on a quiet loop runs a cycle at once (no coalescing delay for a lone
    submit); in a burst of events the cycles are spaced ``schedule_coalesce_s`` apart, so
    the burst's events share them. A token bucket says which: ``BURST_CYCLES`` cycles may
    run back to back, one more per ``schedule_coalesce_s``.
    """

    #: Cycles a quiet loop runs at once on wake-ups (a job's submit, its start report and
    #: its end each wake it): beyond these, one per coalescing delay.
    BURST_CYCLES = 3.0
    #: A cycle an event woke within this many seconds of the last housekeeping skips it
    #: (``cycle(housekeeping=False)``): nodes down, charges, grant states and idle jobs
    #: are time-driven, not event-driven, and their transaction took 11 of a lone submit's
    #: 28 ms cycle (bench/dispatch.py). Timer cycles always do it.
    HOUSEKEEPING_S = 1.0
    #: A cycle that found another replica's loop holding the lock is tried again after
    #: this many seconds (as if woken again), not at the timer: the other's cycle may have
    #: read the queue before the event that woke this loop (a job's end reported to this
    #: replica), and nothing else would act on that event until the timer (with two
    #: replicas, bench/faults/failover.py measured a median queue wait of the timer's
    #: 5 s). Trying the lock is one cheap statement.
    LOCK_RETRY_S = 0.1
    #: The most of the loop's time full passes take: the next one is due
    #: ``schedule_interval_s`` after the last began, or ten times its length if that is
    #: longer (at 100,000 pending a full pass takes seconds; the quick cycles between them,
    #: which start the jobs on freed GPUs, milliseconds). Slurm's backfill pass is spaced
    #: the same way (``bf_interval``, 30 s by default).
    FULL_PASS_SHARE = 0.1

    def __init__(self, ctx: Context, *, rest: bool = True) -> None:
        """``rest``: rest after each quick cycle as long as it took, leaving the process's
        other half to the API it shares it with (``gpuq server``'s single process). A loop
        in a process of its own (``--workers N``, at ``loop_nice``) does not: the kernel
        gives the API processes their turn, and a rest only delayed the next freed GPU's
        job (bench/release.py: 20-40 ms a release at 10,000 pending)."""
        self.ctx = ctx
        self.rest = rest
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = PlannerStats()
        self._housekept_at = float("-inf")
        #: When the last cycle that looked at the whole queue began, and how long after it
        #: the next one is due (``FULL_PASS_SHARE``).
        self._full_at = float("-inf")
        self._full_every = ctx.settings.schedule_interval_s
        #: Since when this server has heard heartbeats (fresh timeouts after its outages).
        self.listening = Listening(
            max_gap_s=max(10.0, 2 * ctx.settings.schedule_interval_s + 5.0),
            marker=OutageMarker(ctx.settings.data_dir))
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
        wait_s = settings.schedule_interval_s
        coalesce_s = settings.schedule_coalesce_s
        tokens, last = self.BURST_CYCLES, time.monotonic()
        rest_until = 0.0
        retry = False  # the last cycle found the lock taken: try again after LOCK_RETRY_S
        while not self._stop.is_set():
            woken = self._wake.wait(wait_s) or retry
            if self._stop.is_set():
                return
            now = time.monotonic()
            if woken and now < rest_until:
                # Under constant wake-ups (heartbeats, submits) rest at least as long as
                # the last cycle took: the loop is at most half busy, and the API keeps
                # the other half of the process.
                if self._stop.wait(rest_until - now):
                    return
                now = time.monotonic()
            if coalesce_s > 0:
                tokens = min(self.BURST_CYCLES, tokens + (now - last) / coalesce_s)
                last = now
                if woken and tokens < 1.0:
                    # A burst: wait for the rest of the coalescing delay.
                    if self._stop.wait((1.0 - tokens) * coalesce_s):
                        return
                    tokens, last = 1.0, time.monotonic()
                tokens -= 1.0
            self._wake.clear()
            wait_s, retry = settings.schedule_interval_s, False
            try:
                started = time.monotonic()
                housekeeping = not woken or started - self._housekept_at >= self.HOUSEKEEPING_S
                since = self.listening.begin(self.ctx.clock()) if housekeeping else None
                # A cycle looks at the first jobs of the queue only, unless a full pass is
                # due (schedule_interval_s after the last, or more: FULL_PASS_SHARE).
                quick = started - self._full_at < self._full_every
                result = cycle(self.ctx, housekeeping=housekeeping, listening_since=since,
                               depth=settings.schedule_queue_depth if quick else 0)
                if housekeeping:  # the database answered (ran False: another loop acts)
                    self.listening.succeeded()
                if result.ran:
                    if result.whole:
                        self.stats.observe(self.ctx, result.active)
                        self._full_at = started
                        self._full_every = max(settings.schedule_interval_s,
                                               (time.monotonic() - started)
                                               / self.FULL_PASS_SHARE)
                    if housekeeping:
                        self._housekept_at = started
                else:  # another replica's loop held the lock
                    retry, wait_s = True, self.LOCK_RETRY_S
                ended = time.monotonic()
                # The rest follows the quick cycles (what constant wake-ups repeat); a full
                # pass is spaced by FULL_PASS_SHARE instead, and a rest as long would keep
                # freed GPUs idle for seconds after each at a deep queue.
                rest_until = ended + (ended - started if quick and self.rest else 0.0)
                if result.next_grant_change is not None:
                    # A grant starts or ends sooner than the timer: wake on time for it.
                    until = (result.next_grant_change - self.ctx.clock()).total_seconds()
                    wait_s = min(wait_s, max(until, 0.0) + 0.01)
            except Exception as e:
                if database_unavailable(e):
                    # Heartbeats were not recorded meanwhile: fresh timeouts after it.
                    self.listening.failed()
                log.exception("scheduling cycle failed; retrying at the next wake-up")
                self._stop.wait(1.0)
