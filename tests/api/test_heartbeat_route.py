"""The heartbeat route (scheduler/api/routes/nodes.py ``_HeartbeatRoute``): a valid
heartbeat skips FastAPI's generic request handling (``node_principal`` finds the caller,
pydantic reads the JSON bytes), and answers, errors and the OpenAPI document stay what
FastAPI gave: 401 and 403 from the node-token check, 422 naming the body's field."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import HTTPException

from gpuq.scheduler.api.deps import get_principal
from tests.api.conftest import Api, bearer

URL = "/v1/nodes/gpu01/heartbeat"
JSON = {"Content-Type": "application/json"}
BEAT = b'{"jobs": [], "gpus": [{"index": 0, "utilization_pct": 50.0, "power_w": 100.0}]}'
STEADY = {"launch": [], "kill": []}


@pytest.fixture
def node(api: Api) -> dict[str, str]:
    """gpu01, registered with 2 GPUs: its token headers."""
    return api.node("gpu01", gpus=2)


def post(api: Api, headers: dict[str, str], body: bytes = BEAT,
         content_type: dict[str, str] = JSON) -> Any:
    return api.client.post(URL, headers={**headers, **content_type}, content=body)


def detail(r: Any, status: int) -> Any:
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()["detail"]


def test_a_heartbeat_is_answered(api: Api, node: dict[str, str]) -> None:
    r = post(api, node)
    assert r.status_code == 200 and r.json() == STEADY
    assert r.headers["content-type"] == "application/json"


def test_a_heartbeat_reconciles_the_node_jobs(api: Api, node: dict[str, str]) -> None:
    alice = api.user("alice")
    job_id = api.submit(alice, gpus=1)["id"]
    api.cycle()
    r = post(api, node, b'{"jobs": [{"job_id": %d, "state": "RUNNING"},'
                        b' {"job_id": 4242, "state": "RUNNING"}]}' % job_id)
    assert r.status_code == 200, r.text
    assert r.json() == {"launch": [], "kill": [{"job_id": 4242, "attempt": 1, "grace_s": None}]}
    assert api.job(job_id)["state"] == "RUNNING"


def test_a_caller_not_in_the_cache_is_looked_up(api: Api, node: dict[str, str]) -> None:
    api.client.app.state.callers.clear()
    assert post(api, node).json() == STEADY
    lower = {"Authorization": "bearer " + node["Authorization"].split(" ", 1)[1]}
    assert post(api, lower).json() == STEADY  # the scheme is case-insensitive


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic Z3B1cTp4"},
                                     {"Authorization": "Bearer "}, {"Authorization": "Bearer"}])
def test_no_bearer_token_is_401(api: Api, node: dict[str, str],
                                headers: dict[str, str]) -> None:
    r = post(api, headers)
    assert detail(r, 401) == "missing bearer token"
    assert r.headers["www-authenticate"] == "Bearer"


def test_an_unknown_or_revoked_token_is_401(api: Api, node: dict[str, str]) -> None:
    tok = api.ok("POST", "/v1/admin/tokens", api.admin, 201,
                 json={"role": "node", "node": "gpu01"})
    assert post(api, bearer(tok["token"])).json() == STEADY  # now in the caller cache
    api.ok("DELETE", f"/v1/admin/tokens/{tok['id']}", api.admin)
    for headers in (bearer(tok["token"]), bearer("gpuq_not-a-real-token")):
        r = post(api, headers)
        assert detail(r, 401) == "invalid or revoked token"
        assert r.headers["www-authenticate"] == "Bearer"


def test_a_user_or_admin_token_is_403(api: Api, node: dict[str, str]) -> None:
    alice = api.user("alice")
    assert detail(post(api, alice), 403) == "this needs a node token; yours is a user token"
    assert detail(post(api, api.admin), 403) == (
        "this needs a node token; yours is a admin token")


def test_another_node_token_is_403(api: Api, node: dict[str, str]) -> None:
    other = api.node("gpu02")
    assert detail(post(api, other), 403) == "this token belongs to node gpu02, not gpu01"


def test_malformed_json_is_422_naming_the_body(api: Api, node: dict[str, str]) -> None:
    for body in (b"{nope", b'{"jobs": [', b'{"gpus": [],}'):
        (err,) = detail(post(api, node, body), 422)
        assert err["type"] == "json_invalid" and err["loc"][0] == "body", err


def test_a_wrong_field_is_422_naming_it(api: Api, node: dict[str, str]) -> None:
    (err,) = detail(post(api, node, b'{"gpus": [{"index": "x"}]}'), 422)
    assert err["loc"] == ["body", "gpus", 0, "index"] and err["type"] == "int_parsing"
    (err,) = detail(post(api, node, b'{"jobs": [{"job_id": 1, "state": "NOPE"}]}'), 422)
    assert err["loc"] == ["body", "jobs", 0, "state"] and err["type"] == "literal_error"
    (err,) = detail(post(api, node, b'{"gpus": [{"index": -1}]}'), 422)
    assert err["loc"] == ["body", "gpus", 0, "index"] and err["ctx"] == {"ge": 0}
    assert "url" not in err


def test_an_unknown_field_is_422(api: Api, node: dict[str, str]) -> None:
    """Heartbeat and its parts forbid extra fields (``Strict``)."""
    (err,) = detail(post(api, node, b'{"gpus": [], "bogus": 1}'), 422)
    assert err["loc"] == ["body", "bogus"] and err["type"] == "extra_forbidden"
    (err,) = detail(post(api, node, b'{"gpus": [{"index": 0, "bogus": 1}]}'), 422)
    assert err["loc"] == ["body", "gpus", 0, "bogus"]


def test_an_empty_body_is_422_field_required(api: Api, node: dict[str, str]) -> None:
    for content_type in (JSON, {}):
        (err,) = detail(post(api, node, b"", content_type), 422)
        assert err == {"type": "missing", "loc": ["body"], "msg": "Field required",
                       "input": None}


def test_a_body_that_is_not_an_object_is_422(api: Api, node: dict[str, str]) -> None:
    for body in (b"null", b"[]", b'"x"'):
        (err,) = detail(post(api, node, body), 422)
        assert err["loc"] == ["body"] and err["type"] == "model_attributes_type", err


def test_the_content_type_is_read_as_fastapi_does(api: Api, node: dict[str, str]) -> None:
    """Only a JSON content type is read as JSON (FastAPI's ``strict_content_type``);
    one with parameters or a ``+json`` type is, by FastAPI's own handler."""
    for other in ({}, {"Content-Type": "text/plain"}):
        (err,) = detail(post(api, node, BEAT, other), 422)
        assert err["loc"] == ["body"], err
    for json_type in ("application/json; charset=utf-8", "application/x-gpuq+json"):
        assert post(api, node, BEAT, {"Content-Type": json_type}).json() == STEADY


def test_a_valid_heartbeat_does_not_solve_dependencies(api: Api,
                                                       node: dict[str, str]) -> None:
    """FastAPI's generic handler (and its dependencies) only answers what the direct
    path does not take: a body that does not validate."""

    def refuse() -> None:
        raise HTTPException(418, "dependencies were solved")

    api.client.app.dependency_overrides[get_principal] = refuse
    try:
        assert post(api, node).json() == STEADY
        assert detail(post(api, node, b'{"gpus": 1}'), 418) == "dependencies were solved"
    finally:
        api.client.app.dependency_overrides.clear()


def test_an_unregistered_node_is_409(api: Api) -> None:
    tok = api.ok("POST", "/v1/admin/tokens", api.admin, 201,
                 json={"role": "node", "node": "gpu01"})
    assert "register first" in detail(post(api, bearer(tok["token"])), 409)


def test_openapi_documents_the_heartbeat(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    op = spec["paths"]["/v1/nodes/{name}/heartbeat"]["post"]
    assert op["operationId"] == "heartbeat_v1_nodes__name__heartbeat_post"
    assert op["summary"] == "Heartbeat" and op["tags"] == ["nodes"]
    assert [(p["in"], p["name"], p["required"]) for p in op["parameters"]] == [
        ("path", "name", True)]
    assert op["requestBody"] == {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Heartbeat"}}}}
    responses = op["responses"]
    assert responses["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/HeartbeatReply"}
    assert responses["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/HTTPValidationError"}
    assert op["security"] == [{"HTTPBearer": []}]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    schemas = spec["components"]["schemas"]
    for name in ("Heartbeat", "WorkerJob", "JobSample", "JobGpuSample", "GpuSample",
                 "GpuProcess", "HeartbeatReply", "JobRef", "FenceTerms"):
        assert name in schemas, name
    assert schemas["Heartbeat"]["additionalProperties"] is False
    assert set(schemas["Heartbeat"]["properties"]) == {"jobs", "gpus", "fence", "listed_at"}
