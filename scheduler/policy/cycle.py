"""The fair-share policies: one pass over every pending job in multifactor-priority order.

``fairshare``: a job starts on its best-fit node if one fits now; one that does not fit holds
every node where it could run once GPUs free up, from every lower job (the FIFO hold rule).

``fairshare+backfill``: the first job that does not fit gets a reservation (its earliest
start from running jobs' time limits); lower jobs start wherever they fit now and do not
delay it (backfill.py). Waiting jobs get a not-before estimate of their start.

Every pending job is considered. What keeps that cheap: a job shape (GPUs, model, CPUs,
memory) that did not fit stays unfit for the rest of the cycle, since starts only use up
resources and holds or the reservation only grow; with backfill, a shape that failed with
time limit L also fails with any longer limit. So a failed shape's later jobs take its
reason from a cache, and only the first job of a shape, or one that may fit, is placed.
"""

from __future__ import annotations

import math

from scheduler.policy import reasons
from scheduler.policy.backfill import Guard, Outlook, Releases, plan_reservation
from scheduler.policy.decisions import Decisions, Reservation, Start
from scheduler.policy.placement import Cluster, Shape, Survey
from scheduler.policy.priority import fairshare_table, priorities
from scheduler.policy.snapshot import JobView, Snapshot


class _Cycle:
    def __init__(self, snapshot: Snapshot, backfill: bool) -> None:
        self.snapshot = snapshot
        self.now = snapshot.now
        self.backfill = backfill
        self.cluster = Cluster(snapshot.nodes)
        self.releases = Releases(self.cluster, snapshot.running, self.now) if backfill else None
        self.held_by: list[int | None] | None = None if backfill else \
            [None] * len(self.cluster.views)
        self.guard: Guard | None = None
        #: shape -> (shortest time limit that failed, the reason for later jobs, estimable)
        self.failed: dict[Shape, tuple[float, str, bool]] = {}
        #: shape -> (a job of it, the ids of its waiting jobs that get its estimate)
        self.waiting: dict[Shape, tuple[JobView, list[int]]] = {}
        self.starts: list[Start] = []
        self.reasons: dict[int, str] = {}
        self.estimates: dict[int, float] = {}
        self.rank: dict[int, int] = {}

    def run(self, order: list[JobView]) -> None:
        if self.held_by is not None:
            self.rank = {job.id: r for r, job in enumerate(order)}
        known_qos = set(dict(self.snapshot.config.qos_priority))
        failed, reasons_, waiting = self.failed, self.reasons, self.waiting
        for job in order:
            if job.qos not in known_qos:
                reasons_[job.id] = reasons.unknown_qos(job.qos, known_qos)
                continue
            shape = (job.gpus, job.gpu_model, job.cpus, job.memory_mib)
            hit = failed.get(shape)
            if hit is not None and job.time_limit_s >= hit[0]:
                reasons_[job.id] = hit[1]
                if hit[2]:
                    waiting[shape][1].append(job.id)
                continue
            if not self._place(job):
                self._fail(job, shape)

    def _place(self, job: JobView) -> bool:
        c, guard, now = self.cluster, self.guard, self.now
        fit = c.static_fit(job)
        allow = guard.allow(job, now) if guard is not None else None
        i = c.best_fit(job, fit, allow)
        if i is None:
            return False
        avoid = None
        if guard is not None and i == guard.node and guard.passes_start(job, now):
            avoid = guard.reservation.gpu_model
            guard.took(job, i, now)
        gpus = c.choose_gpus(i, job, avoid)
        c.allocate(i, job, gpus)
        if self.releases is not None:
            self.releases.add(i, now + job.time_limit_s, gpus, job.cpus, job.memory_mib)
        self.starts.append(Start(job.id, c.names[i], gpus))
        return True

    def _fail(self, job: JobView, shape: Shape) -> None:
        c = self.cluster
        fit = c.static_fit(job)
        guard = self.guard
        if self.held_by is not None:
            survey = c.survey(job, fit, held_by=self.held_by)
        elif guard is not None:
            survey = c.survey(job, fit, allow=guard.allow(job, self.now),
                              blocked_why=reasons.reserved_for(guard.reservation))
        else:
            survey = c.survey(job, fit)
        if not survey.eligible:  # it cannot run anywhere until nodes change
            reason = reasons.node_down(survey.down) if survey.down else \
                reasons.resources(job, survey.misses)
            self._record(job, shape, -math.inf, reason, reason, estimable=False)
        elif self.held_by is not None:
            self._hold(job, shape, survey)
        elif guard is None and self._reserve(job, survey):
            reason = reasons.resources(job, survey.misses)
            self._record(job, shape, -math.inf, reason, reason, estimable=True)
        elif survey.blocked:
            assert guard is not None
            reason = reasons.would_delay(guard.reservation, self.now)
            self._record(job, shape, job.time_limit_s, reason, reason, estimable=True)
        else:
            reason = reasons.resources(job, survey.misses)
            self._record(job, shape, -math.inf, reason, reason, estimable=True)

    def _record(self, job: JobView, shape: Shape, limit: float, reason: str, later: str,
                *, estimable: bool) -> None:
        self.reasons[job.id] = reason
        self.failed[shape] = (limit, later, estimable)
        if estimable:
            ids = self.waiting.setdefault(shape, (job, []))[1]
            if self.guard is None or self.guard.reservation.job_id != job.id:
                ids.append(job.id)

    def _hold(self, job: JobView, shape: Shape, survey: Survey) -> None:
        """The hold rule: the job holds every node it could run on from lower jobs."""
        held_by, rank = self.held_by, self.rank
        assert held_by is not None
        holders = [h for i in survey.eligible if (h := held_by[i]) is not None]
        if len(holders) == len(survey.eligible):
            reason = reasons.waiting_behind(min(holders, key=rank.__getitem__))
        else:
            reason = reasons.resources(job, survey.misses)
        for i in survey.eligible:
            if held_by[i] is None:
                held_by[i] = job.id
                self.cluster.exclude(i)
        # From now on every node it could use is held: later jobs of its shape wait behind
        # the most urgent holder.
        first = min((h for i in survey.eligible if (h := held_by[i]) is not None),
                    key=rank.__getitem__)
        self._record(job, shape, -math.inf, reason, reasons.waiting_behind(first),
                     estimable=False)

    def _reserve(self, job: JobView, survey: Survey) -> bool:
        """Reserve for the first blocked job; False when it cannot start within the window."""
        assert self.releases is not None
        found = plan_reservation(self.cluster, self.releases, job, survey.eligible,
                                 self.snapshot.config.backfill_window_s)
        if found is None:
            return False
        reservation, node, spare = found
        self.guard = Guard(self.cluster, reservation, node, spare)
        self.estimates[job.id] = reservation.start_at
        return True

    def estimate_waiting(self) -> None:
        if self.releases is None:
            return
        outlook = Outlook(self.cluster, self.releases, self.guard)
        limit = self.now + self.snapshot.config.backfill_window_s
        for job, ids in self.waiting.values():
            t = outlook.estimate(job, self.cluster.static_fit(job).ok, limit)
            if t is not None:
                self.estimates.update(dict.fromkeys(ids, t))

    @property
    def reservation(self) -> Reservation | None:
        return self.guard.reservation if self.guard is not None else None


def schedule_fairshare(snapshot: Snapshot, *, backfill: bool) -> Decisions:
    table = fairshare_table(snapshot)
    prios = priorities(snapshot, table.factors)
    order = prios.order()
    cycle = _Cycle(snapshot, backfill)
    cycle.run(order)
    cycle.estimate_waiting()
    return Decisions(starts=tuple(cycle.starts), pending_reasons=cycle.reasons,
                     priorities=prios, estimated_starts=cycle.estimates,
                     order=tuple([j.id for j in order]), reservation=cycle.reservation)
