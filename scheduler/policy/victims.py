"""The preemption pass: pending jobs that did not start, in priority order, may claim GPUs
of running jobs they outrank.

Who may preempt whom:

- a job of the preemptible QOS never preempts;
- any other job (of a known QOS, asking for GPUs) may preempt running preemptible-QOS jobs
  anywhere;
- a grantee of a reservation grant g with need_g > 0 may also preempt the jobs of other
  accounts that hold GPUs g covers, reclaiming from non-preemptible ones at most need_g
  GPUs in all (need_g shrinks by every claim of a grantee on g's GPUs). The reservation
  floats (N GPUs anywhere in its scope), so the borrowers' labels fall where they fall;
  a grantee job that needs its GPUs on one node takes them there, the labelled borrowers
  first, then the others by the order below. It never gets more than the reservation.

Jobs already being preempted are never chosen again. The job goes to the node (UP, big
enough, in name order) where its free unclaimed GPUs plus its victims' GPUs suffice, and
the victims' CPUs and memory cover what the node lacks, with the fewest victim GPUs, then
the fewest victims. Victims on a node are taken preemptible QOS first, then borrowers
(labelled), then the latest started, then the higher id, until the job fits. A node where
the job fits without any victim is skipped: the inner policy kept it off there on purpose
(a hold, or the backfill reservation), and preemption does not override priority. The
claim is exactly ``job.gpus`` GPUs: the free ones first (lowest indices), then the
victims' in victim order.

Failures are cached by (shape, grants it may reclaim): victims and GPUs only get fewer as
the pass goes, so a request that failed fails again. The pass stops when no candidate
victim is left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpuq.scheduler.policy import reasons
from gpuq.scheduler.policy.decisions import Borrow, Claim, Preemption
from gpuq.scheduler.policy.filters import STATIC, first_failure
from gpuq.scheduler.policy.grants import GrantScope
from gpuq.scheduler.policy.ledger import Ledger
from gpuq.scheduler.policy.snapshot import PREEMPTIBLE_QOS, JobView


@dataclass(slots=True)
class _Plan:
    node: str
    victims: list[int]
    gpus: tuple[int, ...]
    #: Grant id -> GPUs taken from non-preemptible borrowers of it.
    reclaimed: dict[int, int]
    score: tuple[int, int]


@dataclass(slots=True)
class Pass:
    ledger: Ledger
    scopes: list[GrantScope]
    labels: dict[int, Borrow]
    #: Grant id -> GPUs its grantees may still reclaim from borrowers (need_g).
    need: dict[int, int]
    preemptions: list[Preemption] = field(default_factory=list)
    #: Pool name (None: preemptible QOS; a grant id: its borrowers) -> node -> job ids.
    pools: dict[int | None, dict[str, list[int]]] = field(default_factory=dict)
    #: Pool name -> how many jobs it still holds.
    _count: dict[int | None, int] = field(default_factory=dict)
    _failed: set[tuple[object, ...]] = field(default_factory=set)
    #: Node -> how many claims were booked there this pass: a plan made before is stale.
    _version: dict[str, int] = field(default_factory=dict)
    #: (request key, node) -> (the node's version, the plan there or None).
    _plans: dict[tuple[object, ...], tuple[int, _Plan | None]] = field(default_factory=dict)
    _rights: dict[str, tuple[GrantScope, ...]] = field(default_factory=dict)
    #: Grant id -> the jobs in its pool (the jobs a grantee of it may reclaim from).
    _members: dict[int, set[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pools: dict[int | None, dict[str, list[int]]] = {None: {}}
        members: dict[int, set[int]] = {}
        for job in self.ledger.running.values():  # id order
            if job.id in self.ledger.victims or job.node not in self.ledger.views:
                continue
            if job.qos == PREEMPTIBLE_QOS:
                pools[None].setdefault(job.node, []).append(job.id)
            for scope in self.scopes:  # other accounts' jobs on GPUs the grant covers
                covered = scope.gpus.get(job.node, ())
                if not scope.is_grantee(job) and any(g in covered for g in job.gpu_indices):
                    pools.setdefault(scope.id, {}).setdefault(job.node, []).append(job.id)
                    members.setdefault(scope.id, set()).add(job.id)
        self.pools = pools
        self._members = members
        self._count = {p: sum(map(len, by_node.values())) for p, by_node in pools.items()}

    def _left(self, pool: int | None) -> bool:
        return self._count.get(pool, 0) > 0

    def run(self, candidates: list[JobView], known_qos: set[str]) -> dict[int, str]:
        """Try every candidate in order; the ``Preempting:`` reasons of those that claim."""
        out: dict[int, str] = {}
        for job in candidates:
            if job.qos == PREEMPTIBLE_QOS or job.qos not in known_qos or job.gpus <= 0:
                continue
            rights = tuple(s for s in self._grants_of(job) if self.need[s.id] > 0
                           and self._left(s.id))
            if not rights and not self._left(None):
                if not any(self._left(s.id) for s in self.scopes if self.need[s.id] > 0):
                    break  # no candidate victim is left for anyone
                continue
            key = (job.gpus, job.gpu_model, job.cpus, job.memory_mib,
                   tuple(s.id for s in rights))
            if key in self._failed:
                continue
            plan = self._best(job, rights, key)
            if plan is None:
                self._failed.add(key)
                continue
            self._book(job, plan, rights)
            out[job.id] = reasons.preempting(plan.victims)
        return out

    def _grants_of(self, job: JobView) -> tuple[GrantScope, ...]:
        found = self._rights.get(job.account)
        if found is None:
            found = self._rights[job.account] = tuple(
                s for s in self.scopes if s.is_grantee(job))
        return found

    def _best(self, job: JobView, rights: tuple[GrantScope, ...],
              key: tuple[object, ...]) -> _Plan | None:
        """The best node's plan. A node's plan depends only on the request (``key``) and on
        the node, which changes only when a claim is booked there: plans are cached per node
        until then (jobs of one shape ask again and again). The budget (need_g) changes
        everywhere, so it is checked here, not cached."""
        pools = [self.pools[None], *(self.pools[s.id] for s in rights)]
        nodes = sorted({n for p in pools for n, ids in p.items() if ids})
        best: _Plan | None = None
        plans, version, need = self._plans, self._version, self.need
        for node in nodes:
            ver = version.get(node, 0)
            hit = plans.get((key, node))
            if hit is not None and hit[0] == ver:
                plan = hit[1]
            else:
                on_node = sorted({v for p in pools for v in p.get(node, ())},
                                 key=self._victim_order)
                plan = self._plan(job, node, on_node, rights)
                plans[(key, node)] = (ver, plan)
            if plan is None or any(n > need[g] for g, n in plan.reclaimed.items()):
                continue
            if best is None or plan.score < best.score:
                best = plan
        return best

    def _victim_order(self, v: int) -> tuple[bool, bool, float, int]:
        job = self.ledger.running[v]
        started = job.started_at if job.started_at is not None else self.ledger.now
        return (job.qos != PREEMPTIBLE_QOS, v not in self.labels, -started, -v)

    def _reclaims_for(self, v: int, right_ids: set[int]) -> int | None:
        """The grant (of the claimant's) whose reservation taking ``v`` reclaims: the one
        it is labelled for, else the first whose pool holds it; None: a QOS preemption."""
        label = self.labels.get(v)
        if label is not None and label.grant in right_ids:
            return label.grant
        return next((g for g in sorted(right_ids) if v in self._members.get(g, ())), None)

    def _plan(self, job: JobView, node: str, on_node: list[int],
              rights: tuple[GrantScope, ...]) -> _Plan | None:
        ledger = self.ledger
        view = ledger.views[node]
        if first_failure(STATIC, view, job) is not None:
            return None
        free = ledger.usable_free(node, job.gpu_model)
        if ledger.fits_now(node, job, len(free)):
            return None
        usable = {g.index for g in view.gpus if g.healthy and not g.occupied
                  and (job.gpu_model is None or g.model == job.gpu_model)}
        gpus = list(free[: job.gpus])
        victims: list[int] = []
        cpus = mem = victim_gpus = 0
        reclaimed: dict[int, int] = {}
        right_ids = {s.id for s in rights}
        for v in on_node:
            victim = ledger.running[v]
            victims.append(v)
            victim_gpus += len(victim.gpu_indices)
            cpus += victim.cpus
            mem += victim.memory_mib
            mine = [g for g in sorted(victim.gpu_indices) if g in usable
                    and (node, g) not in ledger.claimed][: job.gpus - len(gpus)]
            gpus.extend(mine)
            grant = self._reclaims_for(v, right_ids)
            if mine and grant is not None and victim.qos != PREEMPTIBLE_QOS:
                reclaimed[grant] = reclaimed.get(grant, 0) + len(mine)
            if (len(gpus) >= job.gpus
                    and (not view.cpus or ledger.free_cpus[node] + cpus >= job.cpus)
                    and (not view.memory_mib or ledger.free_mem[node] + mem >= job.memory_mib)):
                break
        else:
            return None
        return _Plan(node, victims, tuple(sorted(gpus)), reclaimed, (victim_gpus, len(victims)))

    def _book(self, job: JobView, plan: _Plan, rights: tuple[GrantScope, ...]) -> None:
        ledger = self.ledger
        right_ids = {s.id for s in rights}
        grants = sorted({g for v in plan.victims
                         if (g := self._reclaims_for(v, right_ids)) is not None})
        claim = Claim(job.id, plan.node, plan.gpus, tuple(plan.victims),
                      grants[0] if grants else None)
        for v in plan.victims:
            grant: int | None = self._reclaims_for(v, right_ids)
            if grant is not None:
                why = reasons.preempted_for_grant(job, grant)
            else:
                grant, why = None, reasons.preempted_for_qos(job, ledger.running[v].qos)
            self.preemptions.append(Preemption(v, job.id, plan.node, grant, why))
            for name, pool in self.pools.items():
                ids = pool.get(plan.node)
                if ids is not None and v in ids:
                    ids.remove(v)
                    self._count[name] -= 1
        ledger.claim(job, claim)
        self._version[plan.node] = self._version.get(plan.node, 0) + 1
        for s in self._grants_of(job):
            mine = set(s.gpus.get(plan.node, ()))
            self.need[s.id] = max(0, self.need[s.id] - sum(g in mine for g in plan.gpus))
