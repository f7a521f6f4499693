"""The first policy: strict priority order, first fit, all GPUs of a job on one node.

Jobs are taken by (priority desc, submit time, id). A job starts on the first node (by
name) where it fits now. A job that does not fit holds every node where it could run once
GPUs free up: lower-priority jobs may start only on nodes that no higher-priority waiting
job could use, so a large job is not starved by a stream of small ones.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from gpuq.scheduler.policy.decisions import Decisions, Start
from gpuq.scheduler.policy.filters import DYNAMIC, STATIC, first_failure
from gpuq.scheduler.policy.snapshot import JobView, NodeView, Snapshot


def priority_order(jobs: tuple[JobView, ...]) -> list[JobView]:
    return sorted(jobs, key=lambda j: (-j.priority, j.submitted_at, j.id))


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


def _describe(job: JobView, misses: Counter[str]) -> str:
    what = f"{job.gpus} free {job.gpu_model + ' ' if job.gpu_model else ''}GPU"
    what += "s" if job.gpus != 1 else ""
    detail = ", ".join(f"{n} node{'s' if n != 1 else ''}: {why}" for why, n in
                       sorted(misses.items()))
    return f"Resources: no node has {what} now ({detail})" if detail else "Resources"


def schedule(snapshot: Snapshot) -> Decisions:
    nodes = {n.name: n for n in sorted(snapshot.nodes, key=lambda n: n.name)}
    held_by: dict[str, int] = {}  # node name -> the waiting job that holds it
    starts: list[Start] = []
    reasons: dict[int, str] = {}

    order = priority_order(snapshot.pending)
    rank = {job.id: i for i, job in enumerate(order)}
    for job in order:
        misses: Counter[str] = Counter()
        eligible: list[str] = []
        placed = False
        for name, node in nodes.items():
            why = first_failure(STATIC, node, job)
            if why is not None:
                misses[why] += 1
                continue
            eligible.append(name)
            if name in held_by:
                misses[f"held for job {held_by[name]}"] += 1
                continue
            why = first_failure(DYNAMIC, node, job)
            if why is not None:
                misses[why] += 1
                continue
            nodes[name], gpus = _allocate(node, job)
            starts.append(Start(job.id, name, gpus))
            placed = True
            break
        if placed:
            continue
        if eligible and all(n in held_by for n in eligible):
            # The holders were met in priority order: name the most urgent one.
            first = min((held_by[n] for n in eligible), key=rank.__getitem__)
            reasons[job.id] = f"Priority: waiting behind job {first}"
        else:
            reasons[job.id] = _describe(job, misses)
        for name in eligible:
            held_by.setdefault(name, job.id)

    return Decisions(starts=tuple(starts), pending_reasons=reasons,
                     order=tuple(j.id for j in order))
