"""``gpuq usage``: GPU-hours, billed hours, energy, carbon, jobs, utilisation and idle
GPU-hours per account, user, GPU model or day (``GET /v1/usage``); ``--plot`` draws usage
over time per account (stacked, one bar a day)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from gpuq.cli.context import Env, echo_json, pass_env
from gpuq.cli.render import echo_table, plain_table

KEYS = ("account", "user", "gpu-model", "day")
FIELDS = ("gpu_hours", "billed_gpu_hours", "energy_kwh", "carbon_kg", "jobs",
          "utilization_mean_pct", "idle_gpu_hours")
HEADERS = ("GPU-H", "BILLED-H", "KWH", "KGCO2E", "JOBS", "UTIL%", "IDLE-GPU-H")


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "jobs":
        return str(value)
    if key == "utilization_mean_pct":
        return f"{value:.1f}"
    return f"{value:.2f}" if key != "carbon_kg" else f"{value:.3f}"


def usage_table(report: Mapping[str, Any]) -> Any:
    keys = [k.replace("-", "_") for k in report["by"]]
    table = plain_table(*(k.upper().replace("_", "-") for k in keys), *HEADERS)
    for r in report["rows"]:
        table.add_row(*(str(r.get(k) or "") for k in keys), *(_cell(f, r.get(f)) for f in FIELDS))
    t = report["total"]
    table.add_row(*(["TOTAL"] + [""] * (len(keys) - 1) if keys else []),
                  *(_cell(f, t.get(f)) for f in FIELDS))
    return table


def usage_csv(report: Mapping[str, Any]) -> str:
    keys = [k.replace("-", "_") for k in report["by"]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*keys, *FIELDS])
    for r in report["rows"]:
        w.writerow([r.get(k) or "" for k in keys] + [r.get(f) for f in FIELDS])
    return buf.getvalue()


def plot(rows: Sequence[Mapping[str, Any]], path: Path, *, field: str = "gpu_hours") -> None:
    """A stacked bar chart: one bar a day, one colour per account."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = sorted({r["day"] for r in rows})
    accounts = sorted({r["account"] for r in rows})
    value = {(r["day"], r["account"]): float(r.get(field) or 0) for r in rows}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(days) + 3), 4.5))
    bottom = [0.0] * len(days)
    for account in accounts:
        heights = [value.get((d, account), 0.0) for d in days]
        ax.bar(days, heights, bottom=bottom, label=account)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_ylabel({"gpu_hours": "GPU-hours", "billed_gpu_hours": "billed GPU-hours",
                   "energy_kwh": "kWh"}.get(field, field))
    ax.set_title("GPU usage per day, by account")
    ax.tick_params(axis="x", labelrotation=60)
    if accounts:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@click.command("usage")
@click.option("-A", "--account", help="This account and the accounts under it.")
@click.option("-u", "--user", help="Only this user's usage.")
@click.option("--since", default="30d", show_default=True,
              help="A duration ago (30d, 12h, 2w) or an ISO time; 'all' for everything.")
@click.option("--by", "by", type=click.Choice(KEYS), default="account", show_default=True,
              help="Group by this.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the rows as CSV.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE.png", help="Also draw GPU-hours per day, stacked by account.")
@pass_env
def usage(env: Env, account: str | None, user: str | None, since: str, by: str,
          as_json: bool, as_csv: bool, plot_file: Path | None) -> None:
    """GPU-hours, billed hours, kWh, kg CO2e, jobs, mean utilisation and idle GPU-hours:
    the table for a grant report. Users see the accounts they are in."""
    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    params: dict[str, Any] = {"by": by}
    if since and since != "all":
        params["since"] = since
    for key, value in (("account", account), ("user", user)):
        if value:
            params[key] = value
    with env.client() as api:
        report = api.get("/v1/usage", params=params)
        daily = (api.get("/v1/usage", params={**params, "by": "day,account"})
                 if plot_file is not None else None)
    if as_json:
        echo_json(report)
    elif as_csv:
        click.echo(usage_csv(report), nl=False)
    else:
        echo_table(usage_table(report))
    if daily is not None and plot_file is not None:
        plot(daily["rows"], plot_file)
        click.echo(f"Wrote {plot_file}", err=True)
