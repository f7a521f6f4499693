"""Every process of a running job, as its supervisor finds, signals and reaps them.

A job's processes are its process group (the leader's: the job starts in a session of its
own), its cgroup when it has one, and every live descendant of the supervisor: the
supervisor is a child subreaper, so the job's orphans, those that left its process group
(``setsid``, double forks) included, become its children. They are looked for in
``/proc``; Linux only.

Standard library only: the supervisor imports it and must start fast.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Callable

from gpuq.worker.cgroups import JobCgroup

log = logging.getLogger("gpuq.supervisor")
PR_SET_CHILD_SUBREAPER = 36
#: Upper bound on a wait, in seconds: how often the ``cancel`` file is looked at.
MAX_WAIT_S = 0.5
#: How often, in seconds, the job's processes are looked for while they are being killed
#: (descendants that are not the supervisor's children send it no SIGCHLD): at first, then
#: less and less often (up to ``MAX_WAIT_S``), as each look reads all of ``/proc``.
KILL_POLL_S = 0.05
#: After SIGKILL, how long the job's processes (other than its leader, always waited for)
#: may take to go before the end is recorded anyway, with a warning.
KILL_WAIT_S = 5.0


def exit_code_of(status: int) -> int:
    """Shell convention: the exit status, or 128+N for a process killed by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def become_subreaper() -> bool:
    """Make orphaned descendants reparent to this process (Linux); whether it worked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def poll_s(elapsed_s: float) -> float:
    """How long to wait before looking for the job's processes again, ``elapsed_s``
    after the kill began."""
    return min(MAX_WAIT_S, KILL_POLL_S + 0.1 * max(0.0, elapsed_s))


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgid) of every live process visible in ``/proc`` (zombies left out)."""
    table: dict[int, tuple[int, int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[0] not in (b"Z", b"X"):
            table[int(name)] = (int(fields[1]), int(fields[2]))
    return table


def descendants(table: dict[int, tuple[int, int]], root: int) -> set[int]:
    """The pids below ``root`` in ``table`` (its children, theirs, and so on)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return out


class JobTree:
    """The processes of the job whose leader (a child of this process, leading its own
    session and process group) is ``leader``, in ``cgroup`` (``None``: it has none).

    ``sleep(timeout_s)`` waits until a signal arrives (SIGCHLD included) or ``timeout_s``
    passes; ``label`` names the job in messages."""

    def __init__(self, leader: int, cgroup: JobCgroup | None, *, label: str,
                 clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.leader, self.cgroup, self.label = leader, cgroup, label
        self.clock, self.sleep = clock, sleep
        #: The leader's exit code (``exit_code_of``) once it has been reaped.
        self.leader_code: int | None = None

    def reap(self) -> None:
        """Reap every child that has exited, noting the leader's exit code."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.leader:
                self.leader_code = exit_code_of(status)

    def pids(self) -> set[int]:
        """The job's live processes: its process group, its cgroup, and every descendant
        of the supervisor (orphans reparent to it: it is a subreaper)."""
        table = process_table()
        me = os.getpid()
        pids = descendants(table, me)
        if self.leader:
            pids.update(pid for pid, (_, pgid) in table.items() if pgid == self.leader)
        if self.cgroup is not None:
            pids.update(pid for pid in self.cgroup.pids() if pid in table)
        pids.discard(me)
        return pids

    def alive(self) -> bool:
        """Whether any of the job's processes is left (after reaping)."""
        self.reap()
        return bool(self.pids()) or (self.cgroup is not None and self.cgroup.populated())

    def signal(self, sig: int, pids: set[int] | None = None) -> None:
        """Send ``sig`` to the job's process group, cgroup and descendants (``pids``,
        when just looked up)."""
        if self.cgroup is not None:
            if sig == signal.SIGKILL:
                self.cgroup.kill()
            else:
                self.cgroup.signal(sig)
        if self.leader:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.leader, sig)
        for pid in self.pids() if pids is None else pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill_rest(self) -> None:
        """SIGKILL what is left of the job and wait until it is gone: its leader always
        (its exit status is the job's), the other processes up to ``KILL_WAIT_S``."""
        since = self.clock()
        give_up_at = since + KILL_WAIT_S
        warned = False
        while True:
            self.reap()
            left = self.pids()
            if (self.leader_code is not None and not left
                    and not (self.cgroup is not None and self.cgroup.populated())):
                return
            self.signal(signal.SIGKILL, left)
            if self.clock() >= give_up_at:
                if self.leader_code is not None:
                    log.warning("job %s: pid(s) %s still there %.0f s after SIGKILL; "
                                "recording the end anyway", self.label,
                                ", ".join(map(str, sorted(left))) or "?", KILL_WAIT_S)
                    return
                if not warned:
                    warned = True
                    log.warning("job %s: its leader (pid %d) is still there %.0f s after "
                                "SIGKILL; waiting for it", self.label, self.leader,
                                KILL_WAIT_S)
            self.sleep(poll_s(self.clock() - since))
