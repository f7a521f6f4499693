"""The brief queue listing kept until the jobs change (scheduler/api/listing_cache.py,
migration 0007): the cache serves a stored listing only while its listener listens and
nothing changed since the listing's query began, builds one listing per query at a time
and keeps a bounded number; on PostgreSQL a statement trigger notifies ``gpuq_jobs`` on
the commit of any change a listing shows (and of nothing else), so through the API a
change is seen as soon as it is notified and an unchanged queue is served from memory.
On SQLite nothing is cached."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from gpuq.scheduler.api.listing_cache import CHANNEL, ListingCache
from gpuq.scheduler.db.session import make_engine, make_sessionmaker
from gpuq.scheduler.runtime.wakeups import conninfo
from tests.api.conftest import Api
from tests.scheduler.rows import add_job, add_node

# --- the cache alone, with a stand-in listener ----------------------------------------------


class FakeListener:
    """What the cache reads of its listener: whether it is listening."""

    def __init__(self, listening: bool = True) -> None:
        self.listening = threading.Event()
        if listening:
            self.listening.set()


def listening(**kw: Any) -> tuple[ListingCache, FakeListener]:
    cache = ListingCache(**kw)
    listener = FakeListener()
    cache.listener = listener  # type: ignore[assignment]
    return cache, listener


class Build:
    """A listing's build: counts its calls and returns b"1", b"2", ... (``during`` runs
    inside the build, after ``delay`` seconds)."""

    def __init__(self, delay: float = 0.0, during: Callable[[], None] | None = None) -> None:
        self.delay, self.during = delay, during
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> bytes:
        with self._lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay)
        if self.during is not None:
            self.during()
        return str(n).encode()


def test_without_a_listening_listener_every_get_builds() -> None:
    """No listener (SQLite, or not started yet) or one not listening (connecting, or its
    connection lost): nothing is stored or served."""
    cache, build = ListingCache(), Build()
    assert not cache.active
    assert [cache.get("q", build) for _ in range(3)] == [b"1", b"2", b"3"]
    listener = FakeListener(listening=False)
    cache.listener = listener  # type: ignore[assignment]
    assert not cache.active
    assert [cache.get("q", build) for _ in range(2)] == [b"4", b"5"]
    assert (cache.hits, cache.builds) == (0, 0)
    listener.listening.set()
    assert cache.active
    assert [cache.get("q", build) for _ in range(2)] == [b"6", b"6"]
    listener.listening.clear()  # the connection was lost: served fresh again
    assert cache.get("q", build) == b"7" and build.calls == 7


def test_a_listening_cache_serves_the_stored_listing_per_query() -> None:
    cache, _ = listening()
    build_a, build_b = Build(), Build()
    assert cache.get(("PENDING",), build_a) == b"1"
    assert cache.get(("PENDING",), build_a) == b"1"
    assert cache.get(("RUNNING",), build_b) == b"1"  # another query: its own listing
    assert cache.get(("PENDING",), build_a) == b"1"
    assert (build_a.calls, build_b.calls) == (1, 1)
    assert (cache.hits, cache.builds) == (2, 2)


def test_a_change_voids_every_stored_listing() -> None:
    cache, _ = listening()
    build_a, build_b = Build(), Build()
    cache.get("a", build_a), cache.get("b", build_b)
    cache.changed()
    assert (cache.get("a", build_a), cache.get("b", build_b)) == (b"2", b"2")
    assert (cache.get("a", build_a), cache.get("b", build_b)) == (b"2", b"2")
    assert (build_a.calls, build_b.calls) == (2, 2) and cache.hits == 2


def test_a_listing_older_than_max_age_is_built_again() -> None:
    """Even with no notification (a lost one), no listing is served past ``max_age_s``."""
    cache, _ = listening(max_age_s=0.2)
    build = Build()
    assert cache.get("q", build) == b"1"
    assert cache.get("q", build) == b"1"
    time.sleep(0.25)
    assert cache.get("q", build) == b"2"
    assert cache.get("q", build) == b"2" and build.calls == 2


def test_a_change_during_the_build_voids_what_it_built() -> None:
    """The listing is stored under the generation read before its query: a change
    notified while it is built (which the query may have missed) makes the next get
    build again."""
    cache, _ = listening()
    first = True

    def notified_meanwhile() -> None:
        nonlocal first
        if first:
            first = False
            cache.changed()

    build = Build(during=notified_meanwhile)
    assert cache.get("q", build) == b"1"  # the caller gets what was built
    assert cache.get("q", build) == b"2"  # but it is not served again
    assert cache.get("q", build) == b"2"
    assert build.calls == 2 and (cache.hits, cache.builds) == (1, 2)


def test_concurrent_gets_of_one_listing_build_it_once() -> None:
    """Twelve callers asking at once for a listing that takes a while to build: one
    query, and all get its result."""
    cache, _ = listening()
    build = Build(delay=0.3)
    start = threading.Barrier(12)

    def get(_: int) -> bytes:
        start.wait(5)
        return cache.get("q", build)

    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(get, range(12)))
    assert got == [b"1"] * 12
    assert build.calls == 1 and (cache.hits, cache.builds) == (11, 1)


# 0 and 16: the same stripe of the 16 hash-striped locks this used to have (a pair of
# string keys shared one in 16 runs: a flaky test, and a real wait).
@pytest.mark.parametrize("keys", [("a", "b"), (0, 16)])
def test_listings_of_different_queries_are_built_at_the_same_time(
        keys: tuple[Any, Any]) -> None:
    """One build per query at a time, not one for the whole cache: a slow listing does
    not hold up another query's, whatever the keys."""
    cache, _ = listening()
    b_built = threading.Event()

    def build_a() -> bytes:
        return b"a" if b_built.wait(5) else b"a, alone: b waited"

    def build_b() -> bytes:
        b_built.set()
        return b"b"

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(cache.get, keys[0], build_a)
        time.sleep(0.05)
        b = pool.submit(cache.get, keys[1], build_b)
        assert (a.result(10), b.result(10)) == (b"a", b"b")
    assert cache._building == {}  # a key's lock goes with its last user


def test_the_cache_keeps_at_most_max_entries_listings() -> None:
    """Past ``max_entries`` the oldest stored listing goes; the others stay served."""
    cache, _ = listening(max_entries=3)
    builds = {k: Build() for k in "abcd"}
    for k in "abcd":
        cache.get(k, builds[k])
    assert all(cache.get(k, builds[k]) == b"1" for k in "bcd")  # kept
    assert cache.get("a", builds["a"]) == b"2"  # dropped, built again
    assert [b.calls for b in builds.values()] == [2, 1, 1, 1]
    assert cache.get("b", builds["b"]) == b"2"  # and "a" took the oldest one's place


# --- the trigger (migration 0007), on PostgreSQL --------------------------------------------


Writes = tuple[psycopg.Connection, psycopg.Connection, sessionmaker[Session]]


@pytest.fixture
def pg_writes(pg_url: str) -> Iterator[Writes]:
    """A migrated PostgreSQL database with node n1, user alice and one pending job; a
    connection LISTENing on gpuq_jobs, one (autocommit) to send sentinels, and sessions
    to write with."""
    engine = make_engine(pg_url)
    sessions = make_sessionmaker(engine)
    with sessions() as s, s.begin():
        add_node(s, "n1")
        add_job(s)
    dsn = conninfo(pg_url)
    with psycopg.connect(dsn, autocommit=True) as listen, \
            psycopg.connect(dsn, autocommit=True) as sender:
        listen.execute(f"LISTEN {CHANNEL}")
        yield listen, sender, sessions
    engine.dispose()


def notified(listen: psycopg.Connection, sender: psycopg.Connection) -> int:
    """The notifications on gpuq_jobs committed since the last call. A sentinel is sent
    last: notifications arrive in commit order, so what came before it is all there is
    (no waiting to see that nothing comes)."""
    sender.execute("SELECT pg_notify(%s, 'sentinel')", (CHANNEL,))
    before: list[tuple[str, str]] = []
    for n in listen.notifies(timeout=5.0):
        if n.payload == "sentinel":
            assert all(c == (CHANNEL, "") for c in before), before
            return len(before)
        before.append((n.channel, n.payload))
    raise AssertionError("the sentinel did not come within 5 s")


def test_a_change_of_the_jobs_notifies_on_commit_not_before(pg_writes: Writes) -> None:
    """Inserted jobs notify when their transaction commits, once however many
    statements it made; a transaction rolled back notifies nothing."""
    listen, sender, sessions = pg_writes
    assert notified(listen, sender) == 0  # the fixture's rows: committed before LISTEN
    with sessions() as s:
        s.begin()
        add_job(s, priority=1)
        add_job(s, priority=2)
        assert notified(listen, sender) == 0  # not committed yet
        s.commit()
    assert notified(listen, sender) == 1  # two INSERTs, one notification
    with sessions() as s:
        s.begin()
        s.execute(text("UPDATE jobs SET state = 'CANCELLED'"))
        s.rollback()
        assert s.execute(text("SELECT count(*) FROM jobs WHERE state = 'PENDING'")
                         ).scalar() == 3
    assert notified(listen, sender) == 0


#: Statements and whether their commit notifies (in this order, on one database).
WHAT_NOTIFIES = [
    ("UPDATE jobs SET state = 'CANCELLED'", True),
    ("UPDATE jobs SET reason = 'held by an admin'", True),
    ("UPDATE jobs SET priority = 5", True),
    ("UPDATE jobs SET cancel_requested_at = now()", True),
    ("UPDATE users SET name = 'alicia'", True),
    ("UPDATE accounts SET name = 'lab-renamed'", True),
    ("UPDATE nodes SET name = 'n9'", True),
    # What the loop, the accounting and the heartbeats write all the time: no listing
    # shows it, so it voids none.
    ("UPDATE jobs SET priority_factors = '{}'", False),
    ("UPDATE jobs SET estimated_start = now()", False),
    ("UPDATE jobs SET priority_factors = '{}', estimated_start = now()", False),
    ("UPDATE jobs SET gpu_energy_j = 1.0, gpu_stats = '{}', idle_since = now()", False),
    ("UPDATE nodes SET last_heartbeat_at = now(), state = 'DOWN'", False),
    ("UPDATE users SET is_admin = true", False),
    ("DELETE FROM jobs WHERE id = (SELECT min(id) FROM jobs)", True),
    ("TRUNCATE jobs CASCADE", True),
]


def test_what_notifies(pg_writes: Writes) -> None:
    """A statement that changes what a listing shows notifies once on commit; one that
    changes only other columns does not."""
    listen, sender, sessions = pg_writes
    with sessions() as s, s.begin():
        add_job(s)  # two jobs: one for the DELETE, one for the TRUNCATE
    notified(listen, sender)
    got = []
    for statement, _ in WHAT_NOTIFIES:
        with sessions() as s, s.begin():
            changed = s.execute(text(statement)).rowcount
            assert changed or statement.startswith("TRUNCATE"), statement
        got.append((statement, notified(listen, sender)))
    assert got == [(statement, int(notifies)) for statement, notifies in WHAT_NOTIFIES]


# --- through the API ----------------------------------------------------------------------


def eventually(what: str, check: Callable[[], Any], timeout: float = 3.0) -> Any:
    """``check()``'s first true result, polled (notifications arrive asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def brief(api: Api, headers: dict[str, str] | None = None, **params: Any) -> list[Any]:
    return api.ok("GET", "/v1/jobs", headers or api.admin, params={"view": "brief", **params})


def states(api: Api) -> dict[int, str]:
    return {j["id"]: j["state"] for j in brief(api)}


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_on_postgresql_an_unchanged_queue_is_served_from_memory(api: Api) -> None:
    """Once the API's listener listens, a repeated listing is a hit (no query), for any
    caller; a submit, a cancel or a change written by another process shows in the
    next listings as soon as it is notified."""
    listings: ListingCache = api.client.app.state.listings
    eventually("the listener listens", lambda: listings.active)
    api.node("gpu01", gpus=1)
    alice = api.user("alice", "lab1")
    first = api.submit(alice, name="first")["id"]
    eventually("the first job listed", lambda: states(api) == {first: "PENDING"})

    def settled() -> bool:  # the notifications of the writes so far are all in
        builds = listings.builds
        brief(api)
        time.sleep(0.05)
        brief(api)
        return listings.builds == builds

    eventually("a listing served from the cache", settled)
    hits, builds = listings.hits, listings.builds
    shown = [brief(api) for _ in range(4)] + [brief(api, alice)]
    assert all(s == shown[0] for s in shown) and shown[0][0]["name"] == "first"
    assert (listings.hits - hits, listings.builds - builds) == (5, 0)

    second = api.submit(alice, name="second")["id"]
    eventually("the submit listed",
               lambda: states(api) == {first: "PENDING", second: "PENDING"})
    api.ok("POST", f"/v1/jobs/{first}/cancel", alice)
    eventually("the cancel listed",
               lambda: states(api) == {first: "CANCELLED", second: "PENDING"})
    with api.ctx.transaction() as s:  # as the loop's process would
        s.execute(text("UPDATE jobs SET reason = 'held' WHERE id = :id"), {"id": second})
    eventually("another process's change listed",
               lambda: brief(api, state="PENDING")[0]["reason"] == "held")
    assert [j["id"] for j in brief(api, state="CANCELLED")] == [first]
    assert listings.builds > builds

    eventually("settled again", settled)
    assert [j["id"] for j in brief(api, state="PENDING")] == [second]  # stored now
    hits, builds = listings.hits, listings.builds
    assert [j["id"] for j in brief(api, alice, state="PENDING")] == [second]
    assert (listings.hits - hits, listings.builds - builds) == (1, 0)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_on_sqlite_the_listing_is_never_cached(api: Api) -> None:
    """No listener, no trigger: each listing is a query, so a change shows at once."""
    listings: ListingCache = api.client.app.state.listings
    assert listings.listener is None and not listings.active
    alice = api.user("alice", "lab1")
    api.node("gpu01", gpus=1)
    job = api.submit(alice, name="first")["id"]
    assert states(api) == {job: "PENDING"}
    with api.ctx.transaction() as s:
        s.execute(text("UPDATE jobs SET reason = 'held' WHERE id = :id"), {"id": job})
        assert s.execute(text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
                              "AND name LIKE 'gpuq_jobs%'")).scalar() == 0
    assert brief(api)[0]["reason"] == "held"
    api.ok("POST", f"/v1/jobs/{job}/cancel", alice)
    assert states(api) == {job: "CANCELLED"}
    assert (listings.hits, listings.builds) == (0, 0)
