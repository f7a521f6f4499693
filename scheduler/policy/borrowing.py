"""Borrow labels: which active jobs hold reserved GPUs that their grantees do not use now.

Placement ignores reservations (any job may start on any free GPU, so reserved GPUs never
idle while someone could use them); afterwards each reservation grant g counts, over its
eligible GPUs E_g (grants.py):

- used_g = min(g.gpus, E_g GPUs held or claimed by grantee jobs); need_g = g.gpus - used_g;
- free_g = E_g GPUs free and unclaimed;
- D_g = max(0, need_g - free_g): the reserved GPUs lent out right now.

D_g is spread over the non-grantee active jobs holding E_g GPUs (not counting GPUs that a
pending job has claimed, nor jobs being preempted: those are on their way back),
preferring (1) last cycle's borrowers of g, so labels do not flap, (2) preemptible-QOS
jobs, (3) the most recently started, then the higher id; each gets
``Borrow(g, min(its E_g GPUs, what is left of D_g))``.
So the GPUs labelled borrowed from g never exceed need_g. Grants are served in id order and
a job has at most one label: with overlapping grants, a job labelled for a lower id is
passed over by the next grant.
"""

from __future__ import annotations

from gpuq.scheduler.policy.decisions import Borrow
from gpuq.scheduler.policy.grants import GrantScope
from gpuq.scheduler.policy.ledger import Ledger
from gpuq.scheduler.policy.snapshot import PREEMPTIBLE_QOS, JobView


def _preference(job: JobView, grant: int, now: float) -> tuple[bool, bool, float, int]:
    """Sticky first, then preemptible QOS, then the most recently started, then higher id."""
    started = job.started_at if job.started_at is not None else now
    return (job.borrowed_grant != grant, job.qos != PREEMPTIBLE_QOS, -started, -job.id)


def label_borrowers(ledger: Ledger, scopes: list[GrantScope],
                    ) -> tuple[dict[int, Borrow], dict[int, int]]:
    """(job id -> its label, grant id -> need_g) for the ledger's active jobs and claims."""
    labels: dict[int, Borrow] = {}
    need: dict[int, int] = {}
    now = ledger.now
    for scope in scopes:
        held = free = 0
        lent: dict[int, int] = {}
        for node, gpus in scope.gpus.items():
            for g in gpus:
                claimant = ledger.claimed.get((node, g))
                if claimant is not None:
                    held += scope.is_grantee(ledger.claimants[claimant])
                    continue
                h = ledger.holder.get((node, g))
                if h is None:
                    free += ledger.is_free(node, g)
                elif scope.is_grantee(ledger.active[h]):
                    held += 1
                elif h in ledger.victims:
                    continue  # being preempted: it is no one's borrower any more
                else:
                    lent[h] = lent.get(h, 0) + 1
        gid = scope.id
        need[gid] = scope.grant.gpus - min(scope.grant.gpus, held)
        deficit = max(0, need[gid] - free)
        if not deficit:
            continue
        ranked = sorted((_preference(ledger.active[h], gid, now), h)
                        for h in lent if h not in labels)
        for _, h in ranked:
            take = min(lent[h], deficit)
            labels[h] = Borrow(gid, take)
            deficit -= take
            if not deficit:
                break
    return labels, need
