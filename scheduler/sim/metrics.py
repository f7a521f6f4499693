"""The figures of a finished replay, as one JSON-ready dict.

- ``gpu_utilization``: GPU-seconds used / (GPUs x makespan); ``makespan_s``: first submit
  to last end.
- ``wait_s``: start - submit (mean, p50, p95, max; percentiles linear between ranks);
  ``completion_s``: end - submit (mean).
- ``fairness``: see ``windows``; ``share_mad`` and ``jain_index`` are the means over the
  sliding windows, ``overall_*`` the same figures over the whole run.
- ``accounts``: the top accounts by GPU-hours with their overall share and target, and
  their mean absolute deviation over the windows where they were active.
"""

from __future__ import annotations

import math
from typing import Any

from gpuq.scheduler.sim.engine import SimResult
from gpuq.scheduler.sim.series import percentile, span
from gpuq.scheduler.sim.windows import WindowShares, mean_of

TOP_ACCOUNTS = 10


def _round(value: float, digits: int = 6) -> float | None:
    return None if math.isnan(value) else round(value, digits)


def account_table(shares: WindowShares, gpu_s: dict[str, float],
                  top: int = TOP_ACCOUNTS) -> list[dict[str, Any]]:
    rows = []
    for entity in sorted(gpu_s, key=lambda e: (-gpu_s[e], e))[:top]:
        deviations = [abs(w.shares[entity] - w.targets[entity]) for w in shares.windows
                      if w is not None and entity in w.shares]
        overall = shares.overall
        rows.append({
            "account": entity,
            "gpu_hours": round(gpu_s[entity] / 3600, 3),
            "share": _round(overall.shares.get(entity, 0.0)) if overall else None,
            "target": _round(overall.targets.get(entity, 0.0)) if overall else None,
            "windows_active": len(deviations),
            "mean_abs_deviation": _round(mean_of(deviations)) if deviations else None,
        })
    return rows


def summarize(result: SimResult, shares: WindowShares,
              top_of: dict[str, tuple[str, int]]) -> dict[str, Any]:
    records = result.records
    t0, t1 = span(records)
    makespan = t1 - t0
    used_gpu_s = sum(r.job.gpus * (r.end_s - r.start_s) for r in records
                     if r.start_s is not None and r.end_s is not None)
    waits = [r.wait_s for r in records]
    completions = [r.end_s - r.job.submit_s for r in records if r.end_s is not None]
    by_entity: dict[str, float] = {}
    for r in records:
        entity = top_of[r.job.account][0]
        by_entity[entity] = by_entity.get(entity, 0.0) + r.job.gpus * (r.end_s - r.start_s)
    windows = [w for w in shares.windows if w is not None]
    overall = shares.overall
    capacity = result.total_gpus * makespan
    return {
        "policy": result.policy,
        "jobs": len(records),
        "nodes": len(result.nodes),
        "gpus": result.total_gpus,
        "makespan_s": round(makespan, 3),
        "gpu_hours": round(used_gpu_s / 3600, 3),
        "gpu_utilization": _round(used_gpu_s / capacity if capacity > 0 else math.nan),
        "wait_s": {
            "mean": _round(sum(waits) / len(waits), 3),
            "p50": _round(percentile(waits, 50), 3),
            "p95": _round(percentile(waits, 95), 3),
            "max": _round(max(waits), 3),
        },
        "completion_s": {"mean": _round(sum(completions) / len(completions), 3)},
        "fairness": {
            "level": "accounts under root",
            "window_s": shares.window_s,
            "step_s": shares.step_s,
            "windows": len(windows),
            "share_mad": _round(mean_of([w.mad for w in windows])),
            "jain_index": _round(mean_of([w.jain for w in windows])),
            "overall_share_mad": _round(overall.mad) if overall else None,
            "overall_jain_index": _round(overall.jain) if overall else None,
        },
        "accounts": account_table(shares, by_entity),
        "replay": {
            "policy_calls": result.policy_calls,
            "event_times": result.event_times,
            **{k: round(v, 3) for k, v in result.stats.items()},
        },
    }
