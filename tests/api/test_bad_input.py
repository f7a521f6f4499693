"""Bad input gets a 4xx naming the field, never a 500 (issue 16, item 2): ids and numbers
beyond the database's integer range, NUL bytes (in bodies, paths and queries), lone
surrogates, NaN and Infinity, times beyond years 1-9999 in UTC, over-long reasons."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api, bearer
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


# Found by the schemathesis run over the whole API (tests/api/test_openapi_fuzz.py) and by
# the probes written after it: text and times from paths and queries reached the database.

@pytest.mark.parametrize(("url", "param"), [
    ("/v1/admin/audit?actor=a%00", "actor"),
    ("/v1/admin/audit?action=grant%00", "action"),
    ("/v1/admin/audit?target=user:%00", "target"),
    ("/v1/admin/grants?account=lab1%00", "account"),
    ("/v1/usage?account=lab1%00", "account"),
    ("/v1/usage?user=alice%00", "user"),
])
def test_a_nul_byte_in_a_filter_is_a_422_naming_it(api: Api, alice: dict[str, str],
                                                   url: str, param: str) -> None:
    r = api.client.get(url, headers=api.admin)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", param]


@pytest.mark.parametrize(("method", "url", "param"), [
    ("GET", "/v1/admin/users/al%00ice", "name"),
    ("PATCH", "/v1/admin/users/al%00ice", "name"),
    ("POST", "/v1/admin/users/alice%00/accounts", "name"),
    ("DELETE", "/v1/admin/users/alice/accounts/lab1%00", "account"),
    ("DELETE", "/v1/admin/accounts/lab1%00", "name"),
    ("POST", "/v1/admin/nodes/gpu01%00/resume", "name"),
])
def test_a_nul_byte_in_a_name_in_the_path_is_a_422(api: Api, alice: dict[str, str],
                                                    method: str, url: str, param: str) -> None:
    body = {"account": "lab1"} if url.endswith("/accounts") else {}
    r = api.client.request(method, url, headers=api.admin,
                           json=body if method in ("PATCH", "POST") else None)
    assert r.status_code == 422, r.text
    assert ["path", param] in [e["loc"] for e in r.json()["detail"]]


#: Times with a zone whose UTC time falls before year 1 or after year 9999.
BEFORE_YEAR_1 = "0001-01-01T00:00:00+14:00"
AFTER_YEAR_9999 = "9999-12-31T23:59:59-14:00"


@pytest.mark.parametrize(("url", "param"), [
    (f"/v1/admin/audit?since={BEFORE_YEAR_1}", "since"),
    (f"/v1/admin/audit?until={AFTER_YEAR_9999}", "until"),
    (f"/v1/usage?until={AFTER_YEAR_9999}", "until"),
])
def test_a_time_beyond_utc_years_1_to_9999_in_a_query(api: Api, alice: dict[str, str],
                                                       url: str, param: str) -> None:
    r = api.client.get(url.replace("+", "%2B"), headers=api.admin)
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["query", param] and "years 1 to 9999" in err["msg"]


@pytest.mark.parametrize("since", [BEFORE_YEAR_1, "99999999d", "9" * 400 + "w"])
def test_a_usage_report_since_before_year_1(api: Api, alice: dict[str, str],
                                            since: str) -> None:
    r = api.client.get("/v1/usage", headers=api.admin, params={"since": since})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-1] == "since"


@pytest.mark.parametrize(("body", "field"), [
    ({"end": AFTER_YEAR_9999}, "end"),
    ({"start": BEFORE_YEAR_1, "end": at(240)}, "start"),
])
def test_a_grant_beyond_utc_years_1_to_9999(api: Api, alice: dict[str, str],
                                            body: dict[str, str], field: str) -> None:
    r = api.client.post("/v1/admin/grants", headers=api.admin,
                        json={"account": "lab1", "kind": "reservation", "gpus": 1, **body})
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", field] and "years 1 to 9999" in err["msg"]
    g = api.ok("POST", "/v1/admin/grants", api.admin, 201,
               json={"account": "lab1", "kind": "reservation", "gpus": 1, "end": at(240)})
    r = api.client.patch(f"/v1/admin/grants/{g['id']}", headers=api.admin,
                         json={"end": AFTER_YEAR_9999})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "end"]


def test_imported_usage_beyond_utc_years_1_to_9999(api: Api, alice: dict[str, str]) -> None:
    r = api.client.post("/v1/admin/usage/import", headers=api.admin, json=[
        {"user": "alice", "account": "lab1", "billed_seconds": 1, "end_time": BEFORE_YEAR_1}])
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", 0, "end_time"]


def _raw(api: Api, url: str, headers: dict[str, str], text: str) -> Any:
    """POST JSON as written (Python's JSON reads NaN and Infinity; httpx would not send
    them)."""
    return api.client.post(url, headers={**headers, "content-type": "application/json"},
                           content=text.encode())


@pytest.mark.parametrize(("url", "text", "loc"), [
    ("/v1/admin/grants", '{"account": "lab1", "kind": "share", "shares": 1, '
     '"gpu_hours": Infinity, "end": "2030-01-01T00:00:00Z"}', ["body", "gpu_hours"]),
    ("/v1/admin/usage/import", '[{"user": "alice", "account": "lab1", '
     '"billed_seconds": Infinity}]', ["body", 0, "billed_seconds"]),
    ("/v1/admin/usage/import", '[{"user": "alice", "account": "lab1", '
     '"billed_seconds": 1.7e308}]', ["body", 0, "billed_seconds"]),
])
def test_a_number_that_is_not_finite_or_too_large_from_an_admin(
        api: Api, alice: dict[str, str], url: str, text: str, loc: list[Any]) -> None:
    r = _raw(api, url, api.admin, text)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc


@pytest.mark.parametrize(("sample", "loc"), [
    ('"sample": {"energy_j": NaN}', ["sample", "energy_j"]),
    ('"sample": {"power_w": Infinity}', ["sample", "power_w"]),
    ('"sample": {"energy_j": 1.7e308}', ["sample", "energy_j"]),
    ('"sample": {"gpus": [{"index": 0, "memory_used_mib": -1.7e308}]}',
     ["sample", "gpus", 0, "memory_used_mib"]),
])
def test_a_heartbeat_sample_not_finite_or_too_large(api: Api, alice: dict[str, str],
                                                    sample: str, loc: list[Any]) -> None:
    """Sums of samples like these overflowed to infinity, which PostgreSQL's JSON
    refused (NaN too): the heartbeat was a 500."""
    node = bearer(api.ok("POST", "/v1/admin/tokens", api.admin, 201,
                         json={"role": "node", "node": "gpu01"})["token"])
    job = api.submit(alice, gpus=1)
    api.cycle()
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job['id']}/events", node,
           json={"state": "RUNNING", "attempt": 1})
    r = _raw(api, "/v1/nodes/gpu01/heartbeat", node,
             f'{{"jobs": [{{"job_id": {job["id"]}, "attempt": 1, "state": "RUNNING", '
             f'{sample}}}]}}')
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "jobs", 0, *loc]
    r = _raw(api, "/v1/nodes/gpu01/heartbeat", node, '{"gpus": [{"index": 0, "foreign_'
             'processes": [{"pid": 7, "used_memory_mib": NaN}]}]}')
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-1] == "used_memory_mib"


@pytest.mark.parametrize(("body", "loc"), [
    ({"cpus": 2**32}, ["body", "cpus"]),
    ({"memory_mib": 2**63}, ["body", "memory_mib"]),
    ({"gpus": [{"index": 0, "uuid": "GPU-x", "model": "A100-80GB", "memory_mib": 2**63}]},
     ["body", "gpus", 0, "memory_mib"]),
])
def test_a_registration_beyond_the_columns(api: Api, body: dict[str, Any],
                                           loc: list[Any]) -> None:
    node = api.node("gpu02", gpus=1)
    r = api.client.post("/v1/nodes/gpu02/register", headers=node,
                        json={"gpu_backend": "simulated", **body})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc


@pytest.mark.parametrize("exit_code", [2**31, -(2**31) - 1])
def test_an_exit_code_beyond_the_column(api: Api, alice: dict[str, str],
                                        exit_code: int) -> None:
    node = bearer(api.ok("POST", "/v1/admin/tokens", api.admin, 201,
                         json={"role": "node", "node": "gpu01"})["token"])
    job = api.submit(alice, gpus=1)
    api.cycle()
    r = api.client.post(f"/v1/nodes/gpu01/jobs/{job['id']}/events", headers=node,
                        json={"state": "FAILED", "attempt": 1, "exit_code": exit_code})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "exit_code"]
    assert api.job(job["id"])["state"] == "DISPATCHED"
