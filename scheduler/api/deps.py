"""Request dependencies: the shared context and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from scheduler.auth import Principal, authenticate
from scheduler.context import Context

_bearer = HTTPBearer(auto_error=False, description="a gpuq token: gpuq_...")


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


Ctx = Annotated[Context, Depends(get_ctx)]


def get_principal(
    ctx: Ctx, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    with ctx.transaction() as session:
        principal = authenticate(session, creds.credentials, now=ctx.clock())
        if principal is not None and principal.user is not None:
            # Load what the routes read, while the session is open.
            _ = [m.account.name for m in principal.user.memberships]
            _ = principal.user.default_account
    if principal is None:
        raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return principal


def require(*roles: str):  # noqa: ANN201 - a dependency factory
    def dep(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if principal.role not in roles:
            raise HTTPException(403, f"this needs a {' or '.join(roles)} token; "
                                     f"yours is a {principal.role} token")
        return principal

    return dep


UserOrAdmin = Annotated[Principal, Depends(require("user", "admin"))]
Admin = Annotated[Principal, Depends(require("admin"))]
NodeCaller = Annotated[Principal, Depends(require("node"))]
AnyCaller = Annotated[Principal, Depends(get_principal)]
