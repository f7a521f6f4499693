"""Safety invariants of the FIFO policy over random clusters and queues (hypothesis).

The fair-share policies have theirs in test_fairshare_invariants.py."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuq.scheduler.policy import Decisions, NodeView, Snapshot
from gpuq.scheduler.policy.fifo import priority_order, schedule
from gpuq.scheduler.policy.filters import STATIC, first_failure
from tests.policy.builders import A100, H100, make_job, make_node, make_snapshot

MODELS = [A100, H100]
STATES = ["UP"] * 6 + ["DOWN", "DRAIN", "UNKNOWN"]

fast = settings(max_examples=200, deadline=None)


@st.composite
def nodes(draw: st.DrawFn, name: str) -> NodeView:
    count = draw(st.integers(0, 8))
    models = draw(st.lists(st.sampled_from(MODELS), min_size=count, max_size=count))
    index = st.integers(0, max(count - 1, 0))
    busy = draw(st.sets(index, max_size=count)) if count else set()
    unhealthy = draw(st.sets(index, max_size=1)) if count else set()
    cpus = draw(st.sampled_from([0, 8, 16, 64]))
    memory = draw(st.sampled_from([0, 16_000, 256_000]))
    return make_node(
        name,
        models=models,
        free=set(range(count)) - busy,
        state=draw(st.sampled_from(STATES)),
        cpus=cpus,
        free_cpus=draw(st.integers(0, cpus)),
        memory_mib=memory,
        free_memory_mib=draw(st.integers(0, memory)),
        unhealthy=unhealthy,
    )


@st.composite
def clusters(draw: st.DrawFn) -> Snapshot:
    names = draw(st.lists(st.sampled_from([f"gpu{i:02d}" for i in range(8)]), unique=True,
                          min_size=1, max_size=5))
    ids = draw(st.lists(st.integers(1, 500), unique=True, min_size=1, max_size=12))
    jobs = [
        make_job(
            i,
            gpus=draw(st.sampled_from([0, 1, 1, 1, 2, 2, 3, 4, 8, 9])),
            priority=draw(st.integers(0, 3)),
            submitted_at=float(draw(st.integers(0, 5))),  # ties on purpose
            gpu_model=draw(st.none() | st.sampled_from(MODELS)),
            cpus=draw(st.integers(1, 12)),
            memory_mib=draw(st.sampled_from([0, 1_000, 8_000, 20_000])),
        )
        for i in ids
    ]
    return make_snapshot([draw(nodes(n)) for n in names], jobs)


# Each check reads the snapshot and the decisions, and fails with a message saying what
# broke. One property test runs them all on the same examples: the draws cost more than the
# policy, so this keeps hypothesis fast.


def no_gpu_is_given_twice(snap: Snapshot, d: Decisions) -> None:
    given_out = Counter((s.node, i) for s in d.starts for i in s.gpu_indices)
    twice = [gpu for gpu, n in given_out.items() if n > 1]
    assert not twice, f"GPUs given to two jobs: {twice}"


def only_free_healthy_gpus_of_up_nodes_are_given(snap: Snapshot, d: Decisions) -> None:
    by_name = {n.name: n for n in snap.nodes}
    for s in d.starts:
        node = by_name[s.node]
        assert node.state == "UP", f"job {s.job_id} started on {node.state} node {node.name}"
        usable = {g.index for g in node.gpus if g.healthy and not g.occupied}
        bad = set(s.gpu_indices) - (node.free_gpus & usable)
        assert not bad, f"job {s.job_id} given busy or unusable GPUs {bad} on {node.name}"


def each_start_has_all_its_gpus_on_one_node_of_its_model(snap: Snapshot, d: Decisions) -> None:
    by_name = {n.name: n for n in snap.nodes}
    jobs = {j.id: j for j in snap.pending}
    for s in d.starts:
        job = jobs[s.job_id]
        assert len(set(s.gpu_indices)) == len(s.gpu_indices) == job.gpus, \
            f"job {job.id} wants {job.gpus} GPUs, got {s.gpu_indices}"
        if job.gpu_model is not None:
            model = {g.index: g.model for g in by_name[s.node].gpus}
            assert {model[i] for i in s.gpu_indices} <= {job.gpu_model}, \
                f"job {job.id} wants {job.gpu_model}, got {s.gpu_indices} on {s.node}"


def cpus_and_memory_are_not_overcommitted(snap: Snapshot, d: Decisions) -> None:
    jobs = {j.id: j for j in snap.pending}
    for node in snap.nodes:
        mine = [jobs[s.job_id] for s in d.starts if s.node == node.name]
        if node.cpus:
            assert sum(j.cpus for j in mine) <= node.free_cpus, f"CPUs of {node.name}"
        if node.memory_mib:
            assert sum(j.memory_mib for j in mine) <= node.free_memory_mib, \
                f"memory of {node.name}"


def starts_once_or_has_a_reason(snap: Snapshot, d: Decisions,
                                reasons: tuple[str, ...]) -> None:
    """Every pending job either starts, once, or waits with a reason starting with one of
    ``reasons``."""
    started = [s.job_id for s in d.starts]
    assert len(started) == len(set(started)), f"a job started twice: {started}"
    assert set(started).isdisjoint(d.pending_reasons), "a started job also has a reason"
    assert set(started) | set(d.pending_reasons) == {j.id for j in snap.pending}
    for job_id, reason in d.pending_reasons.items():
        assert reason.startswith(reasons), f"job {job_id}: {reason!r}"


def every_pending_job_starts_once_or_has_a_reason(snap: Snapshot, d: Decisions) -> None:
    starts_once_or_has_a_reason(snap, d, ("Resources", "Priority: waiting behind job "))


def no_lower_job_starts_where_a_blocked_higher_job_could_run(
    snap: Snapshot, d: Decisions,
) -> None:
    """The hold rule."""
    by_name = {n.name: n for n in snap.nodes}
    rank = {j.id: r for r, j in enumerate(priority_order(snap.pending))}
    blocked = [j for j in snap.pending if j.id in d.pending_reasons]
    for s in d.starts:
        for b in blocked:
            if rank[b.id] < rank[s.job_id]:
                assert first_failure(STATIC, by_name[s.node], b) is not None, (
                    f"job {s.job_id} started on {s.node}, which blocked job {b.id} "
                    f"(higher in order) could use")


SAFETY = [
    no_gpu_is_given_twice,
    only_free_healthy_gpus_of_up_nodes_are_given,
    each_start_has_all_its_gpus_on_one_node_of_its_model,
    cpus_and_memory_are_not_overcommitted,
    every_pending_job_starts_once_or_has_a_reason,
    no_lower_job_starts_where_a_blocked_higher_job_could_run,
]


@fast
@given(clusters())
def test_safety_invariants(snap: Snapshot) -> None:
    d = schedule(snap)
    for check in SAFETY:
        check(snap, d)


@fast
@given(clusters())
def test_the_first_job_in_order_starts_when_some_node_fits_it_now(snap: Snapshot) -> None:
    d = schedule(snap)
    first = priority_order(snap.pending)[0]
    fits = [n.name for n in sorted(snap.nodes, key=lambda n: n.name)
            if first_failure(STATIC, n, first) is None
            and len(n.usable_gpus(first.gpu_model)) >= first.gpus
            and (n.cpus == 0 or n.free_cpus >= first.cpus)
            and (n.memory_mib == 0 or n.free_memory_mib >= first.memory_mib)]
    starts = {s.job_id: s.node for s in d.starts}
    if fits:
        assert starts.get(first.id) == fits[0]
    else:
        assert first.id in d.pending_reasons


@fast
@given(clusters(), st.randoms(use_true_random=False))
def test_same_decisions_whatever_the_input_order(snap: Snapshot, rnd: random.Random) -> None:
    expected = schedule(snap)
    nodes, jobs = list(snap.nodes), list(snap.pending)
    rnd.shuffle(nodes)
    rnd.shuffle(jobs)
    got = schedule(make_snapshot(nodes, jobs, now=snap.now))
    assert got == expected
    assert schedule(snap) == expected
