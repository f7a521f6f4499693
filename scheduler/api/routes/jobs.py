"""/v1/jobs: submit, list, show, cancel, read the log."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, TypeAdapter
from pydantic_core import to_json

from gpuq.scheduler.api.deps import Ctx, JobId, UserOrAdmin
from gpuq.scheduler.services import arrays
from gpuq.scheduler.services import jobs as svc
from gpuq.wire.arrays import ArrayCancelRead, JobArrayCreate, JobArrayRead, Ranges
from gpuq.wire.common import check_text
from gpuq.wire.jobs import JobBrief, JobCreate, JobRead, WhyRead
from gpuq.wire.states import ACTIVE, JobState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_LOG_READ = 4 * 1024 * 1024

_JOB_LIST = TypeAdapter(list[JobRead])
#: A name to filter the queue by (text the database cannot hold is a 422 naming it).
Filter = Annotated[str | None, AfterValidator(check_text)]


@router.post("", status_code=201, response_model=JobRead,
             responses={200: {"model": JobRead, "description": "idempotent replay"}})
async def submit_job(body: JobCreate, request: Request, principal: UserOrAdmin) -> Response:
    """Submit a job. With an ``idempotency_key`` seen before, returns that job (200)."""
    # Written with the submits that arrive meanwhile, in one transaction; answered once it
    # has committed (scheduler/runtime/group_commit.py). The answer comes serialised.
    answer = await asyncio.wrap_future(request.app.state.submits.submit(principal, body))
    return Response(answer.body, status_code=201 if answer.created else 200,
                    media_type="application/json")


@router.post("/array", status_code=201, response_model=JobArrayRead,
             responses={200: {"model": JobArrayRead, "description": "idempotent replay"}})
def submit_array(body: JobArrayCreate, ctx: Ctx, principal: UserOrAdmin, response: Response
                 ) -> Response | JobArrayRead:
    """Submit a job array (Slurm's ``--array``): the job once per index, all or none.
    Each element has its index in ``GPUQ_ARRAY_TASK_ID`` (and ``SLURM_ARRAY_TASK_ID``).
    With an ``idempotency_key`` seen before, returns that array (200). One record for the
    whole array, whatever its size; ``Server-Timing`` says how long the server took (what
    ``bench/arrays.py`` reports)."""
    started = time.perf_counter()
    with ctx.transaction() as session:  # a retry, or a refusal: no ids reserved for it
        checked = arrays.check_array(session, principal, body, settings=ctx.settings)
    if isinstance(checked, JobArrayRead):
        return JSONResponse(checked.model_dump(mode="json"), status_code=200)
    first_id = arrays.reserve(ctx.sessions, body)
    with ctx.transaction() as session:
        out, created = arrays.create_array(session, principal, body, checked, now=ctx.clock(),
                                           first_id=first_id)
    if not created:
        return JSONResponse(out.model_dump(mode="json"), status_code=200)
    ctx.wake()
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1e3:.1f}"
    return out


@router.get("", response_model=list[JobRead] | list[JobBrief])
def list_jobs(
    ctx: Ctx,
    request: Request,
    principal: UserOrAdmin,
    state: Annotated[list[JobState] | None, Query()] = None,
    user: Filter = None,
    account: Filter = None,
    node: Filter = None,
    active: bool = False,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    view: Annotated[Literal["full", "brief"], Query(
        description="full: JobRead objects; brief: JobBrief objects, what a queue listing "
                    "shows (``gpuq q``), a fraction of the bytes and of the server's time",
    )] = "full",
) -> Response:
    """The queue, newest first: every user's jobs (the spec only for your own). ``active``
    = PENDING, DISPATCHED and RUNNING. ``view=brief``: ``JobBrief`` objects instead."""
    states = [s.value for s in state or []]
    if active:
        states += [JobState.PENDING.value, *(s.value for s in ACTIVE)]
    if view == "brief":
        def build() -> bytes:
            with ctx.transaction() as session:
                briefs = svc.list_brief(session, states=states or None, user=user,
                                        account=account, node=node, limit=limit)
            # ``JobBrief`` dicts of the right types from the database: encoded by
            # pydantic-core in one call with no validation pass (1,000 jobs: under 2 ms;
            # validating them into ``JobBrief`` first costs 3 ms more).
            return to_json(briefs)

        # The same for every caller: kept until the jobs change (api/listing_cache.py).
        key = (tuple(sorted(set(states))), user, account, node, limit)
        return Response(request.app.state.listings.get(key, build),
                        media_type="application/json")
    with ctx.transaction() as session:
        rows = svc.list_jobs(session, states=states or None, user=user, account=account,
                             node=node, limit=limit, principal=principal)
    # Up to 10,000 rows: validated and encoded in one call each (pydantic-core), not
    # through a model per row and FastAPI's response validation.
    return Response(_JOB_LIST.dump_json(_JOB_LIST.validate_python(rows)),
                    media_type="application/json")


@router.get("/{job_id}", response_model=JobRead)
def show_job(job_id: JobId, ctx: Ctx, principal: UserOrAdmin) -> JobRead:
    with ctx.transaction() as session:
        element = arrays.element_of(session, job_id)
        if element is not None:  # an array's element without a row of its own yet
            return svc.element_read(session, *element, principal)
        job = svc.get_job(session, job_id)
        return svc.to_read(job, principal, events=svc.job_events(session, job_id))


@router.get("/{job_id}/why", response_model=WhyRead)
def why_pending(job_id: JobId, ctx: Ctx, principal: UserOrAdmin) -> WhyRead:
    """Why the job waits: position, reason, priority factors beside the job ahead, and
    the estimated start, as the last scheduling cycle recorded them."""
    with ctx.transaction() as session:
        element = arrays.element_of(session, job_id)
        if element is not None:
            return svc.why(session, svc.element_job(element[0], element[1], Ranges.of(
                element[0].ranges).index_at(element[1])), principal)
        return svc.why(session, svc.get_job(session, job_id), principal)


@router.post("/{job_id}/cancel", response_model=JobRead)
def cancel_job(job_id: JobId, ctx: Ctx, principal: UserOrAdmin) -> JobRead:
    """Cancel: a pending job ends at once; a running one is killed by its node, which
    confirms (the job stays RUNNING with ``cancel_requested`` until then). An array's
    element that waits in its array gets a row of its own, cancelled."""
    with ctx.transaction() as session:
        element = arrays.element_of(session, job_id)
        if element is not None:
            svc.check_owner_of(principal, element[0].user_id, job_id)
            if arrays.split_one(session, job_id) is None:  # cancelled with its array
                return svc.element_read(session, *element, principal, events=False)
        job = svc.get_job(session, job_id, lock=True)
        must_kill = svc.cancel(session, principal, job, now=ctx.clock())
        node = job.node.name if job.node else None
        out = svc.to_read(job, principal)
    if must_kill and node:
        ctx.dispatcher.kill(node, job_id)
    ctx.wake()
    return out


@router.post("/array/{array_id}/cancel", response_model=ArrayCancelRead)
def cancel_array(array_id: JobId, ctx: Ctx, principal: UserOrAdmin) -> ArrayCancelRead:
    """Cancel a whole job array (Slurm's ``scancel ARRAY_ID``): its elements that wait
    without rows at once, its pending elements at once, its running ones by their nodes
    (``cancel_requested`` until they confirm)."""
    with ctx.transaction() as session:
        waiting, active = arrays.cancel_array(session, principal, array_id, now=ctx.clock())
        kills = [(job.node.name, job.id) for job in active if job.node is not None]
    for node, job_id in kills:
        ctx.dispatcher.kill(node, job_id)
    ctx.wake()
    return ArrayCancelRead(array_job_id=array_id, cancelled=waiting,
                           cancel_requested=[job_id for _, job_id in kills])


@router.get("/{job_id}/log", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
def read_log(
    job_id: JobId,
    ctx: Ctx,
    principal: UserOrAdmin,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_READ)] = 1024 * 1024,
    attempt: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """Raw output of the current run (or of ``attempt``) from ``offset``, at most ``limit``
    bytes. Follow by polling with ``X-Gpuq-Next-Offset`` until ``X-Gpuq-Job-State`` is
    final and a read returns no bytes."""
    with ctx.transaction() as session:
        element = arrays.element_of(session, job_id)
        if element is not None:  # it has not run: no log yet
            svc.check_owner_of(principal, element[0].user_id, job_id)
            state, run = element[0].state, attempt or 1
        else:
            job = svc.get_job(session, job_id)
            svc.check_owner(principal, job)
            state = job.state
            run = attempt or max(job.attempt, 1)
    data = ctx.logs.read(job_id, offset, limit, run)
    return Response(
        content=data,
        media_type="text/plain; charset=utf-8",
        headers={
            "X-Gpuq-Attempt": str(run),
            "X-Gpuq-Log-Size": str(ctx.logs.size(job_id, run)),
            "X-Gpuq-Next-Offset": str(offset + len(data)),
            "X-Gpuq-Job-State": state,
        },
    )
