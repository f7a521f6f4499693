"""The node's lease: how long its jobs may run without contact with the scheduler (fencing).

The scheduler marks a silent node down and runs its jobs elsewhere after
``node_down_after_s``; a node cut off from it (its daemon stopped, the network cut)
must have stopped those jobs by then, or they run twice. So the daemon renews a lease
each time the scheduler accepts a heartbeat (or its registration), and each job's
supervisor, a process of its own that goes on when the daemon is stopped, stops its job
when the lease has run out: SIGTERM, the grace period, SIGKILL, and the run ends
NODE_FAIL (``worker.supervisor``).

The lease is ``<state_dir>/lease.json``, written whole by the daemon::

    {"boot_id": ..., "renewed_at": <CLOCK_BOOTTIME s>, "fence_after_s": F, "grace_s": G}

``renewed_at`` is when the daemon *sent* the request that the scheduler accepted (it
reached the scheduler after that, so the scheduler's record of it is later still): the
lease runs out at ``renewed_at + F``, and the scheduler's deadline for the node,
``node_down_after_s`` >= F + G + a margin after its record, falls after the job is gone.
The clock is ``CLOCK_BOOTTIME``: the same in every process, never set back, and it goes
on while the machine is suspended (a suspended node must not wake up and run its jobs
beside their second copies). A lease from another boot has run out.

A 503 that says the scheduler's *database* is unavailable counts as contact too when the
scheduler says so (``FenceTerms.hold_on_database_outage``): it cannot mark the node down
then, and gives every node a fresh timeout when its database is back.

No lease file (a daemon older than this, or one that never reached the scheduler):
nothing is fenced. Standard library only: the supervisor imports it and must start fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

LEASE = "lease.json"


def boottime() -> float:
    """Seconds since boot, suspend included (``CLOCK_BOOTTIME``; monotonic elsewhere)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class Lease(NamedTuple):
    boot_id: str
    #: ``boottime()`` when the accepted request was sent.
    renewed_at: float
    fence_after_s: float
    grace_s: float

    @property
    def deadline(self) -> float:
        """``boottime()`` at which the jobs must be stopped."""
        return self.renewed_at + self.fence_after_s

    def expired(self, now: float, boot: str) -> bool:
        """Whether the lease has run out at ``now`` (``boottime()``) on boot ``boot``."""
        return boot != self.boot_id or now >= self.deadline

    def to_json(self) -> dict[str, Any]:
        return self._asdict()


def read(path: Path) -> Lease | None:
    """The lease in ``path``; ``None`` when there is none (or it cannot be read)."""
    try:
        with open(path) as f:
            data = json.load(f)
        return Lease(str(data["boot_id"]), float(data["renewed_at"]),
                     float(data["fence_after_s"]), float(data["grace_s"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write(path: Path, lease: Lease) -> None:
    """Replace the lease at ``path`` (readers see the old one or the new one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(lease.to_json(), f)
        os.chmod(tmp, 0o600)  # read by the supervisors, which run as the daemon does
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Fence:
    """A supervisor's view of the lease: whether its job must be stopped now.

    It reads the file only when the lease it knows has run out (once per renewal), so
    checking every half second costs nothing. ``path`` ``None``: never fenced."""

    def __init__(self, path: Path | None, *, clock: Any = boottime,
                 boot: str | None = None) -> None:
        self.path, self.clock = path, clock
        self.boot = boot_id() if boot is None else boot
        self.lease: Lease | None = None

    def due(self) -> bool:
        """Whether the lease has run out (reading the newest one first)."""
        if self.path is None:
            return False
        now = self.clock()
        if self.lease is None or self.lease.expired(now, self.boot):
            self.lease = read(self.path)
            if self.lease is None:
                return False  # no lease: this node does not fence
        return self.lease.expired(now, self.boot)

    @property
    def after_s(self) -> float:
        return self.lease.fence_after_s if self.lease is not None else 0.0

    @property
    def grace_s(self) -> float | None:
        return self.lease.grace_s if self.lease is not None else None


class Keeper:
    """The daemon's side: renews the lease at each contact, never moving it back (the
    heartbeat thread and the launch threads hear answers in any order)."""

    def __init__(self, path: Path, *, boot: str | None = None) -> None:
        self.path = path
        self.boot = boot_id() if boot is None else boot
        self._lock = threading.Lock()
        self._terms: tuple[float, float, bool] | None = None
        self._contact_at = float("-inf")

    @property
    def fencing(self) -> bool:
        """Whether the scheduler gave a fence (an older one gives none)."""
        return self._terms is not None

    @property
    def terms(self) -> tuple[float, float, bool] | None:
        """The fence kept: (after_s, grace_s, hold_on_database_outage), or ``None``."""
        return self._terms

    def set_terms(self, after_s: float, grace_s: float, hold_on_database_outage: bool) -> None:
        """The scheduler's fence (``FenceTerms``), as its registration or heartbeat reply
        gave it: the lease is written anew if it changed."""
        terms = (float(after_s), float(grace_s), bool(hold_on_database_outage))
        with self._lock:
            if terms != self._terms:
                self._terms = terms
                self._write()

    def clear(self) -> None:
        """The scheduler gives no fence (an older one): no lease, nothing is fenced."""
        with self._lock:
            self._terms = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def contact(self, sent_at: float, database_away: bool = False) -> bool:
        """The scheduler answered a request sent at ``sent_at`` (``boottime()``): accepted
        a heartbeat or a registration, or (``database_away``) said its database is
        unavailable, which counts only when its terms say so. Renews the lease (once the
        terms are known: a registration's contact is written with its reply's terms);
        whether it wrote it."""
        with self._lock:
            if database_away and (self._terms is None or not self._terms[2]):
                return False
            if sent_at <= self._contact_at:
                return False
            self._contact_at = sent_at
            return self._write()

    def _write(self) -> bool:
        if self._terms is None or self._contact_at == float("-inf"):
            return False
        after_s, grace_s, _ = self._terms
        write(self.path, Lease(self.boot, self._contact_at, after_s, grace_s))
        return True
