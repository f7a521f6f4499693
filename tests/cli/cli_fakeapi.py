"""A small fake of the gpuq API, served for real (uvicorn in a thread on 127.0.0.1), so
the CLI's HTTP paths run through its client and a socket. It uses the real wire schemas, so
a body the real server would refuse is refused here too (422 with FastAPI's detail list).

The scheduler itself is not involved; end-to-end tests against it live in tests/e2e.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from gpuq.scheduler.api.routes.admin import parse_usage
from gpuq.wire.admin import FairShareRow, NodeDrain, UsageImportResult, UserCreate, UserRead
from gpuq.wire.arrays import JobArrayCreate
from gpuq.wire.jobs import JobAhead, JobBrief, JobCreate, JobRead, PriorityFactors, WhyRead
from gpuq.wire.nodes import GpuRead, NodeRead

USER_TOKEN = "gpuq_user_secret"
ADMIN_TOKEN = "gpuq_admin_secret"
T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def make_job(id: int = 1, **kw: Any) -> dict[str, Any]:
    """A ``JobRead`` as the server sends it (validated by the real schema)."""
    base: dict[str, Any] = dict(
        id=id, name="train", user="alice", account="lab1", state="PENDING", reason="Priority",
        gpus=1, gpu_model=None, cpus=1, memory_mib=0, time_limit_s=3600, priority=100,
        node=None, gpu_indices=[], exit_code=None, cancel_requested=False, submitted_at=T0,
        dispatched_at=None, started_at=None, ended_at=None,
    )
    base.update(kw)
    return JobRead(**base).model_dump(mode="json")


def brief(job: dict[str, Any]) -> dict[str, Any]:
    """The ``JobBrief`` of a ``JobRead`` dict, as ``GET /v1/jobs?view=brief`` sends it."""
    fields = {k: job[k] for k in JobBrief.model_fields if k in job}
    fields["idle"] = bool((job.get("accounting") or {}).get("idle"))
    return JobBrief(**fields).model_dump(mode="json")


def make_gpu(index: int = 0, **kw: Any) -> dict[str, Any]:
    """A ``GpuRead`` as the server sends it (validated by the real schema)."""
    base: dict[str, Any] = dict(index=index, uuid=f"GPU-{index}", model="A100-80GB",
                                memory_mib=81920, healthy=True, job_id=None, sample={})
    base.update(kw)
    return GpuRead(**base).model_dump(mode="json")


def make_node(name: str = "gpu01", gpus: int | list[dict[str, Any]] = 1,
              **kw: Any) -> dict[str, Any]:
    """A ``NodeRead`` as the server sends it; ``gpus``: a count of idle GPUs, or the GPUs."""
    base: dict[str, Any] = dict(
        name=name, state="UP", state_reason="", cpus=64, memory_mib=512000,
        gpu_backend="simulated", last_heartbeat_at=T0,
        gpus=[make_gpu(i) for i in range(gpus)] if isinstance(gpus, int) else gpus)
    base.update(kw)
    return NodeRead(**base).model_dump(mode="json")


def make_user(name: str = "bob", account: str = "lab1", **kw: Any) -> dict[str, Any]:
    """A ``UserRead`` as the server sends it."""
    base: dict[str, Any] = dict(name=name, admin=False, unix_user=name, default_account=account,
                                accounts=[{"account": account, "shares": 1}])
    base.update(kw)
    return UserRead(**base).model_dump(mode="json")


def make_factors(total: float = 5123.4, **kw: Any) -> dict[str, Any]:
    """A ``PriorityFactors`` as the server sends it."""
    base: dict[str, Any] = dict(total=total, fairshare=0.5, age=0.1234, jobsize=0.05, qos=0.0,
                                nice=0)
    base.update(kw)
    return PriorityFactors(**base).model_dump(mode="json")


def make_share_row(name: str, account: str | None = None, user: str | None = None,
                   parent: str | None = "root", **kw: Any) -> dict[str, Any]:
    """A ``FairShareRow``: an account (``user`` None) or ``user`` in ``account``."""
    base: dict[str, Any] = dict(
        name=name, account=account or name, user=user, parent=parent, raw_shares=1,
        norm_shares=0.5, raw_usage=0.0, norm_usage=0.0, effective_usage=0.0, level_fs="inf",
        fairshare=0.5 if user else None)
    base.update(kw)
    return FairShareRow(**base).model_dump(mode="json")


def share_tree() -> list[dict[str, Any]]:
    """root -> lab1 (alice, bob), lab2 (parent shares) -> lab2a (alice), in tree order."""
    return [
        make_share_row("root", parent=None, raw_shares=1, norm_shares=None, raw_usage=72000.0,
                       norm_usage=1.0, effective_usage=1.0, level_fs=None),
        make_share_row("lab1", raw_shares=3, norm_shares=0.75, raw_usage=54000.0,
                       norm_usage=0.75, effective_usage=0.75, level_fs=1.0),
        make_share_row("alice", "lab1", "alice", parent="lab1", raw_shares=1, norm_shares=0.5,
                       raw_usage=54000.0, norm_usage=0.75, effective_usage=1.0, level_fs=0.5,
                       fairshare=0.333333),
        make_share_row("bob", "lab1", "bob", parent="lab1", raw_shares=1, norm_shares=0.5,
                       raw_usage=0.0, norm_usage=0.0, effective_usage=0.0, level_fs="inf",
                       fairshare=1.0),
        make_share_row("lab2", raw_shares="parent", norm_shares=None, raw_usage=18000.0,
                       norm_usage=0.25, effective_usage=None, level_fs=None),
        make_share_row("lab2a", parent="lab2", raw_shares=1, norm_shares=0.25,
                       raw_usage=18000.0, norm_usage=0.25, effective_usage=0.25, level_fs=1.0),
        make_share_row("alice", "lab2a", "alice", parent="lab2a", raw_shares=1, norm_shares=1.0,
                       raw_usage=18000.0, norm_usage=0.25, effective_usage=1.0, level_fs=1.0,
                       fairshare=0.666667),
    ]


@dataclass
class FakeApi:
    """What the fake server holds and saw; tests set it up and read it."""

    url: str = ""
    jobs: dict[int, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, int] = field(default_factory=dict)
    #: Job arrays made, by their first job id (JobArrayRead).
    arrays: dict[int, dict[str, Any]] = field(default_factory=dict)
    posts: list[dict[str, Any]] = field(default_factory=list)
    queries: list[list[tuple[str, str]]] = field(default_factory=list)
    #: Seconds to stall before answering each submit, popped in order (after creating).
    post_delays: list[float] = field(default_factory=list)
    #: Answers to give each submit instead of making the job, popped in order (a 503 of
    #: a database away, a proxy's 502).
    post_refusals: list[int] = field(default_factory=list)
    #: Per job: steps applied one per log read: (bytes appended, state after), or
    #: (bytes, state, attempt): a new attempt starts a new log with those bytes.
    log_steps: dict[int, list[tuple[Any, ...]]] = field(default_factory=dict)
    #: The current attempt's log of each job; earlier attempts' in ``old_logs``.
    logs: dict[int, bytes] = field(default_factory=dict)
    old_logs: dict[tuple[int, int], bytes] = field(default_factory=dict)
    log_reads: list[tuple[int, int]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    admin_posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: What GET /v1/admin/<what> answers.
    admin_lists: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    admin_deletes: list[str] = field(default_factory=list)
    #: The users, by name: POST/PATCH /v1/admin/users change them, GET lists them.
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Bodies of PATCH /v1/admin/users/{name}: (name, body).
    admin_patches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: What GET /v1/fairshare answers.
    fairshare: list[dict[str, Any]] = field(default_factory=share_tree)
    #: What GET /v1/jobs/{id}/why answers for a job; without one, it is worked out from
    #: the jobs (pending ones ranked by their priority total, as the server does).
    whys: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: POST /v1/admin/usage/import: (content type, the records the real parser read).
    usage_imports: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    #: (user, account) pairs that usage may be imported for.
    members: set[tuple[str, str]] = field(
        default_factory=lambda: {("alice", "lab1"), ("alice", "lab2a"), ("bob", "lab1")})

    #: Admin v3 (cli_fakeadmin): accounts by name (AccountRead), grants by id (GrantRead),
    #: the audit log (AuditRead, newest first) ...
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    grants: dict[int, dict[str, Any]] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)
    #: ... the grants a new reservation conflicts with (409), and what the routes were
    #: sent: (method, path, body or query items).
    grant_conflicts: list[int] = field(default_factory=list)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)

    def reset(self) -> None:
        url = self.url
        self.__init__()  # type: ignore[misc]
        self.url = url


def _role(authorization: str | None) -> str:
    token = (authorization or "").removeprefix("Bearer ")
    if token == USER_TOKEN:
        return "user"
    if token == ADMIN_TOKEN:
        return "admin"
    raise HTTPException(401, "invalid or revoked token")


Auth = Annotated[str | None, Header()]


def build_app(state: FakeApi) -> FastAPI:  # noqa: C901 - one route per contract line
    from cli_fakeadmin import add_admin_v3  # it imports this module

    app = FastAPI()
    add_admin_v3(app, state)

    @app.get("/v1/whoami")
    def whoami(authorization: Auth = None) -> dict[str, Any]:
        role = _role(authorization)
        return {"role": role, "user": "alice", "node": None, "admin": role == "admin",
                "accounts": ["lab1", "lab2"], "default_account": "lab1"}

    @app.post("/v1/jobs", status_code=201)
    async def submit(body: JobCreate, request: Request, authorization: Auth = None) -> Any:
        _role(authorization)
        state.posts.append(await request.json())
        if state.post_refusals:
            status = state.post_refusals.pop(0)
            return JSONResponse({"detail": "the database is unavailable; retry later"},
                                status_code=status, headers={"Retry-After": "5"})
        if body.account == "nope":
            return JSONResponse({"detail": [{"loc": ["body", "account"], "type": "value_error",
                                             "msg": "user alice is not a member of 'nope'"}]},
                                status_code=422)
        if body.gpus == 9:
            return JSONResponse({"detail": "asks for 9 GPUs on one node, but the largest "
                                           "node has 8"}, status_code=422)
        seen = state.keys.get(body.idempotency_key or "")
        if seen is not None:
            return JSONResponse(state.jobs[seen], status_code=200)
        if body.nice < 0 and _role(authorization) != "admin":
            return JSONResponse({"detail": [{"loc": ["body", "nice"], "type": "value_error",
                                             "msg": "only admins may give a negative nice "
                                                    "(it raises priority)"}]}, status_code=422)
        jid = len(state.jobs) + 1
        state.jobs[jid] = make_job(jid, name=body.name or "job", gpus=body.gpus,
                                   requeue=body.requeue, nice=body.nice)
        if body.idempotency_key:
            state.keys[body.idempotency_key] = jid
        if state.post_delays:
            await asyncio.sleep(state.post_delays.pop(0))
        return state.jobs[jid]

    @app.post("/v1/jobs/array", status_code=201)
    async def submit_array(body: JobArrayCreate, request: Request,
                           authorization: Auth = None) -> Any:
        _role(authorization)
        state.posts.append(await request.json())
        seen = state.keys.get(body.idempotency_key or "")
        if seen is not None:
            return JSONResponse(state.arrays[seen], status_code=200)
        ids = []
        for index in body.indices:
            jid = len(state.jobs) + 1
            state.jobs[jid] = make_job(jid, name=f"{body.name or 'job'}[{index}]",
                                       gpus=body.gpus)
            ids.append(jid)
        out = {"array_job_id": ids[0], "name": body.name or "job", "indices": body.indices,
               "ids": ids}
        if body.idempotency_key:
            state.keys[body.idempotency_key] = ids[0]
        state.arrays[ids[0]] = out
        return out

    @app.get("/v1/jobs")
    def list_jobs(request: Request, authorization: Auth = None) -> list[dict[str, Any]]:
        _role(authorization)
        state.queries.append(list(request.query_params.multi_items()))
        if request.query_params.get("view") == "brief":
            return [brief(j) for j in state.jobs.values()]
        return list(state.jobs.values())

    def get(job_id: int) -> dict[str, Any]:
        if job_id not in state.jobs:
            raise HTTPException(404, f"no job {job_id}")
        return state.jobs[job_id]

    @app.get("/v1/jobs/{job_id}")
    def show(job_id: int, authorization: Auth = None) -> dict[str, Any]:
        _role(authorization)
        return get(job_id)

    @app.get("/v1/jobs/{job_id}/why")
    def why(job_id: int, authorization: Auth = None) -> dict[str, Any]:
        _role(authorization)
        job = get(job_id)
        if job_id in state.whys:
            return WhyRead(**state.whys[job_id]).model_dump(mode="json")

        def rank(j: dict[str, Any]) -> tuple[float, str, int]:
            total = (j.get("priority_factors") or {}).get("total", float(j["priority"]))
            return (-total, j["submitted_at"], j["id"])

        pending = sorted((j for j in state.jobs.values() if j["state"] == "PENDING"), key=rank)
        position = ahead = None
        if job["state"] == "PENDING":
            index = next(i for i, j in enumerate(pending) if j["id"] == job_id)
            position = index + 1
            if index:
                a = pending[index - 1]
                ahead = JobAhead(id=a["id"], user=a["user"], account=a["account"],
                                 factors=a.get("priority_factors"))
        return WhyRead(id=job_id, state=job["state"], reason=job["reason"], position=position,
                       pending=len(pending), factors=job.get("priority_factors"), ahead=ahead,
                       estimated_start=job.get("estimated_start")).model_dump(mode="json")

    @app.get("/v1/fairshare")
    def fairshare(authorization: Auth = None) -> list[dict[str, Any]]:
        _role(authorization)
        return [FairShareRow(**r).model_dump(mode="json") for r in state.fairshare]

    @app.post("/v1/jobs/{job_id}/cancel")
    def cancel(job_id: int, authorization: Auth = None) -> dict[str, Any]:
        _role(authorization)
        job = get(job_id)
        if job["user"] != "alice":
            raise HTTPException(403, f"job {job_id} belongs to another user")
        if job["state"] == "PENDING":
            job["state"] = "CANCELLED"
        elif job["state"] in ("DISPATCHED", "RUNNING"):
            job["cancel_requested"] = True
        return job

    @app.get("/v1/jobs/{job_id}/log")
    def read_log(job_id: int, authorization: Auth = None,
                 offset: Annotated[int, Query(ge=0)] = 0,
                 limit: Annotated[int, Query(ge=1)] = 1024 * 1024,
                 attempt: Annotated[int | None, Query(ge=1)] = None) -> Response:
        _role(authorization)
        job = get(job_id)
        steps = state.log_steps.get(job_id)
        if steps:
            data, new_state, *new_attempt = steps.pop(0)
            if new_attempt and new_attempt[0] != max(job["attempt"], 1):
                state.old_logs[(job_id, max(job["attempt"], 1))] = state.logs.pop(job_id, b"")
                job["attempt"] = new_attempt[0]
            state.logs[job_id] = state.logs.get(job_id, b"") + data
            job["state"] = new_state
        state.log_reads.append((offset, limit))
        current = max(job["attempt"], 1)
        run = attempt or current
        log = (state.logs.get(job_id, b"") if run == current
               else state.old_logs.get((job_id, run), b""))
        chunk = log[offset:offset + limit]
        return Response(chunk, media_type="text/plain; charset=utf-8", headers={
            "X-Gpuq-Attempt": str(run), "X-Gpuq-Log-Size": str(len(log)),
            "X-Gpuq-Next-Offset": str(offset + len(chunk)), "X-Gpuq-Job-State": job["state"]})

    @app.get("/v1/nodes")
    def nodes(authorization: Auth = None) -> list[dict[str, Any]]:
        _role(authorization)
        return state.nodes

    def need_admin(authorization: str | None) -> None:
        if _role(authorization) != "admin":
            raise HTTPException(403, "this needs a admin token; yours is a user token")

    def node(name: str) -> dict[str, Any]:
        for n in state.nodes:
            if n["name"] == name:
                return n
        raise HTTPException(404, f"no node {name}")

    @app.post("/v1/admin/nodes/{name}/drain")
    def admin_drain(name: str, body: NodeDrain, authorization: Auth = None) -> dict[str, Any]:
        need_admin(authorization)
        n = node(name)
        state.admin_posts.append((f"nodes/{name}/drain", body.model_dump()))
        n.update(drain=True, drain_reason=body.reason,
                 state="DRAIN" if n["state"] == "UP" else n["state"])
        return n

    @app.post("/v1/admin/nodes/{name}/resume")
    def admin_resume(name: str, authorization: Auth = None) -> dict[str, Any]:
        need_admin(authorization)
        n = node(name)
        state.admin_posts.append((f"nodes/{name}/resume", {}))
        n.update(drain=False, drain_reason="",
                 state="UP" if n["state"] == "DRAIN" else n["state"])
        return n

    @app.get("/v1/admin/users")
    def admin_users(authorization: Auth = None) -> list[dict[str, Any]]:
        need_admin(authorization)
        return list(state.users.values())

    @app.post("/v1/admin/users", status_code=201)
    def admin_create_user(body: UserCreate, authorization: Auth = None) -> dict[str, Any]:
        need_admin(authorization)
        state.admin_posts.append(("users", body.model_dump(exclude_unset=True)))
        if body.name in state.users:
            raise HTTPException(409, f"user {body.name} exists")
        state.users[body.name] = make_user(
            body.name, body.account, admin=body.admin, unix_user=body.unix_user or body.name,
            accounts=[{"account": body.account, "shares": body.shares}])
        return state.users[body.name]

    @app.post("/v1/admin/usage/import")
    async def admin_usage_import(request: Request,
                                 authorization: Auth = None) -> dict[str, Any]:
        """The real parser and record schema; the membership check is the service's."""
        need_admin(authorization)
        content_type = request.headers.get("content-type", "")
        records = parse_usage(await request.body(), content_type)
        for i, rec in enumerate(records):
            if (rec.user, rec.account) not in state.members:
                return JSONResponse({"detail": [{
                    "loc": ["body", f"{i}"], "type": "value_error",
                    "msg": f"record {i + 1}: user {rec.user!r} is not a member of account "
                           f"{rec.account!r}; create the user and membership first"}]},
                    status_code=422)
        state.usage_imports.append(
            (content_type, [r.model_dump(mode="json") for r in records]))
        # Decay: half per 7 days before T0 (the fake's "now").
        total = sum(r.billed_seconds * 0.5 ** (max(
            0.0, (T0 - (r.end_time or T0)).total_seconds()) / (7 * 86400)) for r in records)
        return UsageImportResult(imported=len(records),
                                 decayed_billed_seconds=total).model_dump(mode="json")

    @app.get("/v1/admin/{what}")
    def admin_list(what: str, authorization: Auth = None) -> list[dict[str, Any]]:
        need_admin(authorization)
        return state.admin_lists.get(what, [])

    @app.delete("/v1/admin/tokens/{token_id}")
    def admin_revoke(token_id: int, authorization: Auth = None) -> dict[str, Any]:
        need_admin(authorization)
        if token_id != 7:
            raise HTTPException(404, f"no token {token_id}")
        state.admin_deletes.append(f"tokens/{token_id}")
        return {"id": 7, "prefix": "gpuq_abc", "role": "user", "user": "bob", "node": None,
                "description": "", "created_at": T0.isoformat(), "last_used_at": None,
                "revoked": True}

    @app.post("/v1/admin/users/{name}/accounts", status_code=201)
    async def admin_membership(name: str, request: Request,
                               authorization: Auth = None) -> dict[str, Any]:
        need_admin(authorization)
        if name not in state.users:
            raise HTTPException(404, f"no user {name}")
        body = await request.json()
        state.admin_posts.append((f"users/{name}/accounts", body))
        user = state.users[name]
        user["accounts"].append({"account": body["account"], "shares": body.get("shares", 1)})
        return user

    @app.post("/v1/admin/{what}", status_code=201)
    async def admin_create(what: str, request: Request, authorization: Auth = None) -> Any:
        need_admin(authorization)
        body = await request.json()
        state.admin_posts.append((what, body))
        if what == "accounts":
            if body["name"] == "lab1":
                raise HTTPException(409, "account lab1 exists")
            return {"parent": "root", "shares": 1, "description": "", **body}
        if what == "tokens":
            return {"id": 7, "prefix": "gpuq_abc", "role": body["role"], "user": body.get("user"),
                    "node": body.get("node"), "description": "", "created_at": T0.isoformat(),
                    "last_used_at": None, "revoked": False, "token": "gpuq_abc_SECRET"}
        raise HTTPException(404, "Not Found")

    return app


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


