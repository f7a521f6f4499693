"""``gpuq server``: migrate the database, bootstrap, run the API and the scheduling loop.

Two ways to run, chosen by ``api_workers`` (``--workers``, ``GPUQ_API_WORKERS``):

* 1 (the default, and ``gpuq up``): one process, the loop a thread beside uvicorn's, and
  ``ctx.wake()`` sets the loop's event directly;
* 2 or more (PostgreSQL only): scheduler/entry/prefork.py, the API in that many forked
  processes and the loop in one of its own, woken over LISTEN/NOTIFY.

This module imports the application lazily: the prefork mode must set
``PROMETHEUS_MULTIPROC_DIR`` before anything imports prometheus_client.
"""

from __future__ import annotations

import logging
import os

from gpuq.config import Settings
from gpuq.files import PRIVATE_UMASK

log = logging.getLogger(__name__)


def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM (uvicorn handles them: finish requests, then stop).
    Returns the exit status. What the server creates is its own (umask 077: its data
    directory, database, job logs and metric files; it runs no job)."""
    os.umask(PRIVATE_UMASK)
    if settings.api_workers > 1:
        from gpuq.scheduler.entry.prefork import run as run_prefork

        return run_prefork(settings)

    import uvicorn

    from gpuq.scheduler.api.app import create_app
    from gpuq.scheduler.entry.bootstrap import build_context
    from gpuq.scheduler.runtime.gcfreeze import freeze_startup_objects
    from gpuq.scheduler.runtime.loop import SchedulerLoop

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
