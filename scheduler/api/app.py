"""The FastAPI application (OpenAPI at /docs)."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import sqlalchemy.exc as sa_exc
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gpuq import __version__
from gpuq.scheduler.api.callers import CallerCache
from gpuq.scheduler.api.limits import BodyLimit
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
from gpuq.scheduler.runtime.outages import OutageMarker, database_unavailable

log = logging.getLogger(__name__)
#: A 503 because the database is away: when to retry, and what is away (a worker counts
#: this answer as contact with the scheduler: ``gpuq.wire.nodes.FenceTerms``).
UNAVAILABLE_HEADERS = {"Retry-After": "5", "X-Gpuq-Unavailable": "database"}
#: The "database unavailable" warning is logged at most this often, in seconds.
DB_LOG_EVERY_S = 10.0


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
        # and became a 500. Each error quotes at most ``QUOTED_INPUT_CHARS`` of its input:
        # a 1 MiB value over its limit is not sent back whole.
        errors = [{**e, "input": _quoted(e["input"])} if "input" in e else e
                  for e in exc.errors()]
        return JSONResponse({"detail": _json_safe(jsonable_encoder(errors))},
                            status_code=422)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail()}, status_code=exc.status)

    # The database away (refused, lost, no connection from the pool in time) is a 503 to
    # retry, not a 500; it says which (a node counts it as contact: FenceTerms), quotes
    # nothing of the error, and is noted for the loop (fresh timeouts: runtime/outages.py).
    app.state.outages = OutageMarker(ctx.settings.data_dir)
    logged = [float("-inf")]

    async def _database_away(request: Request, exc: Exception) -> JSONResponse:
        if not database_unavailable(exc):
            raise exc  # a bug: the 500 it was
        app.state.outages.note()
        if time.monotonic() - logged[0] >= DB_LOG_EVERY_S:
            logged[0] = time.monotonic()
            log.warning("the database is unavailable (503 until it is back): %s",
                        str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
        return JSONResponse({"detail": "the database is unavailable; retry later"},
                            status_code=503, headers=UNAVAILABLE_HEADERS)

    app.add_exception_handler(sa_exc.SQLAlchemyError, _database_away)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a dependency
        pass
    else:
        app.add_exception_handler(psycopg.Error, _database_away)

    for module in (health, jobs, nodes, fairshare, admin, grants, audit, usage, metrics):
        app.include_router(module.router)
    # A body over the limit is a 413 before it is read (the fields' own limits: 422s).
    app.add_middleware(BodyLimit, max_bytes=ctx.settings.max_request_bytes)
    return app


#: The most of a refused input that a 422 quotes back.
QUOTED_INPUT_CHARS = 200


def _quoted(value: Any) -> Any:
    """A refused input as a 422 quotes it: text cut at ``QUOTED_INPUT_CHARS``, a list or
    an object whose JSON is longer replaced by a note of its size."""
    if isinstance(value, str):
        if len(value) <= QUOTED_INPUT_CHARS:
            return value
        return f"{value[:QUOTED_INPUT_CHARS]}... ({len(value)} characters)"
    if isinstance(value, list | dict):
        try:
            size = len(json.dumps(jsonable_encoder(value), default=str))
        except (TypeError, ValueError):
            size = QUOTED_INPUT_CHARS + 1
        if size > QUOTED_INPUT_CHARS:
            what = "a list" if isinstance(value, list) else "an object"
            return f"({what} of {len(value)} items, {size} characters of JSON: not quoted)"
    return value


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
