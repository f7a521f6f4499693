"""/v1/nodes: the public node list, and the worker calls (node tokens, own node only)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError

from gpuq.broker import queue_name
from gpuq.config import Settings
from gpuq.scheduler.api.deps import Ctx, JobId, NodeCaller, UserOrAdmin, node_principal
from gpuq.scheduler.runtime.context import Context
from gpuq.scheduler.runtime.logstore import OffsetMismatch
from gpuq.scheduler.services import nodes as svc
from gpuq.scheduler.services import runs
from gpuq.scheduler.services.auth import Principal
from gpuq.wire.nodes import (
    FenceTerms,
    Heartbeat,
    HeartbeatReply,
    JobStateReport,
    LaunchSpec,
    NodeRead,
    NodeRegister,
    RegisterReply,
)
from gpuq.wire.states import TERMINAL, JobState

router = APIRouter(prefix="/v1/nodes", tags=["nodes"])

MAX_LOG_CHUNK = 4 * 1024 * 1024


def _own(principal: Principal, name: str) -> None:
    if principal.node is None or principal.node.name != name:
        raise HTTPException(403, f"this token belongs to node "
                                 f"{principal.node.name if principal.node else '?'}, not {name}")


@router.get("", response_model=list[NodeRead])
def list_nodes(ctx: Ctx, principal: UserOrAdmin) -> list[NodeRead]:
    with ctx.transaction() as session:
        return svc.list_nodes(session)


@router.post("/{name}/register", response_model=RegisterReply)
def register(name: str, body: NodeRegister, ctx: Ctx, principal: NodeCaller) -> RegisterReply:
    _own(principal, name)
    with ctx.transaction() as session:
        node = svc.get_or_create_node(session, name)
        svc.register(session, node, body, now=ctx.clock())
    ctx.wake()
    return RegisterReply(node=name, queue=queue_name(name),
                         heartbeat_interval_s=ctx.settings.heartbeat_interval_s,
                         fence=fence_terms(ctx.settings))


def fence_terms(settings: Settings) -> FenceTerms:
    """The fence a node keeps, from the scheduler's settings (``Settings`` checks that
    ``node_down_after_s`` >= fence + grace + margin)."""
    return FenceTerms(after_s=settings.effective_fence_after_s,
                      grace_s=settings.fence_grace_s,
                      hold_on_database_outage=settings.fence_hold_on_database_outage)


async def heartbeat(name: str, body: Heartbeat, request: Request,
                    principal: NodeCaller) -> Response:
    # FastAPI documents the route from this signature; _HeartbeatRoute (below) calls it.
    _own(principal, name)
    ctx: Context = request.app.state.ctx
    # Written with the heartbeats that arrive meanwhile, in one transaction
    # (scheduler/runtime/group_commit.py, services/heartbeats.py).
    reply, changed = await asyncio.wrap_future(request.app.state.heartbeats.beat(name, body))
    if changed:  # else the loop has nothing new to look at (its timer still runs)
        ctx.wake()
    terms = fence_terms(ctx.settings)
    if body.fence is not None and body.fence != terms:  # the node keeps an old fence
        return Response(reply.model_copy(update={"fence": terms}).model_dump_json(),
                        media_type="application/json")
    # Serialised here: FastAPI would validate the reply against its model once more.
    return Response(reply.model_dump_json(exclude={"fence"}), media_type="application/json")


_Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class _HeartbeatRoute(APIRoute):
    """The heartbeat, which every node sends every second, without FastAPI's generic
    request handling (solving the NodeCaller dependency chain, json.loads, then
    validation: some 17 % of an API process's CPU at 200 nodes): its JSON body is
    validated straight from the bytes, its caller found by ``node_principal``. A request
    that does not pass that way (not ``application/json``, a body that does not
    validate) is handed to FastAPI's own handler, which answers exactly as before (a 422
    names the field). FastAPI documents the route from ``heartbeat``'s signature."""

    def get_route_handler(self) -> _Handler:
        generic = super().get_route_handler()

        async def handle(request: Request) -> Response:
            if request.headers.get("content-type") != "application/json":
                return await generic(request)
            try:
                body = Heartbeat.model_validate_json(await request.body())
            except ValidationError:
                return await generic(request)
            principal = await node_principal(request)
            return await heartbeat(request.path_params["name"], body, request, principal)

        return handle


router.add_api_route("/{name}/heartbeat", heartbeat, methods=["POST"],
                     response_model=HeartbeatReply, route_class_override=_HeartbeatRoute)


@router.get("/{name}/jobs/{job_id}", response_model=LaunchSpec)
def launch_spec(name: str, job_id: JobId, ctx: Ctx, principal: NodeCaller) -> LaunchSpec:
    _own(principal, name)
    with ctx.transaction() as session:
        node = svc.get_or_create_node(session, name)
        return runs.launch_spec(runs.job_for_node(session, node, job_id), settings=ctx.settings)


@router.post("/{name}/jobs/{job_id}/events")
def job_event(name: str, job_id: JobId, body: JobStateReport, ctx: Ctx,
              principal: NodeCaller) -> dict[str, str]:
    _own(principal, name)
    with ctx.transaction() as session:
        node = svc.get_or_create_node(session, name)
        job = runs.job_for_node(session, node, job_id, lock=True)
        state = runs.report_state(session, job, body, now=ctx.clock(), settings=ctx.settings)
    if state in TERMINAL or state == JobState.PENDING.value:  # ended, or requeued
        ctx.wake()
    return {"state": state}


@router.post("/{name}/jobs/{job_id}/log", response_model=None)
async def ship_log(name: str, job_id: JobId, request: Request, ctx: Ctx, principal: NodeCaller,
                   offset: Annotated[int, Query(ge=0)],
                   attempt: Annotated[int, Query(ge=1)] = 1) -> dict[str, int] | JSONResponse:
    """Append output of run ``attempt`` of the job, which starts at ``offset``."""
    _own(principal, name)
    data = await request.body()
    if len(data) > MAX_LOG_CHUNK:
        raise HTTPException(413, f"send at most {MAX_LOG_CHUNK} bytes per call")
    from starlette.concurrency import run_in_threadpool

    def store() -> int | None:
        with ctx.transaction() as session:
            node = svc.get_or_create_node(session, name)
            current = runs.job_for_node(session, node, job_id).attempt
        if attempt != current:
            return None
        return ctx.logs.append(job_id, offset, data, attempt)

    try:
        size = await run_in_threadpool(store)
    except OffsetMismatch as e:
        return JSONResponse({"detail": str(e), "size": e.size}, status_code=409)
    if size is None:
        return JSONResponse({"detail": f"attempt {attempt} of job {job_id} is not its current "
                                       "run (stale attempt): drop its output", "stale": True},
                            status_code=409)
    return {"size": size}
