"""FIFO's decisions are exactly those of its first implementation (kept here, and only here,
as the reference): the same starts in the same order, the same reason for every waiting job
and the same order, on random clusters (GPU models, unhealthy GPUs, CPUs, memory, nodes not
UP, partly busy nodes) and queues (priorities, ties, repeated shapes). The rewrite (issue 17)
decides per job shape once and stops walking nodes once every node is held."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuq.scheduler.policy import Decisions, JobView, NodeView, Snapshot, Start
from gpuq.scheduler.policy.fifo import priority_order, schedule
from gpuq.scheduler.policy.filters import DYNAMIC, STATIC, first_failure
from tests.policy.builders import A100, H100, make_job, make_node, make_snapshot


# --- the reference: fifo.py before issue 17 ------------------------------------------------
def _reference_order(jobs: tuple[JobView, ...]) -> list[JobView]:
    return sorted(jobs, key=lambda j: (-j.priority, j.submitted_at, j.id))


def _reference_allocate(node: NodeView, job: JobView) -> tuple[NodeView, tuple[int, ...]]:
    chosen = tuple(node.usable_gpus(job.gpu_model)[: job.gpus])
    return (replace(node, free_gpus=node.free_gpus - frozenset(chosen),
                    free_cpus=node.free_cpus - job.cpus,
                    free_memory_mib=node.free_memory_mib - job.memory_mib), chosen)


def _reference_describe(job: JobView, misses: Counter[str]) -> str:
    what = f"{job.gpus} free {job.gpu_model + ' ' if job.gpu_model else ''}GPU"
    what += "s" if job.gpus != 1 else ""
    detail = ", ".join(f"{n} node{'s' if n != 1 else ''}: {why}" for why, n in
                       sorted(misses.items()))
    return f"Resources: no node has {what} now ({detail})" if detail else "Resources"


def reference_schedule(snapshot: Snapshot) -> Decisions:
    nodes = {n.name: n for n in sorted(snapshot.nodes, key=lambda n: n.name)}
    held_by: dict[str, int] = {}
    starts: list[Start] = []
    reasons: dict[int, str] = {}
    order = _reference_order(snapshot.pending)
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
            nodes[name], gpus = _reference_allocate(node, job)
            starts.append(Start(job.id, name, gpus))
            placed = True
            break
        if placed:
            continue
        if eligible and all(n in held_by for n in eligible):
            first = min((held_by[n] for n in eligible), key=rank.__getitem__)
            reasons[job.id] = f"Priority: waiting behind job {first}"
        else:
            reasons[job.id] = _reference_describe(job, misses)
        for name in eligible:
            held_by.setdefault(name, job.id)
    return Decisions(starts=tuple(starts), pending_reasons=reasons,
                     order=tuple(j.id for j in order))


# --- random scenarios -----------------------------------------------------------------------
@st.composite
def nodes(draw: st.DrawFn) -> list[NodeView]:
    out = []
    for k in range(draw(st.integers(1, 6))):
        gpus = draw(st.sampled_from([1, 2, 4, 8]))
        models = [draw(st.sampled_from([A100, A100, H100])) for _ in range(gpus)] \
            if draw(st.integers(0, 3)) == 0 else None
        cpus = draw(st.sampled_from([0, 0, 16, 64]))
        memory = draw(st.sampled_from([0, 0, 65536]))
        out.append(make_node(
            draw(st.sampled_from(["a", "b", "c", "d", "e", "f"])) + str(k), gpus=gpus,
            model=draw(st.sampled_from([A100, H100])), models=models,
            free=draw(st.sets(st.integers(0, gpus - 1))) if draw(st.booleans()) else None,
            state=draw(st.sampled_from(["UP", "UP", "UP", "DOWN", "DRAIN"])),
            cpus=cpus, memory_mib=memory,
            free_cpus=draw(st.integers(0, cpus)) if cpus else None,
            free_memory_mib=draw(st.sampled_from([0, 4096, memory])) if memory else None,
            unhealthy=draw(st.sets(st.integers(0, gpus - 1), max_size=1))))
    return out


@st.composite
def queues(draw: st.DrawFn) -> list[JobView]:
    shapes = draw(st.lists(st.tuples(st.sampled_from([1, 1, 2, 4, 8, 9]),
                                     st.sampled_from([None, None, A100, H100]),
                                     st.sampled_from([1, 1, 8, 32, 128]),
                                     st.sampled_from([0, 0, 8192, 1 << 20])),
                           min_size=1, max_size=4))
    jobs = []
    for i in range(draw(st.integers(0, 40))):
        gpus, model, cpus, memory = draw(st.sampled_from(shapes))
        jobs.append(make_job(i + 1, gpus=gpus, gpu_model=model, cpus=cpus, memory_mib=memory,
                             priority=draw(st.sampled_from([0, 0, 0, 1, 5])),
                             submitted_at=float(draw(st.integers(0, 10)))))
    return draw(st.permutations(jobs))


@settings(max_examples=600, deadline=None)
@given(nodes(), queues())
def test_fifo_decides_as_the_reference(cluster: list[NodeView], jobs: list[JobView]) -> None:
    snap = make_snapshot(cluster, jobs, policy="fifo")
    got, want = schedule(snap), reference_schedule(snap)
    assert got.starts == want.starts
    assert got.pending_reasons == want.pending_reasons
    assert list(got.pending_reasons) == list(want.pending_reasons)  # the same dict order
    assert got.order == want.order
    assert [j.id for j in priority_order(snap.pending)] == list(want.order)


def test_every_node_held_early_and_the_rest_of_the_queue_still_gets_reasons() -> None:
    # Job 1 (8 GPUs) holds both nodes; the 1-GPU jobs behind it fit but wait behind it; a
    # 9-GPU job fits no node; an H100 job finds no H100 GPU anywhere.
    cluster = [make_node("a", gpus=8, free={0, 1}), make_node("b", gpus=8, free={0})]
    jobs = [make_job(1, gpus=8, submitted_at=1.0), make_job(2, submitted_at=2.0),
            make_job(3, gpus=9, submitted_at=3.0), make_job(4, submitted_at=4.0),
            make_job(5, gpu_model=H100, submitted_at=5.0)]
    snap = make_snapshot(cluster, jobs, policy="fifo")
    d = schedule(snap)
    assert d == reference_schedule(snap)
    assert d.starts == ()
    assert d.pending_reasons == {
        1: "Resources: no node has 8 free GPUs now (2 nodes: too few free GPUs)",
        2: "Priority: waiting behind job 1",
        3: "Resources: no node has 9 free GPUs now (2 nodes: too few GPUs)",
        4: "Priority: waiting behind job 1",
        5: "Resources: no node has 1 free H100-80GB GPU now (2 nodes: no H100-80GB GPU)",
    }
