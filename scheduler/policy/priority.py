"""Multifactor priority (fairshare.md A3): ``total = site + Σ weight x factor - nice``.

Factors, each in [0, 1]: fair share (Fair Tree or classic, computed once per cycle per
association); age ``min(1, waited / max_age)``; job size (GPUs over the cluster's GPUs,
or its complement when small jobs are favoured); QOS (its priority over the largest QOS
priority). ``site`` is the job's own ``JobView.priority`` (an admin's offset, Slurm's site
factor). Totals stay floats (Slurm truncates them to integers; that only adds ties).
Order: total descending, then submit time, then id.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from operator import attrgetter

from gpuq.scheduler.policy.classic import classic_factors, classic_fairshare
from gpuq.scheduler.policy.decisions import Priority
from gpuq.scheduler.policy.fairtree import fair_tree, fair_tree_factors
from gpuq.scheduler.policy.snapshot import JobView, Snapshot
from gpuq.scheduler.policy.tree import FairShareTable

_assoc_of = attrgetter("user", "account")
_kind_of = attrgetter("user", "account", "gpus", "qos", "nice", "priority")
_submitted_at = attrgetter("submitted_at")
_id_of = attrgetter("id")

#: (fair share, job size, qos, total without the age term): what jobs of a kind share.
_Kind = tuple[float, float, float, float]


def fairshare_table(snapshot: Snapshot) -> FairShareTable:
    """The fair-share table of the snapshot's tree, by the configured algorithm."""
    c = snapshot.config
    if c.fairshare_algorithm == "classic":
        return classic_fairshare(snapshot.accounts, snapshot.assocs, snapshot.usage,
                                 c.classic_dampening)
    return fair_tree(snapshot.accounts, snapshot.assocs, snapshot.usage)


def fairshare_factors(snapshot: Snapshot, wanted: Iterable[tuple[str, str]] | None = None,
                      ) -> dict[tuple[str, str], float]:
    """``fairshare_table(snapshot).factors``, without building the display rows and on the
    cached tree shape: what a scheduling cycle needs. ``wanted``: at least these
    associations' factors (the same values; Fair Tree then ranks only what it must)."""
    c = snapshot.config
    if c.fairshare_algorithm == "classic":
        return classic_factors(snapshot.accounts, snapshot.assocs, snapshot.usage,
                               c.classic_dampening)
    return fair_tree_factors(snapshot.accounts, snapshot.assocs, snapshot.usage, wanted)


def pending_associations(snapshot: Snapshot) -> set[tuple[str, str]] | None:
    """The (user, account) of every pending job, the only factors ``priorities`` reads; None
    when there are more pending jobs than associations (then most are read anyway)."""
    if len(snapshot.pending) > len(snapshot.assocs):
        return None
    return set(map(_assoc_of, snapshot.pending))


def qos_factors(qos_priority: Iterable[tuple[str, int]] | Mapping[str, int]) -> dict[str, float]:
    """QOS name -> its priority over the largest one, in [0, 1] (all 0 when none is > 0)."""
    prio = dict(qos_priority)
    top = max(prio.values(), default=0)
    return {q: min(max(p / top, 0.0), 1.0) if top > 0 else 0.0 for q, p in prio.items()}


def jobsize_factor(gpus: int, total_gpus: int, favor_small: bool = False) -> float:
    if total_gpus <= 0:
        return 0.0
    large = min(max(gpus / total_gpus, 0.0), 1.0)
    return 1.0 - large if favor_small else large


class Priorities(Mapping[int, Priority]):
    """Every pending job's priority, by job id (read-only).

    The totals are computed at once, since they order the queue; each ``Priority`` is made
    when it is read, so a caller that reads a few (the simulator, ``gpuq why``) does not pay
    for a hundred thousand objects. ``dict(priorities)`` gives a plain dict.
    """

    __slots__ = ("_jobs", "_keys", "_kinds", "_ages", "_index")

    def __init__(self, jobs: tuple[JobView, ...], keys: list[tuple[float, float, int]],
                 kinds: list[_Kind], ages: list[float]) -> None:
        self._jobs = jobs
        self._keys = keys  # (-total, submitted_at, id), as the order sorts them
        self._kinds = kinds
        self._ages = ages
        self._index: dict[int, int] | None = None

    def _position(self, job_id: int) -> int:
        if self._index is None:
            self._index = {j.id: i for i, j in enumerate(self._jobs)}
        return self._index[job_id]

    def __getitem__(self, job_id: int) -> Priority:
        i = self._position(job_id)
        job, k = self._jobs[i], self._kinds[i]
        return Priority(total=-self._keys[i][0], fairshare=k[0], age=self._ages[i],
                        jobsize=k[1], qos=k[2], nice=job.nice, site=job.priority)

    def __contains__(self, job_id: object) -> bool:
        if self._index is None:
            self._index = {j.id: i for i, j in enumerate(self._jobs)}
        return job_id in self._index

    def __iter__(self) -> Iterator[int]:
        return (j.id for j in self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def __repr__(self) -> str:
        return f"Priorities({dict(self)!r})"

    def order(self) -> list[JobView]:
        """The jobs by total descending, then submit time, then id."""
        keys, jobs = self._keys, self._jobs
        return [jobs[i] for i in sorted(range(len(jobs)), key=keys.__getitem__)]


def priorities(snapshot: Snapshot,
               fairshare_by_assoc: Mapping[tuple[str, str], float]) -> Priorities:
    """Every pending job's priority. A job whose association is unknown has fair share 0;
    one whose QOS is unknown has QOS factor 0 (the fair-share policies keep it waiting)."""
    c = snapshot.config
    now = snapshot.now
    total_gpus = sum(len(n.gpus) for n in snapshot.nodes)
    inv_age = 1.0 / c.max_age_s if c.max_age_s > 0 else math.inf
    qos = qos_factors(c.qos_priority)
    wf, wa, ws, wq = c.weight_fairshare, c.weight_age, c.weight_jobsize, c.weight_qos
    fs_of = fairshare_by_assoc.get
    favor_small = c.jobsize_favor_small
    # Jobs of one kind differ only in age: their other factors are computed once.
    seen: dict[tuple[str, str, int, str, int, int], _Kind] = {}

    def first(kind: tuple[str, str, int, str, int, int]) -> _Kind:
        user, account, gpus, qos_name, nice, site = kind
        fs = fs_of((user, account), 0.0)
        size = jobsize_factor(gpus, total_gpus, favor_small)
        q = qos.get(qos_name, 0.0)
        k = seen[kind] = (fs, size, q, site + wf * fs + ws * size + wq * q - nice)
        return k

    pending = snapshot.pending
    get = seen.get
    kinds: list[_Kind] = [get(kind) or first(kind) for kind in map(_kind_of, pending)]
    submitted = list(map(_submitted_at, pending))
    ages: list[float] = [0.0 if (waited := now - t) <= 0 else
                         1.0 if (x := waited * inv_age) >= 1.0 else x for t in submitted]
    keys: list[tuple[float, float, int]] = [
        (-(k[3] + wa * age), t, i)
        for k, age, t, i in zip(kinds, ages, submitted, map(_id_of, pending), strict=True)]
    return Priorities(snapshot.pending, keys, kinds, ages)


def priority_order(jobs: Iterable[JobView], prios: Mapping[int, Priority]) -> list[JobView]:
    """Jobs by total priority descending, then submit time, then id."""
    return sorted(jobs, key=lambda j: (-prios[j.id].total, j.submitted_at, j.id))
