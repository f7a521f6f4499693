"""Safety invariants of grants, borrowing, preemption and claims over random snapshots
(hypothesis): running jobs of every QOS, some labelled or stopping, random reservation
grants, and pending jobs holding claims, sound or not."""

from __future__ import annotations

import dataclasses
import os
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuq.scheduler.policy import (
    PREEMPTIBLE_QOS,
    ClaimView,
    Decisions,
    GrantView,
    JobView,
    Snapshot,
    schedule,
)
from gpuq.scheduler.policy.grants import subtree
from tests.policy.builders import A100, H100
from tests.policy.test_fairshare_invariants import HOMES, REASONS, snapshots
from tests.policy.test_invariants import (
    cpus_and_memory_are_not_overcommitted,
    each_start_has_all_its_gpus_on_one_node_of_its_model,
    no_gpu_is_given_twice,
    only_free_healthy_gpus_of_up_nodes_are_given,
    starts_once_or_has_a_reason,
)

fast = settings(max_examples=int(os.environ.get("GPUQ_HYPOTHESIS_EXAMPLES", "150")),
                deadline=None)
QOS = ["normal", "normal", "high", PREEMPTIBLE_QOS, PREEMPTIBLE_QOS]


@st.composite
def grant_snapshots(draw: st.DrawFn) -> Snapshot:
    snap = draw(snapshots(policies=("fifo", "fairshare", "fairshare+backfill")))
    names = [n.name for n in snap.nodes]
    grants = tuple(
        GrantView(gid, draw(st.sampled_from(["physics", "bio", "theory"])),
                  gpus=draw(st.integers(1, 8)),
                  gpu_model=draw(st.none() | st.sampled_from([A100, H100])),
                  nodes=tuple(draw(st.lists(st.sampled_from(names), unique=True,
                                            max_size=2))))
        for gid in draw(st.lists(st.integers(1, 9), unique=True, max_size=3)))
    gids = [g.id for g in grants]
    running = []
    for job in snap.running:
        user = draw(st.sampled_from(sorted(HOMES)))
        label = draw(st.none() | st.sampled_from(gids)) if gids else None
        running.append(dataclasses.replace(
            job, user=user, account=HOMES[user], qos=draw(st.sampled_from(QOS)),
            borrowed_grant=label, borrowed_gpus=1 if label else 0,
            preempting=draw(st.integers(0, 4)) == 0))
    pending = []
    for job in snap.pending:
        qos = job.qos if draw(st.integers(0, 3)) else PREEMPTIBLE_QOS
        pending.append(dataclasses.replace(job, qos=qos, claim=draw(claims(snap, job))))
    return dataclasses.replace(snap, grants=grants, running=tuple(running),
                               pending=tuple(pending))


@st.composite
def claims(draw: st.DrawFn, snap: Snapshot, job: JobView) -> ClaimView | None:
    """Now and then a claim: on a node with enough GPUs, on free GPUs and some running
    jobs' (its victims, usually), on a grant or not."""
    if job.gpus < 1 or draw(st.integers(0, 3)):
        return None
    nodes = [n for n in snap.nodes if len(n.gpus) >= job.gpus]
    if not nodes:
        return None
    node = draw(st.sampled_from(nodes))
    gpus = draw(st.lists(st.sampled_from([g.index for g in node.gpus]), unique=True,
                         min_size=job.gpus, max_size=job.gpus))
    here = [j.id for j in snap.running if j.node == node.name]
    holders = sorted({j.id for j in snap.running if j.node == node.name
                      and set(j.gpu_indices) & set(gpus)})
    victims = holders if draw(st.booleans()) else draw(st.lists(st.sampled_from(here),
                                                                unique=True)) if here else []
    return ClaimView(node.name, tuple(sorted(gpus)), tuple(victims),
                     draw(st.none() | st.integers(1, 9)))


# --- checks -------------------------------------------------------------------------------


def every_pending_job_starts_once_or_has_a_reason(snap: Snapshot, d: Decisions) -> None:
    starts_once_or_has_a_reason(snap, d, (*REASONS, "Preempting: waiting for "))
    for job_id in d.claims:
        assert d.pending_reasons[job_id].startswith("Preempting: "), job_id


def claims_are_exactly_the_jobs_gpus_on_one_node(snap: Snapshot, d: Decisions) -> None:
    jobs = {j.id: j for j in snap.pending}
    nodes = {n.name: n for n in snap.nodes}
    for job_id, c in d.claims.items():
        job = jobs[job_id]
        assert c.job_id == job_id and c.node in nodes and nodes[c.node].schedulable
        assert len(set(c.gpu_indices)) == len(c.gpu_indices) == job.gpus, c
        gpus = {g.index: g for g in nodes[c.node].gpus}
        for i in c.gpu_indices:
            assert gpus[i].healthy and not gpus[i].occupied, c
            assert job.gpu_model is None or gpus[i].model == job.gpu_model, c


def no_gpu_is_booked_twice_counting_claims(snap: Snapshot, d: Decisions) -> None:
    """A claimed GPU is free now and given to nobody, or held by one of its claim's victims."""
    booked = Counter((s.node, i) for s in d.starts for i in s.gpu_indices)
    booked.update((c.node, i) for c in d.claims.values() for i in c.gpu_indices)
    twice = [gpu for gpu, n in booked.items() if n > 1]
    assert not twice, f"GPUs booked twice: {twice}"
    nodes = {n.name: n for n in snap.nodes}
    holder = {(j.node, i): j.id for j in snap.running for i in j.gpu_indices}
    for c in d.claims.values():
        for i in c.gpu_indices:
            if i not in nodes[c.node].free_gpus:
                assert holder.get((c.node, i)) in c.victims, (c, i)


def preemptions_stop_running_jobs_once_for_a_claim(snap: Snapshot, d: Decisions) -> None:
    running = {j.id: j for j in snap.running}
    jobs = {j.id: j for j in snap.pending}
    victims = [p.victim_id for p in d.preemptions]
    assert len(victims) == len(set(victims)), f"preempted twice: {victims}"
    for p in d.preemptions:
        victim = running.get(p.victim_id)
        assert victim is not None and not victim.preempting, p
        assert victim.node == p.node
        claim = d.claims.get(p.for_job)
        assert claim is not None and p.victim_id in claim.victims, p
        # A claim may mix a grant's reclaim with QOS preemptions (grant None).
        assert p.grant in (claim.grant, None) or jobs[p.for_job].claim is None
        if jobs[p.for_job].claim is not None:
            continue  # a lost request asked again, as the claim says
        assert jobs[p.for_job].qos != PREEMPTIBLE_QOS, f"a preemptible job preempts: {p}"
        if p.grant is None:
            assert victim.qos == PREEMPTIBLE_QOS, f"a QOS preemption of a normal job: {p}"
        else:
            grant = next(g for g in snap.grants if g.id == p.grant)
            assert jobs[p.for_job].account in subtree(snap.accounts, grant.account), p
            # A victim still labelled borrows from a grant of the claimant's too (with two
            # grants of one account, which one it is attributed to may differ).
            label = d.borrowing.get(p.victim_id)
            if label is not None:
                mine = next(g for g in snap.grants if g.id == label.grant)
                assert jobs[p.for_job].account in subtree(snap.accounts, mine.account), p


def borrowers_never_hold_more_than_the_grant_needs(snap: Snapshot, d: Decisions) -> None:
    """Per grant, the GPUs labelled borrowed are at most need_g, recomputed here from the
    snapshot and the decisions."""
    jobs = {j.id: j for j in snap.pending}
    nodes = {n.name: n for n in snap.nodes}
    account = {(j.node, i): j.account for j in snap.running for i in j.gpu_indices}
    account.update({(s.node, i): jobs[s.job_id].account for s in d.starts
                    for i in s.gpu_indices})
    account.update({(c.node, i): jobs[c.job_id].account for c in d.claims.values()
                    for i in c.gpu_indices})
    active = {j.id for j in snap.running} | {s.job_id for s in d.starts}
    assert set(d.borrowing) <= active
    for g in snap.grants:
        grantees = subtree(snap.accounts, g.account)
        eligible = [(n.name, x.index) for n in nodes.values() if n.schedulable
                    and (not g.nodes or n.name in g.nodes) for x in n.gpus
                    if x.healthy and not x.occupied
                    and (g.gpu_model is None or x.model == g.gpu_model)]
        held = sum(account.get(gpu) in grantees for gpu in eligible)
        need = g.gpus - min(g.gpus, held)
        lent = sum(b.gpus for b in d.borrowing.values() if b.grant == g.id)
        assert 0 <= lent <= need, f"grant {g.id}: {lent} GPUs borrowed, it needs {need}"
    assert all(b.gpus > 0 for b in d.borrowing.values())


CHECKS = [
    no_gpu_is_given_twice,
    only_free_healthy_gpus_of_up_nodes_are_given,
    each_start_has_all_its_gpus_on_one_node_of_its_model,
    cpus_and_memory_are_not_overcommitted,
    every_pending_job_starts_once_or_has_a_reason,
    claims_are_exactly_the_jobs_gpus_on_one_node,
    no_gpu_is_booked_twice_counting_claims,
    preemptions_stop_running_jobs_once_for_a_claim,
    borrowers_never_hold_more_than_the_grant_needs,
]


@fast
@given(grant_snapshots())
def test_safety_invariants(snap: Snapshot) -> None:
    d = schedule(snap)
    for check in CHECKS:
        check(snap, d)


@fast
@given(grant_snapshots(), st.randoms(use_true_random=False))
def test_same_decisions_whatever_the_input_order(snap: Snapshot, rnd: random.Random) -> None:
    expected = schedule(snap)
    assert schedule(snap) == expected

    def shuffled(items: tuple) -> tuple:  # type: ignore[type-arg]
        out = list(items)
        rnd.shuffle(out)
        return tuple(out)

    again = dataclasses.replace(snap, nodes=shuffled(snap.nodes), pending=shuffled(snap.pending),
                                running=shuffled(snap.running), grants=shuffled(snap.grants),
                                accounts=shuffled(snap.accounts))
    got = schedule(again)
    assert got == expected
    assert got.preemptions == expected.preemptions


@fast
@given(grant_snapshots())
def test_the_next_cycle_honours_this_cycles_claims(snap: Snapshot) -> None:
    """Feed the decisions back (starts run, victims stop, claims held): still safe, and
    every claim is kept or started (a claim whose victims were needed only for CPUs or
    memory that another claim set aside may start at once), none is lost."""
    d = schedule(snap)
    jobs = {j.id: j for j in snap.pending}
    running = {j.id: j for j in snap.running}
    for s in d.starts:
        running[s.job_id] = dataclasses.replace(jobs[s.job_id], node=s.node,
                                                gpu_indices=s.gpu_indices, started_at=snap.now,
                                                claim=None)
    for p in d.preemptions:
        running[p.victim_id] = dataclasses.replace(running[p.victim_id], preempting=True)
    started = {s.job_id for s in d.starts}
    pending = tuple(dataclasses.replace(j, claim=None if (c := d.claims.get(j.id)) is None
                                        else ClaimView(c.node, c.gpu_indices, c.victims,
                                                       c.grant))
                    for j in snap.pending if j.id not in started)
    nodes = tuple(dataclasses.replace(n, free_gpus=n.free_gpus - {
        i for s in d.starts if s.node == n.name for i in s.gpu_indices},
        free_cpus=n.free_cpus - sum(jobs[s.job_id].cpus for s in d.starts if s.node == n.name),
        free_memory_mib=n.free_memory_mib - sum(jobs[s.job_id].memory_mib for s in d.starts
                                                if s.node == n.name))
                  for n in snap.nodes)
    nxt = dataclasses.replace(snap, nodes=nodes, pending=pending,
                              running=tuple(running.values()))
    d2 = schedule(nxt)
    for check in CHECKS:
        check(nxt, d2)
    kept_or_started = set(d2.claims) | {s.job_id for s in d2.starts}
    assert set(d.claims) <= kept_or_started, "a claim was lost while its victims stop"
    assert d2.preemptions == () or all(p.for_job not in d.claims for p in d2.preemptions)
