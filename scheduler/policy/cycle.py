"""The fair-share policies: one pass over every pending job in multifactor-priority order.

``fairshare``: a job starts on its best-fit node if one fits now; one that does not fit holds
every node where it could run once GPUs free up, from every lower job (the FIFO hold rule).

``fairshare+backfill``: the first job that does not fit gets a reservation (its earliest
start from running jobs' time limits); lower jobs start wherever they fit now and do not
delay it (backfill.py). Waiting jobs get a not-before estimate of their start.

Every pending job is considered, and cheaply, because not fitting is monotone within a
cycle: starts only use resources up, holds and the reservation only grow, and a job that
asks for no less (same GPU model; no fewer GPUs, CPUs, MiB; with backfill no shorter time
limit) than one that did not fit does not fit either. So:

- a job of a shape (GPUs, model, CPUs, memory) that already failed takes its reason. Only
  its *kind* may change, one way: a job that fitted the reserved node now but would have
  delayed the reservation ("Reservation") finds that node too full once a later job that
  ends by the reserved start (or takes only spare resources) starts there ("Resources").
  So such a cached failure holds only while the job still fits the reserved node now (one
  node's check), and is taken for a Resources failure when it does not;
- a job *dominated* by a failed one fails without a search. Its reason's kind is exact
  (which nodes could ever run it, who holds them, whether only the reservation stands in
  the way), and the per-node counts of a "Resources" reason are those of the first job of its
  *reason key*: same GPUs and model, CPUs and memory in the same power-of-two bucket;
- only jobs that might fit are placed: their count is bounded by the starts and by the
  failures that are not dominated.
"""

from __future__ import annotations

import math

from gpuq.scheduler.policy import reasons
from gpuq.scheduler.policy.backfill import Guard, Outlook, Releases, plan_reservation
from gpuq.scheduler.policy.decisions import Decisions, Reservation, Start
from gpuq.scheduler.policy.placement import Cluster, Shape, Survey
from gpuq.scheduler.policy.priority import (
    fairshare_factors,
    pending_associations,
    priorities,
)
from gpuq.scheduler.policy.snapshot import JobView, Snapshot

#: (GPUs, model, CPUs rounded up to a power of two, memory rounded up to a power-of-two GiB)
ReasonKey = tuple[int, str | None, int, int]


def reason_key(job: JobView) -> ReasonKey:
    gib = (max(job.memory_mib, 0) + 1023) // 1024
    return (job.gpus, job.gpu_model, 1 << max(job.cpus - 1, 0).bit_length(),
            1 << max(gib - 1, 0).bit_length() if gib else 0)


class _Cycle:
    def __init__(self, snapshot: Snapshot, backfill: bool) -> None:
        self.snapshot = snapshot
        self.now = snapshot.now
        self.cluster = Cluster(snapshot.nodes)
        self.releases = Releases(self.cluster, snapshot.running, self.now) if backfill else None
        n = len(self.cluster.views)
        self.held_by: list[int | None] | None = None if backfill else [None] * n
        #: Per node class, the first (most urgent) job that holds one of its nodes.
        self.first_holder: list[int | None] = [None] * len(self.cluster.reps)
        self.guard: Guard | None = None
        #: shape -> (shortest time limit that failed, reason, the key of its estimate or None);
        #: the limit is -inf unless only the reservation stopped it (a "would delay" reason)
        self.failed: dict[Shape, tuple[float, str, ReasonKey | None]] = {}
        #: model -> failed (gpus, cpus, memory, time limit), none dominating another
        self.frontier: dict[str | None, list[tuple[int, int, int, float]]] = {}
        self.resources_reason: dict[ReasonKey, str] = {}
        #: reason key -> (a job of it, the ids of the waiting jobs that get its estimate)
        self.waiting: dict[ReasonKey, tuple[JobView, list[int]]] = {}
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
                if hit[0] == -math.inf or self._fits_the_reserved_node(job):
                    reasons_[job.id] = hit[1]
                    if hit[2] is not None:
                        waiting[hit[2]][1].append(job.id)
                else:  # the reserved node has filled up since: it fits nowhere now
                    self._fail_dominated(job, shape)
                    self._remember_failure(job, -math.inf)
                continue
            if self._dominated(job):
                self._fail_dominated(job, shape)
            elif not self._place(job):
                self._fail(job, shape)

    # --- placing ----------------------------------------------------------------------------

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

    def _dominated(self, job: JobView) -> bool:
        g, cpus, mem, limit = job.gpus, job.cpus, job.memory_mib, job.time_limit_s
        return any(fg <= g and fc <= cpus and fm <= mem and ft <= limit
                   for fg, fc, fm, ft in self.frontier.get(job.gpu_model, ()))

    def _remember_failure(self, job: JobView, limit: float) -> None:
        entry = (job.gpus, job.cpus, job.memory_mib, limit)
        kept = [e for e in self.frontier.get(job.gpu_model, ())
                if not all(a <= b for a, b in zip(entry, e, strict=True))]
        kept.append(entry)
        self.frontier[job.gpu_model] = kept

    # --- failing ----------------------------------------------------------------------------

    def _fail(self, job: JobView, shape: Shape) -> None:
        """The job fits nowhere now: survey every node for its reason; hold or reserve."""
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
        limit = -math.inf
        if not survey.eligible:  # it cannot run anywhere until nodes change
            reason, estimable = self._never(job, survey), False
        elif self.held_by is not None:
            reason, estimable = self._hold(job, shape, survey), False
        elif guard is None and self._reserve(job, survey):
            reason, estimable = reasons.resources(job, survey.misses), True
            self.resources_reason.setdefault(reason_key(job), reason)
        elif survey.blocked:
            assert guard is not None
            reason, estimable = reasons.would_delay(guard.reservation, self.now), True
            limit = job.time_limit_s
        else:
            reason, estimable = reasons.resources(job, survey.misses), True
            self.resources_reason.setdefault(reason_key(job), reason)
        self._remember_failure(job, limit)
        if self.held_by is not None and survey.eligible:
            return  # _hold recorded it
        self._record(job, shape, limit, reason, reason, estimable)

    def _fail_dominated(self, job: JobView, shape: Shape) -> None:
        """The job asks for no less than one that failed: it fails too. Its reason without a
        walk over every node (see the module's docstring)."""
        c = self.cluster
        classes = c.eligible_classes(job)
        guard = self.guard
        limit = -math.inf
        if not classes:
            reason = self._never(job, c.static_survey(job))
            self._record(job, shape, limit, reason, reason, estimable=False)
            return
        if self.held_by is not None:  # every node it could use is held already
            holders = [h for k in classes if (h := self.first_holder[k]) is not None]
            reason = reasons.waiting_behind(min(holders, key=self.rank.__getitem__))
            self._record(job, shape, limit, reason, reason, estimable=False)
            return
        key = reason_key(job)
        if guard is not None and self._only_the_reservation_stops(job, guard, classes):
            reason = reasons.would_delay(guard.reservation, self.now)
            limit = job.time_limit_s
        else:
            reason = self.resources_reason.get(key) or ""
            if not reason:
                reason = reasons.resources(job, c.survey(job, c.static_fit(job)).misses)
                self.resources_reason[key] = reason
        self._record(job, shape, limit, reason, reason, estimable=True, key=key)

    def _fits_the_reserved_node(self, job: JobView) -> bool:
        """Whether a job of a shape that only the reservation stopped still fits the reserved
        node now (then only the reservation still stops it: nothing frees up during a cycle,
        and the spare there only shrinks)."""
        guard = self.guard
        assert guard is not None
        return self.cluster.fits_now(guard.node, job)

    def _only_the_reservation_stops(self, job: JobView, guard: Guard,
                                    classes: list[int]) -> bool:
        """It fits the reserved node now, but may not start there (no other node fits)."""
        c = self.cluster
        if c.cls[guard.node] not in classes or not c.fits_now(guard.node, job):
            return False
        allow = guard.allow(job, self.now)
        return allow is not None and not allow(guard.node)

    def _never(self, job: JobView, survey: Survey) -> str:
        return reasons.node_down(survey.down) if survey.down else \
            reasons.resources(job, survey.misses)

    def _record(self, job: JobView, shape: Shape, limit: float, reason: str, later: str,
                estimable: bool, key: ReasonKey | None = None) -> None:
        self.reasons[job.id] = reason
        if not estimable or self.releases is None:
            key = None
        else:
            key = key or reason_key(job)
            ids = self.waiting.setdefault(key, (job, []))[1]
            if self.guard is None or self.guard.reservation.job_id != job.id:
                ids.append(job.id)
        self.failed[shape] = (limit, later, key)

    def _hold(self, job: JobView, shape: Shape, survey: Survey) -> str:
        """The hold rule: the job holds every node it could run on from lower jobs."""
        held_by, rank, cls = self.held_by, self.rank, self.cluster.cls
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
                if self.first_holder[cls[i]] is None:
                    self.first_holder[cls[i]] = job.id
        # From now on every node it could use is held: later jobs of its shape wait behind
        # the most urgent holder.
        first = min((h for i in survey.eligible if (h := held_by[i]) is not None),
                    key=rank.__getitem__)
        self._record(job, shape, -math.inf, reason, reasons.waiting_behind(first),
                     estimable=False)
        return reason

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

    # --- after the pass ---------------------------------------------------------------------

    def estimate_waiting(self) -> None:
        """A not-before estimate per reason key, from its first job's request."""
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
    prios = priorities(snapshot, fairshare_factors(snapshot, pending_associations(snapshot)))
    order = prios.order()
    cycle = _Cycle(snapshot, backfill)
    cycle.run(order)
    cycle.estimate_waiting()
    return Decisions(starts=tuple(cycle.starts), pending_reasons=cycle.reasons,
                     priorities=prios, estimated_starts=cycle.estimates,
                     order=tuple([j.id for j in order]), reservation=cycle.reservation)

