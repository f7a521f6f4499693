"""``gpuq admin user``: users, the accounts they may charge, and what they may do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from gpuq.cli.adminapi import SHARES, call, drop_none
from gpuq.cli.context import Env, echo_json, pass_env
from gpuq.cli.render import echo_table, plain_table
from gpuq.cli.vocab import QOS_NAMES

NONE = "none"


@click.group("user")
def user() -> None:
    """Users and the accounts they may charge."""


@user.command("create")
@click.argument("name")
@click.option("-A", "--account", "account_name", required=True,
              help="The user's (default) account.")
@click.option("--shares", type=SHARES, help="The user's shares in it, or 'parent' [1].")
@click.option("--admin", "is_admin", is_flag=True, help="Make the user an admin.")
@click.option("--unix-user", metavar="UNIX_USER",
              help="The Unix account the user's jobs run as on GPU hosts [the same name].")
@pass_env
def user_create(env: Env, name: str, account_name: str, shares: int | str | None,
                is_admin: bool, unix_user: str | None) -> None:
    """Create a user in an account."""
    body = drop_none(name=name, account=account_name, shares=shares, admin=is_admin or None,
                     unix_user=unix_user)
    u = call(env, "POST", "/users", json=body, what="user")
    click.echo(f"Created user {u['name']} in account {account_name}"
               + (" (admin)" if u.get("admin") else "") + _runs_as(u))


def _runs_as(u: Mapping[str, Any]) -> str:
    """``; jobs run as Unix user X`` when that is not the user's own name."""
    unix = u.get("unix_user")
    return f"; jobs run as Unix user {unix}" if unix and unix != u["name"] else ""


def allowed_qos_body(values: tuple[str, ...]) -> list[str] | None:
    """``--allow-qos`` values as ``UserUpdate.allowed_qos``: ``none`` alone clears."""
    if not values:
        return None
    if NONE in values:
        if len(values) > 1:
            raise click.UsageError("--allow-qos none clears the list: give it alone")
        return []
    return list(dict.fromkeys(values))


@user.command("set")
@click.argument("name")
@click.option("--unix-user", metavar="UNIX_USER",
              help="The Unix account the user's jobs run as on GPU hosts.")
@click.option("--admin/--no-admin", "is_admin", default=None,
              help="Make the user an admin, or no longer one.")
@click.option("--disable/--enable", "disabled", default=None,
              help="Disable the user (its tokens stop working, it cannot submit; its jobs "
                   "stay), or enable it again.")
@click.option("--default-account", metavar="ACCOUNT",
              help="The account its jobs go to when they name none (one it is a member of).")
@click.option("--allow-qos", "allow_qos", multiple=True,
              type=click.Choice((*QOS_NAMES, NONE)),
              help="A restricted QOS the user may choose (repeatable; the list replaces the "
                   "old one); 'none' clears it.")
@pass_env
def user_set(env: Env, name: str, unix_user: str | None, is_admin: bool | None,
             disabled: bool | None, default_account: str | None,
             allow_qos: tuple[str, ...]) -> None:
    """Change a user: only what is given changes."""
    body = drop_none(unix_user=unix_user, admin=is_admin, disabled=disabled,
                     default_account=default_account, allowed_qos=allowed_qos_body(allow_qos))
    if not body:
        raise click.UsageError("nothing to change: give --unix-user, --admin or --no-admin, "
                               "--disable or --enable, --default-account, --allow-qos")
    u = call(env, "PATCH", f"/users/{name}", json=body, what="user",
             not_found=f"no user {name}", idempotent=True)
    text = (f"Updated user {u['name']}: jobs run as Unix user {u.get('unix_user') or '?'}, "
            + ("admin" if u.get("admin") else "not an admin"))
    if "default_account" in body:
        text += f"; default account {u.get('default_account') or '-'}"
    if "allowed_qos" in body:
        text += f"; may choose QOS {qos_text(u)}"
    if "disabled" in body:
        text += ("; DISABLED: its tokens stop working and it cannot submit (its jobs stay)"
                 if u.get("disabled") else "; enabled")
    click.echo(text)


def qos_text(u: Mapping[str, Any]) -> str:
    """The QOS a user may choose: ``normal, preemptible, high``."""
    allowed = [q for q in u.get("allowed_qos") or [] if q not in ("normal", "preemptible")]
    return ", ".join(("normal", "preemptible", *allowed))


def membership_text(m: Mapping[str, Any]) -> str:
    shares = m.get("shares")
    label = "shares: parent's" if shares == "parent" else \
        f"{shares} share{'' if shares == 1 else 's'}"
    return f"{m['account']} ({label})"


def user_detail(u: Mapping[str, Any]) -> str:
    """``gpuq admin user show``."""
    rows = [
        ("User", str(u["name"])),
        ("Status", "DISABLED: its tokens do not work and it cannot submit"
         if u.get("disabled") else "active"),
        ("Admin", "yes" if u.get("admin") else "no"),
        ("Unix user", str(u.get("unix_user") or u["name"])),
        ("Default account", str(u.get("default_account") or "-")),
        ("Accounts", ", ".join(membership_text(m) for m in u.get("accounts") or []) or "-"),
        ("QOS allowed", qos_text(u)),
    ]
    return "\n".join(f"{label + ':':<17}{value}" for label, value in rows)


@user.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the user as JSON.")
@pass_env
def user_show(env: Env, name: str, as_json: bool) -> None:
    """Show one user: status, accounts and shares, the QOS it may choose."""
    u = call(env, "GET", f"/users/{name}", not_found=f"no user {name}")
    if as_json:
        echo_json(u)
    else:
        click.echo(user_detail(u))


@user.command("add-account")
@click.argument("name")
@click.option("-A", "--account", "account_name", required=True, help="The account to add.")
@click.option("--shares", type=SHARES, help="The user's shares in it, or 'parent' [1].")
@pass_env
def user_add_account(env: Env, name: str, account_name: str, shares: int | str | None) -> None:
    """Let a user charge another account too."""
    body = drop_none(account=account_name, shares=shares)
    call(env, "POST", f"/users/{name}/accounts", json=body, what="membership",
         not_found=f"no user {name}")
    click.echo(f"Added user {name} to account {account_name}")


@user.command("set-shares")
@click.argument("name")
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("shares", type=SHARES)
@pass_env
def user_set_shares(env: Env, name: str, account_name: str, shares: int | str) -> None:
    """Set a user's shares in one of its accounts (a number, or 'parent')."""
    call(env, "PATCH", f"/users/{name}/accounts/{account_name}", json={"shares": shares},
         what="membership", not_found=f"no user {name} in account {account_name}",
         idempotent=True)
    what = "shares 'parent' (no level of its own)" if shares == "parent" else \
        f"{shares} share{'' if shares == 1 else 's'}"
    click.echo(f"User {name} now has {what} in account {account_name}")


@user.command("remove-account")
@click.argument("name")
@click.argument("account_name", metavar="ACCOUNT")
@pass_env
def user_remove_account(env: Env, name: str, account_name: str) -> None:
    """Stop a user charging an account. Refused for its default account (set another
    first) and while it has pending or running jobs there."""
    call(env, "DELETE", f"/users/{name}/accounts/{account_name}", what="membership",
         not_found=f"no user {name} in account {account_name}")
    click.echo(f"Removed user {name} from account {account_name}")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the users as JSON.")
@pass_env
def user_list(env: Env, as_json: bool) -> None:
    """List the users and their accounts."""
    data = call(env, "GET", "/users")
    if as_json:
        echo_json(data)
        return
    table = plain_table("USER", "ADMIN", "UNIX USER", "DEFAULT", "ACCOUNTS(SHARES)", "QOS",
                        "STATUS")
    for u in data:
        accts = ", ".join(f"{m['account']}({m['shares']})" for m in u.get("accounts") or [])
        extra = [q for q in u.get("allowed_qos") or [] if q not in ("normal", "preemptible")]
        table.add_row(u["name"], "yes" if u.get("admin") else "", u.get("unix_user") or "",
                      u.get("default_account") or "", accts, ",".join(extra),
                      "disabled" if u.get("disabled") else "")
    echo_table(table)
