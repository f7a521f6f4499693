"""The first policy: strict priority order, first fit, all GPUs of a job on one node.

Jobs are taken by (priority desc, submit time, id). A job starts on the first node (by
name) where it fits now. A job that does not fit holds every node where it could run once
GPUs free up: lower-priority jobs may start only on nodes that no higher-priority waiting
job could use, so a large job is not starved by a stream of small ones.

The cost of a cycle does not grow with the queue beyond a few C-level passes over it
(sorting, one dict of reasons, the order), because what a job gets depends only on its
*shape* (GPUs, GPU model, CPUs, memory: all that the filters read) once a job of that shape
has failed:

- the first job of a shape that does not fit holds every node it could run on, so a later
  job of the same shape finds all of them held: it does not start, holds nothing new, and
  its reason is "waiting behind" the most urgent holder of those nodes (holders never
  change within a cycle), or, if no node could ever run it, the same "Resources" text;
- once every node is held, no later job can start, and each one's reason is that of its
  shape, worked out once from the static filters and the holders.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from operator import attrgetter

from gpuq.scheduler.policy.decisions import Decisions, Start
from gpuq.scheduler.policy.filters import DYNAMIC, STATIC, first_failure
from gpuq.scheduler.policy.snapshot import JobView, NodeView, Snapshot

#: All that the filters read of a job: jobs of one shape fit (or not) the same nodes.
Shape = tuple[int, str | None, int, int]
_shape: Callable[[JobView], Shape] = attrgetter("gpus", "gpu_model", "cpus", "memory_mib")
_job_id = attrgetter("id")
_by_submit = attrgetter("submitted_at", "id")
_by_priority = attrgetter("priority")
_by_name = attrgetter("name")


def priority_order(jobs: tuple[JobView, ...]) -> list[JobView]:
    """By (priority desc, submitted_at, id): two stable sorts with C-level keys (a reverse
    sort keeps the order of equal keys)."""
    order = sorted(jobs, key=_by_submit)
    order.sort(key=_by_priority, reverse=True)
    return order


def _allocate(node: NodeView, job: JobView) -> tuple[NodeView, tuple[int, ...]]:
    chosen = tuple(node.usable_gpus(job.gpu_model)[: job.gpus])
    return (
        replace(
            node,
            free_gpus=node.free_gpus - frozenset(chosen),
            free_cpus=node.free_cpus - job.cpus,
            free_memory_mib=node.free_memory_mib - job.memory_mib,
        ),
        chosen,
    )


def _describe(gpus: int, model: str | None, misses: Counter[str]) -> str:
    what = f"{gpus} free {model + ' ' if model else ''}GPU"
    what += "s" if gpus != 1 else ""
    detail = ", ".join(f"{n} node{'s' if n != 1 else ''}: {why}" for why, n in
                       sorted(misses.items()))
    return f"Resources: no node has {what} now ({detail})" if detail else "Resources"


def _waiting_behind(job_id: int) -> str:
    return f"Priority: waiting behind job {job_id}"


class _Reasons(dict[Shape, str]):
    """Shape -> the reason of a job of that shape that meets only held nodes; a shape seen
    for the first time gets its reason from ``make`` (then kept)."""

    def __init__(self, make: Callable[[Shape], str]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, shape: Shape) -> str:
        reason = self[shape] = self.make(shape)
        return reason


def schedule(snapshot: Snapshot) -> Decisions:
    by_name = {n.name: n for n in sorted(snapshot.nodes, key=_by_name)}
    names = list(by_name)
    nodes = list(by_name.values())
    #: Per node (by name): (rank, id) of the waiting job that holds it, None while free.
    holder: list[tuple[int, int] | None] = [None] * len(nodes)
    unheld = len(nodes)
    #: Per shape: the nodes that could ever run it, and why the others cannot.
    statics: dict[Shape, tuple[list[int], Counter[str]]] = {}
    starts: list[Start] = []
    reasons: dict[int, str] = {}

    def static(shape: Shape) -> tuple[list[int], Counter[str]]:
        found = statics.get(shape)
        if found is None:
            gpus, model, cpus, memory_mib = shape
            job = JobView(id=0, gpus=gpus, submitted_at=0.0, gpu_model=model, cpus=cpus,
                          memory_mib=memory_mib)
            eligible: list[int] = []
            misses: Counter[str] = Counter()
            for i, node in enumerate(nodes):
                why = first_failure(STATIC, node, job)
                if why is None:
                    eligible.append(i)
                else:
                    misses[why] += 1
            found = statics[shape] = (eligible, misses)
        return found

    def blocked(shape: Shape) -> str:
        """The reason of a job whose every usable node is held (or that has none)."""
        eligible, misses = static(shape)
        if eligible:
            first = min(h for i in eligible if (h := holder[i]) is not None)
            return _waiting_behind(first[1])
        return _describe(shape[0], shape[1], misses)

    order = priority_order(snapshot.pending)
    #: Shapes whose jobs, from here on, meet only held nodes (or none).
    failed = _Reasons(blocked)
    tail = len(order)
    for rank, job in enumerate(order):
        if not unheld:
            tail = rank
            break
        shape = _shape(job)
        reason = failed.get(shape)
        if reason is not None:
            reasons[job.id] = reason
            continue
        eligible, static_misses = static(shape)
        misses = Counter(static_misses)
        placed = False
        for i in eligible:
            h = holder[i]
            if h is not None:
                misses[f"held for job {h[1]}"] += 1
                continue
            node = nodes[i]
            why = first_failure(DYNAMIC, node, job)
            if why is not None:
                misses[why] += 1
                continue
            nodes[i], gpus = _allocate(node, job)
            starts.append(Start(job.id, names[i], gpus))
            placed = True
            break
        if placed:
            continue
        if eligible and all(holder[i] is not None for i in eligible):
            # The holders were met in priority order: name the most urgent one.
            reasons[job.id] = blocked(shape)
        else:
            reasons[job.id] = _describe(job.gpus, job.gpu_model, misses)
        for i in eligible:
            if holder[i] is None:
                holder[i] = (rank, job.id)
                unheld -= 1
        failed[shape] = blocked(shape)

    if tail < len(order):  # every node is held: no later job starts
        rest = order[tail:]
        reasons.update(zip(map(_job_id, rest), map(failed.__getitem__, map(_shape, rest)),
                           strict=True))
    return Decisions(starts=tuple(starts), pending_reasons=reasons,
                     order=tuple(map(_job_id, order)))

