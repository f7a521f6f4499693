"""Wake-ups across processes: PostgreSQL ``LISTEN``/``NOTIFY`` on the channel ``gpuq_wake``.

With ``gpuq server --workers N`` (scheduler/entry/prefork.py) the API runs in N processes and
the scheduling loop in another, so an API process's ``ctx.wake()`` (after a submit, a
job's end report, a node change...) cannot just set the loop's ``threading.Event``.

* ``WakeSender`` (each API process): ``wake()`` only sets an event, so it never blocks a
  request and costs no statement of its own. One thread, on its own autocommit
  connection, sends ``NOTIFY gpuq_wake`` when the event is set and clears it first: a
  burst of wake-ups while a NOTIFY is on its way makes one more NOTIFY, not one each.
* ``WakeListener`` (the loop's process): one thread, on its own autocommit connection,
  ``LISTEN gpuq_wake`` and calls ``on_wake`` (the loop's ``wake``) for each notification.

Both reconnect on failure, logging it and retrying with a backoff. A lost wake-up only
delays scheduling until the loop's timer (``schedule_interval_s``); the listener also
wakes the loop once after each (re)connect, for the notifications it may have missed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "gpuq_wake"
#: Reconnect backoff: first wait, and the most it grows to, in seconds.
BACKOFF_S = (0.5, 10.0)


def conninfo(database_url: str) -> str:
    """The libpq connection string of a SQLAlchemy PostgreSQL URL (``postgresql+psycopg://
    ...``), made by SQLAlchemy's own psycopg dialect, so that it reaches the server the
    engine reaches: a multi-host URL (``?host=db1:5432&host=db2:5432&target_session_attrs=
    read-write``) becomes libpq's ``host=db1,db2 port=5432,5432 ...`` (rendered as a URI
    it named a host ``db1:5432``, which does not resolve)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"LISTEN/NOTIFY needs PostgreSQL, not {url.get_backend_name()}")
    url = url.set(drivername="postgresql+psycopg")
    _, params = url.get_dialect()().create_connect_args(url)
    return make_conninfo("", **{k: v for k, v in params.items()
                                if isinstance(v, str | int)})


def _connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10,
                           application_name="gpuq-wakeups")


class _Thread:
    """A daemon thread with a stop event (``start``/``stop``)."""

    name = "gpuq-wakeups"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError


class WakeSender(_Thread):
    """Publishes this process's wake-ups to the loop's process (see the module docstring)."""

    name = "gpuq-wake-sender"

    def __init__(self, dsn: str, channel: str = CHANNEL) -> None:
        super().__init__()
        self.dsn, self.channel = dsn, channel
        self._pending = threading.Event()
        #: NOTIFYs sent so far (tests and logs).
        self.sent = 0

    def wake(self) -> None:
        self._pending.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._pending.set()  # out of the wait at once
        super().stop(timeout)

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        backoff = BACKOFF_S[0]
        statement = f"NOTIFY {self.channel}"
        try:
            while True:
                self._pending.wait()
                if self._stop.is_set():
                    return
                try:
                    if conn is None:
                        conn = _connect(self.dsn)
                    self._pending.clear()  # wake-ups from now on make another NOTIFY
                    conn.execute(statement)
                    self.sent += 1
                    backoff = BACKOFF_S[0]
                except psycopg.Error as e:
                    self._pending.set()  # not sent: send it once reconnected
                    log.warning("wake-up sender: %s; reconnecting in %.1f s",
                                str(e).strip() or type(e).__name__, backoff)
                    if conn is not None:
                        conn.close()
                        conn = None
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, BACKOFF_S[1])
        finally:
            if conn is not None:
                conn.close()


class WakeListener(_Thread):
    """Calls ``on_wake`` for each ``NOTIFY`` on the channel (see the module docstring)."""

    name = "gpuq-wake-listener"

    def __init__(self, dsn: str, on_wake: Callable[[], None], channel: str = CHANNEL,
                 poll_s: float = 1.0, check_s: float = 30.0, name: str | None = None) -> None:
        super().__init__()
        if name is not None:
            self.name = name  # the thread's name
        self.dsn, self.on_wake, self.channel = dsn, on_wake, channel
        #: How often the thread looks at its stop event, and how often it checks that a
        #: quiet connection is still alive, in seconds.
        self.poll_s, self.check_s = poll_s, check_s
        #: Set while the connection is listening (tests wait for it).
        self.listening = threading.Event()
        #: Notifications received so far.
        self.received = 0

    def _run(self) -> None:
        backoff = BACKOFF_S[0]
        while not self._stop.is_set():
            try:
                with _connect(self.dsn) as conn:
                    conn.execute(f"LISTEN {self.channel}")
                    self.listening.set()
                    backoff = BACKOFF_S[0]
                    self.on_wake()  # what was notified while we were not listening
                    checked = time.monotonic()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=self.poll_s):
                            self.received += 1
                            self.on_wake()
                        if time.monotonic() - checked > self.check_s:
                            conn.execute("SELECT 1")  # a dead connection raises here
                            checked = time.monotonic()
            except psycopg.Error as e:
                self.listening.clear()
                log.warning("wake-up listener: %s; reconnecting in %.1f s",
                            str(e).strip() or type(e).__name__, backoff)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_S[1])
        self.listening.clear()
