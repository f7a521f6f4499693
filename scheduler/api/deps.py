"""Request dependencies: the shared context and the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator

from gpuq.scheduler.api.callers import CallerCache
from gpuq.scheduler.runtime.context import Context
from gpuq.scheduler.services.audit import Actor
from gpuq.scheduler.services.auth import AuthError, Principal, check_token, hash_token
from gpuq.wire.common import MAX_ID, check_text, check_time

_bearer = HTTPBearer(auto_error=False, description="a gpuq token: gpuq_...")


async def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


Ctx = Annotated[Context, Depends(get_ctx)]


async def get_principal(
    request: Request, ctx: Ctx,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller: from the caller cache (no thread, no query), else looked up in a
    worker thread and cached (``scheduler/api/callers.py``)."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    cache: CallerCache = request.app.state.callers
    key = hash_token(creds.credentials)
    try:
        principal = cache.get(key, ctx.clock())
        if principal is None:
            principal = await run_in_threadpool(_look_up, ctx, cache, key, creds.credentials)
    except AuthError as e:
        raise HTTPException(401, str(e), headers={"WWW-Authenticate": "Bearer"}) from None
    return principal


async def node_principal(request: Request) -> Principal:
    """What ``NodeCaller`` gives (same answers, same errors), called directly rather
    than solved as a FastAPI dependency: for the heartbeat, which every node sends every
    second (``scheduler/api/routes/nodes.py``)."""
    creds = await _bearer(request)
    return _check_role(await get_principal(request, request.app.state.ctx, creds), ("node",))


def _look_up(ctx: Context, cache: CallerCache, key: str, secret: str) -> Principal:
    generation = cache.generation
    with ctx.transaction() as session:
        principal = check_token(session, secret, now=ctx.clock())
        if principal.user is not None:
            _load_accounts(principal)
    cache.put(key, principal, generation)
    return principal


def _load_accounts(principal: Principal) -> None:
    """Load what the routes read of the caller's accounts (each up to root: the default
    QOS is inherited), while the session is open."""
    user = principal.user
    assert user is not None
    accounts = [m.account for m in user.memberships] + [user.default_account]
    for acct in accounts:
        while acct is not None:
            acct = acct.parent


def require(*roles: str):  # noqa: ANN201 - a dependency factory
    async def dep(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        return _check_role(principal, roles)

    return dep


def _check_role(principal: Principal, roles: tuple[str, ...]) -> Principal:
    if principal.role not in roles:
        raise HTTPException(403, f"this needs a {' or '.join(roles)} token; "
                                 f"yours is a {principal.role} token")
    return principal


UserOrAdmin = Annotated[Principal, Depends(require("user", "admin"))]
Admin = Annotated[Principal, Depends(require("admin"))]
NodeCaller = Annotated[Principal, Depends(require("node"))]
AnyCaller = Annotated[Principal, Depends(get_principal)]


def get_actor(principal: Admin, request: Request) -> Iterator[Actor]:
    """Who an admin change is audited as: the user behind the token, and the token.
    The caller cache is emptied before and after the change (committed by the route):
    it may revoke a token, disable a user or change what a user may do."""
    name = principal.user.name if principal.user is not None else principal.role
    callers: CallerCache = request.app.state.callers
    callers.clear()  # a lookup running during the change does not store what it read
    try:
        yield Actor(name, principal.token_id)
    finally:
        callers.clear()


#: An admin caller, as the audit log names it (use it instead of ``Admin`` on changes).
AdminActor = Annotated[Actor, Depends(get_actor)]


#: A job's id in a path: beyond the ids a job can have is a 422, not a database error.
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="the job's id", examples=[42])]

#: For text in a path or a query that is looked up or filtered by (a name, an actor): a
#: NUL byte (or a lone surrogate) is a 422 naming the parameter; it reached the database,
#: which refused it (a 500 on PostgreSQL).
StorableText = AfterValidator(check_text)
#: For a time in a query: one whose UTC time is beyond years 1 to 9999 is a 422 naming
#: the parameter; it failed to convert to UTC when bound (a 500).
StorableTime = AfterValidator(check_time)
