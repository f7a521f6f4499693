"""``gpuq nodes`` and ``gpuq whoami``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import click

from gpuq.cli.context import Env, echo_json, pass_env
from gpuq.cli.render import Table, plain_table, render
from gpuq.cli.units import format_mib

NODE_COLUMNS = ("NAME", "STATE", "GPUS", "JOB", "UTIL", "MEMORY", "POWER", "LIMITS")


def _healthy(gpu: Mapping[str, Any]) -> bool:
    sample = gpu.get("sample") or {}
    return gpu.get("healthy", True) is not False and sample.get("healthy", True) is not False


def _drained(node: Mapping[str, Any]) -> bool:
    return bool(node.get("drain")) or node["state"] == "DRAIN"


def _free(node: Mapping[str, Any], gpu: Mapping[str, Any]) -> bool:
    """Could a new job get this GPU now: node up and not drained, GPU healthy, no job and
    no process gpuq did not start."""
    return (node["state"] == "UP" and not _drained(node) and _healthy(gpu)
            and gpu.get("job_id") is None and not gpu.get("foreign_processes"))


def gpus_summary(node: Mapping[str, Any]) -> str:
    """``2/4 free  4xA100-80GB`` (models with counts, most common first)."""
    gpus = node.get("gpus") or []
    if not gpus:
        return "no GPUs"
    free = sum(1 for g in gpus if _free(node, g))
    models = Counter(g["model"] for g in gpus)
    kinds = ",".join(f"{n}x{m}" for m, n in sorted(models.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{free}/{len(gpus)} free  {kinds}"


def _printable(text: str) -> str:
    """Text from other people's processes, safe for a terminal (no escape sequences)."""
    return "".join(c if c.isprintable() else "?" for c in text)


def node_state(node: Mapping[str, Any]) -> str:
    """``UP``, ``DOWN (no heartbeat for 60 s)``, ``DRAIN (replacing GPU 3)``, or for a
    drained node that is also down ``DOWN+DRAIN (no heartbeat ...; replacing GPU 3)``."""
    state = str(node["state"])
    reason = node.get("state_reason") or ""
    if not _drained(node):
        return state + (f" ({reason})" if reason else "")
    drain_reason = node.get("drain_reason") or (reason if state == "DRAIN" else "")
    if state in ("UP", "DRAIN"):
        return "DRAIN" + (f" ({drain_reason})" if drain_reason else "")
    reasons = "; ".join(r for r in (reason, drain_reason) if r)
    return f"{state}+DRAIN" + (f" ({reasons})" if reasons else "")


def gpu_state(gpu: Mapping[str, Any]) -> str:
    """``unhealthy (reason)``, ``occupied`` (processes gpuq did not start), ``busy`` (a
    job) or ``idle``."""
    if not _healthy(gpu):
        reason = gpu.get("health_reason")
        return "unhealthy" + (f" ({_printable(reason)})" if reason else "")
    if gpu.get("foreign_processes"):
        return "occupied"
    return "busy" if gpu.get("job_id") is not None else "idle"


def _gib(mib: float) -> str:
    return f"{mib / 1024:.1f}G" if mib >= 1024 else f"{mib:.0f}M"


def foreign_process_line(proc: Mapping[str, Any]) -> str:
    """``pid 1234 bob: python train.py (12.0G)``; unknown parts left out."""
    text = f"pid {proc.get('pid')} {_printable(str(proc.get('user') or '?'))}"
    if proc.get("command"):
        text += f": {_printable(str(proc['command']))}"
    mem = _num(proc, "used_memory_mib")
    if mem is not None:
        text += f" ({_gib(mem)})"
    return text


def _num(sample: Mapping[str, Any], key: str) -> float | None:
    value = sample.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def limits_label(node: Mapping[str, Any]) -> str:
    """The LIMITS column: the job limits the node's worker enforces (``memory,cpu,devices``,
    ``memory,cpu``, ...), ``none``, or blank (a worker, or a server, that does not say)."""
    text = node.get("enforcement")
    if not text:
        return ""
    for stop in (" (", ":", ";"):
        text = text.split(stop, 1)[0]
    return _printable(text.strip())


def limits_note(node: Mapping[str, Any]) -> str | None:
    """A line under the node when its worker enforces not all limits: what it does
    not, and why (``limits: none: job cgroups are off ...``)."""
    text = node.get("enforcement")
    if not text or not (text.startswith("none") or "; not " in text):
        return None
    return "limits: " + _printable(text)


def gpu_row(node: Mapping[str, Any], gpu: Mapping[str, Any]) -> tuple[str, ...]:
    sample = gpu.get("sample") or {}
    util = _num(sample, "utilization_pct")
    used = _num(sample, "memory_used_mib")
    power = _num(sample, "power_w")
    memory = format_mib(gpu.get("memory_mib"))
    if used is not None:
        memory = f"{format_mib(used) if used else '0M'}/{memory}"
    return (f"  {gpu['index']}", gpu_state(gpu), gpu["model"],
            str(gpu["job_id"]) if gpu.get("job_id") is not None else "-",
            f"{util:.0f}%" if util is not None else "",
            memory, f"{power:.0f} W" if power is not None else "", "")


def nodes_table(nodes: Iterable[Mapping[str, Any]]) -> tuple[Table, list[str]]:
    """The table, with an empty row where each line of ``notes`` (the limits a node does
    not enforce, a GPU's foreign processes) goes: ``nodes_text`` puts them there, across
    the columns."""
    table = plain_table(*NODE_COLUMNS)
    notes: list[str] = []
    for node in sorted(nodes, key=lambda n: n["name"]):
        table.add_row(node["name"], node_state(node), gpus_summary(node), "", "", "", "",
                      limits_label(node))
        note = limits_note(node)
        if note is not None:
            table.add_row(*[""] * len(NODE_COLUMNS))
            notes.append(note)
        for gpu in sorted(node.get("gpus") or [], key=lambda g: g["index"]):
            table.add_row(*gpu_row(node, gpu))
            for proc in gpu.get("foreign_processes") or []:
                table.add_row(*[""] * len(NODE_COLUMNS))
                notes.append(foreign_process_line(proc))
    return table, notes


def nodes_text(nodes: Iterable[Mapping[str, Any]], *, width: int | None = None) -> str:
    """``gpuq nodes``: the table, each foreign process on a line of its own under its GPU
    and the limits a node does not enforce (and why) under it, starting in the STATE
    column (so a long line does not widen the columns)."""
    table, notes = nodes_table(nodes)
    lines = render(table, width=width).splitlines()
    if not notes:
        return "\n".join(lines)
    pad = " " * max(lines[0].find("STATE"), 0)
    pending = iter(notes)
    # Every other line has text: a row with an empty cell shows nothing in it, and a row
    # folded on a narrow terminal still shows its folded cell.
    out = [(pad + next(pending, "")).rstrip() if not line.strip() else line
           for line in lines]
    # A blank last row may be trimmed by the renderer: its note goes at the end.
    out.extend((pad + note).rstrip() for note in pending)
    return "\n".join(out)


@click.command("nodes")
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as JSON.")
@pass_env
def nodes(env: Env, as_json: bool) -> None:
    """Show the GPU nodes, and each GPU: its job, utilisation, memory and power.

    LIMITS: the job limits the node's worker enforces (memory, cpu, devices: the GPU
    fence); a line under the node says what it does not enforce, and why."""
    with env.client() as api:
        data = api.get("/v1/nodes")
    if as_json:
        echo_json(data)
    elif not data:
        click.echo("No nodes yet: start `gpuq worker` on a GPU host.")
    else:
        click.echo(nodes_text(data))


def whoami_text(me: Mapping[str, Any], server: str) -> str:
    default = me.get("default_account")
    accounts = [a + (" (default)" if a == default else "") for a in me.get("accounts") or []]
    who = me.get("user") or (f"node {me['node']}" if me.get("node") else "?")
    role = str(me.get("role"))
    if me.get("admin") and role != "admin":
        role += " (admin)"
    return "\n".join([f"user:     {who}", f"role:     {role}",
                      f"accounts: {', '.join(accounts) or 'none'}", f"server:   {server}"])


@click.command("whoami")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@pass_env
def whoami(env: Env, as_json: bool) -> None:
    """Show who the server thinks you are (your token's user, role and accounts)."""
    with env.client() as api:
        me = api.get("/v1/whoami")
        server = api.server
    if as_json:
        echo_json(me)
    else:
        click.echo(whoami_text(me, server))
