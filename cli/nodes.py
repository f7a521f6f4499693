"""``gpuq nodes`` and ``gpuq whoami``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import click
from rich.table import Table

from cli.context import Env, echo_json, pass_env
from cli.render import echo_table, plain_table
from cli.units import format_mib

NODE_COLUMNS = ("NAME", "STATE", "GPUS", "JOB", "UTIL", "MEMORY", "POWER")


def _free(node: Mapping[str, Any], gpu: Mapping[str, Any]) -> bool:
    return node["state"] == "UP" and gpu.get("healthy", True) and gpu.get("job_id") is None


def gpus_summary(node: Mapping[str, Any]) -> str:
    """``2/4 free  4xA100-80GB`` (models with counts, most common first)."""
    gpus = node.get("gpus") or []
    if not gpus:
        return "no GPUs"
    free = sum(1 for g in gpus if _free(node, g))
    models = Counter(g["model"] for g in gpus)
    kinds = ",".join(f"{n}x{m}" for m, n in sorted(models.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{free}/{len(gpus)} free  {kinds}"


def _num(sample: Mapping[str, Any], key: str) -> float | None:
    value = sample.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def gpu_row(node: Mapping[str, Any], gpu: Mapping[str, Any]) -> tuple[str, ...]:
    sample = gpu.get("sample") or {}
    util = _num(sample, "utilization_pct")
    used = _num(sample, "memory_used_mib")
    power = _num(sample, "power_w")
    healthy = gpu.get("healthy", True) and sample.get("healthy", True) is not False
    state = "unhealthy" if not healthy else "busy" if gpu.get("job_id") is not None else "idle"
    memory = format_mib(gpu.get("memory_mib"))
    if used is not None:
        memory = f"{format_mib(used) if used else '0M'}/{memory}"
    return (f"  {gpu['index']}", state, gpu["model"],
            str(gpu["job_id"]) if gpu.get("job_id") is not None else "-",
            f"{util:.0f}%" if util is not None else "",
            memory, f"{power:.0f} W" if power is not None else "")


def nodes_table(nodes: Iterable[Mapping[str, Any]]) -> Table:
    table = plain_table(*NODE_COLUMNS)
    for node in sorted(nodes, key=lambda n: n["name"]):
        state = node["state"] + (f" ({node['state_reason']})" if node.get("state_reason") else "")
        table.add_row(node["name"], state, gpus_summary(node), "", "", "", "")
        for gpu in sorted(node.get("gpus") or [], key=lambda g: g["index"]):
            table.add_row(*gpu_row(node, gpu))
    return table


@click.command("nodes")
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as JSON.")
@pass_env
def nodes(env: Env, as_json: bool) -> None:
    """Show the GPU nodes, and each GPU: its job, utilisation, memory and power."""
    with env.client() as api:
        data = api.get("/v1/nodes")
    if as_json:
        echo_json(data)
    elif not data:
        click.echo("No nodes yet: start `gpuq worker` on a GPU host.")
    else:
        echo_table(nodes_table(data))


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
