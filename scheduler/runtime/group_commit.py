"""Group commit for single-job submits and steady heartbeats: the requests that arrive
while one transaction is being written go into the next, together.

One thread per API process takes every submit waiting in its queue (up to
``MAX_BATCH``), checks and inserts them in one transaction (``services/submit_many.py``)
and answers each. There is no waiting for a batch to fill: a lone submit is written at
once, as before; under load the batches grow by themselves (while one commits, the next
queues), so 32 clients cost one transaction and a few statements instead of 32 of each.

A submit is answered only after its transaction has committed: an accepted job is never
lost. If a batch fails as a whole (a database error, an idempotency key that a parallel
retry took meanwhile), each of its submits is written again alone with ``jobs.submit``,
so one bad submit cannot fail the others.

Heartbeats (``HeartbeatBatcher``) go the same way: the steady ones of a batch (nearly all:
the node runs what the database says) are written together by
``services.nodes.steady_heartbeats``, a handful of statements for the batch instead of
five round trips each. A heartbeat that is not steady, or a batch that failed, is
answered ``None``: the route then takes it alone through the full reconciliation.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gpuq.scheduler.runtime.context import Context
from gpuq.scheduler.services import jobs as svc
from gpuq.scheduler.services import nodes as node_svc
from gpuq.scheduler.services.auth import Principal
from gpuq.scheduler.services.submit_many import Created, Runnable, submit_many
from gpuq.wire.jobs import JobCreate
from gpuq.wire.nodes import Heartbeat, HeartbeatReply

log = logging.getLogger(__name__)

#: The most requests written in one transaction.
MAX_BATCH = 256

T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    """A submit's answer: the job as JSON, and whether it was made now (201) or found by
    its idempotency key (200)."""

    body: bytes
    created: bool


@dataclass
class _Submit:
    principal: Principal
    spec: JobCreate
    future: Future[Answer] = field(default_factory=Future)


class GroupCommit(Generic[T]):
    """A queue and the thread that takes everything in it (up to ``max_batch``) and hands
    it to ``_write`` as one batch, which must answer each item's future."""

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
            try:
                self._write(batch)
            except Exception as e:  # noqa: BLE001 - never leave a caller waiting
                log.exception("%s: a batch failed", self.thread_name)
                for item in batch:
                    future = item.future  # type: ignore[attr-defined]
                    if not future.done():
                        future.set_exception(e)
            if stop:
                return

    def _write(self, batch: list[T]) -> None:
        raise NotImplementedError


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

    def _write(self, batch: list[_Submit]) -> None:
        ctx = self.ctx
        now = ctx.clock()
        try:
            with ctx.transaction() as session:
                outcomes = submit_many(session, [(s.principal, s.spec) for s in batch],
                                       now=now, settings=ctx.settings,
                                       runnable=self._runnable)
        except Exception:  # noqa: BLE001 - written again one by one below
            log.warning("a batch of %d submits failed as a whole; writing each alone",
                        len(batch), exc_info=True)
            outcomes = [None] * len(batch)
        made = False
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Created):
                item.future.set_result(Answer(outcome.body, True))
                made = True
            elif outcome is not None:
                item.future.set_exception(outcome)
            else:
                made |= self._alone(item)
        if made:
            ctx.wake()

    def _alone(self, item: _Submit) -> bool:
        """Write one submit in its own transaction (a retry, or after a failed batch)."""
        ctx = self.ctx
        try:
            with ctx.transaction() as session:
                job, created = svc.submit(session, item.principal, item.spec,
                                          now=ctx.clock(), settings=ctx.settings)
                body = svc.to_read(job, item.principal).model_dump_json().encode()
        except Exception as e:  # noqa: BLE001 - the caller gets it
            item.future.set_exception(e)
            return False
        item.future.set_result(Answer(body, created))
        return created


@dataclass
class _Beat:
    name: str
    body: Heartbeat
    future: Future[tuple[HeartbeatReply, bool] | None] = field(default_factory=Future)


class HeartbeatBatcher(GroupCommit[_Beat]):
    """Queue a heartbeat with ``beat``; the batcher thread writes the steady ones."""

    thread_name = "gpuq-heartbeats"

    def beat(self, name: str, body: Heartbeat) -> Future[tuple[HeartbeatReply, bool] | None]:
        """The reply and whether the loop should look (as ``services.nodes.heartbeat``
        says), once committed; ``None`` if the heartbeat must be taken alone."""
        item = _Beat(name, body)
        self._put(item)
        return item.future

    def _write(self, batch: list[_Beat]) -> None:
        ctx = self.ctx
        try:
            with ctx.transaction() as session:
                results = node_svc.steady_heartbeats(
                    session, [(b.name, b.body) for b in batch], now=ctx.clock(),
                    settings=ctx.settings)
        except Exception:  # noqa: BLE001 - each is taken alone by its route
            log.warning("a batch of %d heartbeats failed as a whole; taking each alone",
                        len(batch), exc_info=True)
            results = [None] * len(batch)
        for item, result in zip(batch, results, strict=True):
            item.future.set_result(result)
