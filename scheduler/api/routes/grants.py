"""/v1/admin/grants: allocation awards (extra shares, or reserved GPUs) for a window."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query

from gpuq.scheduler.api.deps import Admin, AdminActor, Ctx, StorableText
from gpuq.scheduler.api.routes.admin import ex
from gpuq.scheduler.services import grants as svc
from gpuq.wire.common import MAX_ID
from gpuq.wire.grants import GrantCreate, GrantKind, GrantRead, GrantRevoke, GrantState, GrantUpdate

router = APIRouter(prefix="/v1/admin/grants", tags=["grants"])

GrantId = Annotated[int, Path(ge=1, le=MAX_ID, description="the grant's id", examples=[3])]

OVERCOMMIT_409 = {409: {"description": "The reservation does not fit beside the grants "
                        "it overlaps (or the grant has ended)", "content": {
    "application/json": {"example": {"detail": {
        "message": "the grant would reserve 4 GPUs of A100-80GB; together with grants 3, 5 "
                   "it would need 12 GPUs of A100-80GB on gpu01, gpu02 at 2027-01-03T00:00Z, "
                   "and those nodes have 8: conflicts with grants 3, 5. ...",
        "conflicts": [3, 5]}}}}}}


@router.post("", status_code=201, response_model=GrantRead, summary="Create a grant",
             responses=OVERCOMMIT_409)
def create_grant(
    body: Annotated[GrantCreate, Body(openapi_examples={
        "share": ex("200 extra shares for January, until 5000 billed GPU-hours are used", {
            "account": "qlab", "kind": "share", "start": "2027-01-01T00:00:00Z",
            "end": "2027-02-01T00:00:00Z", "shares": 200, "gpu_hours": 5000,
            "note": "NSF award 1234"}),
        "reservation": ex("4 A100s on gpu01 or gpu02 for a week", {
            "account": "qlab", "kind": "reservation", "start": "2027-01-03T00:00:00Z",
            "end": "2027-01-10T00:00:00Z", "gpus": 4, "gpu_model": "A100-80GB",
            "nodes": ["gpu01", "gpu02"], "note": "paper deadline"}),
    })],
    ctx: Ctx, actor: AdminActor,
) -> GrantRead:
    """Give ``account`` a grant for [``start``, ``end``): ``share`` adds ``shares`` raw
    shares (until ``gpu_hours`` billed GPU-hours are used, if given); ``reservation`` keeps
    ``gpus`` GPUs (of ``gpu_model``, on ``nodes``) for it: others borrow them while idle
    and are preempted when the account needs them. A reservation is refused (409, with the
    conflicting grant ids) if at any moment of its window the reservations then active
    could not all get their GPUs from the registered ones. Audited as grant.create."""
    with ctx.transaction() as session:
        now = ctx.clock()
        out = svc.grant_read(session, svc.create_grant(session, body, actor=actor, now=now),
                             now=now)
    ctx.wake()
    return out


@router.get("", response_model=list[GrantRead], summary="List grants")
def list_grants(
    ctx: Ctx, _: Admin,
    account: Annotated[str | None, Query(description="only this account's",
                                         examples=["qlab"]), StorableText] = None,
    state: Annotated[GrantState | None, Query(description="only grants in this state now",
                                              examples=["active"])] = None,
    kind: Annotated[GrantKind | None, Query(examples=["reservation"])] = None,
) -> list[GrantRead]:
    """Grants, oldest first, each with its state now and its usage so far."""
    with ctx.transaction() as session:
        now = ctx.clock()
        return [svc.grant_read(session, g, now=now) for g in
                svc.list_grants(session, now=now, account=account, state=state, kind=kind)]


@router.get("/{grant_id}", response_model=GrantRead, summary="Show a grant")
def get_grant(grant_id: GrantId, ctx: Ctx, _: Admin) -> GrantRead:
    """One grant with its state and usage: GPU-hours used in the window (billed, and
    what is left of a budget), reserved, borrowed by others, preemptions caused."""
    with ctx.transaction() as session:
        now = ctx.clock()
        return svc.grant_read(session, svc.get_grant(session, grant_id), now=now)


@router.patch("/{grant_id}", response_model=GrantRead, summary="Change a grant",
              responses=OVERCOMMIT_409)
def update_grant(
    grant_id: GrantId,
    body: Annotated[GrantUpdate, Body(openapi_examples={
        "extend": ex("extend it by a week", {"end": "2027-01-17T00:00:00Z"}),
        "budget": ex("a larger budget", {"gpu_hours": 8000, "note": "supplement approved"}),
    })],
    ctx: Ctx, actor: AdminActor,
) -> GrantRead:
    """Change ``end``, ``note`` or (share grants) ``gpu_hours`` of a grant that has not
    ended (409 otherwise). A reservation whose end moves later is checked for overcommit
    again. Audited as grant.update."""
    with ctx.transaction() as session:
        now = ctx.clock()
        grant = svc.get_grant(session, grant_id)
        out = svc.grant_read(session, svc.update_grant(session, grant, body, actor=actor,
                                                       now=now), now=now)
    ctx.wake()
    return out


@router.post("/{grant_id}/revoke", response_model=GrantRead, summary="Revoke a grant")
def revoke_grant(
    grant_id: GrantId,
    body: Annotated[GrantRevoke, Body(openapi_examples={
        "revoke": ex("end it now", {"reason": "the project was cancelled"}),
    })],
    ctx: Ctx, actor: AdminActor,
) -> GrantRead:
    """End a grant now: its state becomes revoked ("revoked by <admin>: <reason>"); its
    shares or reserved GPUs go back to everyone. Revoking twice changes nothing. Audited
    as grant.revoke."""
    with ctx.transaction() as session:
        now = ctx.clock()
        grant = svc.get_grant(session, grant_id)
        out = svc.grant_read(session, svc.revoke_grant(session, grant, body, actor=actor,
                                                       now=now), now=now)
    ctx.wake()
    return out
