"""/healthz and /v1/whoami."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from gpuq import __version__
from gpuq.scheduler.api.deps import AnyCaller, Ctx
from gpuq.wire.admin import WhoAmI

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(ctx: Ctx) -> JSONResponse:
    """Liveness and database reachability (no token needed): ``ok``, or ``unavailable``
    with a 503. The database's error (which can name its host, user or database) is in
    the server's log only."""
    try:
        with ctx.transaction() as session:
            session.execute(text("SELECT 1"))
    except Exception as e:  # noqa: BLE001 - report, don't crash
        log.warning("/healthz: the database does not answer: %s",
                    str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
        return JSONResponse({"status": "unavailable", "database": "unavailable",
                             "version": __version__}, status_code=503,
                            headers={"Retry-After": "5"})
    return JSONResponse({"status": "ok", "database": "ok", "version": __version__})


@router.get("/v1/whoami", response_model=WhoAmI)
def whoami(principal: AnyCaller) -> WhoAmI:
    user = principal.user
    return WhoAmI(
        role=principal.role,
        user=user.name if user else None,
        node=principal.node.name if principal.node else None,
        admin=principal.is_admin,
        accounts=sorted(m.account.name for m in user.memberships) if user else [],
        default_account=user.default_account.name if user and user.default_account else None,
    )
