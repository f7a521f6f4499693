"""``gpuq admin grant ...`` and ``gpuq admin grants``: allocation awards to accounts.

A share grant adds raw shares to an account for a window (until a budget of billed
GPU-hours is used, if it has one); a reservation keeps GPUs for the account's jobs, lent to
others while idle and taken back by preemption."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from gpuq.cli.adminapi import call, drop_none
from gpuq.cli.client import CliError
from gpuq.cli.context import Env, echo_json, pass_env
from gpuq.cli.grant_render import GRANT_STATES, grant_detail, grants_table, line_text
from gpuq.cli.render import echo_table
from gpuq.cli.units import DurationType, GpuHoursType
from gpuq.cli.when import EXAMPLES, iso_utc, local, parse_when


def _when(option: str, text: str | None, now: datetime) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_when(text, now)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=option) from None


def window(start_text: str | None, end_text: str | None, for_s: int | None,
           now: datetime) -> tuple[datetime | None, datetime]:
    """``(start, end)`` from the options; start ``None``: now, by the server's clock. A
    window given by its length (``--for``) that starts now starts at ``now``, to the
    second, so that it is exactly that long."""
    if end_text is not None and for_s is not None:
        raise click.UsageError("give --end or --for, not both")
    if end_text is None and for_s is None:
        raise click.UsageError("give the end of the window: --end WHEN or --for DURATION "
                               "(e.g. --for 30d)")
    start = _when("--start", start_text, now)
    if start_text is not None and start_text.strip().lower() == "now":
        start = None
    if start is None and for_s is not None:
        start = now.replace(microsecond=0)
    end = _when("--end", end_text, now) if end_text else \
        (start or now) + timedelta(seconds=for_s or 0)
    assert end is not None
    if end <= (start or now):
        raise click.UsageError(f"the window ends ({local(end)}) before it starts "
                               f"({local(start or now)})")
    return start, end


def create_body(account: str, *, share: int | None, budget: float | None,
                reserve: int | None, gpu_model: str | None, nodes: tuple[str, ...],
                start: datetime | None, end: datetime, note: str | None) -> dict[str, Any]:
    """The ``GrantCreate`` body; usage errors for options of the other kind."""
    if (share is None) == (reserve is None):
        raise click.UsageError("give --share N (raw shares added while it is active) or "
                               "--reserve N (GPUs kept for the account)" +
                               (", not both" if share is not None else ""))
    if share is not None and (gpu_model or nodes):
        raise click.UsageError("--gpu-model and --node are for reservations (--reserve)")
    if reserve is not None and budget is not None:
        raise click.UsageError("--budget is for share grants (--share): a reservation's "
                               "size is its GPUs and window")
    names = [n.strip() for arg in nodes for n in arg.split(",") if n.strip()]
    return drop_none(account=account, kind="share" if share is not None else "reservation",
                     start=iso_utc(start) if start else None, end=iso_utc(end), note=note,
                     shares=share, gpu_hours=budget, gpus=reserve, gpu_model=gpu_model,
                     nodes=names or None)


@click.group("grant")
def grant() -> None:
    """Grants: shares or reserved GPUs given to an account for a window of time."""


@grant.command("create")
@click.argument("account")
@click.option("--share", type=click.IntRange(1), metavar="N",
              help="A share grant: N raw shares added to the account's while it is active.")
@click.option("--budget", type=GpuHoursType(),
              help="Share grants: it ends once the account used this many billed GPU-hours "
                   "in the window (5000h) [no budget].")
@click.option("--reserve", type=click.IntRange(1), metavar="N",
              help="A reservation: N GPUs kept for the account's jobs (lent to other jobs "
                   "while idle; those are preempted when the account needs them).")
@click.option("--gpu-model", metavar="MODEL", help="Reservations: GPUs of this model.")
@click.option("--node", "nodes", multiple=True, metavar="NODE",
              help="Reservations: GPUs on these nodes only (repeatable, or a,b).")
@click.option("--start", "start_text", metavar="WHEN", help=f"Start: {EXAMPLES} [now].")
@click.option("--end", "end_text", metavar="WHEN", help="End (excluded), as --start.")
@click.option("--for", "for_s", type=DurationType(), metavar="DURATION",
              help="Or the length of the window: 30d, 12h, 2w.")
@click.option("--note", help="A note for people: the award, the ticket.")
@click.option("--json", "as_json", is_flag=True, help="Print the grant as JSON.")
@pass_env
def grant_create(env: Env, account: str, share: int | None, budget: float | None,
                 reserve: int | None, gpu_model: str | None, nodes: tuple[str, ...],
                 start_text: str | None, end_text: str | None, for_s: int | None,
                 note: str | None, as_json: bool) -> None:
    """Give ACCOUNT a grant for a window of time.

    \b
      gpuq admin grant create qlab --share 100 --budget 5000h --for 30d
      gpuq admin grant create qlab --reserve 8 --gpu-model A100-80GB \\
          --start 2027-01-01 --end 2027-02-01 --note "ERC award"

    A time without a zone is local time. A reservation is refused (naming the grants in
    the way) if, at some moment of its window, the cluster's GPUs could not hold it
    beside the other reservations.
    """
    now = datetime.now(UTC)
    start, end = window(start_text, end_text, for_s, now)
    body = create_body(account, share=share, budget=budget, reserve=reserve,
                       gpu_model=gpu_model, nodes=nodes, start=start, end=end, note=note)
    try:
        g = call(env, "POST", "/grants", json=body, what="grant")
    except CliError as e:
        raise with_conflicts(env, e) from None
    if as_json:
        echo_json(g)
    else:
        click.echo(f"Created {line_text(g)}")


def with_conflicts(env: Env, error: CliError) -> CliError:
    """A 409 naming conflicting grants, with a line for each of them (when they can be
    read)."""
    detail = error.detail
    if error.status != 409 or not isinstance(detail, Mapping) or not detail.get("conflicts"):
        return error
    lines = [error.format_message()]
    for gid in detail["conflicts"]:
        try:
            lines.append("  " + line_text(call(env, "GET", f"/grants/{int(gid)}")))
        except (CliError, ValueError, TypeError, KeyError):
            lines.append(f"  grant {gid}")
    return CliError("\n".join(lines), error.exit_code, status=error.status, detail=detail)


@grant.command("update")
@click.argument("grant_id", type=int, metavar="ID")
@click.option("--end", "end_text", metavar="WHEN", help=f"A new end: {EXAMPLES}.")
@click.option("--note", help="A new note.")
@click.option("--budget", type=GpuHoursType(),
              help="A new budget of billed GPU-hours (share grants).")
@pass_env
def grant_update(env: Env, grant_id: int, end_text: str | None, note: str | None,
                 budget: float | None) -> None:
    """Change a grant that has not ended: its end, note or budget."""
    end = _when("--end", end_text, datetime.now(UTC))
    body = drop_none(end=iso_utc(end) if end else None, note=note, gpu_hours=budget)
    if not body:
        raise click.UsageError("nothing to change: give --end, --note or --budget")
    try:
        g = call(env, "PATCH", f"/grants/{grant_id}", json=body, what="grant",
                 not_found=f"no grant {grant_id}", idempotent=True)
    except CliError as e:
        raise with_conflicts(env, e) from None
    click.echo(f"Updated {line_text(g)}")


@grant.command("revoke")
@click.argument("grant_id", type=int, metavar="ID")
@click.option("--reason", required=True, help="Why, for people (kept in the audit log).")
@pass_env
def grant_revoke(env: Env, grant_id: int, reason: str) -> None:
    """Revoke a grant now: its shares or reserved GPUs are gone at once."""
    g = call(env, "POST", f"/grants/{grant_id}/revoke", json={"reason": reason}, what="revoke",
             not_found=f"no grant {grant_id}", idempotent=True)
    click.echo(f"Revoked grant {g['id']} of {g['account']}"
               + (f": {g['state_reason']}" if g.get("state_reason") else ""))


@grant.command("show")
@click.argument("grant_id", type=int, metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the grant as JSON.")
@pass_env
def grant_show(env: Env, grant_id: int, as_json: bool) -> None:
    """Show one grant: what it gives, its window and state, and what was used of it."""
    g = call(env, "GET", f"/grants/{grant_id}", not_found=f"no grant {grant_id}")
    if as_json:
        echo_json(g)
    else:
        click.echo(grant_detail(g, datetime.now(UTC)))


@click.command("grants")
@click.option("-A", "--account", help="Only this account's grants.")
@click.option("--state", type=click.Choice(GRANT_STATES), help="Only grants in this state.")
@click.option("--kind", type=click.Choice(("share", "reservation")),
              help="Only grants of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print the grants as JSON.")
@pass_env
def grants(env: Env, account: str | None, state: str | None, kind: str | None,
           as_json: bool) -> None:
    """List grants and what was used of each: GPU-hours used (against the budget of a
    share grant, against the reserved GPU-hours so far of a reservation), GPU-hours other
    jobs borrowed of a reservation, and the preemptions that gave them back."""
    data = call(env, "GET", "/grants",
                params=drop_none(account=account, state=state, kind=kind) or None)
    if as_json:
        echo_json(data)
    elif not data:
        click.echo("No grants" + (" match" if account or state or kind else " yet"))
    else:
        echo_table(grants_table(data))


grant.add_command(grants, "list")
