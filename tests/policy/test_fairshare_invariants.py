"""Safety invariants of the fair-share policies (hypothesis), with and without backfill.

Random clusters with running jobs (time limits, some GPUs busy with nothing the snapshot
names), random queues and usage. One property test runs every check on the same examples:
the draws cost more than the policy.
"""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuq.scheduler.policy import (
    AccountView,
    AssocView,
    Decisions,
    JobView,
    NodeView,
    PolicyConfig,
    Snapshot,
    schedule,
)
from gpuq.scheduler.policy.backfill import reserve
from gpuq.scheduler.policy.cycle import _Cycle
from gpuq.scheduler.policy.filters import STATIC, first_failure
from gpuq.scheduler.policy.priority import fairshare_table, priorities
from tests.policy.builders import A100, H100, make_job, make_node, make_running
from tests.policy.test_invariants import (
    cpus_and_memory_are_not_overcommitted,
    each_start_has_all_its_gpus_on_one_node_of_its_model,
    no_gpu_is_given_twice,
    only_free_healthy_gpus_of_up_nodes_are_given,
    starts_once_or_has_a_reason,
)

MODELS = [A100, H100]
STATES = ["UP"] * 6 + ["DOWN", "DRAIN", "UNKNOWN"]
NOW = 100_000.0
LIMITS = [60.0, 600.0, 3600.0, 7200.0, 86400.0]
USERS = ["ann", "bob", "cid", "dee"]
ACCOUNTS = [AccountView("root", None), AccountView("physics", "root", 3),
            AccountView("bio", "root", 1), AccountView("theory", "physics", 1)]
HOMES = {"ann": "physics", "bob": "physics", "cid": "bio", "dee": "theory"}
ASSOCS = [AssocView(u, a) for u, a in HOMES.items()]
REASONS = ("Resources", "Priority: waiting behind job ", "Reservation: would delay job ",
           "NodeDown: every node that could run it is down", "QOS: unknown QOS ")

fast = settings(max_examples=100, deadline=None)
#: The backfill property and the shortcuts' check get more examples.
thorough = settings(max_examples=150, deadline=None)


@st.composite
def node_and_running(draw: st.DrawFn, name: str, first_id: int,
                     all_busy: bool = False) -> tuple[NodeView, list[JobView]]:
    count = draw(st.integers(1 if all_busy else 0, 8))
    models = draw(st.lists(st.sampled_from(MODELS), min_size=count, max_size=count))
    busy = sorted(draw(st.sets(st.integers(0, max(count - 1, 0)),
                               min_size=count // 2 if all_busy else 0, max_size=count))) \
        if count else []
    unhealthy = draw(st.sets(st.integers(0, count - 1), max_size=1)) if count else set()
    cpus = draw(st.sampled_from([0, 16, 64]))
    memory = draw(st.sampled_from([0, 256_000]))
    # Busy GPUs go to running jobs in runs; some stay busy with nothing named.
    running: list[JobView] = []
    k = 0
    used_cpus = used_mem = 0
    while k < len(busy):
        size = draw(st.integers(1, len(busy) - k))
        gpus = busy[k:k + size]
        k += size
        if not all_busy and draw(st.integers(0, 5)) == 0:
            continue
        job_cpus = draw(st.integers(1, 4)) if cpus else 1
        job_mem = draw(st.sampled_from([0, 8_000])) if memory else 0
        used_cpus += job_cpus
        used_mem += job_mem
        running.append(make_running(
            first_id + len(running), name, gpus, cpus=job_cpus, memory_mib=job_mem,
            started_at=NOW - draw(st.integers(0, 7200)),
            time_limit_s=draw(st.sampled_from(LIMITS))))
    node = make_node(
        name, models=models, free=set(range(count)) - set(busy),
        state="UP" if all_busy else draw(st.sampled_from(STATES)), cpus=cpus,
        free_cpus=max(cpus - used_cpus - draw(st.integers(0, 4)), 0) if cpus else 0,
        memory_mib=memory, free_memory_mib=max(memory - used_mem, 0), unhealthy=unhealthy)
    return node, running


@st.composite
def snapshots(draw: st.DrawFn, policies: tuple[str, ...] = ("fairshare", "fairshare+backfill"),
              busy: bool = False, queue: int = 14) -> Snapshot:
    """``busy``: every node UP and busy, its busy GPUs all named by running jobs (so that
    backfill has reservations to protect). ``queue``: at most this many pending jobs; a long
    queue draws from fewer shapes, so that shapes repeat and dominate one another."""
    names = draw(st.lists(st.sampled_from([f"gpu{i:02d}" for i in range(8)]), unique=True,
                          min_size=1, max_size=5))
    nodes, running = [], []
    for k, name in enumerate(names):
        node, jobs = draw(node_and_running(name, 10_000 + 100 * k, busy))
        nodes.append(node)
        running.extend(jobs)
    ids = draw(st.lists(st.integers(1, 500), unique=True, min_size=1, max_size=queue))
    few = queue > 14
    pending = []
    for i in ids:
        user = draw(st.sampled_from(USERS))
        pending.append(make_job(
            i, gpus=draw(st.sampled_from([1, 2, 4] if few else [0, 1, 1, 1, 2, 2, 3, 4, 8, 9])),
            submitted_at=NOW - draw(st.sampled_from([0, 10, 3600, 86400])),
            priority=draw(st.sampled_from([0, 0, 0, 500])),
            gpu_model=draw(st.none() | st.sampled_from(MODELS)),
            cpus=draw(st.sampled_from([1, 2, 4]) if few else st.integers(1, 12)),
            memory_mib=draw(st.sampled_from([0, 8_000, 20_000])),
            user=user, account=HOMES[user], time_limit_s=draw(st.sampled_from(LIMITS)),
            nice=draw(st.sampled_from([0, 0, 100])),
            qos=draw(st.sampled_from(["normal"] * 8 + ["high", "gold"]))))
    usage = {(a.user, a.account): float(draw(st.integers(0, 10**6))) for a in ASSOCS}
    policy = draw(st.sampled_from(policies))
    config = PolicyConfig(policy=policy, weight_qos=draw(st.sampled_from([0, 2000])),
                          weight_jobsize=draw(st.sampled_from([0, 500])),
                          fairshare_algorithm=draw(st.sampled_from(["fair_tree", "classic"])))
    return Snapshot(now=NOW, nodes=tuple(nodes), pending=tuple(pending),
                    running=tuple(running), accounts=tuple(ACCOUNTS), assocs=tuple(ASSOCS),
                    usage=usage, config=config)


# --- checks -------------------------------------------------------------------------------


# The safety checks shared with the FIFO policy's invariants.
only_free_usable_gpus_of_up_nodes_are_given = only_free_healthy_gpus_of_up_nodes_are_given
a_jobs_gpus_are_on_one_node_and_of_its_model = \
    each_start_has_all_its_gpus_on_one_node_of_its_model


def every_pending_job_starts_once_or_has_a_reason(snap: Snapshot, d: Decisions) -> None:
    starts_once_or_has_a_reason(snap, d, REASONS)


def the_order_is_by_priority(snap: Snapshot, d: Decisions) -> None:
    p = d.priorities
    expected = sorted(snap.pending, key=lambda j: (-p[j.id].total, j.submitted_at, j.id))
    assert d.order == tuple(j.id for j in expected)
    for prio in p.values():
        assert all(0.0 <= f <= 1.0 for f in (prio.fairshare, prio.age, prio.jobsize, prio.qos))


def the_hold_rule_holds_without_backfill(snap: Snapshot, d: Decisions) -> None:
    if snap.config.policy != "fairshare":
        return
    by_name = {n.name: n for n in snap.nodes}
    rank = {job_id: r for r, job_id in enumerate(d.order)}
    blocked = [j for j in snap.pending if d.pending_reasons.get(j.id, "").startswith(
        ("Resources", "Priority"))]
    for s in d.starts:
        for b in blocked:
            if rank[b.id] < rank[s.job_id]:
                assert first_failure(STATIC, by_name[s.node], b) is not None, \
                    f"job {s.job_id} started on {s.node}, held for job {b.id}"


def after(snap: Snapshot, d: Decisions) -> Snapshot:
    """The snapshot once the starts are made: their GPUs, CPUs and memory taken, and the
    jobs running from now for their time limits."""
    jobs = {j.id: j for j in snap.pending}
    nodes = []
    for n in snap.nodes:
        mine = [s for s in d.starts if s.node == n.name]
        taken = {i for s in mine for i in s.gpu_indices}
        nodes.append(dataclasses.replace(
            n, free_gpus=n.free_gpus - taken,
            free_cpus=n.free_cpus - sum(jobs[s.job_id].cpus for s in mine),
            free_memory_mib=n.free_memory_mib - sum(jobs[s.job_id].memory_mib for s in mine)))
    started = tuple(dataclasses.replace(jobs[s.job_id], node=s.node, gpu_indices=s.gpu_indices,
                                        started_at=snap.now) for s in d.starts)
    return dataclasses.replace(snap, nodes=tuple(nodes), running=snap.running + started)


def backfill_never_delays_the_reservation(snap: Snapshot, d: Decisions) -> None:
    if d.reservation is None:
        return
    assert snap.config.policy == "fairshare+backfill"
    job = next(j for j in snap.pending if j.id == d.reservation.job_id)
    assert d.estimated_starts[job.id] == d.reservation.start_at
    again = reserve(after(snap, d), job)
    assert again is not None, "the reservation was lost"
    assert again.start_at <= d.reservation.start_at, (
        f"starts moved job {job.id}'s reserved start from {d.reservation.start_at} to "
        f"{again.start_at}")


def estimates_are_not_in_the_past(snap: Snapshot, d: Decisions) -> None:
    for job_id, t in d.estimated_starts.items():
        assert snap.now <= t <= snap.now + snap.config.backfill_window_s, job_id
        assert job_id in d.pending_reasons


SAFETY = [
    no_gpu_is_given_twice,
    only_free_usable_gpus_of_up_nodes_are_given,
    a_jobs_gpus_are_on_one_node_and_of_its_model,
    cpus_and_memory_are_not_overcommitted,
    every_pending_job_starts_once_or_has_a_reason,
    the_order_is_by_priority,
    the_hold_rule_holds_without_backfill,
    backfill_never_delays_the_reservation,
    estimates_are_not_in_the_past,
]


@fast
@given(snapshots())
def test_safety_invariants(snap: Snapshot) -> None:
    d = schedule(snap)
    for check in SAFETY:
        check(snap, d)


@thorough
@given(snapshots(policies=("fairshare+backfill",), busy=True))
def test_backfill_never_delays_the_reserved_job(snap: Snapshot) -> None:
    d = schedule(snap)
    for check in SAFETY:
        check(snap, d)


@fast
@given(snapshots())
def test_the_first_job_in_order_starts_on_its_best_fit_when_one_fits(snap: Snapshot) -> None:
    d = schedule(snap)
    first = next(j for j in snap.pending if j.id == d.order[0])
    if first.qos == "gold":
        return
    fits = [n for n in snap.nodes if first_failure(STATIC, n, first) is None
            and len(n.usable_gpus(first.gpu_model)) >= first.gpus
            and (n.cpus == 0 or n.free_cpus >= first.cpus)
            and (n.memory_mib == 0 or n.free_memory_mib >= first.memory_mib)]
    starts = {s.job_id: s.node for s in d.starts}
    if fits:
        best = min(fits, key=lambda n: (len(n.usable_gpus(first.gpu_model)), n.name))
        assert starts.get(first.id) == best.name
    else:
        assert first.id in d.pending_reasons


@fast
@given(snapshots(), st.randoms(use_true_random=False))
def test_same_decisions_whatever_the_input_order(snap: Snapshot, rnd: random.Random) -> None:
    expected = schedule(snap)
    assert schedule(snap) == expected

    def shuffled(items: tuple) -> tuple:  # type: ignore[type-arg]
        out = list(items)
        rnd.shuffle(out)
        return tuple(out)

    nodes = tuple(dataclasses.replace(n, gpus=shuffled(n.gpus)) for n in shuffled(snap.nodes))
    usage = dict(shuffled(tuple(snap.usage.items())))
    again = dataclasses.replace(snap, nodes=nodes, pending=shuffled(snap.pending),
                                running=shuffled(snap.running), accounts=shuffled(snap.accounts),
                                assocs=shuffled(snap.assocs), usage=usage)
    got = schedule(again)
    assert got == expected
    assert list(got.pending_reasons) == list(expected.pending_reasons)
    assert got.estimated_starts == expected.estimated_starts


class _NoShortcuts(_Cycle):
    """The cycle without its caches: every job is searched for and surveyed."""

    class _Never(dict):  # type: ignore[type-arg]
        def get(self, key, default=None):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
            return default

    def __init__(self, snapshot: Snapshot, backfill: bool) -> None:
        super().__init__(snapshot, backfill)
        self.failed = self._Never()

    def _dominated(self, job: JobView) -> bool:
        return False


def kind(reason: str) -> str:
    return reason.split(" (")[0] if reason.startswith("Resources") else reason


@thorough
@given(st.one_of(snapshots(), snapshots(busy=True, queue=40)))
def test_the_shortcuts_decide_as_a_full_search_would(snap: Snapshot) -> None:
    """Shapes that failed, and requests dominated by them, are not searched again: the starts,
    the reservation, the estimates and every reason but the per-node counts of a Resources
    reason are what searching every job gives."""
    expected, got = [], []
    for cls, out in ((_NoShortcuts, expected), (_Cycle, got)):
        cycle = cls(snap, snap.config.policy == "fairshare+backfill")
        cycle.run(priorities(snap, fairshare_table(snap).factors).order())
        cycle.estimate_waiting()
        out.extend([cycle.starts, cycle.reservation, cycle.estimates,
                    {j: kind(r) for j, r in cycle.reasons.items()}])
    assert got == expected
