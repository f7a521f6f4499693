"""``gpuq admin``: accounts, users, tokens, nodes, usage history, grants and the audit
log, through /v1/admin with the admin token. Each object's commands live in their own
module; nodes, tokens and usage (a few commands each) live here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from gpuq.cli.admin_accounts import account
from gpuq.cli.admin_users import user
from gpuq.cli.adminapi import call as _call
from gpuq.cli.adminapi import drop_none as _drop_none
from gpuq.cli.audit import audit
from gpuq.cli.client import CliError
from gpuq.cli.context import Env, echo_json, pass_env
from gpuq.cli.grants import grant, grants
from gpuq.cli.render import echo_table, parse_time, plain_table
from gpuq.cli.units import DurationType, format_duration
from gpuq.cli.usage import FORMATS, import_error_text, read_usage_file


@click.group("admin")
def admin() -> None:
    """Manage accounts, users, tokens, nodes, usage history and grants; read the audit
    log (uses the admin token: GPUQ_ADMIN_TOKEN, or admin_token in the config file)."""


for _command in (account, user, grant, grants, audit):
    admin.add_command(_command)


# --- nodes -----------------------------------------------------------------------------


@admin.group("node")
def node() -> None:
    """GPU nodes: drain one for maintenance, and resume it."""


@node.command("drain")
@click.argument("name")
@click.option("--reason", required=True, help="Why, for people: e.g. 'replacing GPU 3'.")
@pass_env
def node_drain(env: Env, name: str, reason: str) -> None:
    """Drain a node: its running jobs finish, no new job starts there until it is
    resumed."""
    n = _call(env, "POST", f"/nodes/{name}/drain", json={"reason": reason}, what="drain",
              not_found=f"no node {name}", idempotent=True)
    click.echo(f"Node {n.get('name', name)} drained: {n.get('drain_reason') or reason} "
               "(running jobs finish; nothing new starts)")


@node.command("resume")
@click.argument("name")
@pass_env
def node_resume(env: Env, name: str) -> None:
    """End a drain: the node takes new jobs again."""
    n = _call(env, "POST", f"/nodes/{name}/resume", not_found=f"no node {name}",
              idempotent=True)
    state = n.get("state")
    click.echo(f"Node {n.get('name', name)} resumed: new jobs may start there"
               + (f" once it is up (it is {state} now)" if state and state != "UP" else ""))


# --- tokens ----------------------------------------------------------------------------


@admin.group("token")
def token() -> None:
    """API tokens for users, admins and GPU nodes."""


@token.command("create")
@click.option("--role", required=True, type=click.Choice(["user", "admin", "node"]))
@click.option("--user", "user_name", help="Whose token (user and admin tokens).")
@click.option("--node", "node_name", help="Which host (node tokens).")
@click.option("--description", help="A note for people, e.g. where it is used.")
@click.option("--expires", "expires_in_s", type=DurationType(), metavar="DURATION",
              help="It stops working after this long: 90d, 12h, 2w (at least 1m) [never].")
@pass_env
def token_create(env: Env, role: str, user_name: str | None, node_name: str | None,
                 description: str | None, expires_in_s: int | None) -> None:
    """Create a token. The secret is printed once, alone on stdout (so
    TOKEN=$(gpuq admin token create ...) works); it cannot be shown again."""
    body = _drop_none(role=role, user=user_name, node=node_name, description=description,
                      expires_in_s=expires_in_s)
    t = _call(env, "POST", "/tokens", json=body, what="token")
    owner = t.get("user") or f"node {t.get('node')}"
    expires = (f"; it expires {_when(t['expires_at'])}" if t.get("expires_at")
               else "; it never expires")
    click.echo(f"Created {t['role']} token {t['id']} for {owner}{expires}; it is shown only "
               "now:", err=True)
    click.echo(t["token"])


def _when(value: str | None) -> str:
    t = parse_time(value)
    return t.astimezone().strftime("%Y-%m-%d %H:%M") if t else "never"


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the tokens as JSON.")
@pass_env
def token_list(env: Env, as_json: bool) -> None:
    """List the tokens (never their secrets)."""
    data = _call(env, "GET", "/tokens")
    if as_json:
        echo_json(data)
        return
    now = datetime.now(UTC)
    table = plain_table("ID", "PREFIX", "ROLE", "OWNER", "CREATED", "LAST USED", "EXPIRES",
                        "STATUS", "DESCRIPTION")
    for t in data:
        owner = t.get("user") or (f"node {t['node']}" if t.get("node") else "")
        table.add_row(str(t["id"]), t.get("prefix") or "", t["role"], owner,
                      _when(t.get("created_at")), _when(t.get("last_used_at")),
                      _when(t.get("expires_at")), token_status(t, now),
                      t.get("description") or "")
    echo_table(table)


def token_status(t: dict[str, Any], now: datetime) -> str:
    """``revoked``, ``expired``, ``active``, or ``active (expires in 2-00:00:00)`` in its
    last week."""
    if t.get("revoked"):
        return "revoked"
    if t.get("expired"):
        return "expired"
    expires = parse_time(t.get("expires_at"))
    if expires is not None and (expires - now).total_seconds() < 7 * 86400:
        left = (expires - now).total_seconds()
        return "expired" if left <= 0 else f"active (expires in {format_duration(left)})"
    return "active"


@token.command("revoke")
@click.argument("token_id", type=int, metavar="ID")
@pass_env
def token_revoke(env: Env, token_id: int) -> None:
    """Revoke a token: it stops working at once."""
    _call(env, "DELETE", f"/tokens/{token_id}", not_found=f"no token {token_id}")
    click.echo(f"Revoked token {token_id}")


# --- usage -----------------------------------------------------------------------------


@admin.group("usage")
def usage() -> None:
    """Usage history: what the fair share remembers."""


@usage.command("import")
@click.argument("file", type=click.File("rb"), metavar="FILE")
@click.option("--format", "fmt", type=click.Choice(FORMATS, case_sensitive=False),
              help="json or csv [from the file's extension; for - (stdin), from its content].")
@pass_env
def usage_import(env: Env, file: Any, fmt: str | None) -> None:
    """Import usage history (a lab moving from another scheduler keeps its fair share).

    FILE is CSV with the header user,account,billed_seconds[,end_time], or a JSON list of
    {"user", "account", "billed_seconds", "end_time"} records; - reads stdin:

    \b
      user,account,billed_seconds,end_time
      alice,lab1,36000,2026-10-01T00:00:00Z

    billed_seconds are billed GPU-seconds; each record decays from its end_time (a time
    with a zone; default now). The users and their accounts must exist. All records are
    imported, or none.
    """
    name = file.name if isinstance(getattr(file, "name", None), str) else "-"
    name = "stdin" if name in ("-", "<stdin>") else name
    data = read_usage_file(name, file.read(), fmt.lower() if fmt else None)
    try:
        result = _call(env, "POST", "/usage/import", content=data.body,
                       headers={"Content-Type": data.content_type}, what="usage")
    except CliError as e:
        if e.status == 422:
            raise CliError(import_error_text(e.detail, data.lines), e.exit_code,
                           status=e.status, detail=e.detail) from None
        raise
    n = int(result.get("imported") or 0)
    added = float(result.get("decayed_billed_seconds") or 0)
    click.echo(f"Imported {n} record{'s' if n != 1 else ''} (adding {added:.0f} billed "
               "GPU-seconds after decay)")
