"""What the server measures as things happen, process-wide (``PROCESS``): the scheduling
cycle's duration and the dispatch latency (from the loop dispatching a job to its node
reporting it running). ``runtime/metrics.py`` serves them at ``GET /metrics`` with the
figures it reads from the database.

prometheus_client picks its value store when it is first imported: with ``gpuq server
--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before anything imports this
module (scheduler/entry/prefork.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Histogram

PROCESS = CollectorRegistry(auto_describe=True)
CYCLE_SECONDS = Histogram(
    "gpuq_schedule_cycle_seconds", "Duration of one scheduling cycle (wall clock)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=PROCESS)
DISPATCH_LATENCY = Histogram(
    "gpuq_dispatch_latency_seconds",
    "From the loop dispatching a job to its node reporting it running",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120), registry=PROCESS)


@contextlib.contextmanager
def cycle_timer() -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        CYCLE_SECONDS.observe(time.perf_counter() - start)


def observe_dispatch(dispatched_at: datetime | None, now: datetime) -> None:
    """A job dispatched at ``dispatched_at`` just went RUNNING."""
    if dispatched_at is not None:
        DISPATCH_LATENCY.observe(max(0.0, (now - dispatched_at).total_seconds()))
