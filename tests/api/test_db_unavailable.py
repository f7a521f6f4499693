"""The database away (issue 16, item 4): every API answer is a 503 to retry (with
Retry-After, and saying that the database is what is away: a worker counts it as contact
for its fence), not a 500; /healthz says "unavailable" and quotes nothing of the error; the
loop hears of it (the marker file: fresh timeouts for the nodes)."""

from __future__ import annotations

import pytest
import sqlalchemy.exc as sa_exc

from gpuq.scheduler.db.session import make_engine, make_sessionmaker
from gpuq.scheduler.runtime.outages import MARKER
from tests.api.conftest import Api, bearer

#: Nothing listens there: every connection is refused at once.
NOWHERE = "postgresql+psycopg://gpuq:s3cret@127.0.0.1:1/gpuq_secret_db"


def test_the_api_answers_503_while_the_database_is_away(api: Api) -> None:
    alice = api.user("alice")
    node = api.node("gpu01")
    fresh = api.ok("POST", "/v1/admin/tokens", api.admin, 201,
                   json={"role": "user", "user": "alice"})["token"]
    marker = api.ctx.settings.data_dir / MARKER
    assert not marker.exists()
    sessions, dead = api.ctx.sessions, make_engine(NOWHERE)
    api.ctx.sessions = make_sessionmaker(dead)
    try:
        answers = [
            api.client.get("/v1/jobs", headers=alice),  # a cached caller: the route fails
            api.client.get("/v1/jobs", headers=bearer(fresh)),  # its lookup fails
            api.client.post("/v1/jobs", headers=alice,
                            json={"command": ["true"], "workdir": "/tmp"}),
            api.client.post("/v1/nodes/gpu01/heartbeat", headers=node, json={"jobs": []}),
            api.client.get("/v1/nodes/gpu01/jobs/1", headers=node),
        ]
        for r in answers:
            assert r.status_code == 503, (r.request.url, r.text)
            assert r.json() == {"detail": "the database is unavailable; retry later"}
            assert r.headers["retry-after"] == "5"
            assert r.headers["x-gpuq-unavailable"] == "database"
        health = api.client.get("/healthz")
        assert health.status_code == 503 and health.headers["retry-after"] == "5"
        body = health.json()
        assert (body["status"], body["database"]) == ("unavailable", "unavailable")
        for r in [health, *answers]:
            for secret in ("127.0.0.1", "gpuq_secret_db", "s3cret", "refused", "psycopg"):
                assert secret not in r.text
        assert marker.exists()  # the loop gives every node a fresh timeout after this
    finally:
        api.ctx.sessions = sessions
        dead.dispose()
    assert api.client.get("/healthz").json()["status"] == "ok"
    assert api.client.get("/v1/jobs", headers=alice).status_code == 200


def test_a_database_error_that_is_a_bug_is_still_a_500(api: Api,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuq.scheduler.api.routes import nodes

    def broken(session: object) -> None:
        raise sa_exc.ProgrammingError("SELECT nonsense", {}, Exception("syntax error"))

    monkeypatch.setattr(nodes.svc, "list_nodes", broken)
    with pytest.raises(sa_exc.ProgrammingError):  # the TestClient re-raises a 500's error
        api.client.get("/v1/nodes", headers=api.admin)
