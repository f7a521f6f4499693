"""``gpuq admin``: accounts, users and tokens, through /v1/admin with the admin token."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import click
from rich.table import Table

from cli.client import CliError
from cli.context import Env, echo_json, pass_env
from cli.render import echo_table, parse_time, plain_table
from cli.usage import FORMATS, import_error_text, read_usage_file

ADMIN = "/v1/admin"


def _drop_none(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _call(env: Env, method: str, path: str, **kw: Any) -> Any:
    with env.client(admin=True) as api:
        return api.json(method, ADMIN + path, **kw)


@click.group("admin")
def admin() -> None:
    """Manage accounts, users, tokens, nodes and usage history (uses the admin token:
    GPUQ_ADMIN_TOKEN, or admin_token in the config file)."""


# --- accounts --------------------------------------------------------------------------


@admin.group("account")
def account() -> None:
    """Accounts: the fair-share tree (department, lab, group)."""


@account.command("create")
@click.argument("name")
@click.option("--parent", help="The parent account [root].")
@click.option("--shares", type=click.IntRange(0), help="Raw shares among its siblings [1].")
@click.option("--description", help="A note for people.")
@pass_env
def account_create(env: Env, name: str, parent: str | None, shares: int | None,
                   description: str | None) -> None:
    """Create an account."""
    body = _drop_none(name=name, parent=parent, shares=shares, description=description)
    acct = _call(env, "POST", "/accounts", json=body, what="account")
    click.echo(f"Created account {acct['name']} under {acct.get('parent')} "
               f"with {acct['shares']} shares")


def accounts_table(accounts: Iterable[Mapping[str, Any]]) -> Table:
    """The tree in depth-first order, names indented by depth."""
    rows = list(accounts)
    children: dict[str | None, list[Mapping[str, Any]]] = {}
    for a in rows:
        children.setdefault(a.get("parent"), []).append(a)
    names = {a["name"] for a in rows}
    table = plain_table("ACCOUNT", "PARENT", "SHARES", "DESCRIPTION")
    seen: set[str] = set()

    def walk(a: Mapping[str, Any], depth: int) -> None:
        if a["name"] in seen:
            return
        seen.add(a["name"])
        table.add_row("  " * depth + a["name"], a.get("parent") or "-", str(a["shares"]),
                      a.get("description") or "")
        for child in sorted(children.get(a["name"], []), key=lambda c: c["name"]):
            walk(child, depth + 1)

    for top in sorted((a for a in rows if a.get("parent") not in names), key=lambda a: a["name"]):
        walk(top, 0)
    for a in rows:  # anything left (a cycle would be a server bug): still list it
        walk(a, 0)
    return table


@account.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the accounts as JSON.")
@pass_env
def account_list(env: Env, as_json: bool) -> None:
    """List the accounts as a tree."""
    data = _call(env, "GET", "/accounts")
    if as_json:
        echo_json(data)
    else:
        echo_table(accounts_table(data))


# --- users -----------------------------------------------------------------------------


@admin.group("user")
def user() -> None:
    """Users and the accounts they may charge."""


@user.command("create")
@click.argument("name")
@click.option("-A", "--account", "account_name", required=True,
              help="The user's (default) account.")
@click.option("--shares", type=click.IntRange(0), help="The user's shares in it [1].")
@click.option("--admin", "is_admin", is_flag=True, help="Make the user an admin.")
@click.option("--unix-user", metavar="UNIX_USER",
              help="The Unix account the user's jobs run as on GPU hosts [the same name].")
@pass_env
def user_create(env: Env, name: str, account_name: str, shares: int | None,
                is_admin: bool, unix_user: str | None) -> None:
    """Create a user in an account."""
    body = _drop_none(name=name, account=account_name, shares=shares, admin=is_admin or None,
                      unix_user=unix_user)
    u = _call(env, "POST", "/users", json=body, what="user")
    click.echo(f"Created user {u['name']} in account {account_name}"
               + (" (admin)" if u.get("admin") else "") + _runs_as(u))


def _runs_as(u: Mapping[str, Any]) -> str:
    """``; jobs run as Unix user X`` when that is not the user's own name."""
    unix = u.get("unix_user")
    return f"; jobs run as Unix user {unix}" if unix and unix != u["name"] else ""


@user.command("set")
@click.argument("name")
@click.option("--unix-user", metavar="UNIX_USER",
              help="The Unix account the user's jobs run as on GPU hosts.")
@click.option("--admin/--no-admin", "is_admin", default=None,
              help="Make the user an admin, or no longer one.")
@pass_env
def user_set(env: Env, name: str, unix_user: str | None, is_admin: bool | None) -> None:
    """Change a user: the Unix account their jobs run as, or whether they are an admin."""
    body = _drop_none(unix_user=unix_user, admin=is_admin)
    if not body:
        raise click.UsageError("nothing to change: give --unix-user, --admin or --no-admin")
    u = _call(env, "PATCH", f"/users/{name}", json=body, what="user",
              not_found=f"no user {name}", idempotent=True)
    click.echo(f"Updated user {u['name']}: jobs run as Unix user {u.get('unix_user') or '?'}, "
               + ("admin" if u.get("admin") else "not an admin"))


@user.command("add-account")
@click.argument("name")
@click.option("-A", "--account", "account_name", required=True, help="The account to add.")
@click.option("--shares", type=click.IntRange(0), help="The user's shares in it [1].")
@pass_env
def user_add_account(env: Env, name: str, account_name: str, shares: int | None) -> None:
    """Let a user charge another account too."""
    body = _drop_none(account=account_name, shares=shares)
    _call(env, "POST", f"/users/{name}/accounts", json=body, what="membership",
          not_found=f"no user {name}")
    click.echo(f"Added user {name} to account {account_name}")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the users as JSON.")
@pass_env
def user_list(env: Env, as_json: bool) -> None:
    """List the users and their accounts."""
    data = _call(env, "GET", "/users")
    if as_json:
        echo_json(data)
        return
    table = plain_table("USER", "ADMIN", "UNIX USER", "DEFAULT", "ACCOUNTS(SHARES)")
    for u in data:
        accts = ", ".join(f"{m['account']}({m['shares']})" for m in u.get("accounts") or [])
        table.add_row(u["name"], "yes" if u.get("admin") else "", u.get("unix_user") or "",
                      u.get("default_account") or "", accts)
    echo_table(table)


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
@pass_env
def token_create(env: Env, role: str, user_name: str | None, node_name: str | None,
                 description: str | None) -> None:
    """Create a token. The secret is printed once, alone on stdout (so
    TOKEN=$(gpuq admin token create ...) works); it cannot be shown again."""
    body = _drop_none(role=role, user=user_name, node=node_name, description=description)
    t = _call(env, "POST", "/tokens", json=body, what="token")
    owner = t.get("user") or f"node {t.get('node')}"
    click.echo(f"Created {t['role']} token {t['id']} for {owner}; it is shown only now:",
               err=True)
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
    table = plain_table("ID", "PREFIX", "ROLE", "OWNER", "CREATED", "LAST USED", "STATUS",
                        "DESCRIPTION")
    for t in data:
        owner = t.get("user") or (f"node {t['node']}" if t.get("node") else "")
        table.add_row(str(t["id"]), t.get("prefix") or "", t["role"], owner,
                      _when(t.get("created_at")), _when(t.get("last_used_at")),
                      "revoked" if t.get("revoked") else "active", t.get("description") or "")
    echo_table(table)


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
