"""Fair share as delivered: each account's share of GPU-time over sliding windows.

Accounts are compared at the top level of the tree (the children of root, where fair share
divides first; a nested account counts toward its top-level ancestor).

In a window, an account *used* the GPU-seconds its jobs ran there, and *asked for* the
GPU-seconds its jobs were pending or running there (GPUs x time since submit). It is
active when it asked for anything. Its *target* is its weighted max-min fair part of the
GPU-seconds used in the window: the used total is divided in proportion to shares, no
account getting more than it asked for, what it leaves going to the others (water
filling; zero-share accounts get only what the others leave). An account's share and
target are fractions of the window's used total. Per window: the mean absolute deviation
|share - target| over the active accounts, and Jain's index over their used/target ratios
((Σx)² / (n·Σx²); 1 = every account got exactly its target).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpuq.scheduler.sim.engine import JobRecord
from gpuq.scheduler.sim.series import span


@dataclass(frozen=True, slots=True)
class Fairness:
    """The figures of one window (or of the whole run); active accounts only."""
    shares: dict[str, float]
    targets: dict[str, float]
    mad: float
    jain: float


@dataclass(frozen=True, slots=True)
class WindowShares:
    window_s: float
    step_s: float
    ends: list[float]               # each window's end time
    windows: list[Fairness | None]  # None: no GPU was used in that window
    overall: Fairness | None


def water_fill(amount: float, asked: Mapping[str, float],
               weights: Mapping[str, float]) -> dict[str, float]:
    """Divide ``amount`` in proportion to ``weights``, capping each at what it ``asked``
    for and handing the rest to the others; zero weights share only what is left."""
    out: dict[str, float] = {}
    left = amount
    positive = [e for e in asked if weights[e] > 0]
    for group, weight in ((positive, weights), ([e for e in asked if weights[e] <= 0],
                                                dict.fromkeys(asked, 1.0))):
        total = sum(weight[e] for e in group)
        for e in sorted(group, key=lambda e: (asked[e] / weight[e], e)):
            give = min(asked[e], left * weight[e] / total) if total > 0 else 0.0
            out[e] = give
            left -= give
            total -= weight[e]
    return out


def fairness(used: Mapping[str, float], asked: Mapping[str, float],
             shares: Mapping[str, int]) -> Fairness | None:
    active = [e for e in asked if asked[e] > 0]
    total = sum(used.get(e, 0.0) for e in active)
    if not active or total <= 0:
        return None
    fair = water_fill(total, {e: asked[e] for e in active}, shares)
    got = {e: used.get(e, 0.0) / total for e in active}
    want = {e: fair[e] / total for e in active}
    mad = sum(abs(got[e] - want[e]) for e in active) / len(active)
    ratios = [got[e] / want[e] for e in active if want[e] > 0]
    squares = sum(x * x for x in ratios)
    jain = sum(ratios) ** 2 / (len(ratios) * squares) if squares > 0 else math.nan
    return Fairness(got, want, mad, jain)


def window_shares(records: Sequence[JobRecord], top_of: Mapping[str, tuple[str, int]],
                  window_s: float, step_s: float) -> WindowShares:
    """Windows of ``window_s`` every ``step_s`` from the first submit (one window when the
    run is shorter than ``window_s``)."""
    t0, t1 = span(records)
    n_bins = max(1, math.ceil((t1 - t0) / step_s))
    per_window = max(1, round(window_s / step_s))
    shares = {entity: s for entity, s in top_of.values()}
    used: dict[str, list[float]] = {e: [0.0] * n_bins for e in shares}
    asked: dict[str, list[float]] = {e: [0.0] * n_bins for e in shares}

    def spread(into: list[float], gpus: int, begin: float, end: float) -> None:
        first = min(max(int((begin - t0) // step_s), 0), n_bins - 1)
        for b in range(first, n_bins):
            lo, hi = max(begin, t0 + b * step_s), min(end, t0 + (b + 1) * step_s)
            if hi <= lo:
                break
            into[b] += gpus * (hi - lo)

    for r in records:
        entity = top_of[r.job.account][0]
        assert r.start_s is not None and r.end_s is not None
        spread(used[entity], r.job.gpus, r.start_s, r.end_s)
        spread(asked[entity], r.job.gpus, r.job.submit_s, r.end_s)

    ends, windows = [], []
    for k in range(max(1, n_bins - per_window + 1)):
        hi = min(k + per_window, n_bins)
        ends.append(min(t0 + hi * step_s, t1))
        windows.append(fairness({e: sum(used[e][k:hi]) for e in shares},
                                {e: sum(asked[e][k:hi]) for e in shares}, shares))
    overall = fairness({e: sum(used[e]) for e in shares}, {e: sum(asked[e]) for e in shares},
                       shares)
    return WindowShares(window_s, step_s, ends, windows, overall)


def mean_of(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan
