"""``gpuq sim``: replay a workload trace through the policy with a virtual clock."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gpuq.cli.units import parse_time_s

POLICIES = ("fifo", "fairshare", "fairshare+backfill")


class SpanType(click.ParamType):
    """A duration such as 7d, 12h, 90m; 0 means none (no decay)."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip()
        if text in ("0", "none"):
            return 0.0
        try:
            return float(parse_time_s(text))
        except ValueError as e:
            self.fail(f"{e} (examples: 7d, 12h, 90m, 0 = none)", param, ctx)


@click.command("sim")
@click.argument("trace", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--nodes", "nodes_spec", metavar="NxG[:MODEL]",
              help="The cluster: N nodes of G GPUs (e.g. 1000x8, 2x8:A100-80GB; several "
                   "groups joined by commas).")
@click.option("--cluster", "cluster_file", metavar="FILE",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The cluster from a CSV (nodes,gpus,model) or TOML ([[nodes]]) file.")
@click.option("--shares", "shares_file", metavar="FILE",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Account tree and shares, CSV: type,name,parent,shares "
                   "[default: equal shares].")
@click.option("--policy", type=click.Choice(POLICIES), default="fairshare+backfill",
              show_default=True, help="The policy to replay.")
@click.option("--half-life", "half_life_s", type=SpanType(), default="7d", show_default=True,
              help="Half-life of the usage decay (0: no decay).")
@click.option("--window", "window_s", type=SpanType(), default="7d", show_default=True,
              help="Length of the sliding windows of the share metrics.")
@click.option("--step", "step_s", type=SpanType(), default="1d", show_default=True,
              help="How far each sliding window moves.")
@click.option("--jobs-out", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write every job's submit, start, end, node and GPUs as CSV.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              metavar="DIR", help="Write metrics.json and PNG plots into this folder.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N",
              help="Replay only the first N jobs of the trace.")
def sim(trace: Path, nodes_spec: str | None, cluster_file: Path | None,
        shares_file: Path | None, policy: str, half_life_s: float, window_s: float,
        step_s: float, jobs_out: Path | None, out_dir: Path | None,
        limit: int | None) -> None:
    """Replay TRACE (CSV: submit_time, user, account, gpus, duration[, time_limit,
    gpu_model, name]; times in seconds; gzipped when it ends in .gz), or the trace
    that comes with gpuq by its name (lanl-cm5-1994: the LANL CM-5 log on 8-GPU
    nodes; try --nodes 2x8), through the scheduling policy on a simulated cluster,
    and print the metrics as JSON: GPU utilization, waits, completion time, each
    account's share of GPU-time against its fair target over sliding windows,
    Jain's fairness index. --out DIR also writes metrics.json and PNG plots.

    Jobs run for their duration and are never killed: the policy is told
    max(time_limit, duration) as the time limit (the duration when there is none).
    """
    from gpuq.scheduler.sim import (
        SimInputError,
        SimulationError,
        build_nodes,
        load_cluster_file,
        load_shares,
        load_trace,
        parse_nodes,
        replay,
        shipped_traces,
        write_outputs,
    )

    if not trace.exists():
        shipped = shipped_traces()
        if str(trace) not in shipped:
            raise click.BadParameter(
                f"no file {str(trace)!r}, and no trace of that name comes with gpuq "
                f"({', '.join(shipped) or 'none'})", param_hint="'TRACE'")
        trace = shipped[str(trace)]

    if (nodes_spec is None) == (cluster_file is None):
        raise click.UsageError("give the cluster with --nodes (e.g. 2x8) or --cluster FILE "
                               "(one of them)")
    if window_s <= 0 or step_s <= 0:
        raise click.UsageError("--window and --step must be more than 0")
    try:
        groups = parse_nodes(nodes_spec) if nodes_spec else load_cluster_file(cluster_file)
        tree = load_shares(shares_file) if shares_file else None
        jobs = load_trace(trace, limit)
        run = replay(jobs, build_nodes(groups), tree, policy=policy, half_life_s=half_life_s,
                     window_s=window_s, step_s=step_s, source=trace)
        write_outputs(run, out_dir, jobs_out)
    except (SimInputError, SimulationError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot write the output: {e}") from None
    click.echo(json.dumps(run.metrics, indent=2))
