"""Every route under /v1/admin: admin-only, and documented (summary, description, examples).

The routes are enumerated from the app, so a new admin route can never be missed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute

from gpuq.scheduler.api.app import create_app
from tests.api.conftest import Api


def all_routes(routes: list[Any]) -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, through included routers (newer FastAPI keeps them
    as wrappers with ``effective_route_contexts``)."""
    for route in routes:
        if hasattr(route, "effective_route_contexts"):
            for sub in route.effective_route_contexts():
                yield sub.path, set(getattr(sub, "methods", None) or ())
        elif isinstance(route, APIRoute):
            yield route.path, set(route.methods)


def admin_routes(api: Api) -> list[tuple[str, str]]:
    app = create_app(api.ctx)
    return sorted((m, path) for path, methods in all_routes(app.routes)
                  if path.startswith("/v1/admin") for m in methods)


def test_there_are_admin_routes_to_check(api: Api) -> None:
    routes = admin_routes(api)
    for expected in [("POST", "/v1/admin/grants"), ("GET", "/v1/admin/audit"),
                     ("PATCH", "/v1/admin/accounts/{name}"),
                     ("DELETE", "/v1/admin/users/{name}/accounts/{account}")]:
        assert expected in routes
    assert len(routes) >= 23


def test_every_admin_route_refuses_user_and_node_tokens(api: Api) -> None:
    node = api.node("gpu01", gpus=2)
    alice = api.user("alice", "lab1")
    api.ok("POST", "/v1/admin/grants", api.admin, 201,
           json={"account": "lab1", "kind": "share", "shares": 5,
                 "end": "2026-02-01T00:00:00Z"})
    before = api.ok("GET", "/v1/admin/audit", api.admin)
    for method, path in admin_routes(api):
        url = re.sub(r"\{(\w+)\}", lambda m: {"token_id": "1", "grant_id": "1",
                                              "account": "lab1"}.get(m[1], "alice"), path)
        for who, headers in (("user", alice), ("node", node)):
            r = api.client.request(method, url, headers=headers, json={})
            assert r.status_code == 403, (who, method, url, r.status_code, r.text)
            assert "admin token" in r.json()["detail"]
    # ... and none of them changed anything.
    assert api.ok("GET", "/v1/admin/audit", api.admin) == before


def test_every_admin_route_is_documented_with_examples(api: Api) -> None:
    schema = create_app(api.ctx).openapi()
    for method, path in admin_routes(api):
        op = schema["paths"][path][method.lower()]
        where = f"{method} {path}"
        assert op.get("summary"), where
        assert len(op.get("description", "")) > 20, where
        inputs = []
        body = op.get("requestBody", {}).get("content", {})
        inputs += [bool(c.get("example") or c.get("examples")) for c in body.values()]
        for p in op.get("parameters", []):
            inputs.append(bool(p.get("example") or p.get("examples")
                               or p.get("schema", {}).get("examples")))
        assert all(inputs), (where, "an input without an example")


@pytest.mark.parametrize("path", ["/v1/admin/grants", "/v1/admin/accounts/{name}"])
def test_body_examples_are_valid_requests(api: Api, path: str) -> None:
    """The examples are real: each one passes the route's own validation."""
    from gpuq.wire.admin import AccountUpdate
    from gpuq.wire.grants import GrantCreate

    model = {"/v1/admin/grants": GrantCreate, "/v1/admin/accounts/{name}": AccountUpdate}[path]
    schema = create_app(api.ctx).openapi()
    ops = schema["paths"][path]
    op = ops.get("post") or ops.get("patch")
    examples = op["requestBody"]["content"]["application/json"]["examples"]
    assert examples
    for ex in examples.values():
        model.model_validate(ex["value"])
