"""/v1/admin: accounts, users, tokens (admin tokens only)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import select

from scheduler.api.deps import Admin, Ctx
from scheduler.api.schemas import (
    AccountCreate,
    AccountRead,
    MembershipCreate,
    NodeDrain,
    NodeRead,
    TokenCreate,
    TokenCreated,
    TokenRead,
    UsageImport,
    UsageImportResult,
    UserCreate,
    UserRead,
    UserUpdate,
)
from scheduler.db.models import ApiToken, User
from scheduler.services import admin as svc
from scheduler.services import nodes

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/accounts", status_code=201, response_model=AccountRead)
def create_account(body: AccountCreate, ctx: Ctx, _: Admin) -> AccountRead:
    """Create an account under ``parent`` (default: root) with raw ``shares``."""
    with ctx.transaction() as session:
        return svc.account_read(svc.create_account(session, body, now=ctx.clock()))


@router.get("/accounts", response_model=list[AccountRead])
def list_accounts(ctx: Ctx, _: Admin) -> list[AccountRead]:
    with ctx.transaction() as session:
        return [svc.account_read(a) for a in svc.list_accounts(session)]


@router.post("/users", status_code=201, response_model=UserRead)
def create_user(body: UserCreate, ctx: Ctx, _: Admin) -> UserRead:
    """Create a user in ``account`` (its default account) with ``shares`` there."""
    with ctx.transaction() as session:
        return svc.user_read(svc.create_user(session, body, now=ctx.clock()))


@router.patch("/users/{name}", response_model=UserRead)
def update_user(name: str, body: UserUpdate, ctx: Ctx, _: Admin) -> UserRead:
    """Change a user's Unix account mapping (``unix_user``; null: the same name) or admin
    flag."""
    with ctx.transaction() as session:
        user = svc.user_by_name(session, name)
        return svc.user_read(svc.update_user(session, user, body))


@router.post("/nodes/{name}/drain", response_model=NodeRead)
def drain_node(name: str, body: NodeDrain, ctx: Ctx, _: Admin) -> NodeRead:
    """Drain a node: running jobs finish, nothing new starts, until it is resumed."""
    with ctx.transaction() as session:
        nodes.drain(session, nodes.get_node(session, name), reason=body.reason)
    return _node(ctx, name)


@router.post("/nodes/{name}/resume", response_model=NodeRead)
def resume_node(name: str, ctx: Ctx, _: Admin) -> NodeRead:
    """End a drain: the node takes new jobs again."""
    with ctx.transaction() as session:
        nodes.resume(session, nodes.get_node(session, name))
    ctx.wake()
    return _node(ctx, name)


def _node(ctx: Ctx, name: str) -> NodeRead:
    with ctx.transaction() as session:
        return next(n for n in nodes.list_nodes(session) if n.name == name)


USAGE_EXAMPLE_CSV = "user,account,billed_seconds,end_time\nalice,qlab,36000,2026-10-01T00:00:00Z\n"


@router.post(
    "/usage/import",
    response_model=UsageImportResult,
    openapi_extra={"requestBody": {"content": {
        "application/json": {"schema": {"type": "array", "items": {
            "$ref": "#/components/schemas/UsageImport"}},
            "example": [{"user": "alice", "account": "qlab", "billed_seconds": 36000,
                         "end_time": "2026-10-01T00:00:00Z"}]},
        "text/csv": {"schema": {"type": "string"}, "example": USAGE_EXAMPLE_CSV}}}},
)
async def import_usage(request: Request, ctx: Ctx, _: Admin) -> UsageImportResult:
    """Import usage history (a lab moving from another scheduler keeps its fair share):
    a JSON list, or CSV with the header ``user,account,billed_seconds[,end_time]``. Each
    record decays from its end time (default now). All records are imported, or none."""
    from starlette.concurrency import run_in_threadpool

    records = parse_usage(await request.body(), request.headers.get("content-type", ""))

    def work() -> UsageImportResult:
        with ctx.transaction() as session:
            return svc.import_usage(session, records, now=ctx.clock(), settings=ctx.settings)

    out = await run_in_threadpool(work)
    ctx.wake()
    return out


def parse_usage(body: bytes, content_type: str) -> list[UsageImport]:
    import csv
    import io
    import json

    from pydantic import TypeAdapter, ValidationError

    try:
        text = body.decode("utf-8")
        if "csv" in content_type:
            rows: list[dict[str, str]] = list(csv.DictReader(io.StringIO(text)))
            data: object = [{k.strip(): v.strip() for k, v in r.items() if k and v} for r in rows]
        else:
            data = json.loads(text)
    except (UnicodeDecodeError, ValueError, csv.Error) as e:
        kind = "CSV" if "csv" in content_type else "JSON"
        raise HTTPException(422, f"cannot read the body as {kind}: {e}") from None
    try:
        return TypeAdapter(list[UsageImport]).validate_python(data)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from None


@router.post("/users/{name}/accounts", status_code=201, response_model=UserRead)
def add_account(name: str, body: MembershipCreate, ctx: Ctx, _: Admin) -> UserRead:
    """Add the user to another account (a user may belong to several)."""
    with ctx.transaction() as session:
        user = svc.user_by_name(session, name)
        return svc.user_read(svc.add_membership(session, user, body))


@router.get("/users", response_model=list[UserRead])
def list_users(ctx: Ctx, _: Admin) -> list[UserRead]:
    with ctx.transaction() as session:
        return [svc.user_read(u) for u in session.scalars(select(User).order_by(User.id))]


@router.post("/tokens", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, ctx: Ctx, _: Admin) -> TokenCreated:
    """Create a token; the secret is in this answer only."""
    with ctx.transaction() as session:
        row, secret = svc.create_token(session, body, now=ctx.clock())
        return TokenCreated(token=secret, **svc.token_read(row))


@router.get("/tokens", response_model=list[TokenRead])
def list_tokens(ctx: Ctx, _: Admin) -> list[TokenRead]:
    with ctx.transaction() as session:
        rows = session.scalars(select(ApiToken).order_by(ApiToken.id))
        return [TokenRead(**svc.token_read(r)) for r in rows]


@router.delete("/tokens/{token_id}", response_model=TokenRead)
def revoke_token(token_id: int, ctx: Ctx, _: Admin) -> TokenRead:
    with ctx.transaction() as session:
        return TokenRead(**svc.token_read(svc.revoke_token(session, token_id, now=ctx.clock())))
