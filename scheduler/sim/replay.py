"""One replay from files to figures: what ``gpuq sim`` runs, and what tests call."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuq.scheduler.sim.cluster import SimNode
from gpuq.scheduler.sim.engine import DAY_S, JobRecord, SimResult, Simulation
from gpuq.scheduler.sim.errors import SimInputError
from gpuq.scheduler.sim.metrics import summarize
from gpuq.scheduler.sim.shares import Tree, complete
from gpuq.scheduler.sim.trace import TraceJob
from gpuq.scheduler.sim.windows import WindowShares, window_shares

JOB_COLUMNS = ("id", "user", "account", "gpus", "submit", "start", "end", "node",
               "gpu_indices", "wait")


@dataclass(frozen=True, slots=True)
class Replay:
    result: SimResult
    tree: Tree
    shares: WindowShares
    metrics: dict[str, Any] = field(default_factory=dict)


def check_fits(jobs: Sequence[TraceJob], nodes: Sequence[SimNode], source: object) -> None:
    """Every job must fit on one node of the cluster, or it would wait forever."""
    largest: dict[str | None, int] = {None: max(n.gpus for n in nodes)}
    for n in nodes:
        largest[n.model] = max(largest.get(n.model, 0), n.gpus)
    for job in jobs:
        have = largest.get(job.gpu_model, 0)
        if job.gpus > have:
            kind = f"{job.gpu_model} GPUs" if job.gpu_model else "GPUs"
            column = "gpu_model" if have == 0 else "gpus"
            detail = (f"no node has {kind}" if have == 0
                      else f"the largest node has {have} {kind}")
            raise SimInputError(f"{source}:{job.line}: column {column!r}: job {job.id} needs "
                                f"{job.gpus} {kind} on one node, but {detail}")


def replay(jobs: Sequence[TraceJob], nodes: list[SimNode], tree: Tree | None = None, *,
           policy: str = "fairshare+backfill", half_life_s: float = 7 * DAY_S,
           window_s: float = 7 * DAY_S, step_s: float = DAY_S,
           source: object = "trace", **engine: Any) -> Replay:
    """Replay ``jobs`` on ``nodes`` and compute the metrics (``Replay.metrics``)."""
    check_fits(jobs, nodes, source)
    full_tree = complete(tree, sorted({(j.user, j.account) for j in jobs}))
    sim = Simulation(list(jobs), nodes, full_tree, policy=policy, half_life_s=half_life_s,
                     **engine)
    began, began_cpu = time.perf_counter(), time.process_time()
    result = sim.run()
    result.stats["wall_s"] = time.perf_counter() - began
    result.stats["cpu_s"] = time.process_time() - began_cpu
    top_of = full_tree.top_levels()
    shares = window_shares(result.records, top_of, window_s, step_s)
    return Replay(result, full_tree, shares, summarize(result, shares, top_of))


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else repr(value)


def write_jobs_csv(records: Sequence[JobRecord], path: Path) -> None:
    """One row per job, by id; ``gpu_indices`` separated by ``;``."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(JOB_COLUMNS)
        for r in sorted(records, key=lambda r: r.job.id):
            writer.writerow((r.job.id, r.job.user, r.job.account, r.job.gpus,
                             _number(r.job.submit_s), _number(r.start_s), _number(r.end_s),
                             r.node, ";".join(map(str, r.gpu_indices)),
                             _number(r.wait_s if r.start_s is not None else None)))


def write_outputs(run: Replay, out: Path | None, jobs_out: Path | None) -> list[Path]:
    """``metrics.json`` and the plots in ``out``, the job table in ``jobs_out``."""
    written: list[Path] = []
    if jobs_out is not None:
        jobs_out.parent.mkdir(parents=True, exist_ok=True)
        write_jobs_csv(run.result.records, jobs_out)
        written.append(jobs_out)
    if out is not None:
        from gpuq.scheduler.sim.plots import write_plots  # matplotlib: only when plotting

        out.mkdir(parents=True, exist_ok=True)
        metrics = out / "metrics.json"
        metrics.write_text(json.dumps(run.metrics, indent=2) + "\n", encoding="utf-8")
        top = [row["account"] for row in run.metrics["accounts"]]
        written += [metrics, *write_plots(run.result.records, run.result.total_gpus,
                                          run.shares, top, out)]
    return written
