"""``gpuq admin audit``: who changed what, when, with a compact before -> after diff."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import click

from gpuq.cli.adminapi import call, drop_none
from gpuq.cli.context import Env, echo_json, pass_env
from gpuq.cli.render import Table, echo_table, local_time, plain_table
from gpuq.cli.when import EXAMPLES, WhenType, iso_utc

#: Fields left out of diffs: they change without an admin changing anything.
NOISY = frozenset({"usage", "last_used_at"})
#: Fields left out of a new object's summary: the target names it, the entry says who and
#: when.
NOT_NEW = frozenset({"id", "created_at", "created_by", "state_reason"})
_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")
#: The longest value shown in a diff, characters; longer ones end in "...".
VALUE_CHARS = 40
SERVER_LIMIT = 100


def value_text(value: Any) -> str:
    """``-`` for null, times in local time, strings as they are (quoted when empty or with
    spaces), the rest as compact JSON; cut at ``VALUE_CHARS``."""
    if value is None:
        return "-"
    if isinstance(value, str) and _ISO_TIME.match(value):
        return local_time(value, "%Y-%m-%d %H:%M:%S")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = repr(value) if not value or any(c.isspace() for c in value) else value
    else:
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 3] + "..."


def _keys(*dicts: Mapping[str, Any]) -> list[str]:
    return [k for k in dict.fromkeys(k for d in dicts for k in d) if k not in NOISY]


def changes_text(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str:
    """``shares: 1 -> 3; default_qos: - -> high``; for a new object its fields that are
    set ``new: name=qlab parent=root``; ``removed`` for one that is gone."""
    if before is None and after is None:
        return ""
    if before is None:
        assert after is not None
        fields = [f"{k}={value_text(after[k])}" for k in _keys(after)
                  if k not in NOT_NEW and after[k] not in (None, "", [], {}, False)]
        return "new: " + " ".join(fields)
    if after is None:
        return "removed"
    changed = [f"{k}: {value_text(before.get(k))} -> {value_text(after.get(k))}"
               for k in _keys(before, after) if before.get(k) != after.get(k)]
    return "; ".join(changed) or "no change"


def audit_table(entries: Iterable[Mapping[str, Any]]) -> Table:
    table = plain_table("TIME", "ACTOR", "ACTION", "TARGET", "CHANGES")
    for e in entries:
        table.add_row(local_time(e.get("time"), "%Y-%m-%d %H:%M:%S"), str(e.get("actor") or ""),
                      str(e.get("action") or ""), str(e.get("target") or ""),
                      changes_text(e.get("before"), e.get("after")))
    return table


@click.command("audit")
@click.option("--actor", help="Only changes made by this user ('gpuq': the scheduler's own).")
@click.option("--action", help="Only this action (grant.create), or a kind of them (grant).")
@click.option("--target", help="Only changes to this object: account:qlab, user:alice, "
                               "grant:3, node:gpu01, token:12.")
@click.option("--since", type=WhenType(ago=True), metavar="WHEN",
              help=f"Only changes since then: {EXAMPLES}, or a duration ago (7d, 12h).")
@click.option("--until", type=WhenType(ago=True), metavar="WHEN",
              help="Only changes before then, as --since.")
@click.option("-n", "--limit", type=click.IntRange(1, 1000),
              help=f"At most this many, the newest first [{SERVER_LIMIT}].")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON (with the "
                                                      "whole before and after).")
@pass_env
def audit(env: Env, actor: str | None, action: str | None, target: str | None,
          since: datetime | None, until: datetime | None, limit: int | None,
          as_json: bool) -> None:
    """The audit log: every admin change (who, when, what, before -> after), newest
    first."""
    params = drop_none(actor=actor, action=action, target=target,
                       since=iso_utc(since) if since else None,
                       until=iso_utc(until) if until else None, limit=limit)
    data = call(env, "GET", "/audit", params=params or None)
    if as_json:
        echo_json(data)
        return
    if not data:
        click.echo("No changes" + (" match" if params else " recorded yet"))
        return
    echo_table(audit_table(data))
    if len(data) >= (limit or SERVER_LIMIT):
        click.echo(f"(the newest {len(data)}; --limit or --since/--until for more)", err=True)
