"""Claims made by earlier cycles' preemptions, honoured before the inner policy runs.

A pending job with a claim (``JobView.claim``):

- starts on exactly its claimed GPUs once they are all free, its node is UP and the node
  has its CPUs and memory free;
- keeps its claim while its victims still run (they are stopping within their grace
  period), every claimed GPU that is not free is held by one of them, and the claim is
  sound (its node UP, its GPUs healthy, unoccupied, of its model, as many as it asks for,
  claimed by nobody else). It waits with a ``Preempting:`` reason, out of the inner
  policy, and its free claimed GPUs go to nobody else;
- otherwise loses the claim and is scheduled like any other job this cycle.

A kept claim's victim that runs without ``preempting`` set has lost its preemption request
(the database is the truth): it is requested again, as Kueue re-issues an eviction.
Claims are honoured in job id order: of two claims on one GPU (not made by this policy),
the later loses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpuq.scheduler.policy import reasons
from gpuq.scheduler.policy.decisions import Claim, Preemption
from gpuq.scheduler.policy.ledger import Ledger
from gpuq.scheduler.policy.snapshot import ClaimView, JobView, Snapshot


@dataclass(slots=True)
class Honoured:
    #: Jobs left out of the inner policy: started on their claims, or still waiting.
    handled: set[int] = field(default_factory=set)
    reasons: dict[int, str] = field(default_factory=dict)
    #: Preemptions of kept claims' victims whose request was lost.
    repeats: list[Preemption] = field(default_factory=list)


def _sound(ledger: Ledger, job: JobView, c: ClaimView) -> bool:
    view = ledger.views.get(c.node)
    if view is None or not view.schedulable:
        return False
    gpus = {g.index: g for g in view.gpus}
    if len(set(c.gpu_indices)) != len(c.gpu_indices) or len(c.gpu_indices) != job.gpus:
        return False
    for i in c.gpu_indices:
        g = gpus.get(i)
        if (g is None or not g.healthy or g.occupied
                or (job.gpu_model is not None and g.model != job.gpu_model)
                or (c.node, i) in ledger.claimed or i in ledger.taken.get(c.node, ())):
            return False
    return True


def honour_claims(snapshot: Snapshot, ledger: Ledger) -> Honoured:
    """Start, keep or drop every pending job's claim (see the module's docstring)."""
    out = Honoured()
    for job in sorted((j for j in snapshot.pending if j.claim is not None),
                      key=lambda j: j.id):
        c = job.claim
        assert c is not None
        if not _sound(ledger, job, c):
            continue
        busy = [i for i in c.gpu_indices if not ledger.is_free(c.node, i)]
        still = [v for v in c.victims if v in ledger.running
                 and ledger.running[v].node == c.node]
        if not busy and ledger.fits_now(c.node, job, job.gpus):
            ledger.start(job, c.node, tuple(c.gpu_indices))
            out.handled.add(job.id)
            continue
        if not still or any(ledger.holder.get((c.node, i)) not in still for i in busy):
            continue  # the victims are gone, or someone else holds a claimed GPU
        claim = Claim(job.id, c.node, tuple(c.gpu_indices), tuple(c.victims), c.grant)
        lost = [v for v in still if v not in ledger.victims]  # not stopping, not asked yet
        ledger.claim(job, claim)
        out.handled.add(job.id)
        out.reasons[job.id] = reasons.preempting(still)
        for v in lost:
            why = (reasons.preempted_for_grant(job, c.grant) if c.grant is not None
                   else reasons.preempted_for_qos(job, ledger.running[v].qos))
            out.repeats.append(Preemption(v, job.id, c.node, c.grant, why))
    return out
