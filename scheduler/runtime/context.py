"""What the API, the loop and the services share: settings, database, clock, dispatch."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from gpuq.config import Settings
from gpuq.files import private_dir
from gpuq.scheduler.clock import Clock, system_clock
from gpuq.scheduler.runtime.logstore import LogStore

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def launch(self, node: str, job_id: int) -> None: ...
    def kill(self, node: str, job_id: int) -> None: ...


class CeleryDispatcher:
    """Sends tasks; a failed send is logged, not raised: heartbeats repair lost messages."""

    def __init__(self, settings: Settings) -> None:
        from gpuq.broker import make_celery

        self.app = make_celery(settings)

    def launch(self, node: str, job_id: int) -> None:
        from gpuq.broker import send_launch

        try:
            send_launch(self.app, node, job_id)
        except Exception:  # noqa: BLE001 - the heartbeat re-sends
            log.exception("could not send launch of job %s to %s", job_id, node)

    def kill(self, node: str, job_id: int) -> None:
        from gpuq.broker import send_kill

        try:
            send_kill(self.app, node, job_id)
        except Exception:  # noqa: BLE001 - the heartbeat re-sends
            log.exception("could not send kill of job %s to %s", job_id, node)


@dataclass
class Context:
    settings: Settings
    sessions: sessionmaker[Session]
    dispatcher: Dispatcher
    logs: LogStore
    clock: Clock = system_clock
    #: Wakes the scheduling loop (set by the loop; a no-op until then).
    wake: Callable[[], None] = field(default=lambda: None)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on any exception."""
        with self.sessions() as session, session.begin():
            yield session


def open_context(settings: Settings, *, clock: Clock = system_clock,
                 dispatcher: Dispatcher | None = None) -> Context:
    """The shared context on a new engine, as it is (no migration, no bootstrap)."""
    from gpuq.scheduler.db.session import make_engine, make_sessionmaker

    private_dir(settings.data_dir)
    engine = make_engine(settings.effective_database_url,
                         idle_in_transaction_timeout_s=settings.idle_in_transaction_timeout_s)
    return Context(
        settings=settings,
        sessions=make_sessionmaker(engine),
        dispatcher=dispatcher or CeleryDispatcher(settings),
        logs=LogStore(settings.log_dir, settings.max_log_bytes),
        clock=clock,
    )
