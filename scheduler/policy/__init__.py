"""The pure policy core: a frozen ``Snapshot`` in, ``Decisions`` out.

Nothing here touches a database, the network, the clock or randomness: the same snapshot
always gives the same decisions (see DESIGN.md). ``schedule`` runs the policy that
``snapshot.config.policy`` names: ``fifo`` (fifo.py), ``fairshare`` or
``fairshare+backfill`` (cycle.py), wrapped by reservation grants, borrowing, preemption
and claims (preemption.py), which leave a cycle without any of them untouched.
"""

from gpuq.scheduler.policy import fifo
from gpuq.scheduler.policy.backfill import reserve
from gpuq.scheduler.policy.classic import classic_fairshare
from gpuq.scheduler.policy.cycle import schedule_fairshare
from gpuq.scheduler.policy.decisions import (
    Borrow,
    Claim,
    Decisions,
    Preemption,
    Priority,
    Reservation,
    Start,
)
from gpuq.scheduler.policy.fairtree import fair_tree
from gpuq.scheduler.policy.grants import boost_shares
from gpuq.scheduler.policy.preemption import schedule_with_preemption
from gpuq.scheduler.policy.priority import Priorities, priorities, priority_order
from gpuq.scheduler.policy.snapshot import (
    PREEMPTIBLE_QOS,
    AccountView,
    AssocView,
    ClaimView,
    GpuView,
    GrantView,
    JobView,
    NodeView,
    PolicyConfig,
    Snapshot,
)
from gpuq.scheduler.policy.tree import FairShareRow, FairShareTable


def schedule(snapshot: Snapshot) -> Decisions:
    """One scheduling cycle by the configured policy."""
    return schedule_with_preemption(snapshot, _inner)


def _inner(snapshot: Snapshot) -> Decisions:
    """The configured placement policy, which knows nothing of grants and preemption."""
    policy = snapshot.config.policy
    if policy == "fifo":
        return fifo.schedule(snapshot)
    return schedule_fairshare(snapshot, backfill=policy == "fairshare+backfill")


__all__ = [
    "PREEMPTIBLE_QOS",
    "AccountView",
    "AssocView",
    "Borrow",
    "Claim",
    "ClaimView",
    "Decisions",
    "FairShareRow",
    "FairShareTable",
    "GpuView",
    "GrantView",
    "JobView",
    "NodeView",
    "PolicyConfig",
    "Preemption",
    "Priorities",
    "Priority",
    "Reservation",
    "Snapshot",
    "Start",
    "boost_shares",
    "classic_fairshare",
    "fair_tree",
    "priorities",
    "priority_order",
    "reserve",
    "schedule",
    "schedule_fairshare",
    "schedule_with_preemption",
]
