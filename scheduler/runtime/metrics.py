"""Prometheus metrics (``GET /metrics``).

Two kinds:

* measured in the server process as things happen (process-wide, ``PROCESS``): the
  scheduling cycle's duration, and the dispatch latency (from the loop dispatching a job
  to its node reporting it running);
* read from the database at every scrape (``StateCollector``): jobs by state and account,
  GPUs by state, running GPUs and fair-share per account, power per node, idle GPUs.

With ``gpuq server --workers N`` (scheduler/entry/prefork.py) the histograms are observed in
several processes (the cycle in the loop's, the dispatch latency in the API's):
prometheus_client's multiprocess mode keeps each process's values in files under
``PROMETHEUS_MULTIPROC_DIR``, which the supervisor empties and sets before anything imports
prometheus_client (the library picks its value store at import). ``enable_multiprocess``
then makes ``exposition`` sum those files (``MultiProcessCollector``) instead of reading
``PROCESS``; the database gauges are read once, by the process serving the scrape.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select

from gpuq.scheduler.db.models import Account, GpuAllocation, Job, JobArray, Node
from gpuq.scheduler.measures import PROCESS
from gpuq.scheduler.runtime.context import Context
from gpuq.wire.states import JobState, NodeState

QUEUE_STATES = (JobState.PENDING, JobState.DISPATCHED, JobState.RUNNING)
GPU_STATES = ("free", "allocated", "occupied", "unhealthy", "unavailable")
#: The multiprocess mode's directory, once ``enable_multiprocess`` was called.
_multiprocess_dir: Path | None = None


def enable_multiprocess(path: Path) -> None:
    """Sum the histograms of every process that writes under ``path`` at each scrape.
    ``PROMETHEUS_MULTIPROC_DIR`` must have named ``path`` before prometheus_client was
    first imported, or this process's own values would not be in the files."""
    global _multiprocess_dir
    if (os.environ.get("PROMETHEUS_MULTIPROC_DIR") != str(path)
            or not getattr(values.ValueClass, "_multiprocess", False)):
        raise RuntimeError(
            f"prometheus_client is not in multiprocess mode on {path}: "
            "PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is imported")
    _multiprocess_dir = path


class StateCollector:
    """Gauges read from the database at scrape time."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.ctx.transaction() as session:
            names = dict(session.execute(select(Account.id, Account.name)).all())
            jobs = GaugeMetricFamily("gpuq_jobs", "Jobs in the queue, by state and account",
                                     labels=["state", "account"])
            counts = session.execute(
                select(Job.state, Job.account_id, func.count())
                .where(Job.state.in_([s.value for s in QUEUE_STATES]))
                .group_by(Job.state, Job.account_id)).all()
            by_key: Counter[tuple[str, int]] = Counter()
            for state, account_id, n in counts:
                by_key[(state, account_id)] += n
            # Arrays' elements that wait in their arrays' records (no rows yet) are pending.
            for account_id, n in session.execute(
                    select(JobArray.account_id, func.sum(JobArray.count - JobArray.split))
                    .where(JobArray.state == JobState.PENDING.value)
                    .group_by(JobArray.account_id)).all():
                by_key[(JobState.PENDING.value, account_id)] += int(n or 0)
            for (state, account_id), n in by_key.items():
                jobs.add_metric([state, names.get(account_id, "?")], n)
            yield jobs

            running = GaugeMetricFamily("gpuq_account_running_gpus",
                                        "GPUs held by running jobs, by account",
                                        labels=["account"])
            held = session.execute(
                select(Job.account_id, func.count(GpuAllocation.id))
                .join(GpuAllocation, GpuAllocation.job_id == Job.id)
                .group_by(Job.account_id)).all()
            for account_id, n in held:
                running.add_metric([names.get(account_id, "?")], n)
            yield running

            yield from self._gpus(session)
            yield from self._idle(session, names)
        yield from self._fairshare()

    def _gpus(self, session) -> Iterator[GaugeMetricFamily]:  # noqa: ANN001
        allocated = set(session.execute(select(GpuAllocation.node_id,
                                               GpuAllocation.gpu_index)).all())
        by_state: Counter[str] = Counter({s: 0 for s in GPU_STATES})
        power = GaugeMetricFamily("gpuq_node_power_watts",
                                  "Power drawn by the node's GPUs (last heartbeat)",
                                  labels=["node"])
        up = GaugeMetricFamily("gpuq_node_up", "1 when the node is up", labels=["node"])
        for node in session.scalars(select(Node)):
            alive = node.state == NodeState.UP.value
            up.add_metric([node.name], 1.0 if alive else 0.0)
            watts = [float(g.last_sample.get("power_w")) for g in node.gpus
                     if alive and isinstance((g.last_sample or {}).get("power_w"), int | float)]
            if watts:
                power.add_metric([node.name], sum(watts))
            for g in node.gpus:
                if (node.id, g.index) in allocated:
                    state = "allocated"
                elif not alive or node.drain:
                    state = "unavailable"
                elif not g.healthy:
                    state = "unhealthy"
                elif g.foreign_processes:
                    state = "occupied"
                else:
                    state = "free"
                by_state[state] += 1
        gpus = GaugeMetricFamily("gpuq_gpus", "GPUs by state (occupied: a process gpuq did "
                                 "not start; unavailable: node down or drained)",
                                 labels=["state"])
        for state, n in by_state.items():
            gpus.add_metric([state], n)
        yield gpus
        yield power
        yield up

    def _idle(self, session, names: dict[int, str]) -> Iterator[GaugeMetricFamily]:  # noqa: ANN001
        idle = GaugeMetricFamily("gpuq_idle_gpus", "GPUs held by running jobs flagged idle",
                                 labels=["account"])
        idle_jobs = GaugeMetricFamily("gpuq_idle_jobs", "Running jobs flagged idle",
                                      labels=["account"])
        rows = session.execute(
            select(Job.account_id, func.count(), func.sum(Job.gpus))
            .where(Job.state == JobState.RUNNING.value, Job.idle_flagged_at.is_not(None))
            .group_by(Job.account_id)).all()
        for account_id, n, gpus in rows:
            idle.add_metric([names.get(account_id, "?")], float(gpus or 0))
            idle_jobs.add_metric([names.get(account_id, "?")], n)
        yield idle
        yield idle_jobs

    def _fairshare(self) -> Iterator[GaugeMetricFamily]:
        from gpuq.scheduler.domain.snapshot import tree_views
        from gpuq.scheduler.policy import classic_fairshare, fair_tree

        with self.ctx.transaction() as session:
            accounts, assocs, usage = tree_views(session, self.ctx.clock())
        algorithm = classic_fairshare if self.ctx.settings.fairshare_algorithm == "classic" \
            else fair_tree
        table = algorithm(accounts, assocs, usage)
        factor = GaugeMetricFamily("gpuq_fairshare_factor",
                                   "Fair-share factor of each user association (0..1)",
                                   labels=["account", "user"])
        level = GaugeMetricFamily("gpuq_account_level_fs",
                                  "LevelFS of each account (>1: under-served; +Inf: no usage)",
                                  labels=["account"])
        for r in table.rows:
            if r.user and r.fairshare is not None:
                factor.add_metric([r.account or "", r.user], float(r.fairshare))
            elif not r.user and r.level_fs is not None:
                lf = float(r.level_fs)
                level.add_metric([r.name], math.inf if math.isinf(lf) else lf)
        yield factor
        yield level


class _Process:
    def collect(self) -> Iterator[object]:
        yield from PROCESS.collect()


def exposition(ctx: Context) -> bytes:
    """The text format of every metric, read now."""
    registry = CollectorRegistry(auto_describe=False)
    if _multiprocess_dir is not None:
        MultiProcessCollector(registry, path=str(_multiprocess_dir))
    else:
        registry.register(_Process())  # type: ignore[arg-type]
    registry.register(StateCollector(ctx))  # type: ignore[arg-type]
    return generate_latest(registry)
