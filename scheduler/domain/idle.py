"""Idle GPUs: a running job whose GPUs all stay under ``idle_utilization_pct`` for
``idle_window_s`` is flagged idle, and its QOS's action is taken (``idle_actions``):

* ``none``: the flag only (``gpuq q``, ``gpuq show``, the API, the metrics);
* ``notify``: the flag, an event on the job that its owner sees, and the webhook
  (``idle_webhook_url``) when one is set;
* ``cancel``: as notify, then the job is cancelled ``idle_cancel_grace_s`` later unless
  its GPUs got busy again meanwhile (which clears the flag).

Every flag and action is an event on the job. ``observe`` (scheduler/domain/accounting.py) keeps
``idle_since`` at every heartbeat; the loop calls ``enforce`` every cycle.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from gpuq.config import Settings
from gpuq.scheduler.db.models import Job
from gpuq.scheduler.lifecycle import rules, writes
from gpuq.wire.states import JobState

log = logging.getLogger(__name__)
#: Seconds a webhook POST may take.
WEBHOOK_TIMEOUT_S = 5.0


@dataclass
class IdleResult:
    #: Jobs to kill now (job id, node): cancelled for being idle.
    kills: list[tuple[int, str]] = field(default_factory=list)
    #: What to POST to the webhook once the transaction has committed.
    notices: list[dict[str, Any]] = field(default_factory=list)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min"


def _event(session: Session, job: Job, now: datetime, reason: str) -> None:
    writes.apply_one(session, job, rules.note(rules.Facts.of(job), reason), now=now)


def enforce(session: Session, *, now: datetime, settings: Settings) -> IdleResult:
    """Flag the jobs idle for the window, and cancel those whose grace is over."""
    result = IdleResult()
    window = timedelta(seconds=settings.idle_window_s)
    grace = timedelta(seconds=settings.idle_cancel_grace_s)
    jobs = session.scalars(select(Job).where(Job.state == JobState.RUNNING.value,
                                             Job.idle_since.is_not(None)))
    for job in jobs:
        if job.cancel_requested_at is not None or job.idle_since is None:
            continue
        if job.idle_flagged_at is None:
            if now - job.idle_since < window:
                continue
            _flag(session, job, now, settings, result)
        elif job.idle_action == "cancel-pending" and now - job.idle_flagged_at >= grace:
            job.idle_action = "cancelled"
            writes.apply_one(session, job, rules.request_cancel(
                rules.Facts.of(job), f"idle: cancelled (GPUs under "
                f"{settings.idle_utilization_pct:g}% since "
                f"{job.idle_since:%Y-%m-%d %H:%M:%S} UTC; QOS {job.qos})"), now=now)
            if job.node is not None:
                result.kills.append((job.id, job.node.name))
            result.notices.append(_notice(job, "cancelled", now))
    return result


def _flag(session: Session, job: Job, now: datetime, settings: Settings,
          result: IdleResult) -> None:
    action = settings.idle_action(job.qos)
    job.idle_flagged_at = now
    under = (f"idle: every GPU under {settings.idle_utilization_pct:g}% for "
             f"{_minutes(settings.idle_window_s)}")
    if action == "none":
        job.idle_action = "none"
        _event(session, job, now, f"{under} (QOS {job.qos}: no action)")
        return
    if action == "cancel":
        job.idle_action = "cancel-pending"
        when = now + timedelta(seconds=settings.idle_cancel_grace_s)
        _event(session, job, now, f"{under}; {job.user.name} notified: cancelled at "
               f"{when:%Y-%m-%d %H:%M:%S} UTC unless its GPUs get busy (QOS {job.qos})")
    else:
        job.idle_action = "notified"
        _event(session, job, now, f"{under}; {job.user.name} notified (QOS {job.qos})")
    result.notices.append(_notice(job, job.idle_action, now))


def _notice(job: Job, action: str, now: datetime) -> dict[str, Any]:
    return {"event": "job.idle", "action": action, "job_id": job.id, "name": job.name,
            "user": job.user.name, "account": job.account.name, "qos": job.qos,
            "node": job.node.name if job.node else None,
            "idle_since": job.idle_since.isoformat() if job.idle_since else None,
            "time": now.isoformat()}


def send_notices(url: str, notices: list[dict[str, Any]]) -> None:
    """POST each notice to ``url`` in a background thread (best effort: failures are
    logged; the events on the jobs are the record)."""
    if not url or not notices:
        return

    def post() -> None:
        for body in notices:
            try:
                httpx.post(url, json=body, timeout=WEBHOOK_TIMEOUT_S).raise_for_status()
            except httpx.HTTPError as e:
                log.warning("idle webhook %s: job %s: %s", url, body.get("job_id"), e)

    threading.Thread(target=post, name="gpuq-idle-webhook", daemon=True).start()
