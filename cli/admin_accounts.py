"""``gpuq admin account``: the fair-share tree of accounts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import click

from gpuq.cli.adminapi import SHARES, call, drop_none
from gpuq.cli.context import Env, echo_json, pass_env
from gpuq.cli.render import Table, echo_table, local_time, plain_table
from gpuq.cli.vocab import QOS_NAMES

#: ``--default-qos inherit``: take the parent's (sends ``default_qos: null``).
INHERIT = "inherit"


@click.group("account")
def account() -> None:
    """Accounts: the fair-share tree (department, lab, group)."""


@account.command("create")
@click.argument("name")
@click.option("--parent", help="The parent account [root].")
@click.option("--shares", type=SHARES,
              help="Raw shares among its siblings, or 'parent' (no level of its own) [1].")
@click.option("--description", help="A note for people.")
@click.option("--default-qos", type=click.Choice(QOS_NAMES),
              help="QOS of its jobs that name none [inherited from the parent, else normal].")
@pass_env
def account_create(env: Env, name: str, parent: str | None, shares: int | str | None,
                   description: str | None, default_qos: str | None) -> None:
    """Create an account."""
    body = drop_none(name=name, parent=parent, shares=shares, description=description,
                     default_qos=default_qos)
    acct = call(env, "POST", "/accounts", json=body, what="account")
    click.echo(f"Created account {acct['name']} under {acct.get('parent')} "
               f"with {acct['shares']} shares")


@account.command("update")
@click.argument("name")
@click.option("--parent", help="Move it (and everything below it) under this account.")
@click.option("--shares", type=SHARES, help="Raw shares among its siblings, or 'parent'.")
@click.option("--description", help="A note for people ('' clears it).")
@click.option("--default-qos", type=click.Choice((*QOS_NAMES, INHERIT)),
              help="QOS of its jobs that name none; 'inherit': the parent's.")
@pass_env
def account_update(env: Env, name: str, parent: str | None, shares: int | str | None,
                   description: str | None, default_qos: str | None) -> None:
    """Change an account: only what is given changes."""
    body = drop_none(parent=parent, shares=shares, description=description)
    if default_qos is not None:
        body["default_qos"] = None if default_qos == INHERIT else default_qos
    if not body:
        raise click.UsageError("nothing to change: give --parent, --shares, --description "
                               "or --default-qos")
    a = call(env, "PATCH", f"/accounts/{name}", json=body, what="account",
             not_found=f"no account {name}", idempotent=True)
    click.echo(f"Updated account {a['name']}: " + account_summary(a))


def account_summary(a: Mapping[str, Any]) -> str:
    """``under physics, 3 shares, default QOS high`` (or ``QOS inherited``)."""
    qos = a.get("default_qos")
    return (f"under {a.get('parent') or '-'}, {a['shares']} shares, "
            + (f"default QOS {qos}" if qos else "QOS inherited"))


@account.command("retire")
@click.argument("name")
@pass_env
def account_retire(env: Env, name: str) -> None:
    """Retire an account: it takes no new jobs and leaves the fair-share tree. Its
    history stays (the usage, the jobs, the audit log). Refused while accounts below it
    are not retired or jobs in it are pending or running."""
    a = call(env, "DELETE", f"/accounts/{name}", what="account",
             not_found=f"no account {name}")
    when = local_time(a.get("retired_at"), "%Y-%m-%d %H:%M %Z") if a else ""
    click.echo(f"Retired account {name}" + (f" (since {when})" if when else "")
               + ": it takes no new jobs")


def accounts_table(accounts: Iterable[Mapping[str, Any]]) -> Table:
    """The tree in depth-first order, names indented by depth. QOS: the account's default
    QOS, or the one it inherits ``high (physics)``; a RETIRED column when any is."""
    rows = list(accounts)
    children: dict[str | None, list[Mapping[str, Any]]] = {}
    for a in rows:
        children.setdefault(a.get("parent"), []).append(a)
    names = {a["name"] for a in rows}
    retired = any(a.get("retired") for a in rows)
    table = plain_table("ACCOUNT", "PARENT", "SHARES", "QOS",
                        *(("RETIRED",) if retired else ()), "DESCRIPTION")
    seen: set[str] = set()

    def walk(a: Mapping[str, Any], depth: int, inherited: str) -> None:
        if a["name"] in seen:
            return
        seen.add(a["name"])
        own = a.get("default_qos")
        qos = own or inherited
        when = [local_time(a.get("retired_at"), "%Y-%m-%d") or "yes"
                if a.get("retired") else ""] if retired else []
        table.add_row("  " * depth + a["name"], a.get("parent") or "-", str(a["shares"]),
                      qos or "", *when, a.get("description") or "")
        below = f"{own} ({a['name']})" if own else inherited
        for child in sorted(children.get(a["name"], []), key=lambda c: c["name"]):
            walk(child, depth + 1, below)

    for top in sorted((a for a in rows if a.get("parent") not in names), key=lambda a: a["name"]):
        walk(top, 0, "")
    for a in rows:  # anything left (a cycle would be a server bug): still list it
        walk(a, 0, "")
    return table


@account.command("list")
@click.option("-a", "--all", "show_all", is_flag=True, help="Include retired accounts.")
@click.option("--json", "as_json", is_flag=True, help="Print the accounts as JSON.")
@pass_env
def account_list(env: Env, show_all: bool, as_json: bool) -> None:
    """List the accounts as a tree, with their default QOS (blank: normal)."""
    data = call(env, "GET", "/accounts", params={"include_retired": "true"} if show_all else None)
    if not show_all:
        data = [a for a in data if not a.get("retired")]
    if as_json:
        echo_json(data)
    else:
        echo_table(accounts_table(data))
