"""The FastAPI application (OpenAPI at /docs)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gpuq import __version__
from gpuq.scheduler.api.callers import CallerCache
from gpuq.scheduler.api.listing_cache import ListingCache
from gpuq.scheduler.api.routes import (
    admin,
    audit,
    fairshare,
    grants,
    health,
    jobs,
    metrics,
    nodes,
    usage,
)
from gpuq.scheduler.errors import ServiceError
from gpuq.scheduler.runtime.context import Context
from gpuq.scheduler.runtime.group_commit import HeartbeatBatcher, SubmitBatcher

log = logging.getLogger(__name__)


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(
        title="gpuq",
        version=__version__,
        description="A fair-share GPU cluster scheduler for small research groups.",
    )
    app.state.ctx = ctx
    app.state.callers = CallerCache(ctx.settings.auth_cache_s)
    app.state.submits = SubmitBatcher(ctx)
    app.router.on_shutdown.append(app.state.submits.stop)
    app.state.heartbeats = HeartbeatBatcher(ctx)
    app.router.on_shutdown.append(app.state.heartbeats.stop)
    app.state.listings = ListingCache()
    url = ctx.settings.effective_database_url
    if url.startswith("postgresql"):
        from gpuq.scheduler.runtime.wakeups import conninfo

        # The listeners start with the server (in each API process, after the fork).
        for cache, wanted in ((app.state.listings, ctx.settings.listing_cache),
                              (app.state.callers, ctx.settings.auth_cache_s > 0)):
            if wanted:
                app.router.on_startup.append(lambda c=cache: c.listen(conninfo(url)))
                app.router.on_shutdown.append(cache.stop)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail()}, status_code=exc.status)

    for module in (health, jobs, nodes, fairshare, admin, grants, audit, usage, metrics):
        app.include_router(module.router)
    return app
