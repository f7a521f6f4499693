"""``gpuq why``: why a job waits (its place in the queue, its reason, its priority beside
the job ahead of it, its estimated start), or what it is doing if it no longer waits."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import click

from gpuq.cli.context import Env, echo_json, pass_env
from gpuq.cli.render import (
    ACTIVE_STATES,
    PENDING_STATES,
    TERMINAL_STATES,
    elapsed_s,
    estimate_text,
    factors_text,
    local_time,
    state_label,
)
from gpuq.cli.units import format_duration


def _row(label: str, value: str) -> str:
    return f"{label + ':':<12} {value}"


def why_text(why: Mapping[str, Any], now: datetime, job: Mapping[str, Any] | None = None) -> str:
    """``why`` is a ``WhyRead`` dict; ``job`` the ``JobRead`` of a job that no longer waits
    (for where and since when it runs, or how it ended)."""
    jid, state = why["id"], str(why["state"])
    reason = str(why.get("reason") or "")
    if state not in PENDING_STATES:
        return not_pending_text(job or why, now)
    lines = [f"Job {jid} is {state}" + (f": {reason}" if reason else "")]
    position, pending = why.get("position"), why.get("pending")
    if position is not None:
        lines.append(_row("Position", f"{position} of {pending} pending"
                                      + (" (next in line)" if position == 1 else "")))
    factors = why.get("factors")
    lines.append(_row("Priority", factors_text(factors) if factors else
                      "not computed yet (no scheduling cycle since the job was submitted)"))
    ahead = why.get("ahead")
    if ahead:
        theirs = ahead.get("factors")
        lines.append(_row("Ahead", f"job {ahead['id']} ({ahead.get('user')}, "
                                   f"{ahead.get('account')}), priority "
                                   + (factors_text(theirs) if theirs else "not computed yet")))
    lines.append(_row("Est. start", estimate_text(why.get("estimated_start"), now)))
    return "\n".join(lines)


def not_pending_text(job: Mapping[str, Any], now: datetime) -> str:
    """One line for a job that no longer waits: where it runs and since when, or how it
    ended. ``job`` is a ``JobRead`` dict (a ``WhyRead`` one gives less)."""
    jid, state = job["id"], state_label(job)
    reason = str(job.get("reason") or "")
    node = job.get("node")
    if job["state"] in ACTIVE_STATES:
        where = ""
        if node:
            idx = ",".join(str(i) for i in job.get("gpu_indices") or [])
            where = f" on {node}" + (f" (GPUs {idx})" if idx else "")
        text = f"Job {jid} is not waiting: it is {state}{where}"
        if job.get("started_at"):
            text += (f" since {local_time(job['started_at'])} "
                     f"(for {format_duration(elapsed_s(job, now))})")
        elif job["state"] == "DISPATCHED":
            text += ", starting"
        return text
    if job["state"] in TERMINAL_STATES:
        text = f"Job {jid} is not waiting: it ended {state}"
        if job.get("ended_at"):
            text += f" at {local_time(job['ended_at'])}"
        details = []
        if job.get("exit_code") is not None:
            details.append(f"exit code {job['exit_code']}")
        if reason and reason not in details:
            details.append(reason)
        return text + (f" ({'; '.join(details)})" if details else "")
    return f"Job {jid} is {state}" + (f": {reason}" if reason else "")


@click.command("why")
@click.argument("job_id", type=int, metavar="JOB")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@pass_env
def why(env: Env, job_id: int, as_json: bool) -> None:
    """Why a job is waiting: its position in the queue, the reason, its priority factors
    beside those of the job ahead of it, and its estimated start (once backfill planned
    one)."""
    with env.client() as api:
        answer = api.get(f"/v1/jobs/{job_id}/why", not_found=f"no job {job_id}")
        job = None
        if not as_json and answer.get("state") not in PENDING_STATES:
            job = api.get(f"/v1/jobs/{job_id}", not_found=f"no job {job_id}")
    if as_json:
        echo_json(answer)
    else:
        click.echo(why_text(answer, datetime.now(UTC), job))
