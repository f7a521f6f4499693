"""A short-lived cache of authenticated callers, so that a request does not query the
token, its user and the user's accounts every time (that was a third of a submit's server
time: five queries and their ORM objects).

An entry is the ``Principal`` that ``check_token`` built, with its user, memberships and
accounts loaded (detached, read-only: the session that loaded them is closed; sessions
do not expire them on commit). It is trusted for ``auth_cache_s`` seconds; a token's
expiry is checked on every use. An admin change in this process (revoking a token,
disabling a user, changing memberships) empties the cache when the change has
committed, so with one server process a change takes effect at once; with
``--workers N`` the other processes see it within ``auth_cache_s``. Only tokens that
worked are cached: a bad token is looked up every time.

On PostgreSQL each API process also listens on ``gpuq_auth`` (triggers of migration
0008 notify it when a token, user, membership, account or node name changes, in any
process) and empties its cache on each notification. While it listens an entry is
trusted for ``TRUSTED_S`` (a minute) instead of ``auth_cache_s``: at 200 nodes
heartbeating every second, looking each node token up again every 5 s was ~7 % of an
API process's time. When the listener is not listening (not started, connection lost)
the cache is back to ``auth_cache_s``; on (re)connecting it empties the cache.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime

from gpuq.scheduler.runtime.wakeups import WakeListener
from gpuq.scheduler.services.auth import AuthError, Principal, expired_message

#: The most callers kept; beyond it the cache starts again (tokens in use are few).
MAX_ENTRIES = 10_000
#: How long an entry is trusted while the ``gpuq_auth`` listener listens, in seconds.
TRUSTED_S = 60.0
CHANNEL = "gpuq_auth"


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    until: float  # monotonic time after which the entry is looked up again
    #: Kept longer than ``auth_cache_s`` because the listener listened.
    trusted: bool = False


class CallerCache:
    """Token hash -> the caller behind it, for ``ttl_s`` seconds (0: no caching)."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self.listener: WakeListener | None = None
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        #: Bumped by ``clear``: an entry loaded before a clear is not stored after it.
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def ttl_s(self) -> float:
        """How long a new entry is trusted: ``TRUSTED_S`` while the listener listens
        (and caching is on at all), else ``auth_cache_s``."""
        if self._ttl_s > 0 and self.listener is not None and self.listener.listening.is_set():
            return max(self._ttl_s, TRUSTED_S)
        return self._ttl_s

    @ttl_s.setter
    def ttl_s(self, value: float) -> None:
        self._ttl_s = value

    def listen(self, dsn: str) -> None:
        """Empty the cache on each ``NOTIFY gpuq_auth`` (PostgreSQL), and trust longer."""
        self.listener = WakeListener(dsn, self.clear, channel=CHANNEL,
                                     name="gpuq-auth-listener")
        self.listener.start()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()

    def get(self, token_hash: str, now: datetime) -> Principal | None:
        """The cached caller, or None (not cached, or stale: look it up). A cached token
        that has since expired raises ``AuthError`` as a lookup would."""
        entry = self._entries.get(token_hash)
        if entry is None or entry.until < time.monotonic():
            return None
        if entry.trusted and not self._listening():
            return None  # trusted for longer on the listener's word, which is gone
        expires = entry.principal.expires_at
        if expires is not None and expires <= now:
            raise AuthError(expired_message(expires))
        return entry.principal

    def put(self, token_hash: str, principal: Principal, generation: int) -> None:
        """Keep a caller that ``check_token`` accepted, unless the cache was cleared since
        the lookup began (``generation`` read before it): the caller might be stale."""
        if self.ttl_s <= 0:
            return
        with self._lock:
            if generation != self._generation:
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            ttl = self.ttl_s
            self._entries[token_hash] = _Entry(principal, time.monotonic() + ttl,
                                               ttl > self._ttl_s)

    def _listening(self) -> bool:
        return self.listener is not None and self.listener.listening.is_set()

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
