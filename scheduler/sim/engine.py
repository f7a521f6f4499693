"""The discrete-event loop: a virtual clock drives the real policy code.

Events are job submits (from the trace) and job ends (start + duration). All events at one
time are applied together, then the policy runs once at that time, and only when it could
start something: some job is pending and some pending job's GPU count fits in the free GPUs
of one node (no policy can start a job that does not fit now, so skipping the call changes
nothing). Starts are checked before they are applied; a start that is not possible is a
policy bug and stops the run (``SimulationError``).

Under FIFO (the real policy), the loop also skips calls while the queue's head blocks every
node. The head is the first pending job in FIFO order after a call's starts are applied;
it stays the head until the next call, since a newly submitted job comes after it (the same
priority, 0, and a later submit time). If it could run on every node (the static filters)
and fits on none now (its GPUs free on no node: simulated nodes have no CPU or memory
limits and only healthy GPUs), the call would find it first, not fitting, and holding every
node from every later job: it would start nothing.

The snapshot is built from views that change only where the state changed: a job's view is
made once at submit and once at start, a node's when its free GPUs change, and the tuples
the policy reads are rebuilt only after a change.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gpuq.config import DEFAULT_GPU_BILLING_WEIGHTS
from gpuq.scheduler.policy import schedule as policy_schedule
from gpuq.scheduler.policy.decisions import Decisions, Start
from gpuq.scheduler.policy.filters import STATIC, first_failure
from gpuq.scheduler.policy.snapshot import (
    JobView,
    NodeView,
    PolicyConfig,
    Snapshot,
)
from gpuq.scheduler.policy.tree import tree_shape
from gpuq.scheduler.sim.cluster import SimNode
from gpuq.scheduler.sim.ledger import UsageLedger
from gpuq.scheduler.sim.shares import Tree
from gpuq.scheduler.sim.trace import TraceJob

DAY_S = 86_400.0
Policy = Callable[[Snapshot], Decisions]
Observer = Callable[[Snapshot, Decisions], None]


class SimulationError(RuntimeError):
    """The policy asked for something impossible, or left jobs pending on an idle cluster."""


@dataclass(slots=True)
class JobRecord:
    """What happened to one trace job."""
    job: TraceJob
    start_s: float | None = None
    end_s: float | None = None
    node: str = ""
    gpu_indices: tuple[int, ...] = ()

    @property
    def wait_s(self) -> float:
        assert self.start_s is not None
        return self.start_s - self.job.submit_s


@dataclass(slots=True)
class SimResult:
    records: list[JobRecord]
    nodes: list[SimNode]
    policy: str
    #: How many times the policy ran, and at how many distinct event times the loop stopped.
    policy_calls: int = 0
    event_times: int = 0
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def total_gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)


class Simulation:
    def __init__(self, jobs: list[TraceJob], nodes: list[SimNode], tree: Tree, *,
                 policy: str = "fairshare+backfill", half_life_s: float = 7 * DAY_S,
                 billing: Mapping[str, float] = DEFAULT_GPU_BILLING_WEIGHTS,
                 schedule: Policy = policy_schedule, observe: Observer | None = None) -> None:
        self.jobs = sorted(jobs, key=lambda j: j.submit_s)
        self.nodes = nodes
        self.schedule = schedule
        self.observe = observe
        self.config = PolicyConfig(policy=policy)
        # Numbered as the policy's tree numbers its associations: the usage vector needs no
        # lookups there (policy.tree.usage_sums).
        self.ledger = UsageLedger(half_life_s, tree_shape(tree.accounts, tree.assocs).assoc_keys)
        self.records = {j.id: JobRecord(j) for j in self.jobs}
        self._accounts = tree.accounts  # already the policy's AccountView / AssocView
        self._assocs = tree.assocs
        self._node_index = {n.name: i for i, n in enumerate(nodes)}
        self._rate = {n.name: billing.get(n.model, 1.0) for n in nodes}
        self._free = [set(range(n.gpus)) for n in nodes]
        self._node_views = [n.view(frozenset(range(n.gpus))) for n in nodes]
        self._gpu_tuples = [v.gpus for v in self._node_views]
        self._nodes_tuple: tuple[NodeView, ...] | None = None
        # Free-GPU histograms: key None (any model) or a model -> count of nodes by free GPUs.
        self._hist: dict[str | None, list[int]] = {}
        for n in nodes:
            for key in (None, n.model):
                hist = self._hist.setdefault(key, [0] * (max(m.gpus for m in nodes) + 1))
                hist[n.gpus] += 1
        self._pending: dict[int, JobView] = {}
        self._pending_tuple: tuple[JobView, ...] | None = None
        self._shapes: Counter[tuple[int, str | None]] = Counter()
        self._running: dict[int, JobView] = {}
        self._running_tuple: tuple[JobView, ...] | None = None
        self._ends: list[tuple[float, int]] = []
        #: FIFO: the skip of the module's docstring applies (the real policy only: it relies
        #: on FIFO's hold rule); and the head's (GPUs, model) when it could run on every node.
        self._fifo_skip = policy == "fifo" and schedule is policy_schedule
        self._head: tuple[int, str | None] | None = None
        self._fits_every_node: dict[tuple[int, str | None, int, int], bool] = {}

    # --- the loop --------------------------------------------------------------------------
    def run(self) -> SimResult:
        result = SimResult(list(self.records.values()), self.nodes, self.config.policy)
        submits, i, n = self.jobs, 0, len(self.jobs)
        ends = self._ends
        while i < n or ends:
            now = submits[i].submit_s if i < n else ends[0][0]
            if ends and ends[0][0] < now:
                now = ends[0][0]
            while ends and ends[0][0] <= now:
                self._finish(heapq.heappop(ends)[1], now)
            while i < n and submits[i].submit_s <= now:
                self._submit(submits[i])
                i += 1
            result.event_times += 1
            if self._pending and self._could_start() and not self._head_waits():
                result.policy_calls += 1
                self._cycle(now)
            if self._pending and not ends and i == n:
                raise SimulationError(f"at t={now:g} s the policy left {len(self._pending)} "
                                      f"job(s) pending on an idle cluster (e.g. job "
                                      f"{next(iter(self._pending))})")
        return result

    def _cycle(self, now: float) -> None:
        snapshot = Snapshot(
            now=now,
            nodes=self._nodes_view(),
            pending=self._pending_view(),
            running=self._running_view(),
            accounts=self._accounts,
            assocs=self._assocs,
            usage=self.ledger.vector(now),
            config=self.config,
        )
        decisions = self.schedule(snapshot)
        if self.observe is not None:
            self.observe(snapshot, decisions)
        for start in decisions.starts:
            self._start(start, now)
        if self._fifo_skip:
            self._head = self._head_of(decisions)

    def _head_of(self, decisions: Decisions) -> tuple[int, str | None] | None:
        """The (GPUs, model) of the first job of the call's order that did not start, when it
        could run on every node (then it holds every node while it fits on none)."""
        head = next((self._pending[i] for i in decisions.order if i in self._pending), None)
        if head is None:
            return None
        shape = (head.gpus, head.gpu_model, head.cpus, head.memory_mib)
        every = self._fits_every_node.get(shape)
        if every is None:  # what a node is never changes here: once per shape
            every = self._fits_every_node[shape] = all(
                first_failure(STATIC, node, head) is None for node in self._node_views)
        return (head.gpus, head.gpu_model) if every else None

    def _head_waits(self) -> bool:
        """FIFO: the head holds every node and its GPUs are free on none (the skip)."""
        if self._head is None:
            return False
        gpus, model = self._head
        hist = self._hist.get(model)
        return hist is None or not any(hist[k] for k in range(gpus, len(hist)))

    # --- state changes -------------------------------------------------------------------
    def _submit(self, job: TraceJob) -> None:
        self._pending[job.id] = JobView(
            id=job.id, gpus=job.gpus, submitted_at=job.submit_s, gpu_model=job.gpu_model,
            user=job.user, account=job.account, time_limit_s=job.estimate_s)
        self._pending_tuple = None
        self._shapes[job.gpus, job.gpu_model] += 1

    def _start(self, start: Start, now: float) -> None:
        view = self._pending.pop(start.job_id, None)
        if view is None:
            raise SimulationError(f"at t={now:g} s the policy started job {start.job_id}, "
                                  "which is not pending")
        index = self._node_index.get(start.node)
        gpus = set(start.gpu_indices)
        if index is None or len(gpus) != view.gpus or len(start.gpu_indices) != view.gpus \
                or not gpus <= self._free[index] \
                or view.gpu_model not in (None, self.nodes[index].model):
            raise SimulationError(
                f"at t={now:g} s the policy started job {view.id} ({view.gpus} GPUs"
                f"{', ' + view.gpu_model if view.gpu_model else ''}) on {start.node} GPUs "
                f"{list(start.gpu_indices)}, which are not free or do not fit")
        self._pending_tuple = None
        self._shapes[view.gpus, view.gpu_model] -= 1
        self._take(index, gpus)
        # ``replace(view, node=..., gpu_indices=..., started_at=now)``: the fields _submit
        # sets, the rest at their defaults as there.
        self._running[view.id] = JobView(
            id=view.id, gpus=view.gpus, submitted_at=view.submitted_at,
            gpu_model=view.gpu_model, user=view.user, account=view.account,
            time_limit_s=view.time_limit_s, node=start.node,
            gpu_indices=tuple(start.gpu_indices), started_at=now)
        self._running_tuple = None
        record = self.records[view.id]
        record.start_s, record.node = now, start.node
        record.gpu_indices = tuple(start.gpu_indices)
        record.end_s = now + record.job.duration_s
        heapq.heappush(self._ends, (record.end_s, view.id))
        self.ledger.start((view.user, view.account), view.gpus * self._rate[start.node], now)

    def _finish(self, job_id: int, now: float) -> None:
        view = self._running.pop(job_id)
        self._running_tuple = None
        assert view.node is not None and view.started_at is not None
        self._give(self._node_index[view.node], view.gpu_indices)
        self.ledger.stop((view.user, view.account), view.gpus * self._rate[view.node],
                         view.started_at, now)

    def _take(self, index: int, gpus: set[int]) -> None:
        self._move(index, -len(gpus))
        self._free[index] -= gpus
        self._node_changed(index)

    def _give(self, index: int, gpus: tuple[int, ...]) -> None:
        self._move(index, len(gpus))
        self._free[index].update(gpus)
        self._node_changed(index)

    def _move(self, index: int, delta: int) -> None:
        free = len(self._free[index])
        for key in (None, self.nodes[index].model):
            hist = self._hist[key]
            hist[free] -= 1
            hist[free + delta] += 1

    def _node_changed(self, index: int) -> None:
        old = self._node_views[index]
        self._node_views[index] = NodeView(name=old.name, gpus=self._gpu_tuples[index],
                                           free_gpus=frozenset(self._free[index]))
        self._nodes_tuple = None

    # --- what the policy reads -----------------------------------------------------------
    def _could_start(self) -> bool:
        """Some pending job fits in the free GPUs of some node right now."""
        for (gpus, model), count in self._shapes.items():
            if count <= 0:
                continue
            hist = self._hist.get(model)
            if hist is not None and any(hist[k] for k in range(gpus, len(hist))):
                return True
        return False

    def _nodes_view(self) -> tuple[NodeView, ...]:
        if self._nodes_tuple is None:
            self._nodes_tuple = tuple(self._node_views)
        return self._nodes_tuple

    def _pending_view(self) -> tuple[JobView, ...]:
        if self._pending_tuple is None:
            self._pending_tuple = tuple(self._pending.values())
        return self._pending_tuple

    def _running_view(self) -> tuple[JobView, ...]:
        if self._running_tuple is None:
            self._running_tuple = tuple(self._running.values())
        return self._running_tuple
