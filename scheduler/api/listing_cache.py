"""The brief queue listing, kept per API process until the jobs change.

Twenty people running ``watch gpuq q`` ask for the same listing (``GET
/v1/jobs?view=brief``: nothing in it is private) many times between two changes of the
queue. Each API process keeps the listings it built, by their query, and builds one again
only after PostgreSQL has said that something a listing shows changed: a statement
trigger on ``jobs`` (migration 0007) sends ``NOTIFY gpuq_jobs`` on commit, and a listener
thread (``scheduler.wakeups.WakeListener`` on that channel) bumps ``generation``.

Why this is never staler than a notification's delivery: a listing is stored under the
generation read *before* its query ran. A change committed before the query's snapshot is
in the listing; one committed after it notifies after it, which bumps the generation and
so voids the stored listing. While the listener is not listening (not started, the
connection lost), nothing is served from the cache; on (re)connecting it bumps the
generation, so nothing from before is served either. On SQLite (one process, ``gpuq
up``) there is no listener and no cache.

Concurrent requests for a listing that must be built wait for the one building it
(one query, not twenty at once), and an entry is rebuilt after ``max_age_s`` anyway.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from gpuq.scheduler.runtime.wakeups import WakeListener

CHANNEL = "gpuq_jobs"


class ListingCache:
    def __init__(self, max_entries: int = 64, max_age_s: float = 30.0) -> None:
        self.max_entries, self.max_age_s = max_entries, max_age_s
        self.generation = 0
        self.listener: WakeListener | None = None
        self._entries: OrderedDict[Hashable, tuple[int, float, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        #: Builds of one key are serialised by its own lock (and its number of users),
        #: there only while someone builds or waits: a slow listing never holds up
        #: another query's (locks striped by hash shared one in 16 pairs of keys).
        self._building: dict[Hashable, tuple[threading.Lock, list[int]]] = {}
        #: Listings served from the cache and built (tests, the curious).
        self.hits = 0
        self.builds = 0

    def listen(self, dsn: str) -> None:
        """Start the listener thread (PostgreSQL); the cache serves once it listens."""
        self.listener = WakeListener(dsn, self.changed, channel=CHANNEL,
                                     name="gpuq-listing-listener")
        self.listener.start()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()

    @property
    def active(self) -> bool:
        return self.listener is not None and self.listener.listening.is_set()

    def changed(self) -> None:
        """Something a listing shows changed (a notification, or a reconnect)."""
        with self._lock:
            self.generation += 1

    def get(self, key: Hashable, build: Callable[[], bytes]) -> bytes:
        """The listing for ``key``: the stored one if still current, else ``build()``."""
        if not self.active:
            return build()
        body = self._current(key)
        if body is not None:
            return body
        with self._lock:
            building, users = self._building.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with building:  # one build per key at a time; the others take its result
                body = self._current(key)
                if body is not None:
                    return body
                generation = self.generation  # before the query: see the module docstring
                body = build()
                with self._lock:
                    self.builds += 1
                    self._entries[key] = (generation, time.monotonic(), body)
                    self._entries.move_to_end(key)
                    while len(self._entries) > self.max_entries:
                        self._entries.popitem(last=False)
                return body
        finally:
            with self._lock:
                users[0] -= 1
                if not users[0]:
                    del self._building[key]

    def _current(self, key: Hashable) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            generation, built, body = entry
            if generation != self.generation or time.monotonic() - built > self.max_age_s:
                return None
            self.hits += 1
            self._entries.move_to_end(key)  # least recently used goes first
            return body
