"""Per-job accounting: what a job's GPUs did (from the worker's samples), what it was
charged (GPU-hours, billed GPU-hours, energy, carbon), and its closing when it has ended.

At every heartbeat ``observe`` integrates the job's sample over the time since the
previous one (left Riemann sum: NVML's utilisation describes the period before the
reading; the run's first sample covers the time since it started): per GPU, the seconds
sampled, the busy seconds (utilisation x time) and the seconds under
``idle_utilization_pct``; the peaks of utilisation and memory; and whether every GPU is
idle now (``idle_since``). A gap longer than ``node_down_after_s`` is not counted
(nothing is known about it).

A run's last heartbeat comes up to a heartbeat interval before its end. The worker reads
the job's GPUs again when the job's process has ended and sends that sample with the final
report (``JobStateReport.end_sample``); ``observe_end`` takes it as the run's last sample,
at the end's time: the energy is the counter's at the end, and the sampled seconds reach
the end. (Before it, a 12 s job at 2 x 400 W with heartbeats every 5 s was charged 6,908
J of its 9,653: the energy from the last heartbeat to the end was never counted.)

Every charge interval (``scheduler.usage.charge_job``) ``charge_interval`` puts the
increase of the job's totals since the last charge on that interval's ``UsageRecord``:
energy (the worker's figure: NVML's cumulative counter where the card has one, else the
integral of the sampled power), its carbon (energy x the node's grid intensity), and the
sampled, busy and idle GPU-seconds. So the sum of a job's records is the job's total, and
every report built from the records adds up to the sum over its jobs.

``close`` runs once the job has ended and its end was charged: what is left uncharged (a
sample that came after the last charge) goes on one last record, and the job is final.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.scheduler.db.models import Job, UsageRecord
from gpuq.scheduler.lifecycle import rules, writes
from gpuq.wire.jobs import GpuAccounting, JobAccounting
from gpuq.wire.nodes import JobEndSample
from gpuq.wire.nodes import JobSample as WireJobSample
from gpuq.wire.states import JobState

J_PER_KWH = 3.6e6
#: The totals ``charge_interval`` moves onto usage records, job column -> record column.
CHARGED = (("energy_j", "energy_j"), ("gpu_sampled_s", "sampled_gpu_seconds"),
           ("gpu_busy_s", "busy_gpu_seconds"), ("idle_gpu_s", "idle_gpu_seconds"))


def _stats(job: Job) -> dict[str, Any]:
    """A fresh copy of ``gpu_stats`` (the column is replaced, never changed in place)."""
    raw = job.gpu_stats or {}
    return {"at": raw.get("at"), "attempt": raw.get("attempt"),
            "gpus": {k: dict(v) for k, v in (raw.get("gpus") or {}).items()},
            "charged": dict(raw.get("charged") or {}),
            "intensity": raw.get("intensity"),
            # When the job's last ``JobSample`` row was stored (``record_sample``'s).
            "sample_at": raw.get("sample_at")}


def _total(job: Job, key: str) -> float:
    if key == "energy_j":
        return float(job.gpu_energy_j or 0.0)
    return float(getattr(job, key) or 0.0)


def observe(session: Session, job: Job, sample: WireJobSample, *, now: datetime,
            settings: Settings) -> None:
    """Integrate one heartbeat's sample of a running job; keep its idle state."""
    stats = _stats(job)
    at = stats["at"] if stats["attempt"] == job.attempt else None
    if at is None and job.started_at is not None:  # the run's first sample
        at = job.started_at.timestamp()
    dt = 0.0
    if at is not None:
        dt = now.timestamp() - float(at)
        if not 0.0 < dt <= settings.node_down_after_s:
            dt = 0.0
    if stats["attempt"] != job.attempt:  # a new run: per-GPU figures are the last run's
        stats["gpus"], stats["attempt"] = {}, job.attempt
    stats["at"] = now.timestamp()
    gpus = sample.gpus or []
    if not gpus and sample.utilization_pct is not None:  # an older worker: the mean only
        gpus = [_mean_as_gpu(i, sample) for i in job.gpu_indices or [0]]
    threshold = settings.idle_utilization_pct
    utils: list[float] = []
    for g in gpus:
        rec = stats["gpus"].setdefault(str(g.index), {})
        if g.utilization_pct is not None:
            util = float(g.utilization_pct)
            utils.append(util)
            idle = dt if util < threshold else 0.0
            rec["sampled_s"] = rec.get("sampled_s", 0.0) + dt
            rec["busy_s"] = rec.get("busy_s", 0.0) + util / 100.0 * dt
            rec["idle_s"] = rec.get("idle_s", 0.0) + idle
            rec["peak"] = max(rec.get("peak", 0.0), util)
            job.gpu_sampled_s = (job.gpu_sampled_s or 0.0) + dt
            job.gpu_busy_s = (job.gpu_busy_s or 0.0) + util / 100.0 * dt
            job.idle_gpu_s = (job.idle_gpu_s or 0.0) + idle
            job.gpu_util_peak_pct = max(job.gpu_util_peak_pct or 0.0, util)
        if g.memory_used_mib is not None:
            rec["mem_peak"] = max(rec.get("mem_peak", 0.0), float(g.memory_used_mib))
        if g.energy_j is not None:
            rec["energy_j"], rec["method"] = float(g.energy_j), g.energy_method
    job.gpu_stats = stats
    if not utils:
        return
    if all(u < threshold for u in utils):
        if job.idle_since is None:
            job.idle_since = now
    else:
        job.idle_since = None
        if job.idle_flagged_at is not None:
            job.idle_flagged_at = None
            was = job.idle_action
            job.idle_action = ""
            busy = "idle: its GPUs are busy again" + (
                " (the idle cancel is off)" if was == "cancel-pending" else "")
            # ``job``: a Job, or the steady heartbeat's row of one (services/heartbeats.py)
            facts = rules.Facts(job.id, JobState(job.state))
            writes.apply_one(session, job, rules.note(facts, busy), now=now)


def observe_end(session: Session, job: Job, end: JobEndSample, *, now: datetime,
                settings: Settings) -> datetime:
    """Take a running job's end sample (its final report's, received at ``now``) as its
    last: the run's energy is the figure at its end (never less than a heartbeat's), and
    its utilisation is integrated up to its end. Returns the end's time (``now`` less
    the seconds the worker says the end is old, not before the run started).

    Once per run: the caller applies it with the report that ends the run (a repeat of
    that report changes nothing, so nothing is counted twice)."""
    ended = now - timedelta(seconds=end.ended_s_ago)
    if job.started_at is not None:
        ended = max(ended, job.started_at)
    sample = end.sample
    if sample.energy_j is not None:
        run_j = float(job.gpu_energy_earlier_j or 0.0) + sample.energy_j
        job.gpu_energy_j = max(run_j, float(job.gpu_energy_j or 0.0))
    if sample.memory_used_mib is not None:
        job.max_gpu_memory_mib = max(job.max_gpu_memory_mib or 0.0, sample.memory_used_mib)
    observe(session, job, sample, now=ended, settings=settings)
    return ended


def _mean_as_gpu(index: int, sample: WireJobSample) -> Any:
    from gpuq.wire.nodes import JobGpuSample

    return JobGpuSample(index=index, utilization_pct=sample.utilization_pct)


def charge_interval(job: Job, record: UsageRecord, *, node: str | None,
                    settings: Settings) -> None:
    """Put what the job used since its last charge on ``record`` (and on its totals)."""
    stats = _stats(job)
    charged = stats["charged"]
    for total_key, record_key in CHARGED:
        delta = max(0.0, _total(job, total_key) - float(charged.get(total_key, 0.0)))
        setattr(record, record_key, delta)
        charged[total_key] = float(charged.get(total_key, 0.0)) + delta
    intensity = settings.carbon_intensity(node)
    record.carbon_g = record.energy_j / J_PER_KWH * intensity
    stats["intensity"] = intensity
    job.gpu_stats = stats
    job.gpu_seconds = (job.gpu_seconds or 0.0) + record.gpu_seconds
    job.billed_seconds = (job.billed_seconds or 0.0) + record.billed_seconds
    job.carbon_g = (job.carbon_g or 0.0) + record.carbon_g


def _uncharged(job: Job) -> bool:
    charged = (job.gpu_stats or {}).get("charged") or {}
    return any(_total(job, k) - float(charged.get(k, 0.0)) > 1e-9 for k, _ in CHARGED)


def close_ended(session: Session, *, now: datetime, settings: Settings) -> list[Job]:
    """Close the accounting of every ended job whose end was charged; returns them."""
    jobs = list(session.scalars(select(Job).where(
        Job.ended_at.is_not(None), Job.accounted_at.is_(None))))
    closed = []
    for job in jobs:
        if job.started_at is not None and (job.charged_until is None
                                           or job.ended_at is None
                                           or job.charged_until < job.ended_at):
            continue  # its end is not charged yet
        if job.started_at is not None and _uncharged(job):
            end = job.ended_at or now
            record = UsageRecord(job_id=job.id, user_id=job.user_id, account_id=job.account_id,
                                 start=end, end=end, gpu_seconds=0.0, billed_seconds=0.0,
                                 gpu_model=_last_model(session, job))
            charge_interval(job, record, node=job.node.name if job.node else None,
                            settings=settings)
            session.add(record)
        job.idle_since = None
        job.accounted_at = now
        closed.append(job)
    return closed


def _last_model(session: Session, job: Job) -> str:
    return session.scalar(select(UsageRecord.gpu_model).where(UsageRecord.job_id == job.id)
                          .order_by(UsageRecord.id.desc()).limit(1)) or (job.gpu_model or "")


def energy_method(methods: set[str | None]) -> str | None:
    known = {m for m in methods if m}
    if not known:
        return None
    return known.pop() if len(known) == 1 else "mixed"


def read(job: Job, gpu_memory: dict[int, int]) -> JobAccounting | None:
    """The job's accounting for the API (``None`` before it ever ran); ``gpu_memory``: its
    node's GPUs' memory (MiB) by index."""
    if job.started_at is None and not job.gpu_seconds and job.attempt == 0:
        return None
    stats = job.gpu_stats or {}
    gpus = []
    for key, g in sorted((stats.get("gpus") or {}).items(), key=lambda kv: int(kv[0])):
        sampled = float(g.get("sampled_s", 0.0))
        gpus.append(GpuAccounting(
            index=int(key),
            utilization_mean_pct=round(100.0 * g.get("busy_s", 0.0) / sampled, 2)
            if sampled > 0 else None,
            utilization_peak_pct=g.get("peak"), memory_peak_mib=g.get("mem_peak"),
            memory_mib=gpu_memory.get(int(key)), energy_j=g.get("energy_j"),
            energy_method=g.get("method")))
    sampled = float(job.gpu_sampled_s or 0.0)
    return JobAccounting(
        gpu_hours=round((job.gpu_seconds or 0.0) / 3600.0, 6),
        billed_gpu_hours=round((job.billed_seconds or 0.0) / 3600.0, 6),
        energy_kwh=round(job.gpu_energy_j / J_PER_KWH, 6) if job.gpu_energy_j is not None
        else None,
        energy_method=energy_method({g.energy_method for g in gpus}),
        carbon_kg=round((job.carbon_g or 0.0) / 1000.0, 6),
        carbon_intensity_g_per_kwh=stats.get("intensity"),
        utilization_mean_pct=round(100.0 * (job.gpu_busy_s or 0.0) / sampled, 2)
        if sampled > 0 else None,
        utilization_peak_pct=job.gpu_util_peak_pct,
        idle_gpu_hours=round((job.idle_gpu_s or 0.0) / 3600.0, 6),
        gpus=gpus, idle=job.idle_flagged_at is not None, idle_since=job.idle_since,
        idle_flagged_at=job.idle_flagged_at, idle_action=job.idle_action or "",
        final=job.accounted_at is not None)
