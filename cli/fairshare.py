"""``gpuq share``: the cluster's fair-share tree, with the columns of Slurm's ``sshare -l``.

Rows are ``FairShareRow`` dicts in the server's tree order (each account, then its users);
usage is in billed GPU-seconds (GPUs x seconds x the GPU model's weight), decayed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click

from gpuq.cli.client import CliError
from gpuq.cli.context import Env, echo_json, pass_env
from gpuq.cli.render import Table, echo_table, plain_table

Row = Mapping[str, Any]
SHARE_COLUMNS = ("Account", "User", "RawShares", "NormShares", "RawUsage", "GPUHours",
                 "NormUsage", "EffectvUsage", "FairShare", "LevelFS")
#: Slurm indents by one space per level of the tree.
INDENT = " "


def fraction(value: float | str | None) -> str:
    """sshare's format for a fraction: 6 decimals; "inf" stays "inf"; "" for none."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return f"{float(value):.6f}"


def depths(rows: Iterable[Row]) -> dict[str, int]:
    """Each account's depth in the tree (the root 0) from the account rows' parents."""
    parent = {r["name"]: r.get("parent") for r in rows if r.get("user") is None}
    out: dict[str, int] = {}

    def depth(name: str) -> int:
        seen: list[str] = []
        n: str | None = name
        while n is not None and n in parent and n not in out and n not in seen:
            seen.append(n)
            n = parent[n]
        d = out.get(n, -1) if n is not None else -1
        for a in reversed(seen):  # from the top down
            d += 1
            out[a] = d
        return out[name]

    for name in parent:
        depth(name)
    return out


def row_depth(row: Row, depth: Mapping[str, int]) -> int:
    """An account's depth; a user's: one below its account."""
    if row.get("user") is None:
        return depth.get(row["name"], 0)
    return depth.get(row["account"], 0) + 1


def share_table(rows: Sequence[Row], *, depth: Mapping[str, int] | None = None) -> Table:
    """The ``sshare -l`` table; ``depth`` from the whole tree (for filtered rows)."""
    depth = depths(rows) if depth is None else depth
    table = plain_table(*SHARE_COLUMNS)
    for column in table.columns[2:]:
        column.justify = "right"
    for r in rows:
        raw = float(r.get("raw_usage") or 0)
        table.add_row(
            INDENT * row_depth(r, depth) + str(r["account"]), r.get("user") or "",
            str(r.get("raw_shares", "")), fraction(r.get("norm_shares")), f"{raw:.0f}",
            f"{raw / 3600:.1f}", fraction(r.get("norm_usage")),
            fraction(r.get("effective_usage")), fraction(r.get("fairshare")),
            fraction(r.get("level_fs")))
    return table


def subtree(rows: Sequence[Row], account: str) -> set[str]:
    """``account`` and every account below it."""
    children: dict[str | None, list[str]] = {}
    for r in rows:
        if r.get("user") is None:
            children.setdefault(r.get("parent"), []).append(r["name"])
    out: set[str] = set()
    todo = [account]
    while todo:
        a = todo.pop()
        if a not in out:
            out.add(a)
            todo += children.get(a, [])
    return out


def ancestors(rows: Sequence[Row], accounts: Iterable[str]) -> set[str]:
    """The given accounts and every account above them."""
    parent = {r["name"]: r.get("parent") for r in rows if r.get("user") is None}
    out: set[str] = set()
    for a in accounts:
        n: str | None = a
        while n is not None and n not in out:
            out.add(n)
            n = parent.get(n)
    return out


def filter_rows(rows: Sequence[Row], *, account: str | None = None,
                user: str | None = None) -> list[Row]:
    """Like ``sshare -A``/``-u``: ``account``'s subtree; ``user``'s associations with the
    accounts above them. Raises ``CliError`` when nothing matches (a typo, most likely)."""
    out = list(rows)
    if account is not None:
        if not any(r.get("user") is None and r["name"] == account for r in rows):
            raise CliError(f"no account {account} in the fair-share tree")
        keep = subtree(rows, account)
        out = [r for r in out if r["account"] in keep]
    if user is not None:
        mine = [r for r in out if r.get("user") == user]
        if not mine:
            where = f" in account {account} or below it" if account is not None else ""
            raise CliError(f"user {user} has no association in the fair-share tree{where}")
        above = ancestors(rows, (r["account"] for r in mine))
        out = [r for r in out if r.get("user") == user
               or (r.get("user") is None and r["name"] in above)]
    return out


@click.command("share")
@click.option("-A", "--account", help="Only this account and the accounts below it.")
@click.option("-u", "--user", help="Only this user's associations (and their accounts).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@pass_env
def share(env: Env, account: str | None, user: str | None, as_json: bool) -> None:
    """Show the fair-share tree, like Slurm's sshare -l.

    \b
    RawShares     shares among its siblings ("parent": not a level of its own)
    NormShares    shares / the siblings' shares
    RawUsage      billed GPU-seconds (GPUs x seconds x GPU model weight), decayed
    GPUHours      RawUsage in hours
    NormUsage     RawUsage / the whole cluster's
    EffectvUsage  RawUsage / the parent level's (classic: the effective usage)
    FairShare     the user's fair-share factor in [0, 1]; higher starts sooner
    LevelFS       NormShares / EffectvUsage ("inf": no usage yet)
    """
    with env.client() as api:
        rows = api.get("/v1/fairshare")
    shown = filter_rows(rows, account=account, user=user)
    if as_json:
        echo_json(shown)
    elif not shown:
        click.echo("No accounts yet: gpuq admin account create NAME")
    else:
        echo_table(share_table(shown, depth=depths(rows)))
