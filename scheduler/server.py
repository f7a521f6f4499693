"""``gpuq server``: migrate the database, bootstrap, run the API and the scheduling loop."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from scheduler.api.app import create_app
from scheduler.bootstrap import bootstrap
from scheduler.clock import Clock, system_clock
from scheduler.config import Settings
from scheduler.context import CeleryDispatcher, Context, Dispatcher
from scheduler.db.session import make_engine, make_sessionmaker, upgrade
from scheduler.logstore import LogStore
from scheduler.loop import SchedulerLoop

log = logging.getLogger(__name__)


def build_context(settings: Settings, *, clock: Clock = system_clock,
                  dispatcher: Dispatcher | None = None) -> Context:
    """Open the database (bringing its schema up to date) and make the shared context."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    ctx = Context(
        settings=settings,
        sessions=make_sessionmaker(engine),
        dispatcher=dispatcher or CeleryDispatcher(settings),
        logs=LogStore(settings.log_dir, settings.max_log_bytes),
        clock=clock,
    )
    with ctx.transaction() as session:
        bootstrap(session, now=clock(), admin_token_file=settings.effective_admin_token_file)
    return ctx


def admin_token_path(settings: Settings) -> Path:
    return settings.effective_admin_token_file


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles them: finish requests, then stop)."""
    ctx = build_context(settings)
    loop = SchedulerLoop(ctx)
    app = create_app(ctx)

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
