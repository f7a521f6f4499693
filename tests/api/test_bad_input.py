"""Bad input gets a 4xx naming the field, never a 500 (issue 16, item 2): ids beyond the
database's integer range, NUL bytes, lone surrogates, NaN, over-long reasons."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api
from tests.api.test_grants import at


@pytest.fixture
def alice(api: Api) -> dict[str, str]:
    api.node("gpu01", gpus=4)
    return api.user("alice", "lab1")


@pytest.mark.parametrize("path", ["/v1/jobs/2147483648", "/v1/jobs/9223372036854775808",
                                  "/v1/jobs/2147483648/why", "/v1/jobs/-1"])
def test_an_id_out_of_range_is_not_found_or_422(api: Api, alice: dict[str, str],
                                                path: str) -> None:
    r = api.client.get(path, headers=alice)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["path", "job_id"]


def test_an_out_of_range_id_to_cancel(api: Api, alice: dict[str, str]) -> None:
    r = api.client.post("/v1/jobs/2147483648/cancel", headers=alice)
    assert r.status_code == 422, r.text
    assert api.client.get("/v1/jobs/2147483647", headers=alice).status_code == 404


@pytest.mark.parametrize("field", ["name", "workdir", "script", "gpu_model", "account"])
def test_a_nul_byte_in_a_string_is_a_422_naming_it(api: Api, alice: dict[str, str],
                                                    field: str) -> None:
    body = {"command": ["true"], "workdir": "/tmp", field: "a\x00b"}
    if field == "script":
        body.pop("command")
    r = api.client.post("/v1/jobs", headers=alice, json=body)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_nul_bytes_in_argv_and_environment(api: Api, alice: dict[str, str]) -> None:
    for body in ({"command": ["a\x00b"]}, {"command": ["true"], "environment": {"A": "x\x00"}}):
        r = api.client.post("/v1/jobs", headers=alice, json={"workdir": "/tmp", **body})
        assert r.status_code == 422, r.text
        assert "NUL" in r.text


def test_a_lone_surrogate_is_a_422(api: Api, alice: dict[str, str]) -> None:
    r = api.client.post("/v1/jobs", headers={**alice, "content-type": "application/json"},
                        content=b'{"command": ["true"], "workdir": "/tmp", "name": "\\ud800"}')
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "name"] and "surrogate" in err["msg"]


def test_nan_cpus_is_a_422(api: Api, alice: dict[str, str]) -> None:
    r = api.client.post("/v1/jobs", headers={**alice, "content-type": "application/json"},
                        content=b'{"command": ["true"], "workdir": "/tmp", "cpus": NaN}')
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "cpus"] and err["input"] == "nan"


def test_a_long_revoke_reason(api: Api, alice: dict[str, str]) -> None:
    g = api.ok("POST", "/v1/admin/grants", api.admin, 201,
               json={"account": "lab1", "kind": "reservation", "gpus": 1, "end": at(240)})
    r = api.client.post(f"/v1/admin/grants/{g['id']}/revoke", headers=api.admin,
                        json={"reason": "x" * 256})
    assert r.status_code == 200, r.text
    shown = r.json()
    assert shown["state"] == "revoked" and len(shown["state_reason"]) == 256
    assert shown["state_reason"].startswith("revoked by admin: xxx")


def test_a_nul_byte_in_a_queue_filter(api: Api, alice: dict[str, str]) -> None:
    r = api.client.get("/v1/jobs", headers=alice, params={"user": "a\x00"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", "user"]


def test_a_heartbeat_with_a_job_id_out_of_range_is_a_422(api: Api) -> None:
    h = api.node("gpu02", gpus=1)
    r = api.client.post("/v1/nodes/gpu02/heartbeat", headers=h, json={
        "gpus": [], "jobs": [{"job_id": 2**31, "attempt": 1, "state": "RUNNING"}]})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "jobs", 0, "job_id"]


def test_the_openapi_document_resolves_every_reference(api: Api) -> None:
    """Every ``$ref`` in /openapi.json names a schema the document has (the usage import's
    body pointed at a UsageImport it did not hold)."""
    doc = api.client.get("/openapi.json").json()
    refs: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                refs.add(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs, "no references at all: the walk is broken"
    schemas = doc["components"]["schemas"]
    missing = {r for r in refs if r.removeprefix("#/components/schemas/") not in schemas}
    assert missing == set()
