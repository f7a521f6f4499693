"""``gpuq q``, ``gpuq show``, ``gpuq cancel``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from gpuq.cli.client import EXIT_ERROR, CliError
from gpuq.cli.context import Env, echo_json, pass_env
from gpuq.cli.render import (
    ACTIVE_STATES,
    ALL_STATES,
    BORROW_NOTE,
    IDLE_NOTE,
    TERMINAL_STATES,
    borrowing,
    echo_table,
    idle,
    job_detail,
    jobs_table,
)


@click.command("q")
@click.option("--me", is_flag=True, help="Only my jobs.")
@click.option("-u", "--user", help="Only this user's jobs.")
@click.option("-A", "--account", help="Only this account's jobs.")
@click.option("--state", "states", multiple=True, metavar="STATE",
              type=click.Choice(ALL_STATES, case_sensitive=False),
              help="Only jobs in this state (repeatable); implies ended jobs may show.")
@click.option("-w", "--node", help="Only jobs on this node.")
@click.option("-a", "--all", "show_all", is_flag=True, help="Include ended jobs.")
@click.option("-n", "--limit", type=click.IntRange(1, 10000), help="At most this many jobs.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the jobs as JSON: whole jobs, as `gpuq show --json` prints them.")
@click.option("--brief", is_flag=True,
              help="With --json: only what the table shows of each job (the API's JobBrief; "
                   "much faster for a long queue).")
@pass_env
def queue(env: Env, me: bool, user: str | None, account: str | None, states: tuple[str, ...],
          node: str | None, show_all: bool, limit: int | None, as_json: bool,
          brief: bool) -> None:
    """Show the queue: everyone's pending and running jobs (like squeue).

    The table reads the brief listing (``view=brief``); ``--json`` prints whole jobs
    (``JobRead``, for scripts) unless ``--brief`` is given."""
    if me and user:
        raise click.UsageError("give --me or --user, not both")
    with env.client() as api:
        if me:
            user = api.get("/v1/whoami").get("user")
            if not user:
                raise CliError("--me: this token belongs to no user")
        params: dict[str, Any] = {"state": [s.upper() for s in states]}
        if not states and not show_all:
            params["active"] = "true"
        for key, value in (("user", user), ("account", account), ("node", node),
                           ("limit", limit)):
            if value is not None:
                params[key] = value
        if brief or not as_json:
            params["view"] = "brief"
        jobs = api.get("/v1/jobs", params=params)
    if as_json:
        echo_json(jobs)
    else:
        echo_table(jobs_table(jobs, datetime.now(UTC)))
        if any(borrowing(j) for j in jobs):
            click.echo(BORROW_NOTE)
        if any(idle(j) for j in jobs):
            click.echo(IDLE_NOTE)


@click.command("show")
@click.argument("job_id", type=int, metavar="JOB")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@pass_env
def show(env: Env, job_id: int, as_json: bool) -> None:
    """Show one job in detail, with its history."""
    with env.client() as api:
        job = api.get(f"/v1/jobs/{job_id}", not_found=f"no job {job_id}")
    if as_json:
        echo_json(job)
    else:
        click.echo(job_detail(job, datetime.now(UTC)))


def cancel_message(job: dict[str, Any]) -> str:
    jid, state = job["id"], job["state"]
    if state == "CANCELLED":
        return f"Cancelled job {jid}"
    if state in TERMINAL_STATES:
        return f"Job {jid} had already ended ({state})"
    if state in ACTIVE_STATES:
        return f"Cancel requested for job {jid} ({state.lower()} on {job.get('node') or '?'})"
    return f"Cancel requested for job {jid} ({state})"


def array_cancel_message(out: dict[str, Any]) -> str:
    asked = out.get("cancel_requested") or []
    text = f"Cancelled array job {out['array_job_id']}: {out['cancelled']} waiting"
    if asked:
        text += f"; cancel requested for {len(asked)} running"
    return text


@click.command("cancel")
@click.argument("job_ids", nargs=-1, required=True, type=int, metavar="JOB...")
@click.option("--array", "arrays", is_flag=True,
              help="Each JOB is an array's id: cancel all its elements (like scancel of an "
                   "array's id); without it, JOB is one job (or one element).")
@pass_env
def cancel(env: Env, job_ids: tuple[int, ...], arrays: bool) -> None:
    """Cancel jobs: a pending job ends at once, a running one when its node has killed it.

    Goes on past a job it cannot cancel (unknown, not yours), and exits non-zero then.
    """
    failed = False
    with env.client() as api:
        for jid in job_ids:
            try:
                if arrays:
                    out = api.post(f"/v1/jobs/array/{jid}/cancel", what="job array",
                                   not_found=f"no job array {jid}", idempotent=True)
                    click.echo(array_cancel_message(out))
                    continue
                job = api.post(f"/v1/jobs/{jid}/cancel", what="job", not_found=f"no job {jid}",
                               idempotent=True)
            except CliError as e:
                if e.status is None or e.status == 401 or e.status >= 500:
                    raise  # unreachable, bad token, server down: the next would fail too
                e.show()
                failed = True
                continue
            click.echo(cancel_message(job))
    if failed:
        click.get_current_context().exit(EXIT_ERROR)
