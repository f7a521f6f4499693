"""/v1/admin: accounts, users, memberships, tokens, node drains, usage import (admin
tokens only). Every change is audited (see ``routes/audit.py``); grants are in
``routes/grants.py``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError

from gpuq.scheduler.api.deps import Admin, AdminActor, Ctx, StorableText
from gpuq.scheduler.services import accounts, nodes, tokens, usage_import, users
from gpuq.scheduler.services.audit import record
from gpuq.wire.admin import (
    AccountCreate,
    AccountRead,
    AccountUpdate,
    MembershipCreate,
    MembershipUpdate,
    NodeDrain,
    TokenCreate,
    TokenCreated,
    TokenRead,
    UsageImport,
    UsageImportResult,
    UserCreate,
    UserRead,
    UserUpdate,
)
from gpuq.wire.common import MAX_ID
from gpuq.wire.nodes import NodeRead

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def ex(summary: str, value: Any) -> dict[str, Any]:
    """One OpenAPI request example."""
    return {"summary": summary, "value": value}


AccountName = Annotated[str, Path(description="an account name", examples=["qlab"]),
                        StorableText]
UserName = Annotated[str, Path(description="a user name", examples=["alice"]), StorableText]
NodeName = Annotated[str, Path(description="a node (host) name", examples=["gpu01"]),
                     StorableText]

# --- accounts ---------------------------------------------------------------------------


@router.post("/accounts", status_code=201, response_model=AccountRead,
             summary="Create an account")
def create_account(
    body: Annotated[AccountCreate, Body(openapi_examples={
        "lab": ex("a lab under a department", {"name": "qlab", "parent": "physics",
                                               "shares": 30, "description": "Quantum lab"}),
        "parent": ex("a sub-group that is not a fair-share level of its own",
                     {"name": "qlab-students", "parent": "qlab", "shares": "parent"}),
    })],
    ctx: Ctx, actor: AdminActor,
) -> AccountRead:
    """Create an account under ``parent`` (default: root) with raw ``shares`` (or
    "parent"), and optionally the ``default_qos`` of its jobs. Audited as account.create."""
    with ctx.transaction() as session:
        return accounts.account_read(accounts.create_account(session, body, actor=actor,
                                                             now=ctx.clock()))


@router.get("/accounts", response_model=list[AccountRead], summary="List accounts")
def list_accounts(
    ctx: Ctx, _: Admin,
    include_retired: Annotated[bool, Query(description="list retired accounts too",
                                           examples=[True])] = False,
) -> list[AccountRead]:
    """Every account of the tree (``parent`` null: root), retired ones only if asked."""
    with ctx.transaction() as session:
        return [accounts.account_read(a)
                for a in accounts.list_accounts(session, include_retired=include_retired)]


@router.patch("/accounts/{name}", response_model=AccountRead, summary="Change or move an account")
def update_account(
    name: AccountName,
    body: Annotated[AccountUpdate, Body(openapi_examples={
        "move": ex("move it (and all below it) under another account", {"parent": "physics"}),
        "shares": ex("give it more shares", {"shares": 50}),
        "qos": ex("jobs that name no QOS run preemptible", {"default_qos": "preemptible"}),
    })],
    ctx: Ctx, actor: AdminActor,
) -> AccountRead:
    """Change only the fields given. ``parent`` moves the account with everything below
    it; a move under itself or its own subtree is refused (422, field parent); root never
    moves. Audited as account.update."""
    with ctx.transaction() as session:
        acct = accounts.account_or_404(session, name)
        return accounts.account_read(accounts.update_account(session, acct, body, actor=actor,
                                                             now=ctx.clock()))


@router.delete("/accounts/{name}", response_model=AccountRead, summary="Retire an account")
def retire_account(name: AccountName, ctx: Ctx, actor: AdminActor) -> AccountRead:
    """Retire an account: it takes no new jobs and leaves the fair-share tree; its
    history stays. Refused (409, naming them) while it has live child accounts, pending or
    running jobs, or grants that have not ended. Retiring twice changes nothing. Audited
    as account.retire."""
    with ctx.transaction() as session:
        acct = accounts.account_or_404(session, name)
        out = accounts.account_read(accounts.retire_account(session, acct, actor=actor,
                                                            now=ctx.clock()))
    ctx.wake()
    return out


# --- users and memberships --------------------------------------------------------------


@router.post("/users", status_code=201, response_model=UserRead, summary="Create a user")
def create_user(
    body: Annotated[UserCreate, Body(openapi_examples={
        "user": ex("a lab member", {"name": "alice", "account": "qlab", "shares": 1}),
        "unix": ex("runs as another Unix account on root workers",
                   {"name": "bob", "account": "qlab", "unix_user": "bsmith"}),
    })],
    ctx: Ctx, actor: AdminActor,
) -> UserRead:
    """Create a user in ``account`` (its default account) with ``shares`` there. Audited
    as user.create."""
    with ctx.transaction() as session:
        return users.user_read(users.create_user(session, body, actor=actor, now=ctx.clock()))


@router.get("/users", response_model=list[UserRead], summary="List users")
def list_users(ctx: Ctx, _: Admin) -> list[UserRead]:
    """Every user with its accounts, flags and allowed QOS."""
    with ctx.transaction() as session:
        return [users.user_read(u) for u in users.list_users(session)]


@router.get("/users/{name}", response_model=UserRead, summary="Show a user")
def get_user(name: UserName, ctx: Ctx, _: Admin) -> UserRead:
    """One user with its accounts (memberships and their shares)."""
    with ctx.transaction() as session:
        return users.user_read(users.user_by_name(session, name))


@router.patch("/users/{name}", response_model=UserRead, summary="Change a user")
def update_user(
    name: UserName,
    body: Annotated[UserUpdate, Body(openapi_examples={
        "disable": ex("disable: its tokens stop working, its jobs stay", {"disabled": True}),
        "default": ex("jobs that name no account go to ilab", {"default_account": "ilab"}),
        "qos": ex("may submit with QOS high", {"allowed_qos": ["high"]}),
        "unix": ex("map to another Unix account", {"unix_user": "asmith"}),
    })],
    ctx: Ctx, actor: AdminActor,
) -> UserRead:
    """Change only the fields given: ``unix_user`` (null: the same name), ``admin``,
    ``disabled`` (its tokens answer 401 until re-enabled; its jobs stay),
    ``default_account`` (must be one of its accounts, 422 field default_account),
    ``allowed_qos``. Admins cannot disable themselves. Audited as user.update."""
    with ctx.transaction() as session:
        user = users.user_by_name(session, name)
        return users.user_read(users.update_user(session, user, body, actor=actor,
                                                 now=ctx.clock()))


@router.post("/users/{name}/accounts", status_code=201, response_model=UserRead,
             summary="Add a user to an account")
def add_account(
    name: UserName,
    body: Annotated[MembershipCreate, Body(openapi_examples={
        "member": ex("alice also works for ilab", {"account": "ilab", "shares": 2}),
    })],
    ctx: Ctx, actor: AdminActor,
) -> UserRead:
    """Add the user to another account (a user may belong to several). Audited as
    membership.create (target ``user:alice/account:ilab``)."""
    with ctx.transaction() as session:
        user = users.user_by_name(session, name)
        return users.user_read(users.add_membership(session, user, body, actor=actor,
                                                    now=ctx.clock()))


@router.patch("/users/{name}/accounts/{account}", response_model=UserRead,
              summary="Change a user's shares in an account")
def update_membership(
    name: UserName, account: AccountName,
    body: Annotated[MembershipUpdate, Body(openapi_examples={
        "shares": ex("more shares within the account", {"shares": 3}),
        "parent": ex("share the account's level with its parent", {"shares": "parent"}),
    })],
    ctx: Ctx, actor: AdminActor,
) -> UserRead:
    """Set the user's raw shares in ``account``. Audited as membership.update."""
    with ctx.transaction() as session:
        user = users.user_by_name(session, name)
        users.update_membership(session, user, account, body, actor=actor, now=ctx.clock())
        return users.user_read(user)


@router.delete("/users/{name}/accounts/{account}", response_model=UserRead,
               summary="Remove a user from an account")
def delete_membership(name: UserName, account: AccountName, ctx: Ctx,
                      actor: AdminActor) -> UserRead:
    """Remove the user from ``account``. Refused (409) if it is the user's default account
    or the user has pending or running jobs there. Audited as membership.delete."""
    with ctx.transaction() as session:
        user = users.user_by_name(session, name)
        return users.user_read(users.delete_membership(session, user, account, actor=actor,
                                                       now=ctx.clock()))


# --- tokens -----------------------------------------------------------------------------


@router.post("/tokens", status_code=201, response_model=TokenCreated, summary="Create a token")
def create_token(
    body: Annotated[TokenCreate, Body(openapi_examples={
        "user": ex("a user token for 90 days",
                   {"role": "user", "user": "alice", "expires_in_s": 7776000,
                    "description": "alice's laptop"}),
        "node": ex("a worker's token", {"role": "node", "node": "gpu01"}),
        "admin": ex("an admin token", {"role": "admin", "user": "bob"}),
    })],
    ctx: Ctx, actor: AdminActor,
) -> TokenCreated:
    """Create a token; the secret is in this answer only (only its hash is stored).
    ``expires_in_s``: it stops working after that many seconds (401 "token expired on
    ..."). Audited as token.create (without the secret)."""
    with ctx.transaction() as session:
        now = ctx.clock()
        row, secret = tokens.create_token(session, body, actor=actor, now=now)
        return TokenCreated(token=secret, **tokens.token_read(row, now=now))


@router.get("/tokens", response_model=list[TokenRead], summary="List tokens")
def list_tokens(ctx: Ctx, _: Admin) -> list[TokenRead]:
    """Every token (never its secret): owner, role, last use, expiry, revoked."""
    with ctx.transaction() as session:
        now = ctx.clock()
        return [TokenRead(**tokens.token_read(r, now=now)) for r in tokens.list_tokens(session)]


@router.delete("/tokens/{token_id}", response_model=TokenRead, summary="Revoke a token")
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=MAX_ID, examples=[12],
                                  description="the token's id (GET /v1/admin/tokens)")],
    ctx: Ctx, actor: AdminActor,
) -> TokenRead:
    """Revoke a token at once; revoking twice changes nothing. Audited as token.revoke."""
    with ctx.transaction() as session:
        now = ctx.clock()
        return TokenRead(**tokens.token_read(tokens.revoke_token(session, token_id, actor=actor,
                                                                 now=now), now=now))


# --- nodes ------------------------------------------------------------------------------


@router.post("/nodes/{name}/drain", response_model=NodeRead, summary="Drain a node")
def drain_node(
    name: NodeName,
    body: Annotated[NodeDrain, Body(openapi_examples={
        "repair": ex("before a repair", {"reason": "replacing GPU 3"}),
    })],
    ctx: Ctx, actor: AdminActor,
) -> NodeRead:
    """Drain a node: running jobs finish, nothing new starts, until it is resumed.
    Audited as node.drain."""
    with ctx.transaction() as session:
        node = nodes.get_node(session, name)
        before = _node_audit(node)
        nodes.drain(session, node, reason=body.reason)
        record(session, actor=actor, action="node.drain", target=f"node:{name}",
               now=ctx.clock(), before=before, after=_node_audit(node))
    return _node(ctx, name)


@router.post("/nodes/{name}/resume", response_model=NodeRead, summary="Resume a node")
def resume_node(name: NodeName, ctx: Ctx, actor: AdminActor) -> NodeRead:
    """End a drain: the node takes new jobs again. Audited as node.resume."""
    with ctx.transaction() as session:
        node = nodes.get_node(session, name)
        before = _node_audit(node)
        nodes.resume(session, node)
        record(session, actor=actor, action="node.resume", target=f"node:{name}",
               now=ctx.clock(), before=before, after=_node_audit(node))
    ctx.wake()
    return _node(ctx, name)


def _node_audit(node: Any) -> dict[str, object]:
    """What a drain changes (a node's read model also has live GPU samples)."""
    return {"name": node.name, "state": node.state, "drain": bool(node.drain),
            "drain_reason": node.drain_reason or ""}


def _node(ctx: Ctx, name: str) -> NodeRead:
    with ctx.transaction() as session:
        return next(n for n in nodes.list_nodes(session) if n.name == name)


# --- usage ------------------------------------------------------------------------------

USAGE_EXAMPLE_CSV = "user,account,billed_seconds,end_time\nalice,qlab,36000,2026-10-01T00:00:00Z\n"


@router.post(
    "/usage/import",
    response_model=UsageImportResult,
    summary="Import usage history",
    openapi_extra={"requestBody": {"content": {
        # Inline: no route takes UsageImport as its body, so FastAPI does not put it in
        # the document's components (a $ref to it pointed at nothing).
        "application/json": {"schema": {"type": "array",
                                        "items": UsageImport.model_json_schema()},
            "example": [{"user": "alice", "account": "qlab", "billed_seconds": 36000,
                         "end_time": "2026-10-01T00:00:00Z"}]},
        "text/csv": {"schema": {"type": "string"}, "example": USAGE_EXAMPLE_CSV}}}},
)
async def import_usage(request: Request, ctx: Ctx, actor: AdminActor) -> UsageImportResult:
    """Import usage history (a lab moving from another scheduler keeps its fair share):
    a JSON list, or CSV with the header ``user,account,billed_seconds[,end_time]``. Each
    record decays from its end time (default now). All records are imported, or none.
    Audited as usage.import."""
    from starlette.concurrency import run_in_threadpool

    records = parse_usage(await request.body(), request.headers.get("content-type", ""))

    def work() -> UsageImportResult:
        with ctx.transaction() as session:
            return usage_import.import_usage(session, records, actor=actor, now=ctx.clock(),
                                             settings=ctx.settings)

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
