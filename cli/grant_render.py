"""Grants as people read them: one line, a table row with its use, and the whole grant.
Pure functions of ``GrantRead`` dicts (and ``now``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from gpuq.cli.render import Table, parse_time, plain_table
from gpuq.cli.units import format_duration, format_gpu_hours
from gpuq.cli.when import local, short_local

Grant = Mapping[str, Any]
GRANT_STATES = ("scheduled", "active", "expired", "revoked")
GRANT_COLUMNS = ("ID", "ACCOUNT", "GRANT", "STATE", "WINDOW", "USED GPU-H", "KWH",
                 "BORROWED GPU-H", "PREEMPTIONS", "NOTE")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def what_text(g: Grant) -> str:
    """``+100 shares, budget 5000 GPU-h`` or ``8 GPUs of A100-80GB on gpu01, gpu02``."""
    if g["kind"] == "share":
        budget = g.get("gpu_hours")
        return f"+{g.get('shares')} shares" + (
            f", budget {format_gpu_hours(budget)} GPU-h" if budget else "")
    text = _plural(int(g.get("gpus") or 0), "GPU")
    if g.get("gpu_model"):
        text += f" of {g['gpu_model']}"
    if g.get("nodes"):
        text += f" on {', '.join(g['nodes'])}"
    return text


def window_text(g: Grant) -> str:
    return f"{short_local(parse_time(g['start']))} -> {short_local(parse_time(g['end']))}"


def _pct(part: float, whole: float | None) -> str:
    return f" ({100 * part / whole:.0f}%)" if whole else ""


def used_text(g: Grant) -> str:
    """What the account used of the grant: billed GPU-hours against the budget (share
    grants), GPU-hours against the reserved GPU-hours so far (reservations)."""
    u = g.get("usage") or {}
    if g["kind"] == "share":
        billed = float(u.get("billed_gpu_hours") or 0)
        budget = u.get("budget_gpu_hours") or g.get("gpu_hours")
        if budget:
            return f"{format_gpu_hours(billed)}/{format_gpu_hours(budget)}{_pct(billed, budget)}"
        return format_gpu_hours(billed)
    used = float(u.get("gpu_hours") or 0)
    reserved = u.get("reserved_gpu_hours")
    if reserved:
        return f"{format_gpu_hours(used)}/{format_gpu_hours(reserved)}{_pct(used, reserved)}"
    return format_gpu_hours(used)


def line_text(g: Grant) -> str:
    """``grant 3: qlab, 8 GPUs of A100-80GB, 2027-01-01 -> 2027-02-01 (active)``."""
    return f"grant {g['id']}: {g['account']}, {what_text(g)}, {window_text(g)} ({g['state']})"


def _sort_key(g: Grant) -> tuple[int, str, int]:
    order = {"active": 0, "scheduled": 1}
    return (order.get(g["state"], 2), str(g["start"]), int(g["id"]))


def grants_table(grants: Iterable[Grant]) -> Table:
    """Active grants first, then scheduled ones, then those that ended; by start."""
    table = plain_table(*GRANT_COLUMNS)
    for g in sorted(grants, key=_sort_key):
        u = g.get("usage") or {}
        reservation = g["kind"] == "reservation"
        table.add_row(
            str(g["id"]), g["account"], what_text(g), g["state"], window_text(g), used_text(g),
            f"{float(u['energy_kwh']):.1f}" if u.get("energy_kwh") is not None else "-",
            format_gpu_hours(u.get("borrowed_gpu_hours") or 0) if reservation else "-",
            str(int(u.get("preemptions") or 0)) if reservation else "-", g.get("note") or "")
    return table


def state_text(g: Grant, now: datetime) -> str:
    """``active (ends in 3-00:00:00)``, ``scheduled (starts in ...)``, ``expired (end
    reached)``, ``revoked (revoked by bob: ...)``."""
    state, reason = str(g["state"]), g.get("state_reason") or ""
    if state == "active":
        left = (parse_time(g["end"]) - now).total_seconds()  # type: ignore[operator]
        return f"active (ends in {format_duration(left)})"
    if state == "scheduled":
        wait = (parse_time(g["start"]) - now).total_seconds()  # type: ignore[operator]
        return f"scheduled (starts in {format_duration(wait)})"
    return state + (f" ({reason})" if reason else "")


def usage_rows(g: Grant) -> list[tuple[str, str]]:
    u = g.get("usage") or {}
    hours = float(u.get("gpu_hours") or 0)
    billed = float(u.get("billed_gpu_hours") or 0)
    rows = []
    if g["kind"] == "share":
        budget = u.get("budget_gpu_hours") or g.get("gpu_hours")
        if budget:
            left = u.get("budget_left_gpu_hours")
            left = max(0.0, budget - billed) if left is None else left
            rows.append(("Budget", f"{format_gpu_hours(billed)} of {format_gpu_hours(budget)} "
                                   f"billed GPU-hours used{_pct(billed, budget)}; "
                                   f"{format_gpu_hours(left)} left"))
        rows.append(("Used", f"{format_gpu_hours(hours)} GPU-hours "
                             f"({format_gpu_hours(billed)} billed) in the window"))
    else:
        reserved = u.get("reserved_gpu_hours")
        rows.append(("Used", f"{format_gpu_hours(hours)} GPU-hours"
                     + (f" of {format_gpu_hours(reserved)} reserved so far{_pct(hours, reserved)}"
                        if reserved else "")))
        rows.append(("Borrowed", f"{format_gpu_hours(u.get('borrowed_gpu_hours') or 0)} "
                                 "GPU-hours by other accounts' jobs while idle; "
                                 f"{_plural(int(u.get('preemptions') or 0), 'preemption')} "
                                 "to give them back"))
    if u.get("energy_kwh") is not None:
        rows.append(("Energy", f"{float(u['energy_kwh']):.1f} kWh"))
    return rows


def grant_detail(g: Grant, now: datetime) -> str:
    """``gpuq admin grant show``."""
    start, end = parse_time(g["start"]), parse_time(g["end"])
    length = format_duration((end - start).total_seconds()) if start and end else ""
    rows = [("Grant", f"{g['id']} ({g['kind']})"), ("Account", str(g["account"])),
            ("Adds" if g["kind"] == "share" else "Reserves",
             what_text(g).split(", budget")[0] + (" while active" if g["kind"] == "share"
                                                  else "")),
            ("Window", f"{local(start)} -> {local(end)} ({length})"),
            ("State", state_text(g, now)), *usage_rows(g)]
    if g.get("note"):
        rows.append(("Note", str(g["note"])))
    rows.append(("Created", f"{local(parse_time(g.get('created_at')))} by "
                            f"{g.get('created_by') or '?'}"))
    if g.get("revoked_at"):
        rows.append(("Revoked", local(parse_time(g["revoked_at"]))))
    return "\n".join(f"{label + ':':<12} {value}" for label, value in rows)
