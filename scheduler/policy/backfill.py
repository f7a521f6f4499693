"""Backfill (fairshare.md A6): a reservation for the top blocked job, and the rule that a lower
job may start now only if it does not delay it.

Busy resources come free when running jobs reach their time limits (``started_at +
time_limit_s``; a job past its limit frees them now; one with no ``started_at`` is taken to
have started now). GPUs that are busy with nothing the snapshot names (or broken, or held by
foreign processes) never come free in the plan.

The reservation is the earliest time at which some UP node that could run the job has
enough usable GPUs of its model, CPUs and memory (ties: node name), within
``backfill_window_s``. A lower job started now does not delay it when it ends by the
reservation's start, or runs on another node, or takes only what the reservation does not
need on that node at its start (the *spare* GPUs, CPUs and memory).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable

from gpuq.scheduler.policy.decisions import Reservation
from gpuq.scheduler.policy.placement import Cluster
from gpuq.scheduler.policy.snapshot import JobView, Snapshot

#: (time, sequence, GPU indices, cpus, memory MiB): what a node gets back at ``time``. The
#: sequence (a running job's id, then counting up) keeps the order total.
Event = tuple[float, int, tuple[int, ...], int, int]


class Releases:
    """When each node's busy resources come free."""

    def __init__(self, cluster: Cluster, running: Iterable[JobView], now: float) -> None:
        self.cluster = cluster
        self.now = now
        self.events: list[list[Event]] = [[] for _ in cluster.views]
        self._seq = 0
        index, views = cluster.index, cluster.views
        comes_back: dict[int, set[int]] = {}
        claims: list[tuple[int, float, int, list[int], JobView]] = []
        claimed: dict[tuple[int, int], tuple[float, int]] = {}  # (node, gpu) -> (end, job id)
        shared = False
        for job in running:
            i = index.get(job.node) if job.node is not None else None
            if i is None:
                continue
            start = job.started_at if job.started_at is not None else now
            end = max(start + job.time_limit_s, now)
            back = comes_back.get(i)
            if back is None:
                v = views[i]
                back = comes_back[i] = {g.index for g in v.gpus if g.healthy
                                        and not g.occupied and g.index not in v.free_gpus}
            gpus = [g for g in job.gpu_indices if g in back]
            for g in gpus:
                mine = (end, job.id)
                other = claimed.get((i, g))
                if other is not None:
                    shared = True
                    if other > mine:
                        continue
                claimed[(i, g)] = mine
            claims.append((i, end, job.id, gpus, job))
        for i, end, job_id, gpus, job in claims:
            if shared:  # a GPU two jobs claim comes back when both have ended
                gpus = [g for g in gpus if claimed[(i, g)] == (end, job_id)]
            self.events[i].append((end, job_id, tuple(sorted(set(gpus))), job.cpus,
                                   job.memory_mib))
        for events in self.events:
            events.sort()
        self._seq = max((c[2] for c in claims), default=0)

    def add(self, i: int, at: float, gpus: tuple[int, ...], cpus: int, memory_mib: int) -> None:
        """Node ``i`` gets these back at ``at`` (a job started this cycle, or a running one)."""
        self._seq += 1
        insort(self.events[i], (at, self._seq, gpus, cpus, memory_mib))

    def earliest(self, i: int, job: JobView, not_after: float = math.inf,
                 ) -> tuple[float, int, int, int] | None:
        """The first time node ``i`` has room for ``job`` (now if it has now), with what is
        spare then (GPUs of its model, CPUs, memory); None if not by ``not_after``."""
        c = self.cluster
        model_of = c.model_of[i]
        model, gpus, cpus, mem = job.gpu_model, job.gpus, job.cpus, job.memory_mib
        has_cpus, has_mem = c.cpus[i] != 0, c.mem[i] != 0
        g, cp, m = c.free_count(i, model), c.free_cpus[i], c.free_mem[i]
        t = self.now
        events = self.events[i]
        k, n = 0, len(events)
        while True:
            if g >= gpus and (not has_cpus or cp >= cpus) and (not has_mem or m >= mem):
                return t, g - gpus, cp - cpus, m - mem
            if k == n:
                return None
            t = events[k][0]
            if t > not_after:
                return None
            while k < n and events[k][0] == t:
                _, _, back, dc, dm = events[k]
                g += len(back) if model is None else sum(1 for x in back if model_of[x] == model)
                cp += dc
                m += dm
                k += 1


class Guard:
    """Protects a reservation while lower jobs are placed: on the reserved node a job that
    runs past the reserved start may take only the spare resources."""

    def __init__(self, cluster: Cluster, reservation: Reservation, node: int,
                 spare: tuple[int, int, int]) -> None:
        self.cluster = cluster
        self.reservation = reservation
        self.node = node
        self.spare_gpus, self.spare_cpus, self.spare_mem = spare

    def _needs(self, job: JobView) -> tuple[int, int, int]:
        c, r, i = self.cluster, self.reservation, self.node
        if r.gpu_model is None or job.gpu_model == r.gpu_model:
            g = job.gpus
        elif job.gpu_model is None:  # it takes the other models' GPUs first
            g = max(0, job.gpus - (c.free_count(i, None) - c.free_count(i, r.gpu_model)))
        else:
            g = 0
        return g, job.cpus if c.cpus[i] else 0, job.memory_mib if c.mem[i] else 0

    def passes_start(self, job: JobView, now: float) -> bool:
        """Whether the job, started now, is still running at the reserved start."""
        return now + job.time_limit_s > self.reservation.start_at

    def allow(self, job: JobView, now: float) -> Callable[[int], bool] | None:
        """A node filter for the job (None: any node will do)."""
        if not self.passes_start(job, now):
            return None
        g, cp, m = self._needs(job)
        fits = g <= self.spare_gpus and cp <= self.spare_cpus and m <= self.spare_mem
        node = self.node
        return lambda i: i != node or fits

    def took(self, job: JobView, i: int, now: float) -> None:
        """The job started on node ``i``: what it keeps past the reserved start is not spare."""
        if i == self.node and self.passes_start(job, now):
            g, cp, m = self._needs(job)
            self.spare_gpus -= g
            self.spare_cpus -= cp
            self.spare_mem -= m


def plan_reservation(cluster: Cluster, releases: Releases, job: JobView,
                     nodes: Iterable[int], window_s: float,
                     ) -> tuple[Reservation, int, tuple[int, int, int]] | None:
    """The job's earliest start over ``nodes``: the reservation, its node and what is spare
    there at its start; None when it cannot start within the window."""
    now = releases.now
    best: tuple[float, int, tuple[int, int, int]] | None = None
    limit = now + window_s
    for i in nodes:
        found = releases.earliest(i, job, best[0] if best else limit)
        if found is not None and (best is None or found[0] < best[0]):
            best = (found[0], i, found[1:])
    if best is None:
        return None
    t, i, spare = best
    reservation = Reservation(job_id=job.id, node=cluster.names[i], start_at=t,
                              end_at=t + job.time_limit_s, gpus=job.gpus,
                              gpu_model=job.gpu_model, cpus=job.cpus,
                              memory_mib=job.memory_mib)
    return reservation, i, spare


def reserve(snapshot: Snapshot, job: JobView) -> Reservation | None:
    """The reservation ``job`` would get in this snapshot (its running jobs and free
    resources), ignoring other pending jobs: the computation the cycle makes for its top
    blocked job, for tests and the simulator."""
    cluster = Cluster(snapshot.nodes)
    releases = Releases(cluster, snapshot.running, snapshot.now)
    fit = cluster.static_fit(job)
    nodes = [i for i in range(len(cluster.views)) if fit.ok[cluster.cls[i]]]
    found = plan_reservation(cluster, releases, job, nodes, snapshot.config.backfill_window_s)
    return found[0] if found else None


class Outlook:
    """Cheap start estimates for waiting jobs, against the end of a cycle: running jobs and
    this cycle's starts end at their time limits, and the reservation holds its GPUs, CPUs
    and memory on its node until it ends. An estimate ignores other waiting jobs: it says
    "not before", not "at"."""

    def __init__(self, cluster: Cluster, releases: Releases,
                 guard: Guard | None) -> None:
        self.cluster = cluster
        self.releases = releases
        self.guard = guard
        self._gpu_times: dict[str | None, list[list[tuple[float, int]]]] = {}
        self._res_times: dict[int, tuple[list[float], list[int], list[int]]] = {}

    def _held_gpus(self, i: int, model: str | None) -> int:
        """GPUs of ``model`` the reservation holds on node ``i`` (taken to be of the model
        when either side names none)."""
        g = self.guard
        if g is None or i != g.node:
            return 0
        r = g.reservation
        return r.gpus if r.gpu_model is None or model is None or r.gpu_model == model else 0

    def _start_values(self, i: int, model: str | None) -> tuple[int, int, int]:
        c, g = self.cluster, self.guard
        free = (c.free_count(i, model), c.free_cpus[i], c.free_mem[i])
        if g is None or i != g.node:
            return free
        r = g.reservation
        return (free[0] - self._held_gpus(i, model), free[1] - r.cpus,
                free[2] - r.memory_mib)

    def _events(self, i: int) -> list[Event]:
        g = self.guard
        events = self.releases.events[i]
        if g is None or i != g.node:
            return events
        r = g.reservation
        back = tuple(j for j in range(-r.gpus, 0))  # placeholders: the reserved GPUs
        return sorted([*events, (r.end_at, 0, back, r.cpus, r.memory_mib)])

    def _gpu_order(self, model: str | None, gpus: int) -> list[tuple[float, int]]:
        """UP nodes by the time they first have ``gpus`` free GPUs of ``model``."""
        by_count = self._gpu_times.get(model)
        if by_count is None:
            by_count = self._gpu_times[model] = self._gpu_timelines(model)
        return by_count[gpus] if gpus < len(by_count) else []

    def _gpu_timelines(self, model: str | None) -> list[list[tuple[float, int]]]:
        """For each GPU count g: UP nodes by the time they first have g free GPUs of
        ``model`` (one pass over each node's events for every g)."""
        c, now = self.cluster, self.releases.now
        per_count: list[list[tuple[float, int]]] = [[]]
        for i in range(len(c.views)):
            if not c.up[i]:
                continue
            have = self._start_values(i, model)[0]
            held = self._held_gpus(i, model) > 0
            model_of = c.model_of[i]
            g = 0
            t = now
            events = self._events(i)
            k = 0
            while True:
                while g < have:
                    g += 1
                    if len(per_count) <= g:
                        per_count.append([])
                    per_count[g].append((t, i))
                if k == len(events):
                    break
                t, _, back, _, _ = events[k]
                k += 1
                if model is None:
                    have += len(back)
                else:
                    have += sum(1 for x in back if (held if x < 0 else model_of[x] == model))
            per_count[0].append((now, i))
        for lst in per_count:
            lst.sort()
        return per_count

    def _when(self, i: int, need: int, which: int) -> float:
        """When node ``i`` first has ``need`` CPUs (which=1) or MiB (which=2) free."""
        times, cpus, mem = self._resources(i)
        values = cpus if which == 1 else mem
        k = bisect_left(values, need)
        return times[k] if k < len(times) else math.inf

    def _resources(self, i: int) -> tuple[list[float], list[int], list[int]]:
        cached = self._res_times.get(i)
        if cached is None:
            _, cp, m = self._start_values(i, None)
            times, cpus, mem = [self.releases.now], [cp], [m]
            for at, _, _, dc, dm in self._events(i):
                cp, m = cp + dc, m + dm
                if at == times[-1]:
                    cpus[-1], mem[-1] = cp, m
                else:
                    times.append(at)
                    cpus.append(cp)
                    mem.append(m)
            # Free CPUs and memory only grow with time, so a bisection finds the first fit.
            cached = self._res_times[i] = (times, cpus, mem)
        return cached

    def estimate(self, job: JobView, ok: list[bool], not_after: float) -> float | None:
        """Not-before estimate of the job's start over nodes whose class is ``ok``."""
        c = self.cluster
        best = math.inf
        for t, i in self._gpu_order(job.gpu_model, job.gpus):
            if t >= best:
                break
            if not ok[c.cls[i]]:
                continue
            if c.cpus[i]:
                t = max(t, self._when(i, job.cpus, 1))
            if c.mem[i]:
                t = max(t, self._when(i, job.memory_mib, 2))
            best = min(best, t)
        return best if best <= not_after else None

