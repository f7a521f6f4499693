"""Heartbeats: what a node says it runs, every second or so, taken in batches.

``heartbeats`` takes a batch (scheduler/runtime/group_commit.py gathers the heartbeats that
arrive while one batch is written; a lone heartbeat is a batch of one). Nearly every
heartbeat is steady, the node running exactly what the database says: those are written
together, a handful of statements for the whole batch (``_steady``). Any other is
reconciled alone (``reconcile``), by the lifecycle's rules."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, joinedload

from gpuq.config import Settings
from gpuq.scheduler import measures
from gpuq.scheduler.db.models import Gpu, Job, JobSample, Node
from gpuq.scheduler.domain import accounting
from gpuq.scheduler.domain.usage import charge_job
from gpuq.scheduler.errors import Conflict, ServiceError
from gpuq.scheduler.lifecycle import rules, writes
from gpuq.scheduler.services.nodes import get_or_create_node, sampled_at
from gpuq.wire.nodes import GpuSample, Heartbeat, HeartbeatReply, JobRef
from gpuq.wire.nodes import JobSample as WireJobSample
from gpuq.wire.nodes import WorkerJob as WireJob
from gpuq.wire.states import ACTIVE, JobState, NodeState

#: One heartbeat's answer: the reply and whether the loop should look, or its 4xx.
Outcome = tuple[HeartbeatReply, bool] | ServiceError


def heartbeats(session: Session, beats: list[tuple[str, Heartbeat]], *, now: datetime,
               settings: Settings) -> list[Outcome]:
    """Every heartbeat of the batch (node name, body), answered in order: the steady ones
    together, each other one alone through ``reconcile`` (a node that has not
    registered: 409)."""
    out: list[Outcome | None] = list(_steady(session, beats, now=now, settings=settings))
    for at, (name, body) in enumerate(beats):
        if out[at] is not None:
            continue
        node = node_for_heartbeat(session, name)
        if node.registered_at is None:
            out[at] = Conflict(f"node {name} has not registered; register first")
        else:
            out[at] = reconcile(session, node, body, now=now, settings=settings)
    return out  # type: ignore[return-value]


def node_for_heartbeat(session: Session, name: str) -> Node:
    """The node with its GPUs, in one query (a heartbeat reads and updates them)."""
    node = session.scalar(select(Node).where(Node.name == name)
                          .options(joinedload(Node.gpus)))
    return node if node is not None else get_or_create_node(session, name)


_NODES, _GPUS, _JOBS = Node.__table__, Gpu.__table__, Job.__table__
_ACTIVE_STATES = sorted(s.value for s in ACTIVE)
#: The node and its GPUs, one row per GPU (Core: no ORM objects to build or flush).
_GPU_SAMPLE = (update(_GPUS).where(_GPUS.c.id == bindparam("gpu_id"))
               .values(last_sample=bindparam("sample")))
_STEADY_REPLY = HeartbeatReply(launch=[], kill=[])



_STEADY_NODES = (select(_NODES.c.name, _NODES.c.id, _NODES.c.state, _NODES.c.registered_at,
                        _GPUS.c.id, _GPUS.c.index, _GPUS.c.healthy, _GPUS.c.health_reason,
                        _GPUS.c.foreign_processes, _GPUS.c.last_sample)
                 .select_from(_NODES.outerjoin(_GPUS, _GPUS.c.node_id == _NODES.c.id))
                 .where(_NODES.c.name.in_(bindparam("names", expanding=True))))
_STEADY_RUNS = (select(_JOBS.c.node_id, _JOBS.c.id, _JOBS.c.attempt, _JOBS.c.state,
                       _JOBS.c.cancel_requested_at, _JOBS.c.preempt_requested_at)
                .where(_JOBS.c.node_id.in_(bindparam("node_ids", expanding=True)),
                       _JOBS.c.state.in_(_ACTIVE_STATES)))
_BEAT_NODES = (update(_NODES).where(_NODES.c.id.in_(bindparam("node_ids", expanding=True)))
               .values(last_heartbeat_at=bindparam("now")))
#: What the steady path reads of a sampled node's active jobs: the runs' identity and what
#: ``record_sample`` and ``accounting.observe`` read and write (``_JobRow``).
_SAMPLE_WRITES = ("gpu_energy_j", "max_gpu_memory_mib", "gpu_sampled_s", "gpu_busy_s",
                  "idle_gpu_s", "gpu_util_peak_pct", "gpu_stats", "idle_since",
                  "idle_flagged_at", "idle_action")
_SAMPLED_JOBS = (select(_JOBS.c.node_id, _JOBS.c.id, _JOBS.c.attempt, _JOBS.c.state,
                        _JOBS.c.cancel_requested_at, _JOBS.c.preempt_requested_at,
                        _JOBS.c.gpu_energy_earlier_j, _JOBS.c.gpu_indices,
                        _JOBS.c.started_at, *(_JOBS.c[c] for c in _SAMPLE_WRITES))
                 .where(_JOBS.c.node_id.in_(bindparam("node_ids", expanding=True)),
                        _JOBS.c.state.in_(_ACTIVE_STATES))
                 .order_by(_JOBS.c.id).with_for_update(key_share=True))


class _JobRow:
    """A job's row as ``record_sample`` sees a ``Job`` (the attributes it reads and sets),
    and which of ``_SAMPLE_WRITES`` it changed. The values it sets are new objects (the
    JSON ``gpu_stats`` is replaced, never changed in place), so a comparison tells."""

    def __init__(self, row: Any) -> None:
        self.__dict__.update(row._mapping)
        self._was = {c: getattr(self, c) for c in _SAMPLE_WRITES}

    def changed(self) -> tuple[str, ...]:
        return tuple(c for c in _SAMPLE_WRITES if getattr(self, c) != self._was[c])


@dataclass
class _Steady:
    """A heartbeat found steady so far: its node, the GPU samples due, its job runs."""

    at: int  # its place in the batch
    node_id: int
    body: Heartbeat
    due: list[dict[str, Any]]
    reported: dict[tuple[int, int], WireJob]


def _steady(session: Session, beats: list[tuple[str, Heartbeat]], *,
            now: datetime, settings: Settings) -> list[tuple[HeartbeatReply, bool] | None]:
    """The steady heartbeats of the batch, written together; ``None`` (nothing of it
    written) for the others.

    Steady: the node is UP and registered; no GPU's health, health reason or foreign
    processes changes; the node reports exactly the runs (job, attempt) the database
    has active on it, each once and RUNNING, and all of them are RUNNING there with no
    cancel or preemption requested. Then ``reconcile`` would change the same and reply
    with nothing to launch or kill: the answer is the same as ``reconcile``'s.

    The nodes and their GPUs in one query; the active runs of the nodes whose heartbeats
    carry no job sample in another, unlocked; those of the nodes with samples (every real
    worker's) in a third, locked (FOR NO KEY UPDATE, until the transaction ends) and with
    what ``record_sample`` reads, then written back by one UPDATE per set of changed
    columns (Core rows, not ORM objects: loading and flushing those was a quarter of an
    API process's CPU under bench/load.py); one UPDATE of the nodes' heartbeat times. A
    second heartbeat of one node in the batch is ``None`` (reconciled after)."""
    out: list[tuple[HeartbeatReply, bool] | None] = [None] * len(beats)
    conn = session.connection()
    names = sorted({n for n, _ in beats})
    gpus_of: dict[str, list[Any]] = defaultdict(list)
    for row in conn.execute(_STEADY_NODES, {"names": names}):
        gpus_of[row[0]].append(row)
    seen: set[str] = set()
    steady: dict[int, _Steady] = {}
    for at, (name, body) in enumerate(beats):
        if name in seen:
            continue
        seen.add(name)
        beat = _steady_node(gpus_of.get(name), body, now, settings)
        if beat is not None:
            beat.at = at
            steady[beat.node_id] = beat
    if not steady:
        return out
    # Jobs with a sample are written: read them locked, in one order (two batches lock the
    # same jobs in the same order); the other nodes' runs are only compared.
    sampled = sorted(n for n, b in steady.items() if any(j.sample for j in b.body.jobs))
    unsampled = sorted(set(steady) - set(sampled))
    runs: dict[int, list[Any]] = defaultdict(list)
    if unsampled:
        for node_id, *run in conn.execute(_STEADY_RUNS, {"node_ids": unsampled}):
            runs[node_id].append(tuple(run))
    jobs_of: dict[int, list[Any]] = defaultdict(list)
    if sampled:
        for row in conn.execute(_SAMPLED_JOBS, {"node_ids": sampled}):
            jobs_of[row.node_id].append(_JobRow(row))
        for node_id in sampled:
            runs[node_id] = [(j.id, j.attempt, j.state, j.cancel_requested_at,
                              j.preempt_requested_at) for j in jobs_of[node_id]]
    for node_id in [n for n, b in steady.items() if not _same_runs(runs[n], b.reported)]:
        del steady[node_id]
    if not steady:
        return out
    conn.execute(_BEAT_NODES, {"node_ids": sorted(steady), "now": now})
    due = [d for b in steady.values() for d in b.due]
    if due:
        conn.execute(_GPU_SAMPLE, due)
    writes: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for node_id, beat in steady.items():
        changed = False
        for job in jobs_of.get(node_id, ()):
            seen_job = beat.reported[(job.id, job.attempt)]
            if seen_job.sample is not None:
                flagged = job.idle_flagged_at
                record_sample(session, job, seen_job.sample, now=now,  # type: ignore[arg-type]
                              every_s=settings.job_sample_interval_s, settings=settings)
                changed |= job.idle_flagged_at != flagged
                cols = job.changed()
                if cols:
                    writes[cols].append({"job_id_": job.id,
                                         **{f"v_{c}": getattr(job, c) for c in cols}})
        out[beat.at] = (_STEADY_REPLY, changed)
    for cols, params in writes.items():
        conn.execute(update(_JOBS).where(_JOBS.c.id == bindparam("job_id_"))
                     .values({c: bindparam(f"v_{c}") for c in cols}), params)
    return out


def _steady_node(rows: list[Any] | None, body: Heartbeat, now: datetime,
                 settings: Settings) -> _Steady | None:
    """The node's part of the steady check (its rows: ``_STEADY_NODES``, one per GPU)."""
    if not rows:
        return None
    node_id, state, registered_at = rows[0][1], rows[0][2], rows[0][3]
    if state != NodeState.UP.value or registered_at is None:
        return None
    samples = {s.index: s for s in body.gpus}
    due: list[dict[str, Any]] = []
    for _, _, _, _, gpu_id, index, healthy, health_reason, foreign, last in rows:
        sample = samples.get(index) if gpu_id is not None else None
        if sample is None:
            continue
        if healthy != sample.healthy or health_reason != _health_reason(sample) \
                or (foreign or []) != _foreign(sample):
            return None
        if _sample_due(last, now, settings.gpu_sample_interval_s):
            due.append({"gpu_id": gpu_id, "sample": _stored_sample(sample, now)})
    reported = {(j.job_id, j.attempt): j for j in body.jobs}
    if len(reported) != len(body.jobs) or any(j.state != JobState.RUNNING for j in body.jobs):
        return None
    return _Steady(-1, node_id, body, due, reported)


def _same_runs(have: list[tuple[Any, ...]], reported: dict[tuple[int, int], Any]) -> bool:
    """The database's active runs of a node (id, attempt, state, cancel, preempt) are
    exactly the reported ones, all RUNNING with nothing requested."""
    return len(have) == len(reported) and not any(
        (job_id, attempt) not in reported or state != JobState.RUNNING.value
        or cancel is not None or preempt is not None
        for job_id, attempt, state, cancel, preempt in have)



def _listed_after(body: Heartbeat, job: Job) -> float | None:
    """Seconds from the job's start to the node listing its jobs for ``body`` (``None``:
    not known)."""
    if body.listed_at is None or job.started_at is None:
        return None
    listed = body.listed_at if body.listed_at.tzinfo else body.listed_at.replace(tzinfo=UTC)
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC)
    return (listed - started).total_seconds()


def reconcile(session: Session, node: Node, body: Heartbeat, *, now: datetime,
              settings: Settings) -> tuple[HeartbeatReply, bool]:
    """Take the node's word for what it runs and repair any difference with the database
    (``rules.seen_in_heartbeat`` for each of its active jobs, ``rules.run_to_stop`` for
    each run it reports). Also says whether anything the scheduling policy reads changed
    (a job started, ended or failed, the node came back, a GPU's health or foreign
    processes, a job flagged idle): only then is a scheduling cycle worth waking up for."""
    node.last_heartbeat_at = now
    changed = False
    if node.state == NodeState.DOWN.value and node.registered_at is not None:
        node.state, node.state_reason = NodeState.UP.value, ""
        changed = True
    changed |= _record_gpus(node, body, now=now, every_s=settings.gpu_sample_interval_s)

    reported = {(j.job_id, j.attempt): j for j in body.jobs}
    ours = list(session.scalars(
        select(Job).where(Job.node_id == node.id, Job.state.in_(_ACTIVE_STATES))
        .with_for_update(key_share=True).execution_options(populate_existing=True)))
    launch: list[int] = []
    for job in ours:
        seen = reported.get((job.id, job.attempt))
        facts = rules.Facts.of(job)
        waited = (now - (job.dispatched_at or now)).total_seconds()
        outcome = rules.seen_in_heartbeat(facts, seen=seen.state if seen else None,
                                          node=node.name, waited_s=waited,
                                          resend_after_s=settings.dispatch_resend_after_s,
                                          listed_after_start_s=_listed_after(body, job))
        if isinstance(outcome, rules.Resend):
            launch.append(job.id)
            job.dispatched_at = now  # wait a full interval before the next resend
        elif outcome is not None:
            if outcome.state == JobState.RUNNING:
                measures.observe_dispatch(job.dispatched_at, now)
            elif outcome.preempted and job.state == JobState.RUNNING.value:
                charge_job(session, job, until=now, settings=settings)
            writes.apply_one(session, job, outcome, now=now)
            changed = True
        # A run the node says has ended: its final report brings its end sample.
        if seen is not None and seen.sample is not None and seen.state == JobState.RUNNING:
            flagged = job.idle_flagged_at
            record_sample(session, job, seen.sample, now=now,
                          every_s=settings.job_sample_interval_s, settings=settings)
            changed |= job.idle_flagged_at != flagged

    # The reported jobs not among the node's active ones (normally none) need a look.
    by_id = {j.id: j for j in ours}
    others = [job_id for job_id, _ in reported if job_id not in by_id]
    if others:
        by_id.update((j.id, j) for j in session.scalars(select(Job).where(Job.id.in_(others))))
    kill = []
    for (job_id, attempt), run in reported.items():
        if run.state != JobState.RUNNING:
            continue
        job = by_id.get(job_id)
        stop = rules.run_to_stop(job_id, attempt, rules.Facts.of(job) if job else None,
                                 on_this_node=job is not None and job.node_id == node.id,
                                 preempt_grace_s=settings.preempt_grace_s)
        if stop is not None:
            kill.append(JobRef(job_id=stop.job_id, attempt=stop.attempt, grace_s=stop.grace_s))
    return HeartbeatReply(launch=sorted(launch),
                          kill=sorted(kill, key=lambda r: (r.job_id, r.attempt))), changed


def _record_gpus(node: Node, body: Heartbeat, *, now: datetime, every_s: float) -> bool:
    """Keep each GPU's health and foreign processes as reported, and its last sample
    (utilisation, power, memory: what ``gpuq nodes`` and /metrics show) at most every
    ``every_s`` seconds: 200 nodes x 8 GPUs beating every second would otherwise rewrite
    1,600 rows a second for figures nobody reads that often. True if a GPU's health or
    whether it has foreign processes changed (what the policy reads of it)."""
    samples = {s.index: s for s in body.gpus}
    changed = False
    for gpu in node.gpus:
        sample = samples.get(gpu.index)
        if sample is None:
            continue
        changed |= (gpu.healthy != sample.healthy
                    or bool(gpu.foreign_processes) != bool(sample.foreign_processes))
        reason = _health_reason(sample)
        foreign = _foreign(sample)
        if gpu.healthy != sample.healthy or gpu.health_reason != reason:
            gpu.healthy, gpu.health_reason = sample.healthy, reason
        if (gpu.foreign_processes or []) != foreign:
            gpu.foreign_processes = foreign
        if _sample_due(gpu.last_sample, now, every_s):
            gpu.last_sample = _stored_sample(sample, now)
    return changed


def _health_reason(sample: GpuSample) -> str | None:
    return None if sample.healthy else (sample.health_reason or "unhealthy")


def _foreign(sample: GpuSample) -> list[dict[str, Any]]:
    return [p.model_dump() for p in sample.foreign_processes]


def _stored_sample(sample: GpuSample, now: datetime) -> dict[str, Any]:
    """What a GPU row keeps of a sample (``last_sample``), with when it was taken."""
    return {**sample.model_dump(exclude={"index", "foreign_processes", "health_reason"}),
            "sampled_at": now.isoformat()}


def _sample_due(last: dict[str, Any] | None, now: datetime, every_s: float) -> bool:
    at = sampled_at(last)
    return at is None or (now - at).total_seconds() >= every_s


def record_sample(session: Session, job: Job, sample: WireJobSample, *, now: datetime,
                  every_s: float, settings: Settings | None = None) -> None:
    """Keep the job's running totals at every heartbeat, and a row at most every
    ``every_s`` seconds (enough for accounting, bounded for week-long jobs)."""
    if sample.energy_j is not None:
        job.gpu_energy_j = job.gpu_energy_earlier_j + sample.energy_j
    if sample.memory_used_mib is not None:
        job.max_gpu_memory_mib = max(job.max_gpu_memory_mib or 0.0, sample.memory_used_mib)
    if settings is not None:
        accounting.observe(session, job, sample, now=now, settings=settings)
    # The time of the job's last row: kept in its gpu_stats (saves a query a heartbeat);
    # read from the table for a job whose gpu_stats does not have it yet.
    stats = job.gpu_stats or {}
    try:
        last = datetime.fromisoformat(stats["sample_at"])
    except (KeyError, TypeError, ValueError):
        last = session.scalar(select(JobSample.time).where(JobSample.job_id == job.id)
                              .order_by(JobSample.id.desc()).limit(1))
    if last is None or (now - last).total_seconds() >= every_s:
        session.add(JobSample(job_id=job.id, attempt=job.attempt, time=now,
                              utilization_pct=sample.utilization_pct,
                              memory_used_mib=sample.memory_used_mib, power_w=sample.power_w,
                              energy_j=sample.energy_j))
        job.gpu_stats = {**stats, "sample_at": now.isoformat()}


