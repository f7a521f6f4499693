"""The server's own outages: when its database is away, and since when it can hear nodes.

A node is lost when the scheduler has not heard from it for ``node_down_after_s``; but
silence only counts while the scheduler could hear. While it was down (a restart), or
its database was (heartbeats answered 503 and not recorded), or its loop was stopped, no
node could be heard, and counting that time against them declared every node lost and
ran their jobs twice (issue 16, item 4). So the loop keeps *since when it has been
listening* (``Listening``): from its first housekeeping that reached the database after
a start, a failure, a long gap or a step of the clock, and after the last time an API
process of this server (same ``data_dir``) answered "database unavailable"
(``OutageMarker``). A node is lost only when ``now - max(its last heartbeat, listening
since) > node_down_after_s`` (``down_deadline``).

The other half is the worker's fence (``gpuq.worker.lease``): a node counts a
"database unavailable" 503 as contact (``FenceTerms.hold_on_database_outage``), which is
sound because the scheduler gives every node a fresh timeout after that answer.

``database_unavailable`` says which exceptions are the database being away (the API's
503 with ``Retry-After``, not a 500).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy.exc as sa_exc

log = logging.getLogger(__name__)

#: The file an API process touches when it answers "database unavailable" (in data_dir).
MARKER = "database-unavailable"
#: A difference between the wall clock's and the monotonic clock's progress beyond this,
#: between two housekeepings, is a step of the wall clock: timeouts start afresh.
CLOCK_STEP_S = 2.0
#: SQLite's errors that are the database being busy or away (its others are bugs).
_SQLITE_AWAY = ("locked", "busy", "unable to open", "disk i/o")


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be used now (retry later), not a bug:
    a lost or refused connection, a pool that gave none in time, PostgreSQL shutting down
    or out of connections, a deadlock or serialization failure; SQLite locked or busy."""
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True  # the pool gave no connection in time; a connection was lost
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
            return _driver_unavailable(exc.orig)
        return False
    return _driver_unavailable(exc)


def _driver_unavailable(orig: BaseException | None) -> bool:
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig).lower()
        return any(word in text for word in _SQLITE_AWAY)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    # psycopg's OperationalError: the connection (refused, lost, timed out), the server
    # shutting down (57P*), out of resources (53*), a transaction to retry (40*).
    return isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError)


class OutageMarker:
    """When an API process of this server last answered "database unavailable": the
    modification time of ``data_dir/database-unavailable``, which each API process
    touches (at most once a ``every_s``) and the loop reads (one ``stat``). A file, so
    that the forked API processes of ``--workers N`` and the loop's process share it."""

    def __init__(self, data_dir: Path, *, every_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = data_dir / MARKER
        self.every_s, self._clock = every_s, clock
        self._noted = float("-inf")

    def note(self) -> None:
        """This process could not use the database just now."""
        now = self._clock()
        if now - self._noted < self.every_s:
            return
        self._noted = now
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a"):
                pass
            os.utime(self.path, (now, now))
        except OSError as e:  # the loop then relies on its own failures
            log.warning("cannot touch %s: %s", self.path, e)

    def last(self) -> datetime | None:
        """When it was last noted (``None``: never, or not readable)."""
        with contextlib.suppress(OSError):
            return datetime.fromtimestamp(self.path.stat().st_mtime, UTC)
        return None


def down_deadline(now: datetime, node_down_after_s: float,
                  listening_since: datetime | None) -> datetime | None:
    """The node-down rule: a node whose last heartbeat is older than the returned time is
    lost; ``None``: no node is (the scheduler has not listened for ``node_down_after_s``
    yet). That is, a node is lost when ``now - max(last heartbeat, listening_since) >
    node_down_after_s``. ``listening_since`` ``None``: listening for ever (tests, tools)."""
    deadline = now - timedelta(seconds=node_down_after_s)
    if listening_since is not None and listening_since >= deadline:
        return None
    return deadline


class Listening:
    """Since when the scheduler has been able to hear heartbeats, as the loop sees it.

    Before each housekeeping the loop asks ``begin(now)`` for the time to count silence
    from; after it, it says ``succeeded()`` (the database answered) or ``failed()``.
    The time is the housekeeping's own ``now`` (so no node is lost in it) when there was
    no successful housekeeping before (the server started), the last one failed, it was
    more than ``max_gap_s`` ago (the loop or the whole server was stopped or stuck), or
    the wall clock moved more than ``CLOCK_STEP_S`` unlike the monotonic one; it is the
    marker's time when an API process answered "database unavailable" since."""

    def __init__(self, max_gap_s: float, marker: OutageMarker | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.max_gap_s, self.marker, self._monotonic = max_gap_s, marker, monotonic
        #: Listening since (``None``: not yet, or not since the last failure).
        self.since: datetime | None = None
        self._ok: tuple[float, datetime] | None = None  # (monotonic, wall) of the last one
        self._pending: tuple[datetime, float, datetime] | None = None

    def begin(self, now: datetime) -> datetime:
        mono = self._monotonic()
        since, why = self.since, ""
        if since is None or self._ok is None:
            since, why = now, "the scheduler (re)started or its database was away"
        else:
            ok_mono, ok_wall = self._ok
            gap_s = mono - ok_mono
            if gap_s > self.max_gap_s:
                since, why = now, f"the loop did not run for {gap_s:.0f} s"
            elif abs((now - ok_wall).total_seconds() - gap_s) > CLOCK_STEP_S:
                since, why = now, "the wall clock jumped"
        marked = self.marker.last() if self.marker is not None else None
        if marked is not None and since < marked <= now + timedelta(seconds=CLOCK_STEP_S):
            since = min(marked, now)
            why = why or "the API answered 'database unavailable'"
        if why and since != self.since:
            log.info("nodes' silence counts from %s (%s)", since.isoformat(), why)
        self._pending = (since, mono, now)
        return since

    def succeeded(self) -> None:
        if self._pending is not None:
            since, mono, now = self._pending
            self.since, self._ok, self._pending = since, (mono, now), None

    def failed(self) -> None:
        self.since, self._ok, self._pending = None, None, None
