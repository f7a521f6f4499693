"""Time series from a finished replay: step functions averaged over fixed bins.

A step function is a list of ``(time, delta)`` changes (a job joins the queue: +1, leaves
it: -1; a job starts: +gpus, ends: -gpus). ``bin_average`` gives its time average over each
bin ``[t0 + k*bin_s, t0 + (k+1)*bin_s)``, exactly (the area under the steps / bin_s).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from gpuq.scheduler.sim.engine import JobRecord


def bin_average(changes: Iterable[tuple[float, float]], t0: float, bin_s: float,
                n_bins: int) -> list[float]:
    # Breakpoints of the step function: its level from times[i] on, and the area before.
    times, areas, levels = [t0], [0.0], [0.0]
    for when, delta in sorted(changes):
        if when > times[-1]:
            areas.append(areas[-1] + levels[-1] * (when - times[-1]))
            times.append(when)
            levels.append(levels[-1])
        levels[-1] += delta
    edges = []
    i = 0
    for k in range(n_bins + 1):
        t = t0 + k * bin_s
        while i + 1 < len(times) and times[i + 1] <= t:
            i += 1
        edges.append(areas[i] + levels[i] * (t - times[i]))
    return [(edges[k + 1] - edges[k]) / bin_s for k in range(n_bins)]


def span(records: Sequence[JobRecord]) -> tuple[float, float]:
    """First submit and last end of a finished replay."""
    return (min(r.job.submit_s for r in records),
            max(r.end_s for r in records if r.end_s is not None))


def bins_for(records: Sequence[JobRecord], n_bins: int) -> tuple[float, float, int]:
    t0, t1 = span(records)
    bin_s = max((t1 - t0) / n_bins, 1e-9)
    return t0, bin_s, n_bins


def queue_length(records: Sequence[JobRecord], t0: float, bin_s: float,
                 n_bins: int) -> list[float]:
    """The mean number of pending jobs in each bin."""
    changes = [(r.job.submit_s, 1.0) for r in records]
    changes += [(r.start_s, -1.0) for r in records if r.start_s is not None]
    return bin_average(changes, t0, bin_s, n_bins)


def busy_gpus(records: Sequence[JobRecord], t0: float, bin_s: float,
              n_bins: int) -> list[float]:
    """The mean number of GPUs in use in each bin."""
    changes = [(r.start_s, float(r.job.gpus)) for r in records if r.start_s is not None]
    changes += [(r.end_s, -float(r.job.gpus)) for r in records if r.end_s is not None]
    return bin_average(changes, t0, bin_s, n_bins)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
