"""The server's own outages (scheduler/runtime/outages.py): the node-down rule, since when
the loop has listened, which errors are the database being away, and the marker file."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy.exc as sa_exc

from gpuq.scheduler.runtime.outages import (
    Listening,
    OutageMarker,
    database_unavailable,
    down_deadline,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


# --- the node-down rule -------------------------------------------------------------------


def lost(last_heartbeat: datetime, now: datetime, since: datetime | None,
         limit_s: float = 60) -> bool:
    deadline = down_deadline(now, limit_s, since)
    return deadline is not None and last_heartbeat < deadline


@pytest.mark.parametrize(("beat_s", "since_s", "now_s", "expected"), [
    (0, None, 61, True),     # listening for ever: the old rule
    (0, None, 60, False),    # exactly the limit is not beyond it
    (0, -100, 61, True),     # listening long before the last beat
    (0, 30, 61, False),      # the server came back at 30: 31 s of silence it could hear
    (0, 30, 90, False),      # 60 s since it came back: not beyond
    (0, 30, 90.5, True),     # beyond: the node's silence, heard, is over the limit
    (50, 30, 111, True),     # beat after the server came back: from the beat
    (50, 30, 110, False),
])
def test_silence_counts_from_the_later_of_the_beat_and_listening_since(
        beat_s: float, since_s: float | None, now_s: float, expected: bool) -> None:
    since = None if since_s is None else T0 + s(since_s)
    assert lost(T0 + s(beat_s), T0 + s(now_s), since) is expected


def test_no_deadline_at_all_before_the_server_listened_long_enough() -> None:
    assert down_deadline(T0 + s(59), 60, T0) is None
    assert down_deadline(T0 + s(61), 60, T0) == T0 + s(1)


# --- since when the loop has listened -----------------------------------------------------


class Mono:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_after_start_and_after_each_failure_silence_counts_from_the_next_success() -> None:
    mono = Mono()
    listening = Listening(max_gap_s=15, monotonic=mono)
    assert listening.begin(T0) == T0  # first housekeeping after the start
    listening.succeeded()
    mono.t += 5
    assert listening.begin(T0 + s(5)) == T0  # still listening since the start
    listening.succeeded()
    mono.t += 5
    listening.begin(T0 + s(10))
    listening.failed()  # the database went away
    mono.t += 5
    assert listening.begin(T0 + s(15)) == T0 + s(15)
    listening.failed()  # still away: nothing is kept
    mono.t += 120
    assert listening.begin(T0 + s(135)) == T0 + s(135)
    listening.succeeded()  # back
    mono.t += 5
    assert listening.begin(T0 + s(140)) == T0 + s(135)


def test_a_long_gap_between_housekeepings_gives_fresh_timeouts() -> None:
    """The loop (or the whole server: SIGSTOP, a VM paused) did not run: nobody heard."""
    mono = Mono()
    listening = Listening(max_gap_s=15, monotonic=mono)
    listening.begin(T0)
    listening.succeeded()
    mono.t += 14
    assert listening.begin(T0 + s(14)) == T0
    listening.succeeded()
    mono.t += 16
    assert listening.begin(T0 + s(30)) == T0 + s(30)


def test_a_step_of_the_wall_clock_gives_fresh_timeouts() -> None:
    mono = Mono()
    listening = Listening(max_gap_s=15, monotonic=mono)
    listening.begin(T0)
    listening.succeeded()
    mono.t += 5
    assert listening.begin(T0 + s(65)) == T0 + s(65)  # NTP stepped it a minute ahead
    listening.succeeded()
    mono.t += 5
    assert listening.begin(T0 + s(70)) == T0 + s(65)


def test_an_api_process_s_database_outage_counts_too(tmp_path: Path) -> None:
    """The loop did not notice (its housekeeping fell between), an API process did."""
    mono = Mono()
    marker = OutageMarker(tmp_path)
    listening = Listening(max_gap_s=15, marker=marker, monotonic=mono)
    listening.begin(T0)
    listening.succeeded()
    at = (T0 + s(3)).timestamp()
    marker.path.touch()
    os.utime(marker.path, (at, at))
    mono.t += 5
    assert listening.begin(T0 + s(5)) == T0 + s(3)
    listening.succeeded()
    mono.t += 5
    assert listening.begin(T0 + s(10)) == T0 + s(3)
    # A marker from the future (a clock set back) is not trusted.
    later = (T0 + s(3600)).timestamp()
    os.utime(marker.path, (later, later))
    listening.succeeded()
    mono.t += 5
    assert listening.begin(T0 + s(15)) == T0 + s(3)


def test_the_marker_is_touched_at_most_once_a_second(tmp_path: Path) -> None:
    now = [T0.timestamp()]
    marker = OutageMarker(tmp_path / "data", clock=lambda: now[0])
    assert marker.last() is None
    marker.note()
    assert marker.last() == T0
    now[0] += 0.5
    marker.note()
    assert marker.last() == T0
    now[0] += 0.6
    marker.note()
    assert marker.last() == T0 + s(1.1)


# --- which errors are the database being away ----------------------------------------------


def wrapped(cls: type[sa_exc.DBAPIError], orig: BaseException, *,
            invalidated: bool = False) -> sa_exc.DBAPIError:
    return cls("SELECT 1", {}, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize(("exc", "away"), [
    (wrapped(sa_exc.OperationalError, psycopg.OperationalError("connection refused")), True),
    (wrapped(sa_exc.OperationalError, psycopg.errors.AdminShutdown("shutting down")), True),
    (wrapped(sa_exc.OperationalError, psycopg.errors.TooManyConnections("too many")), True),
    (wrapped(sa_exc.InterfaceError, psycopg.InterfaceError("connection closed")), True),
    (wrapped(sa_exc.DBAPIError, Exception("server closed the connection"),
             invalidated=True), True),
    (sa_exc.TimeoutError("QueuePool limit of size 20 overflow 20 reached"), True),
    (psycopg.OperationalError("connection refused"), True),
    (wrapped(sa_exc.OperationalError, sqlite3.OperationalError("database is locked")), True),
    (wrapped(sa_exc.OperationalError, sqlite3.OperationalError("no such table: jobs")), False),
    (wrapped(sa_exc.ProgrammingError, psycopg.errors.UndefinedTable("no jobs")), False),
    (wrapped(sa_exc.IntegrityError, psycopg.errors.UniqueViolation("dup")), False),
    (sa_exc.InvalidRequestError("a bug"), False),
    (ValueError("a bug"), False),
])
def test_database_unavailable(exc: BaseException, away: bool) -> None:
    assert database_unavailable(exc) is away
