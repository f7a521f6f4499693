"""The pure policy core: a frozen ``Snapshot`` in, ``Decisions`` out.

Nothing here touches a database, the network, the clock or randomness: the same snapshot
always gives the same decisions (see DESIGN.md).
"""

from scheduler.policy.decisions import Decisions, Start
from scheduler.policy.fifo import schedule
from scheduler.policy.snapshot import GpuView, JobView, NodeView, Snapshot

__all__ = ["Decisions", "GpuView", "JobView", "NodeView", "Snapshot", "Start", "schedule"]
