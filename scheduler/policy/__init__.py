"""The pure policy core: a frozen ``Snapshot`` in, ``Decisions`` out.

Nothing here touches a database, the network, the clock or randomness: the same snapshot
always gives the same decisions (see DESIGN.md). ``schedule`` runs the policy that
``snapshot.config.policy`` names: ``fifo`` (fifo.py), ``fairshare`` or
``fairshare+backfill`` (cycle.py).
"""

from scheduler.policy import fifo
from scheduler.policy.backfill import reserve
from scheduler.policy.classic import classic_fairshare
from scheduler.policy.cycle import schedule_fairshare
from scheduler.policy.decisions import Decisions, Priority, Reservation, Start
from scheduler.policy.fairtree import fair_tree
from scheduler.policy.priority import Priorities, priorities, priority_order
from scheduler.policy.snapshot import (
    AccountView,
    AssocView,
    GpuView,
    JobView,
    NodeView,
    PolicyConfig,
    Snapshot,
)
from scheduler.policy.tree import FairShareRow, FairShareTable


def schedule(snapshot: Snapshot) -> Decisions:
    """One scheduling cycle by the configured policy."""
    policy = snapshot.config.policy
    if policy == "fifo":
        return fifo.schedule(snapshot)
    return schedule_fairshare(snapshot, backfill=policy == "fairshare+backfill")


__all__ = [
    "AccountView",
    "AssocView",
    "Decisions",
    "FairShareRow",
    "FairShareTable",
    "GpuView",
    "JobView",
    "NodeView",
    "PolicyConfig",
    "Priorities",
    "Priority",
    "Reservation",
    "Snapshot",
    "Start",
    "classic_fairshare",
    "fair_tree",
    "priorities",
    "priority_order",
    "reserve",
    "schedule",
    "schedule_fairshare",
]
