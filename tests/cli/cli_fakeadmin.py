"""The admin API v3 routes of the fake (notes/admin-v3.md): accounts, users, memberships,
tokens with expiry, grants and the audit log. Bodies are validated by the real wire
schemas and answers built through the real read models, so a request or an answer the
real server would refuse fails here too. "Now" is ``T0``; the acting admin is "root".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from cli_fakeapi import T0, Auth, FakeApi, _role
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from gpuq.wire.admin import (
    AccountRead,
    AccountUpdate,
    AuditRead,
    MembershipUpdate,
    TokenCreate,
    TokenCreated,
    UserRead,
    UserUpdate,
)
from gpuq.wire.grants import GrantCreate, GrantRead, GrantRevoke, GrantUpdate

ACTOR = "root"


def make_account(name: str, parent: str | None = "root", **kw: Any) -> dict[str, Any]:
    """An ``AccountRead`` as the server sends it."""
    base: dict[str, Any] = dict(name=name, parent=parent, shares=1, description="")
    base.update(kw)
    return AccountRead(**base).model_dump(mode="json")


def make_grant(id: int = 1, account: str = "qlab", kind: str = "reservation",
               **kw: Any) -> dict[str, Any]:
    """A ``GrantRead``: by default 8 reserved GPUs, active over January 2025."""
    base: dict[str, Any] = dict(
        id=id, account=account, kind=kind, start=T0 - timedelta(days=1),
        end=T0 + timedelta(days=30), note="", shares=None, gpu_hours=None,
        gpus=8 if kind == "reservation" else None, gpu_model=None, nodes=[], state="active",
        state_reason="", created_by=ACTOR, created_at=T0 - timedelta(days=2), revoked_at=None,
        usage={"gpu_hours": 0.0, "billed_gpu_hours": 0.0})
    if kind == "share":
        base["shares"] = 100
    base.update(kw)
    return GrantRead(**base).model_dump(mode="json")


def make_audit(id: int = 1, action: str = "account.update", target: str = "account:qlab",
               **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(id=id, time=T0, actor=ACTOR, token_id=1, action=action,
                                target=target, before=None, after=None)
    base.update(kw)
    return AuditRead(**base).model_dump(mode="json")


def _detail(field: str, msg: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": ["body", field], "type": "value_error",
                                     "msg": msg}]}, status_code=422)


def add_admin_v3(app: FastAPI, state: FakeApi) -> None:  # noqa: C901 - one route per line
    def admin(authorization: str | None) -> None:
        if _role(authorization) != "admin":
            raise HTTPException(403, "this needs a admin token; yours is a user token")

    def audit(action: str, target: str, before: Any, after: Any) -> None:
        state.audit.insert(0, make_audit(len(state.audit) + 1, action, target,
                                         before=before, after=after))

    def account(name: str) -> dict[str, Any]:
        if name not in state.accounts:
            raise HTTPException(404, f"no account {name}")
        return state.accounts[name]

    def user(name: str) -> dict[str, Any]:
        if name not in state.users:
            raise HTTPException(404, f"no user {name}")
        return state.users[name]

    def grant(grant_id: int) -> dict[str, Any]:
        if grant_id not in state.grants:
            raise HTTPException(404, f"no grant {grant_id}")
        return state.grants[grant_id]

    # --- accounts -------------------------------------------------------------------

    @app.get("/v1/admin/accounts")
    def list_accounts(request: Request, include_retired: bool = False,
                      authorization: Auth = None) -> list[dict[str, Any]]:
        admin(authorization)
        state.requests.append(("GET", "accounts", list(request.query_params.multi_items())))
        return [a for a in state.accounts.values() if include_retired or not a["retired"]]

    @app.patch("/v1/admin/accounts/{name}")
    def update_account(name: str, body: AccountUpdate, authorization: Auth = None) -> Any:
        admin(authorization)
        a = account(name)
        state.requests.append(("PATCH", f"accounts/{name}", body.model_dump(exclude_unset=True)))
        if body.parent is not None:
            if name == "root":
                raise HTTPException(409, "the root account cannot move")
            up: str | None = body.parent
            while up is not None:
                if up == name:
                    return _detail("parent", f"cannot move {name} under itself or an "
                                             f"account below it ({body.parent})")
                up = account(up)["parent"]
        before = dict(a)
        for key in body.model_fields_set:
            a[key] = getattr(body, key)
        audit("account.update", f"account:{name}", before, a)
        return a

    @app.delete("/v1/admin/accounts/{name}")
    def retire_account(name: str, authorization: Auth = None) -> Any:
        admin(authorization)
        a = account(name)
        state.requests.append(("DELETE", f"accounts/{name}", None))
        children = sorted(c["name"] for c in state.accounts.values()
                          if c["parent"] == name and not c["retired"])
        if children:
            raise HTTPException(409, f"account {name} has accounts below it that are not "
                                     f"retired: {', '.join(children)}; retire them first")
        before = dict(a)
        a.update(retired=True, retired_at=a["retired_at"] or T0.isoformat())
        audit("account.retire", f"account:{name}", before, a)
        return a

    # --- users and memberships -----------------------------------------------------

    @app.get("/v1/admin/users/{name}")
    def show_user(name: str, authorization: Auth = None) -> Any:
        admin(authorization)
        return UserRead(**user(name)).model_dump(mode="json")

    @app.patch("/v1/admin/users/{name}")
    def update_user(name: str, body: UserUpdate, authorization: Auth = None) -> Any:
        admin(authorization)
        u = user(name)
        state.admin_patches.append((name, body.model_dump(exclude_unset=True)))
        if body.default_account is not None and body.default_account not in \
                [m["account"] for m in u["accounts"]]:
            return _detail("default_account", f"user {name} is not a member of "
                                              f"{body.default_account}; add it first")
        if "unix_user" in body.model_fields_set:
            u["unix_user"] = body.unix_user or name
        for key in ("admin", "disabled", "default_account", "allowed_qos"):
            if getattr(body, key) is not None:
                u[key] = getattr(body, key)
        return UserRead(**u).model_dump(mode="json")

    def membership(name: str, acct: str) -> dict[str, Any]:
        for m in user(name)["accounts"]:
            if m["account"] == acct:
                return m
        raise HTTPException(404, f"user {name} is not a member of {acct}")

    @app.patch("/v1/admin/users/{name}/accounts/{acct}")
    def update_membership(name: str, acct: str, body: MembershipUpdate,
                          authorization: Auth = None) -> Any:
        admin(authorization)
        membership(name, acct)["shares"] = body.shares
        state.requests.append(("PATCH", f"users/{name}/accounts/{acct}", body.model_dump()))
        return UserRead(**user(name)).model_dump(mode="json")

    @app.delete("/v1/admin/users/{name}/accounts/{acct}")
    def delete_membership(name: str, acct: str, authorization: Auth = None) -> Any:
        admin(authorization)
        m, u = membership(name, acct), user(name)
        if u["default_account"] == acct:
            raise HTTPException(409, f"{acct} is the default account of {name}: set another "
                                     "first (gpuq admin user set --default-account)")
        u["accounts"].remove(m)
        state.requests.append(("DELETE", f"users/{name}/accounts/{acct}", None))
        return UserRead(**u).model_dump(mode="json")

    # --- tokens ---------------------------------------------------------------------

    @app.post("/v1/admin/tokens", status_code=201)
    async def create_token(body: TokenCreate, request: Request,
                           authorization: Auth = None) -> Any:
        admin(authorization)
        state.admin_posts.append(("tokens", await request.json()))
        expires = T0 + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
        return TokenCreated(id=7, prefix="gpuq_abc", role=body.role, user=body.user,
                            node=body.node, description=body.description, created_at=T0,
                            last_used_at=None, revoked=False, expires_at=expires,
                            token="gpuq_abc_SECRET").model_dump(mode="json")

    # --- grants ---------------------------------------------------------------------

    @app.post("/v1/admin/grants", status_code=201)
    def create_grant(body: GrantCreate, authorization: Auth = None) -> Any:
        admin(authorization)
        state.requests.append(("POST", "grants", body.model_dump(mode="json",
                                                                 exclude_unset=True)))
        if body.account not in state.accounts or state.accounts[body.account]["retired"]:
            return _detail("account", f"no account {body.account} (or it is retired)")
        if body.kind == "reservation" and state.grant_conflicts:
            ids = ", ".join(str(i) for i in state.grant_conflicts)
            return JSONResponse(status_code=409, content={"detail": {
                "message": f"would reserve {body.gpus} GPUs more than the cluster has at "
                           f"{(body.start or T0).isoformat()}: conflicts with grants {ids}",
                "conflicts": state.grant_conflicts}})
        start = body.start or T0
        gid = max(state.grants, default=0) + 1
        state.grants[gid] = make_grant(
            gid, body.account, body.kind, start=start, end=body.end, note=body.note,
            shares=body.shares, gpu_hours=body.gpu_hours, gpus=body.gpus,
            gpu_model=body.gpu_model, nodes=body.nodes, created_at=T0,
            state="active" if start <= T0 else "scheduled")
        audit("grant.create", f"grant:{gid}", None, state.grants[gid])
        return state.grants[gid]

    @app.get("/v1/admin/grants")
    def list_grants(request: Request, account: str | None = None, kind: str | None = None,
                    authorization: Auth = None) -> Any:
        admin(authorization)
        query = list(request.query_params.multi_items())
        state.requests.append(("GET", "grants", query))
        wanted = dict(query).get("state")
        return [g for g in state.grants.values()
                if (account is None or g["account"] == account)
                and (wanted is None or g["state"] == wanted)
                and (kind is None or g["kind"] == kind)]

    @app.get("/v1/admin/grants/{grant_id}")
    def show_grant(grant_id: int, authorization: Auth = None) -> Any:
        admin(authorization)
        return grant(grant_id)

    @app.patch("/v1/admin/grants/{grant_id}")
    def update_grant(grant_id: int, body: GrantUpdate, authorization: Auth = None) -> Any:
        admin(authorization)
        g = grant(grant_id)
        state.requests.append(("PATCH", f"grants/{grant_id}",
                               body.model_dump(mode="json", exclude_unset=True)))
        if g["state"] in ("expired", "revoked"):
            raise HTTPException(409, f"grant {grant_id} is {g['state']}: it cannot change")
        changes = body.model_dump(exclude_unset=True)
        state.grants[grant_id] = make_grant(**{**g, **changes})
        audit("grant.update", f"grant:{grant_id}", g, state.grants[grant_id])
        return state.grants[grant_id]

    @app.post("/v1/admin/grants/{grant_id}/revoke")
    def revoke_grant(grant_id: int, body: GrantRevoke, authorization: Auth = None) -> Any:
        admin(authorization)
        g = grant(grant_id)
        state.requests.append(("POST", f"grants/{grant_id}/revoke", body.model_dump()))
        if g["state"] != "revoked":
            g.update(state="revoked", state_reason=f"revoked by {ACTOR}: {body.reason}",
                     revoked_at=T0.isoformat())
        return g

    # --- audit ----------------------------------------------------------------------

    @app.get("/v1/admin/audit")
    def read_audit(request: Request, actor: str | None = None, action: str | None = None,
                   target: str | None = None, since: datetime | None = None,
                   until: datetime | None = None, limit: int = 100,
                   authorization: Auth = None) -> Any:
        admin(authorization)
        state.requests.append(("GET", "audit", list(request.query_params.multi_items())))
        if limit < 1 or limit > 1000:
            return JSONResponse({"detail": [{"loc": ["query", "limit"], "type": "value_error",
                                             "msg": "must be 1 to 1000"}]}, status_code=422)
        out = []
        for e in state.audit:
            t = datetime.fromisoformat(e["time"])
            if ((actor is None or e["actor"] == actor)
                    and (action is None or e["action"] == action
                         or e["action"].startswith(action + "."))
                    and (target is None or e["target"] == target)
                    and (since is None or t >= since) and (until is None or t < until)):
                out.append(e)
        return out[:limit]
