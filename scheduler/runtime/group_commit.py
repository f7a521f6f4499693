"""Group commit for single-job submits and heartbeats: the requests that arrive while one
transaction is being written go into the next, together.

One thread per API process and kind takes every request waiting in its queue (up to
``MAX_BATCH``) and hands them to the service as one batch, in one transaction
(``services/submits.py``, ``services/heartbeats.py``), then answers each. There is no
waiting for a batch to fill: a lone request is written at once, as a batch of one; under
load the batches grow by themselves (while one commits, the next queues), so 32 clients
cost one transaction and a few statements instead of 32 of each.

A request is answered only after its transaction has committed: an accepted job is never
lost. If a batch fails as a whole (a database error, an idempotency key that a parallel
retry took meanwhile), each of its requests is written again alone, as a batch of one in
a transaction of its own, so one bad request cannot fail the others.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from gpuq.scheduler.runtime.context import Context
from gpuq.scheduler.services.auth import Principal
from gpuq.scheduler.services.heartbeats import heartbeats
from gpuq.scheduler.services.submits import Answer, Runnable, submit_many
from gpuq.wire.jobs import JobCreate
from gpuq.wire.nodes import Heartbeat, HeartbeatReply

log = logging.getLogger(__name__)

#: The most requests written in one transaction.
MAX_BATCH = 256


@dataclass
class _Submit:
    principal: Principal
    spec: JobCreate
    future: Future[Answer] = field(default_factory=Future)


@dataclass
class _Beat:
    name: str
    body: Heartbeat
    future: Future[tuple[HeartbeatReply, bool]] = field(default_factory=Future)


T = TypeVar("T", _Submit, _Beat)


class GroupCommit(Generic[T]):
    """A queue and the thread that takes everything in it (up to ``max_batch``) and hands
    it to ``_write`` as one batch, then answers each item's future."""

    thread_name = "gpuq-group-commit"

    def __init__(self, ctx: Context, *, max_batch: int = MAX_BATCH) -> None:
        self.ctx = ctx
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Batches written and items in them (for tests and the curious).
        self.batches = 0
        self.items = 0

    def _put(self, item: T) -> None:
        self._ensure_thread()
        self._queue.put(item)

    def stop(self, timeout: float = 10.0) -> None:
        """Answer what is queued, then end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.thread_name,
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self.batches += 1
            self.items += len(batch)
            self._answer(batch)
            if stop:
                return

    def _answer(self, batch: list[T]) -> None:
        """Write the batch in one transaction and answer each item; if that fails as a
        whole, write each item alone."""
        try:
            with self.ctx.transaction() as session:
                outcomes = self._write(session, batch)
        except Exception:  # noqa: BLE001 - written again one by one below
            log.warning("%s: a batch of %d failed as a whole; writing each alone",
                        self.thread_name, len(batch), exc_info=True)
            outcomes = [self._alone(item) for item in batch]
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        self._answered(outcomes)

    def _alone(self, item: T) -> Any:
        """One item as a batch of one, in its own transaction (an error is its answer)."""
        try:
            with self.ctx.transaction() as session:
                return self._write(session, [item])[0]
        except Exception as e:  # noqa: BLE001 - its caller gets it
            return e

    def _write(self, session: Session, batch: list[T]) -> list[Any]:
        """One outcome per item: its result, or the exception its caller gets."""
        raise NotImplementedError

    def _answered(self, outcomes: list[Any]) -> None:
        """After a batch was answered."""


class SubmitBatcher(GroupCommit[_Submit]):
    """Queue a submit with ``submit``; the batcher thread writes and answers it."""

    thread_name = "gpuq-submits"

    def __init__(self, ctx: Context, *, max_batch: int = MAX_BATCH) -> None:
        super().__init__(ctx, max_batch=max_batch)
        self._runnable = Runnable()

    @property
    def submits(self) -> int:
        return self.items

    def submit(self, principal: Principal, spec: JobCreate) -> Future[Answer]:
        """The submit's answer, once its transaction has committed (or its error: a
        ``ServiceError`` for a refused submit)."""
        item = _Submit(principal, spec)
        self._put(item)
        return item.future

    def _write(self, session: Session, batch: list[_Submit]) -> list[Any]:
        return submit_many(session, [(s.principal, s.spec) for s in batch],
                           now=self.ctx.clock(), settings=self.ctx.settings,
                           runnable=self._runnable)

    def _answered(self, outcomes: list[Any]) -> None:
        if any(isinstance(o, Answer) and o.created for o in outcomes):
            self.ctx.wake()


class HeartbeatBatcher(GroupCommit[_Beat]):
    """Queue a heartbeat with ``beat``; the batcher thread writes and answers it."""

    thread_name = "gpuq-heartbeats"

    def beat(self, name: str, body: Heartbeat) -> Future[tuple[HeartbeatReply, bool]]:
        """The reply and whether the loop should look (``services.heartbeats``), once
        committed (or its error: a ``ServiceError`` for a node that must register)."""
        item = _Beat(name, body)
        self._put(item)
        return item.future

    def _write(self, session: Session, batch: list[_Beat]) -> list[Any]:
        return heartbeats(session, [(b.name, b.body) for b in batch], now=self.ctx.clock(),
                          settings=self.ctx.settings)
