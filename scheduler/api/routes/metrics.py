"""/metrics: Prometheus text format. Needs an admin token or ``metrics_token``, unless
``metrics_public`` is set."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST

from gpuq.scheduler.api.deps import Ctx, get_principal
from gpuq.scheduler.runtime import metrics

router = APIRouter(tags=["metrics"])
_bearer = HTTPBearer(auto_error=False)


async def _allowed(request: Request, ctx: Ctx,
                   creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    settings = ctx.settings
    if settings.metrics_public:
        return
    token = creds.credentials if creds is not None else ""
    if settings.metrics_token and hmac.compare_digest(token.encode(),
                                                      settings.metrics_token.encode()):
        return
    principal = await get_principal(request, ctx, creds)
    if not principal.is_admin:
        raise HTTPException(403, "/metrics needs an admin token or the metrics_token "
                                 "(or metrics_public = true in the server's settings)")


@router.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(_allowed)],
            response_class=Response)
def read_metrics(ctx: Ctx) -> Response:
    """Queue by state and account, GPUs by state, per-account running GPUs and fair-share
    factors, cycle duration and dispatch latency histograms, power per node, idle GPUs."""
    return Response(metrics.exposition(ctx), media_type=CONTENT_TYPE_LATEST)
