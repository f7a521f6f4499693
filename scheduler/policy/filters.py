"""Placement filters: each answers whether a job fits a node, or a short reason why not.

Static filters look at what a node *is* (its GPUs, CPUs, memory, state); dynamic filters
at what is *free* now. A job that passes the static filters of a node could run there once
jobs end, so that node can be held for it; one that fails them on every node never runs.
"""

from __future__ import annotations

from collections.abc import Callable

from gpuq.scheduler.policy.snapshot import JobView, NodeView

Filter = Callable[[NodeView, JobView], str | None]


def node_schedulable(node: NodeView, job: JobView) -> str | None:
    return None if node.schedulable else f"node {node.state}"


def has_gpu_model(node: NodeView, job: JobView) -> str | None:
    if job.gpu_model is None or node.gpu_count(job.gpu_model) > 0:
        return None
    return f"no {job.gpu_model} GPU"


def has_enough_gpus(node: NodeView, job: JobView) -> str | None:
    """Enough healthy GPUs: a job is held for a node only if it could run there once the
    jobs on it end (a broken GPU does not come back by waiting)."""
    if node.gpu_count(job.gpu_model, healthy_only=True) >= job.gpus:
        return None
    return "too few GPUs" if node.gpu_count(job.gpu_model) < job.gpus else \
        "too few healthy GPUs"


def has_enough_gpus_installed(node: NodeView, job: JobView) -> str | None:
    """Enough GPUs, healthy or not: what submit checks (a broken GPU may be repaired)."""
    return None if node.gpu_count(job.gpu_model) >= job.gpus else "too few GPUs"


def has_enough_cpus(node: NodeView, job: JobView) -> str | None:
    return None if node.cpus == 0 or node.cpus >= job.cpus else "too few CPUs"


def has_enough_memory(node: NodeView, job: JobView) -> str | None:
    ok = node.memory_mib == 0 or node.memory_mib >= job.memory_mib
    return None if ok else "too little memory"


def free_gpus(node: NodeView, job: JobView) -> str | None:
    return None if len(node.usable_gpus(job.gpu_model)) >= job.gpus else "too few free GPUs"


def free_cpus(node: NodeView, job: JobView) -> str | None:
    return None if node.cpus == 0 or node.free_cpus >= job.cpus else "too few free CPUs"


def free_memory(node: NodeView, job: JobView) -> str | None:
    ok = node.memory_mib == 0 or node.free_memory_mib >= job.memory_mib
    return None if ok else "too little free memory"


#: What a node is: a job that fails these everywhere can never run.
CAPACITY: tuple[Filter, ...] = (has_gpu_model, has_enough_gpus, has_enough_cpus,
                                has_enough_memory)
STATIC: tuple[Filter, ...] = (node_schedulable, *CAPACITY)
#: What a node could ever offer: a job failing these on every node is refused at submit.
INSTALLED: tuple[Filter, ...] = (has_gpu_model, has_enough_gpus_installed, has_enough_cpus,
                                 has_enough_memory)
DYNAMIC: tuple[Filter, ...] = (free_gpus, free_cpus, free_memory)


def first_failure(filters: tuple[Filter, ...], node: NodeView, job: JobView) -> str | None:
    for f in filters:
        why = f(node, job)
        if why is not None:
            return why
    return None
