"""What happens to the runs on a node: its launch spec, its state reports, and its loss.

Each goes through the lifecycle's rules (``rules.reported``, ``rules.node_lost``) and its
writer; this module reads the jobs and charges usage where a run ends."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.scheduler import measures
from gpuq.scheduler.db.models import Job, Node, effective_spec
from gpuq.scheduler.domain import accounting
from gpuq.scheduler.domain.usage import charge_job
from gpuq.scheduler.errors import NotFound
from gpuq.scheduler.lifecycle import rules, writes
from gpuq.wire.nodes import JobStateReport, LaunchSpec
from gpuq.wire.states import ACTIVE, JobState, NodeState


def job_for_node(session: Session, node: Node, job_id: int, *, lock: bool = False) -> Job:
    job = (session.get(Job, job_id, populate_existing=True, with_for_update={"key_share": True})
           if lock else session.get(Job, job_id))
    if job is None or job.node_id != node.id:
        raise NotFound(f"job {job_id} is not assigned to node {node.name}")
    return job


def launch_spec(job: Job, *, settings: Settings) -> LaunchSpec:
    """What the node needs to start ``job``: its spec as it runs (an array element's own
    variables over the spec its array shares: ``effective_spec``)."""
    uuids = {g.index: g.uuid for g in job.node.gpus} if job.node else {}
    command, script, environment = effective_spec(job, job.spec)
    return LaunchSpec(
        job_id=job.id, attempt=job.attempt, name=job.name, user=job.user.name,
        unix_user=job.user.unix_user or job.user.name, account=job.account.name,
        state=job.state, cancel_requested=job.cancel_requested_at is not None,
        command=command, script=script, workdir=job.workdir,
        environment=dict(environment), gpu_indices=list(job.gpu_indices or []),
        gpu_uuids=[uuids.get(i, "") for i in job.gpu_indices or []],
        cpus=job.cpus, memory_mib=job.memory_mib, time_limit_s=job.time_limit_s,
        preempt_requested=job.preempt_requested_at is not None,
        kill_grace_s=settings.preempt_grace_s
        if job.preempt_requested_at is not None else None,
    )


def report_state(session: Session, job: Job, body: JobStateReport, *, now: datetime,
                 settings: Settings) -> str:
    """Apply a node's report (``rules.reported``): the job's state after it. Repeats, late
    reports and reports about an earlier attempt are accepted and change nothing. A report
    that ends a running job takes its end sample first (``accounting.observe_end``)."""
    change = rules.reported(rules.Facts.of(job), attempt=body.attempt, state=body.state,
                            reason=body.reason or "", exit_code=body.exit_code,
                            node=job.node.name if job.node is not None else "its node")
    if change is None:
        return job.state
    if change.state == JobState.RUNNING:
        measures.observe_dispatch(job.dispatched_at, now)
    if (change.ends_run and body.end_sample is not None
            and job.state == JobState.RUNNING.value):
        # The job's GPUs at its end: its usage counts up to the end, not the last beat.
        accounting.observe_end(session, job, body.end_sample, now=now, settings=settings)
    if change.preempted and job.state == JobState.RUNNING.value:
        charge_job(session, job, until=now, settings=settings)  # its usage up to now first
    writes.apply_one(session, job, change, now=now)
    return job.state


def mark_down(session: Session, node: Node, *, now: datetime, reason: str,
              settings: Settings) -> list[Job]:
    """A node stopped answering: DOWN. Its active jobs end as NODE_FAIL; those that allow
    it go back to the queue (a new attempt, elsewhere or here once the node is back).
    Their usage is charged up to the node's last heartbeat, the last sign they ran."""
    node.state, node.state_reason = NodeState.DOWN.value, reason
    jobs = list(session.scalars(
        select(Job).where(Job.node_id == node.id, Job.state.in_([s.value for s in ACTIVE]))
        .with_for_update(key_share=True).execution_options(populate_existing=True)))
    lost = []
    for job in jobs:
        if job.state == JobState.RUNNING.value and node.last_heartbeat_at is not None:
            charge_job(session, job, until=node.last_heartbeat_at, settings=settings)
            job.charged_until = now  # the silent time is not charged
        lost.append((job, rules.node_lost(rules.Facts.of(job), node=node.name, reason=reason)))
    writes.apply(session, lost, now=now)
    return jobs


