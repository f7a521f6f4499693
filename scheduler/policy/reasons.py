"""The texts of pending reasons. Each starts with a Slurm-like word: Resources, Priority,
Reservation, NodeDown, QOS, Preempting."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from gpuq.scheduler.policy.decisions import Reservation
from gpuq.scheduler.policy.snapshot import JobView


def _wanted(job: JobView) -> str:
    what = f"{job.gpus} free {job.gpu_model + ' ' if job.gpu_model else ''}GPU"
    return what + ("s" if job.gpus != 1 else "")


def _counts(misses: Counter[str]) -> str:
    return ", ".join(f"{n} node{'s' if n != 1 else ''}: {why}"
                     for why, n in sorted(misses.items()))


def resources(job: JobView, misses: Counter[str]) -> str:
    """No node can take it now: ``Resources: no node has 2 free GPUs now (…)``."""
    detail = _counts(misses)
    return f"Resources: no node has {_wanted(job)} now ({detail})" if detail else "Resources"


def node_down(down: Counter[str]) -> str:
    """Every node that could run it is DOWN, DRAIN or UNKNOWN."""
    return f"NodeDown: every node that could run it is down ({_counts(down)})"


def waiting_behind(job_id: int) -> str:
    return f"Priority: waiting behind job {job_id}"


def reserved_for(reservation: Reservation) -> str:
    """The per-node miss of a node whose GPUs are reserved."""
    return f"reserved for job {reservation.job_id}"


def would_delay(reservation: Reservation, now: float) -> str:
    wait = max(reservation.start_at - now, 0.0)
    return (f"Reservation: would delay job {reservation.job_id} "
            f"(reserved on {reservation.node} in {wait:.0f} s)")


def unknown_qos(qos: str, known: Iterable[str]) -> str:
    return f"QOS: unknown QOS {qos!r} (known: {', '.join(sorted(known))})"


def preempting(victims: Iterable[int]) -> str:
    """A job whose claim waits for its victims to stop."""
    ids = sorted(victims)
    jobs = "job" if len(ids) == 1 else "jobs"
    return f"Preempting: waiting for {jobs} {', '.join(map(str, ids))} to stop (grace period)"


def preempted_for_grant(job: JobView, grant: int) -> str:
    return (f"preempted for job {job.id} ({job.account}): reservation grant {grant} "
            f"needs its GPUs back")


def preempted_for_qos(job: JobView, victim_qos: str) -> str:
    return (f"preempted for job {job.id} ({job.account}): QOS {job.qos!r} preempts "
            f"QOS {victim_qos!r}")
