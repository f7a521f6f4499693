"""Reservation grants, borrowing, preemption and claims, around an inner policy
(policy-v3.md).

The inner policies (fifo.py, cycle.py) place jobs on free GPUs and know nothing of this.
A cycle with reservation grants, claims or running preemptible-QOS jobs goes:

1. claims.py: pending jobs with a claim start on it, keep it (and stay out of the inner
   policy, their GPUs hidden from it), or lose it;
2. the inner policy, unchanged, on what is left;
3. borrowing.py: which active jobs borrow reserved GPUs, and each grant's need;
4. victims.py: pending jobs that did not start, in priority order, claim GPUs by
   preempting running jobs they outrank;
5. borrow labels again, now counting this cycle's claims (they are the output).

A cycle with none of these (no grant, no claim, no running preemptible job) is the inner
policy's alone, at no cost: the decisions are exactly what they were before grants.

The backfill reservation stays as the inner policy computed it; a job that claims gets
the claim's reason instead of its inner one. Non-grantee jobs are not steered away from
reserved idle GPUs (the contract's "prefer, where cheap"): that would change the inner
policy's placement, which is kept bit-for-bit.
"""

from __future__ import annotations

from bisect import insort
from collections import ChainMap
from collections.abc import Callable, Mapping
from dataclasses import replace
from operator import attrgetter

from gpuq.scheduler.policy.borrowing import label_borrowers
from gpuq.scheduler.policy.claims import honour_claims
from gpuq.scheduler.policy.decisions import Decisions, Priority
from gpuq.scheduler.policy.grants import scopes
from gpuq.scheduler.policy.ledger import Ledger
from gpuq.scheduler.policy.priority import fairshare_factors, priorities
from gpuq.scheduler.policy.snapshot import PREEMPTIBLE_QOS, JobView, Snapshot
from gpuq.scheduler.policy.victims import Pass

Policy = Callable[[Snapshot], Decisions]


def needs_preemption(snapshot: Snapshot) -> bool:
    """Whether the cycle has anything to do with grants, claims or preemption."""
    return (bool(snapshot.grants)
            or any(j.qos == PREEMPTIBLE_QOS for j in snapshot.running)
            or any(map(attrgetter("claim"), snapshot.pending)))


def schedule_with_preemption(snapshot: Snapshot, inner: Policy) -> Decisions:
    """``inner``'s decisions, with claims honoured, borrowers labelled and preemptions made
    (see the module's docstring)."""
    if not needs_preemption(snapshot):
        return inner(snapshot)
    ledger = Ledger(snapshot)
    honoured = honour_claims(snapshot, ledger)
    pending = tuple(j for j in snapshot.pending if j.id not in honoured.handled) \
        if honoured.handled else snapshot.pending
    d = inner(ledger.inner_snapshot(snapshot, pending))
    by_id = {j.id: j for j in snapshot.pending}
    for s in d.starts:
        ledger.start(by_id[s.job_id], s.node, s.gpu_indices)
    prios, order = _full_order(snapshot, d, [by_id[i] for i in sorted(honoured.handled)])

    grants = scopes(snapshot.grants, snapshot.accounts, snapshot.nodes)
    labels, need = label_borrowers(ledger, grants)
    started = {s.job_id for s in ledger.started}
    candidates = [by_id[i] for i in order if i not in started and i not in ledger.claims]
    preempt = Pass(ledger, grants, labels, need)
    claimed = preempt.run(candidates, set(dict(snapshot.config.qos_priority)))
    labels, _ = label_borrowers(ledger, grants)

    reasons = {i: r for i, r in d.pending_reasons.items() if i not in claimed}
    reasons.update(honoured.reasons)
    reasons.update(claimed)
    return Decisions(
        starts=tuple(ledger.started), pending_reasons=reasons, priorities=prios,
        estimated_starts=d.estimated_starts, order=tuple(order), reservation=d.reservation,
        preemptions=tuple(honoured.repeats + preempt.preemptions),
        claims=dict(ledger.claims), borrowing=labels)


def _full_order(snapshot: Snapshot, d: Decisions, left_out: list[JobView],
                ) -> tuple[Mapping[int, Priority], list[int]]:
    """The priorities and order of every pending job: the inner policy's, with the jobs it
    did not see (claims started or kept) put in their places."""
    order = list(d.order)
    if not left_out:
        return d.priorities, order
    by_id = {j.id: j for j in snapshot.pending}
    if snapshot.config.policy == "fifo":
        def key(i: int) -> tuple[float, float, int]:
            j = by_id[i]
            return (-j.priority, j.submitted_at, i)
        prios: Mapping[int, Priority] = d.priorities
    else:
        extra = priorities(replace(snapshot, pending=tuple(left_out)),
                           fairshare_factors(snapshot))
        prios = ChainMap(dict(extra), d.priorities)  # type: ignore[arg-type]

        def key(i: int) -> tuple[float, float, int]:
            return (-prios[i].total, by_id[i].submitted_at, i)
    for job in left_out:
        insort(order, job.id, key=key)
    return prios, order
