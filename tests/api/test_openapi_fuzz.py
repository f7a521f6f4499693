"""Schemathesis over the whole OpenAPI document (issue 16, item 2): every operation, with a
user, an admin and a node token, on SQLite and PostgreSQL, against an API seeded with
accounts, users, nodes with GPUs, jobs in several states and grants, so that names and ids
in paths often name real rows. No request may get a server error (a 5xx, or an exception
out of the app), and every documented answer must match its schema.

Each operation gets schemathesis's examples and coverage cases (boundary values, missing
and wrong-typed parameters) and ``GPUQ_FUZZ_EXAMPLES`` generated cases, valid and not
(default 5), derandomized: the same requests on every run. An operation a principal may
not call at all (a 403 before any validation) gets two generated cases instead. Run it
longer by hand::

    GPUQ_FUZZ_EXAMPLES=300 pytest tests/api/test_openapi_fuzz.py -p no:cacheprovider -s

(``-s`` prints the requests and statuses of each run; ``GPUQ_FUZZ_SEED=N`` draws another
fixed sequence instead of the derandomized one.)
"""

from __future__ import annotations

import copy
import os
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.generation.hypothesis.builder import (
    HypothesisTestConfig,
    HypothesisTestMode,
    create_test,
)
from schemathesis.generation.overrides import Override
from schemathesis.python.asgi import ASGIClient
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)
from sqlalchemy import update

from gpuq.scheduler.db.models import ApiToken, User
from tests.api.conftest import Api
from tests.api.test_grants import at

EXAMPLES = int(os.environ.get("GPUQ_FUZZ_EXAMPLES", "5"))
SEED = os.environ.get("GPUQ_FUZZ_SEED")
#: No server error; a documented status's body and content type as documented.
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
BASE_URL = "http://testserver"

#: Names and ids the seed creates: path parameters draw from these half the time.
REAL = {"name": ["alice", "bob", "ada", "gpu01", "gpu02", "lab1", "lab2", "root"],
        "account": ["lab1", "lab2", "root"]}
REAL_IDS = list(range(1, 9))
PRINCIPALS = ("user", "admin", "node")


@dataclass
class Seeded:
    headers: dict[str, dict[str, str]]  # principal -> its Authorization header
    token_ids: list[int]
    users: list[str]


def seed(api: Api) -> Seeded:
    """Accounts lab1 and lab2 (under lab1); alice (lab1), bob (lab2) and the admin ada;
    gpu01 (4 A100s) and gpu02 (2 H100s); jobs 1-7: running, dispatched, pending and
    cancelled; a share grant, an active reservation and a scheduled one."""
    api.account("lab1")
    api.account("lab2", parent="lab1")
    alice = api.user("alice", "lab1")
    bob = api.user("bob", "lab2")
    admin = api.user("ada", "lab1", admin=True)
    node = api.node("gpu01", gpus=4)
    api.node("gpu02", gpus=2, model="H100-80GB")
    for i in range(3):
        api.submit(alice, name=f"a{i}", gpus=1)
    api.submit(bob, name="b0", gpus=2)
    api.cycle()
    api.submit(alice, name="waits", gpus=4)
    running = api.ok("GET", "/v1/jobs", api.admin, params={"node": "gpu01"})[0]
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{running['id']}/events", node,
           json={"state": "RUNNING", "attempt": running["attempt"]})
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{running['id']}/log", node,
           params={"offset": 0, "attempt": running["attempt"]}, content=b"hello\n")
    gone = api.submit(alice, name="gone")
    api.ok("POST", f"/v1/jobs/{gone['id']}/cancel", alice)
    api.ok("POST", "/v1/jobs", alice, 201, json={"script": "#!/bin/sh\necho hi\n",
                                                  "workdir": "/tmp", "gpus": 0})
    for grant in ({"account": "lab1", "kind": "reservation", "gpus": 1, "end": at(240)},
                  {"account": "lab2", "kind": "share", "shares": 5, "gpu_hours": 10,
                   "end": at(48)},
                  {"account": "lab2", "kind": "reservation", "gpus": 1, "start": at(24),
                   "end": at(48)}):
        api.ok("POST", "/v1/admin/grants", api.admin, 201, json=grant)
    api.cycle()
    listed = api.ok("GET", "/v1/admin/tokens", api.admin)
    ids = [t["id"] for t in listed if t["user"] in ("alice", "ada") or t["node"] == "gpu01"]
    return Seeded({"user": alice, "admin": admin, "node": node}, ids, ["alice", "ada"])


def restore(api: Api, seeded: Seeded) -> None:
    """Undo what an admin's case may have done to the principals themselves (revoked
    their tokens, disabled their users), so that the run goes on with working tokens."""
    with api.ctx.transaction() as session:
        session.execute(update(ApiToken).where(ApiToken.id.in_(seeded.token_ids))
                        .values(revoked_at=None, expires_at=None))
        session.execute(update(User).where(User.name.in_(seeded.users))
                        .values(disabled_at=None))
    api.client.app.state.callers.clear()


def real_path_parameters(context: schemathesis.HookContext,
                         params: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """As generated, or (half the time) naming rows the seed made."""
    real = {k: st.sampled_from(REAL_IDS if k.endswith("_id") else REAL[k])
            for k in params or {} if k.endswith("_id") or k in REAL}
    if not real:
        return st.just(params)
    return st.one_of(st.just(params), st.fixed_dictionaries(real).map(
        lambda chosen: {**(params or {}), **chosen}))


def submittable(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """A submit's body as generated, or (half the time) mended to pass what the schema
    cannot say (an absolute workdir, exactly one of command and script, a parseable
    array, GPUs a node has), so that submits reach the queue."""
    op = context.operation.label if context.operation is not None else ""
    if op not in ("POST /v1/jobs", "POST /v1/jobs/array") or not isinstance(body, dict):
        return st.just(body)
    mended = copy.deepcopy(body)
    mended["workdir"] = "/tmp"
    if "script" in mended:
        mended.pop("command", None)
    elif not mended.get("command") or not isinstance(mended["command"], list):
        mended["command"] = ["true"]
    if isinstance(mended.get("gpus"), int):
        mended["gpus"] %= 5
    if op.endswith("array"):
        mended["array"] = "0-3"
    return st.sampled_from([body, mended])


@dataclass
class Run:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    per_operation: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    #: One line per distinct failure (the operation and what went wrong), with a count.
    kinds: Counter[str] = field(default_factory=Counter)


def may_call(client: ASGIClient, operation: schemathesis.APIOperation,
             headers: dict[str, str]) -> bool:
    """Whether the principal may call ``operation`` at all: a role that may not is
    answered 403 before anything is validated."""
    path = operation.path
    for name, value in (("name", "gpu01"), ("account", "lab1"), ("job_id", "1"),
                        ("token_id", "1"), ("grant_id", "1")):
        path = path.replace("{" + name + "}", value)
    return client.request(operation.method.upper(), path, headers=headers).status_code != 403


def fuzz(api: Api, principal: str, seeded: Seeded, only: str | None = None) -> Run:
    """Every operation (or those of the path ``only``) as ``principal``."""
    doc = api.ok("GET", "/openapi.json", {})
    schema = schemathesis.openapi.from_dict(doc, config=schemathesis.Config())
    schema.hook("flatmap_path_parameters")(real_path_parameters)
    schema.hook("flatmap_body")(submittable)
    # Requests go to the app in process, outside schemathesis's own ASGI lifespan: the
    # ``api`` fixture's TestClient has started the app and stops it.
    client = ASGIClient(api.client.app)
    headers = seeded.headers[principal]
    settings = hypothesis.settings(
        max_examples=EXAMPLES, deadline=None, derandomize=SEED is None, database=None,
        suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
        verbosity=hypothesis.Verbosity.quiet, print_blob=False)
    run = Run()

    def call(case: schemathesis.Case) -> None:
        label = case.operation.label
        run.requests += 1
        run.per_operation[label] += 1
        try:
            response = case.call(session=client, base_url=BASE_URL, headers=headers)
        except Exception as e:  # noqa: BLE001 - out of the app: a 500
            run.kinds[f"{label}: {type(e).__name__}: {str(e).splitlines()[0][:160]}"] += 1
            run.failures.append(f"{label}: an exception\n{case.as_curl_command(headers)}\n"
                                f"{traceback.format_exc()}")
            return
        run.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as e:
            run.kinds[f"{label}: {response.status_code} "
                      f"{', '.join(sorted({f.title for f in e.exceptions}))}"] += 1
            run.failures.append(f"{label}: {response.status_code}\n{e}")
        if principal == "admin" and case.method != "GET" and response.status_code < 400:
            restore(api, seeded)

    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # every operation of the document loads
        operation = result.ok()
        if only is not None and operation.path != only:
            continue
        allowed = may_call(client, operation, headers)
        modes = [HypothesisTestMode.EXAMPLES, HypothesisTestMode.FUZZING]
        if allowed:
            modes.append(HypothesisTestMode.COVERAGE)
        # A node's calls name its own node (another's is a 403 before anything else).
        own = principal == "node" and operation.path.startswith("/v1/nodes/{name}")
        test = create_test(operation=operation, test_func=call, config=HypothesisTestConfig(
            project=schema.config, modes=modes, feedback=FeedbackSources(),
            override=Override(path_parameters={"name": "gpu01"} if own else {}),
            settings=settings if allowed else hypothesis.settings(settings, max_examples=2),
            seed=int(SEED) if SEED is not None else None))
        test()
    return run


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_no_server_errors(api: Api, principal: str) -> None:
    seeded = seed(api)
    started, cpu = time.monotonic(), time.process_time()
    run = fuzz(api, principal, seeded)
    print(f"\n{principal}: {run.requests} requests in {time.monotonic() - started:.1f} s "
          f"({time.process_time() - cpu:.1f} s CPU); "
          f"statuses {dict(sorted(run.statuses.items()))}")
    for kind, n in run.kinds.most_common():
        print(f"  {n:5d} x {kind}")
    # Every operation ran, and the principal's token worked.
    assert set(run.per_operation) == {f"{m.upper()} {p}" for p, ops in
                                      api.client.get("/openapi.json").json()["paths"].items()
                                      for m in ops}
    assert sum(n for status, n in run.statuses.items() if status < 300) > 0
    assert not run.failures, (f"{len(run.failures)} failed requests:\n"
                              + "\n".join(run.failures[:10]))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the same document on both
def test_the_openapi_document_is_valid(api: Api) -> None:
    """/openapi.json is a valid OpenAPI 3.1 document (checked against its meta-schema by
    schemathesis's loader) and every operation in it loads; every ``$ref`` resolves
    (``test_bad_input.test_the_openapi_document_resolves_every_reference``)."""
    doc = api.ok("GET", "/openapi.json", {})
    assert doc["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(doc, config=schemathesis.Config())
    schema.validate()
    operations = list(schema.get_all_operations())
    assert len(operations) == sum(len(ops) for ops in doc["paths"].values()) > 30
    assert all(isinstance(op, Ok) for op in operations), operations
    # The validation is not blind: a parameter in a place OpenAPI has not is refused.
    broken = copy.deepcopy(doc)
    broken["paths"]["/v1/jobs/{job_id}"]["get"]["parameters"][0]["in"] = "body"
    with pytest.raises(Exception, match="body"):
        schemathesis.openapi.from_dict(broken, config=schemathesis.Config()).validate()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_run_is_not_blind(api: Api) -> None:
    """A route that fails on some input is reported: an exception out of the app, and a
    500 it answers itself."""
    app = api.client.app

    @app.get("/v1/boom/{n}")
    def boom(n: int) -> dict[str, int]:
        if n > 10:
            raise RuntimeError("boom")
        if n < 0:
            return JSONResponse({"detail": "broken"}, status_code=500)
        return {"n": n}

    app.openapi_schema = None  # documented anew, with the route
    run = fuzz(api, "admin", Seeded({"admin": api.admin}, [], []), only="/v1/boom/{n}")
    kinds = "\n".join(run.kinds)
    assert "GET /v1/boom/{n}: RuntimeError: boom" in kinds
    assert "GET /v1/boom/{n}: 500 Server error" in kinds
