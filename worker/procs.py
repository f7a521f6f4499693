"""Whose is a process on a GPU? gpuq's (one of this node's job runs) or *foreign* (someone
ran ``python train.py`` by hand): the scheduler gives no job a GPU with a foreign process.

A process belongs to gpuq when it is in the session or process group of one of the job
runs (a job is started in its own session: sid = pgid = its pid, recorded by its
supervisor in ``state.json``), or when a job supervisor is among its ancestors (a job's
child that called ``setsid`` itself; supervisors are subreapers, so even orphans stay
below them). Everything is read from ``/proc``; Linux only.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass, field

from gpuq.wire.nodes import GpuProcess as WireGpuProcess
from gpuq.worker.gpus.base import GpuProcess

#: The wire's limits on ``GpuProcess.command`` / ``user``.
MAX_COMMAND = 256
MAX_USER = 64
MAX_ANCESTORS = 64


@dataclass(frozen=True)
class JobProcesses:
    """What the daemon knows of its running job runs."""

    #: Sessions and process groups of the jobs (the job's pid: it leads both).
    sessions: frozenset[int] = frozenset()
    #: Pids of the jobs' supervisors.
    supervisors: frozenset[int] = frozenset()
    #: GPU index -> pids of the jobs on it (a job still starting holds its GPUs, no pid).
    gpus: dict[int, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    pgid: int
    sid: int


def proc_stat(pid: int) -> ProcStat | None:
    """``ppid``, ``pgid`` and ``sid`` of ``pid``, or ``None`` if it is not visible here."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return ProcStat(ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]))
    except (OSError, IndexError, ValueError):
        return None


def proc_user(pid: int) -> str | None:
    """The name of the account owning ``pid`` (its uid as text when it has no name)."""
    try:
        uid = os.stat(f"/proc/{int(pid)}").st_uid
    except OSError:
        return None
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return name[:MAX_USER]


def proc_command(pid: int, limit: int = MAX_COMMAND) -> str | None:
    """The command line of ``pid`` (arguments joined by spaces), at most ``limit``
    characters; ``[comm]`` for a process without one (a kernel thread, a zombie)."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            raw = f.read(limit * 4 + 4)
    except OSError:
        return None
    text = " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)
    if not text:
        try:
            with open(f"/proc/{int(pid)}/comm", "rb") as f:
                text = f"[{f.read().decode(errors='replace').strip()}]"
        except OSError:
            return None
    return text if len(text) <= limit else text[:limit - 3] + "..."


def belongs_to_jobs(pid: int, jobs: JobProcesses, *, me: int | None = None) -> bool | None:
    """Whether ``pid`` is one of gpuq's (``None``: no such pid here, e.g. another PID
    namespace's, or already gone)."""
    me = os.getpid() if me is None else me
    stat = proc_stat(pid)
    if stat is None:
        return None
    if pid == me or stat.sid in jobs.sessions or stat.pgid in jobs.sessions:
        return True
    if not jobs.supervisors:
        return False
    seen = 0
    while stat is not None and stat.ppid > 1 and seen < MAX_ANCESTORS:
        if stat.ppid in jobs.supervisors:
            return True
        stat, seen = proc_stat(stat.ppid), seen + 1
    return False


def foreign_processes(processes: Iterable[GpuProcess], jobs: JobProcesses, *,
                      held: bool) -> list[WireGpuProcess]:
    """The processes of one GPU that gpuq did not start, for ``GpuSample.foreign_processes``.

    ``held``: whether one of the node's running jobs holds this GPU. A pid the driver
    reports but this host cannot see (a worker in a container sees another PID namespace)
    cannot be told apart: on a GPU a job holds it counts as the job's, on any other GPU
    it is foreign (user and command unknown), so a free GPU is never given out under
    someone's process.
    """
    out: list[WireGpuProcess] = []
    for p in processes:
        ours = belongs_to_jobs(p.pid, jobs)
        if ours or (ours is None and held):
            continue
        out.append(WireGpuProcess(pid=max(0, p.pid), user=proc_user(p.pid),
                                  command=proc_command(p.pid),
                                  used_memory_mib=p.used_memory_mib))
    return out
