"""Wake-ups across processes over PostgreSQL LISTEN/NOTIFY (scheduler/runtime/wakeups.py): a NOTIFY
from another connection wakes the listener, a burst of wake() makes few NOTIFYs, and both
ends reconnect when their connections are killed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url

from gpuq.scheduler.runtime.wakeups import CHANNEL, WakeListener, WakeSender, conninfo
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.postgres


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.n += 1
        self.event.set()


@pytest.fixture
def dsn(pg_url: str) -> str:
    # A database of its own per test: other tests' NOTIFYs never reach this listener.
    return conninfo(pg_url)


@pytest.fixture
def listener(dsn: str) -> Iterator[tuple[WakeListener, Counter]]:
    woken = Counter()
    lst = WakeListener(dsn, woken, poll_s=0.1)
    lst.start()
    assert lst.listening.wait(10), "the listener did not connect"
    wait_for(lambda: woken.n >= 1, 5, "the wake-up after connecting")
    woken.event.clear()
    yield lst, woken
    lst.stop()


def test_conninfo_is_libpq_conninfo() -> None:
    assert conninfo_to_dict(conninfo("postgresql+psycopg://u:p%40ss@db:5433/gpuq")) == \
        {"host": "db", "port": "5433", "user": "u", "password": "p@ss", "dbname": "gpuq"}
    with pytest.raises(ValueError, match="PostgreSQL"):
        conninfo("sqlite:///x.db")


def test_conninfo_keeps_every_host_of_a_multi_host_url() -> None:
    """SQLAlchemy's multi-host form (a standby behind the primary) is libpq's host and port
    lists: rendered back as a URI it named one host ``db1:5432``, which does not resolve."""
    url = ("postgresql+psycopg://u@/gpuq?host=db1:5432&host=db2:5433"
           "&target_session_attrs=read-write")
    assert conninfo_to_dict(conninfo(url)) == {
        "host": "db1,db2", "port": "5432,5433", "user": "u", "dbname": "gpuq",
        "target_session_attrs": "read-write"}


def test_conninfo_of_a_multi_host_url_skips_a_host_that_is_down(pg_url: str) -> None:
    """The first host refuses (port 1), the second is the test's PostgreSQL."""
    u = make_url(pg_url)
    url = (f"postgresql+psycopg://{u.username}@/{u.database}?host=127.0.0.1:1"
           f"&host={u.host}:{u.port}&target_session_attrs=read-write")
    with psycopg.connect(conninfo(url), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (u.database,)


def test_a_notify_from_another_connection_wakes_the_listener(
        dsn: str, listener: tuple[WakeListener, Counter]) -> None:
    lst, woken = listener
    before = woken.n
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"NOTIFY {CHANNEL}")
    assert woken.event.wait(5), "no wake-up"
    assert woken.n == before + 1 and lst.received == 1


def test_a_burst_of_wakeups_coalesces_and_none_is_lost(
        dsn: str, listener: tuple[WakeListener, Counter]) -> None:
    lst, woken = listener
    sender = WakeSender(dsn)
    sender.start()
    try:
        for _ in range(2000):
            sender.wake()
        wait_for(lambda: lst.received >= 1, 5, "the burst's wake-up")
        time.sleep(0.3)  # any NOTIFY still on its way
        # A NOTIFY is one round trip: the 2000 calls take less time than a few of them.
        assert 1 <= sender.sent <= 20, sender.sent
        assert lst.received == sender.sent
        # After the burst, a lone wake-up is still delivered.
        sent = sender.sent
        sender.wake()
        wait_for(lambda: lst.received == sent + 1, 5, "the lone wake-up")
    finally:
        sender.stop()


def test_both_ends_reconnect_after_their_connections_are_killed(
        dsn: str, listener: tuple[WakeListener, Counter]) -> None:
    lst, woken = listener
    sender = WakeSender(dsn)
    sender.start()
    try:
        sender.wake()
        wait_for(lambda: lst.received == 1, 5, "the first wake-up")
        before = woken.n
        with psycopg.connect(dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name = 'gpuq-wakeups'").fetchone()
        assert killed == (2,)
        # Listening again: after each (re)connect the listener wakes the loop once (what
        # was notified while it was not listening is not lost), only once it LISTENs.
        wait_for(lambda: woken.n > before and lst.listening.is_set(), 10,
                 "the listener to reconnect")
        # The sender finds out its connection is gone when it sends; it reconnects and
        # sends again, so the wake-up arrives.
        received = lst.received
        sender.wake()
        wait_for(lambda: lst.received > received, 10, "a wake-up after reconnecting")
    finally:
        sender.stop()
