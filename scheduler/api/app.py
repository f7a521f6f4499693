"""The FastAPI application (OpenAPI at /docs)."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
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

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer, but one that can always be written: a 422 quoting an
        # input of NaN (or Infinity), or text with a lone surrogate, failed to serialise
        # and became a 500.
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))},
                            status_code=422)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail()}, status_code=exc.status)

    for module in (health, jobs, nodes, fairshare, admin, grants, audit, usage, metrics):
        app.include_router(module.router)
    return app


def _json_safe(value: Any) -> Any:
    """``value`` with every float that JSON cannot carry (NaN, infinities) as its text, and
    every string that is not valid UTF-8 (a lone surrogate) escaped."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value
