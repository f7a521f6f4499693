"""``gpuq server``: migrate the database, bootstrap, run the API and the scheduling loop.

Two ways to run, chosen by ``api_workers`` (``--workers``, ``GPUQ_API_WORKERS``):

* 1 (the default, and ``gpuq up``): one process, the loop a thread beside uvicorn's, and
  ``ctx.wake()`` sets the loop's event directly;
* 2 or more (PostgreSQL only): scheduler/prefork.py, the API in that many forked
  processes and the loop in one of its own, woken over LISTEN/NOTIFY.

This module imports the application lazily: the prefork mode must set
``PROMETHEUS_MULTIPROC_DIR`` before anything imports prometheus_client.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from gpuq.scheduler.clock import Clock, system_clock
from gpuq.scheduler.config import Settings

if TYPE_CHECKING:
    from gpuq.scheduler.context import Context, Dispatcher

log = logging.getLogger(__name__)


def open_context(settings: Settings, *, clock: Clock = system_clock,
                 dispatcher: Dispatcher | None = None) -> Context:
    """The shared context on a new engine, as it is (no migration, no bootstrap)."""
    from gpuq.scheduler.context import CeleryDispatcher, Context
    from gpuq.scheduler.db.session import make_engine, make_sessionmaker
    from gpuq.scheduler.logstore import LogStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    return Context(
        settings=settings,
        sessions=make_sessionmaker(engine),
        dispatcher=dispatcher or CeleryDispatcher(settings),
        logs=LogStore(settings.log_dir, settings.max_log_bytes),
        clock=clock,
    )


def build_context(settings: Settings, *, clock: Clock = system_clock,
                  dispatcher: Dispatcher | None = None) -> Context:
    """Open the database (bringing its schema up to date) and make the shared context."""
    from gpuq.scheduler.bootstrap import bootstrap
    from gpuq.scheduler.db.session import upgrade

    ctx = open_context(settings, clock=clock, dispatcher=dispatcher)
    upgrade(ctx.sessions.kw["bind"])
    with ctx.transaction() as session:
        bootstrap(session, now=clock(), admin_token_file=settings.effective_admin_token_file)
    return ctx


def admin_token_path(settings: Settings) -> Path:
    return settings.effective_admin_token_file


def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM (uvicorn handles them: finish requests, then stop).
    Returns the exit status."""
    if settings.api_workers > 1:
        from gpuq.scheduler.prefork import run as run_prefork

        return run_prefork(settings)

    import uvicorn

    from gpuq.scheduler.api.app import create_app
    from gpuq.scheduler.gcfreeze import freeze_startup_objects
    from gpuq.scheduler.loop import SchedulerLoop

    ctx = build_context(settings)
    loop = SchedulerLoop(ctx)
    app = create_app(ctx)
    freeze_startup_objects()

    @app.on_event("startup")
    def _start_loop() -> None:
        loop.start()
        loop.wake()

    @app.on_event("shutdown")
    def _stop_loop() -> None:
        loop.stop()

    log.info("gpuq server on http://%s:%s (database %s)", settings.listen_host,
             settings.listen_port, ctx.sessions.kw["bind"].url.render_as_string())
    uvicorn.run(app, host=settings.listen_host, port=settings.listen_port,
                log_level="info", access_log=False)
    return 0
