"""Who holds, who claims and what is free, GPU by GPU, while claims and preemptions are
decided around the inner policy (preemption.py).

The inner policies keep their own optimised state for placement; this ledger only follows
what preemption needs: the active jobs (running, and started this cycle), the GPUs claimed
by pending jobs, and the jobs already being preempted. It is built only when a cycle has
grants, claims or preemptible jobs.
"""

from __future__ import annotations

from dataclasses import replace

from gpuq.scheduler.policy.decisions import Claim, Start
from gpuq.scheduler.policy.snapshot import JobView, NodeView, Snapshot

Gpu = tuple[str, int]  # (node name, GPU index)


class Ledger:
    def __init__(self, snapshot: Snapshot) -> None:
        self.now = snapshot.now
        self.views: dict[str, NodeView] = {n.name: n for n in
                                           sorted(snapshot.nodes, key=lambda n: n.name)}
        #: Free GPUs given to a start or claimed this cycle, per node.
        self.taken: dict[str, set[int]] = {}
        self.free_cpus = {n.name: n.free_cpus for n in snapshot.nodes}
        self.free_mem = {n.name: n.free_memory_mib for n in snapshot.nodes}
        #: Active jobs by id: running, and those started this cycle (``started_at`` now).
        self.active: dict[int, JobView] = {}
        self.running: dict[int, JobView] = {}
        self.holder: dict[Gpu, int] = {}
        for job in sorted(snapshot.running, key=lambda j: j.id):
            if job.node is None:
                continue
            self.running[job.id] = job
            self._hold(job)
        self.claimed: dict[Gpu, int] = {}
        self.claims: dict[int, Claim] = {}
        self.claimants: dict[int, JobView] = {}
        #: Running jobs being preempted: asked before this cycle, or now.
        self.victims: set[int] = {j.id for j in self.running.values() if j.preempting}
        self.started: list[Start] = []

    def _hold(self, job: JobView) -> None:
        self.active[job.id] = job
        for g in job.gpu_indices:
            self.holder[(job.node or "", g)] = job.id

    # --- reading ----------------------------------------------------------------------------

    def is_free(self, node: str, gpu: int) -> bool:
        """Free now to any job: not held, not claimed, not given this cycle."""
        return gpu in self.views[node].free_gpus and gpu not in self.taken.get(node, ())

    def usable_free(self, node: str, model: str | None) -> list[int]:
        """Free, healthy, unoccupied, unclaimed GPUs of the model, in index order."""
        taken = self.taken.get(node, set())
        return [g for g in self.views[node].usable_gpus(model) if g not in taken]

    def fits_now(self, node: str, job: JobView, gpus: int) -> bool:
        """``gpus`` GPUs are enough, and the node has the job's CPUs and memory free."""
        v = self.views[node]
        return (gpus >= job.gpus and (not v.cpus or self.free_cpus[node] >= job.cpus)
                and (not v.memory_mib or self.free_mem[node] >= job.memory_mib))

    # --- writing ----------------------------------------------------------------------------

    def start(self, job: JobView, node: str, gpus: tuple[int, ...]) -> None:
        self.taken.setdefault(node, set()).update(gpus)
        self.free_cpus[node] -= job.cpus
        self.free_mem[node] -= job.memory_mib
        self._hold(replace(job, node=node, gpu_indices=gpus, started_at=self.now))
        self.started.append(Start(job.id, node, gpus))

    def claim(self, job: JobView, claim: Claim) -> None:
        """Book the claim: its free GPUs go to nobody else, its victims are being preempted,
        and the CPUs and memory it needs beyond what the victims give back are set aside."""
        node = claim.node
        for g in claim.gpu_indices:
            self.claimed[(node, g)] = job.id
            if g in self.views[node].free_gpus:
                self.taken.setdefault(node, set()).add(g)
        back = [self.running[v] for v in claim.victims if v in self.running]
        self.victims.update(v.id for v in back)
        cpus = sum(v.cpus for v in back)
        mem = sum(v.memory_mib for v in back)
        self.free_cpus[node] = min(self.free_cpus[node], self.free_cpus[node] + cpus - job.cpus)
        self.free_mem[node] = min(self.free_mem[node],
                                  self.free_mem[node] + mem - job.memory_mib)
        self.claims[job.id] = claim
        self.claimants[job.id] = job

    def inner_snapshot(self, snapshot: Snapshot, pending: tuple[JobView, ...]) -> Snapshot:
        """The snapshot the inner policy sees: claimed GPUs and this cycle's starts are no
        longer free, and the jobs started here run from now (backfill plans with them)."""
        nodes = tuple(
            replace(n, free_gpus=n.free_gpus - self.taken.get(n.name, set()),
                    free_cpus=self.free_cpus[n.name], free_memory_mib=self.free_mem[n.name])
            if n.name in self.taken or n.free_cpus != self.free_cpus[n.name]
            or n.free_memory_mib != self.free_mem[n.name] else n
            for n in snapshot.nodes)
        started = tuple(self.active[s.job_id] for s in self.started)
        return replace(snapshot, nodes=nodes, pending=pending,
                       running=snapshot.running + started)
