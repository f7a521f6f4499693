"""Submitting, listing, showing and cancelling jobs through the API (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api


@pytest.fixture
def alice(api: Api) -> dict[str, str]:
    api.node("gpu01", gpus=4)
    return api.user("alice", "lab1")


def test_submit_fills_defaults(api: Api, alice: dict[str, str]) -> None:
    job = api.submit(alice, command=["python", "train.py"], gpus=2)
    assert job["state"] == "PENDING"
    assert job["user"] == "alice" and job["account"] == "lab1"
    assert job["name"] == "python"
    assert job["time_limit_s"] == api.ctx.settings.default_time_limit_s
    assert job["command"] == ["python", "train.py"] and job["workdir"] == "/tmp"
    assert isinstance(job["id"], int) and job["id"] >= 1


def test_job_ids_are_small_increasing_integers(api: Api, alice: dict[str, str]) -> None:
    ids = [api.submit(alice)["id"] for _ in range(3)]
    assert ids == sorted(ids) and ids[-1] - ids[0] == 2


def test_idempotency_key_returns_the_same_job(api: Api, alice: dict[str, str]) -> None:
    first = api.submit(alice, idempotency_key="k-1")
    again = api.submit(alice, status=200, idempotency_key="k-1")
    assert again["id"] == first["id"]
    other = api.submit(alice, idempotency_key="k-2")
    assert other["id"] != first["id"]
    assert len(api.ok("GET", "/v1/jobs", alice)) == 2


def test_idempotency_keys_are_per_user(api: Api, alice: dict[str, str]) -> None:
    bob = api.user("bob", "lab1")
    a = api.submit(alice, idempotency_key="same")
    b = api.submit(bob, idempotency_key="same")
    assert a["id"] != b["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"workdir": "relative/dir"}, "workdir"),
        ({"gpus": -1}, "gpus"),
        ({"gpus": "two"}, "gpus"),
        ({"cpus": 0}, "cpus"),
        ({"time_limit_s": 0}, "time_limit_s"),
        ({"environment": {"1BAD": "x"}}, "environment"),
        ({"command": []}, "command"),
        ({"command": [""]}, "command"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_input_is_422_naming_the_field(api: Api, alice: dict[str, str], body: dict,
                                           field: str) -> None:
    r = api.client.post("/v1/jobs", headers=alice,
                        json={"command": ["true"], "workdir": "/tmp", **body})
    assert r.status_code == 422, r.text
    locs = [e["loc"] for e in r.json()["detail"]]
    assert any(field in loc for loc in locs), locs
    assert api.ok("GET", "/v1/jobs", alice) == []


def test_command_and_script_are_exclusive(api: Api, alice: dict[str, str]) -> None:
    r = api.client.post("/v1/jobs", headers=alice,
                        json={"command": ["true"], "script": "echo", "workdir": "/tmp"})
    assert r.status_code == 422
    assert "exactly one of" in r.text
    r = api.client.post("/v1/jobs", headers=alice, json={"workdir": "/tmp"})
    assert r.status_code == 422


def test_script_job(api: Api, alice: dict[str, str]) -> None:
    job = api.client.post("/v1/jobs", headers=alice,
                          json={"script": "#!/bin/bash\necho hi\n", "workdir": "/tmp"}).json()
    assert job["script"].startswith("#!/bin/bash") and job["command"] is None
    assert job["name"] == "script"


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"gpus": 5}, "gpus", "largest node has 4"),
        ({"gpu_model": "H100-80GB"}, "gpu_model", "no node has H100-80GB"),
        ({"cpus": 64}, "cpus", "largest node has 32"),
        ({"memory_mib": 10_000_000}, "memory_mib", "MiB"),
        ({"account": "lab2"}, "account", "not a member of account 'lab2'"),
        ({"time_limit_s": 10**8}, "time_limit_s", "maximum time limit"),
    ],
)
def test_job_that_can_never_run_is_refused(api: Api, alice: dict[str, str], spec: dict,
                                           field: str, words: str) -> None:
    r = api.client.post("/v1/jobs", headers=alice,
                        json={"command": ["true"], "workdir": "/tmp", **spec})
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", field]
    assert words in err["msg"]


def test_refused_without_any_node(api: Api) -> None:
    alice = api.user("alice", "lab1")
    r = api.client.post("/v1/jobs", headers=alice, json={"command": ["true"],
                                                         "workdir": "/tmp"})
    assert r.status_code == 422
    assert "no GPU node has registered" in r.text


def test_a_user_in_two_accounts_chooses(api: Api, alice: dict[str, str]) -> None:
    api.account("lab2")
    api.ok("POST", "/v1/admin/users/alice/accounts", api.admin, 201, json={"account": "lab2"})
    assert api.submit(alice)["account"] == "lab1"  # the default account
    assert api.submit(alice, account="lab2")["account"] == "lab2"


def test_list_and_filter(api: Api, alice: dict[str, str]) -> None:
    bob = api.user("bob", "lab2")
    a = api.submit(alice, gpus=4)
    b = api.submit(bob, gpus=4)
    api.cycle()  # a starts, b waits
    assert {j["id"] for j in api.ok("GET", "/v1/jobs", alice)} == {a["id"], b["id"]}
    assert [j["id"] for j in api.ok("GET", "/v1/jobs?user=bob", alice)] == [b["id"]]
    assert [j["id"] for j in api.ok("GET", "/v1/jobs?account=lab1", alice)] == [a["id"]]
    assert [j["id"] for j in api.ok("GET", "/v1/jobs?state=PENDING", alice)] == [b["id"]]
    assert [j["id"] for j in api.ok("GET", "/v1/jobs?node=gpu01", alice)] == [a["id"]]
    r = api.client.get("/v1/jobs?state=BOGUS", headers=alice)
    assert r.status_code == 422


def test_others_jobs_are_listed_without_their_spec(api: Api, alice: dict[str, str]) -> None:
    bob = api.user("bob", "lab1")
    api.submit(bob, command=["secret-tool", "--key", "k"], environment={"K": "v"})
    (seen,) = api.ok("GET", "/v1/jobs", alice)
    assert seen["user"] == "bob"
    assert seen["command"] is None and seen["environment"] is None and seen["workdir"] is None
    (own,) = api.ok("GET", "/v1/jobs", bob)
    assert own["command"] == ["secret-tool", "--key", "k"]


def test_every_pending_job_carries_a_reason(api: Api, alice: dict[str, str]) -> None:
    big = api.submit(alice, gpus=4)
    small = api.submit(alice, gpus=4)
    api.cycle()
    assert api.job(big["id"])["state"] == "DISPATCHED"
    waiting = api.job(small["id"])
    assert waiting["state"] == "PENDING"
    assert waiting["reason"].startswith("Resources")


def test_show_has_events(api: Api, alice: dict[str, str]) -> None:
    job = api.submit(alice)
    api.cycle()
    shown = api.ok("GET", f"/v1/jobs/{job['id']}", alice)
    assert [(e["old_state"], e["new_state"]) for e in shown["events"]] == [
        (None, "PENDING"), ("PENDING", "DISPATCHED")]
    assert "gpu01" in shown["events"][1]["reason"]


def test_unknown_job_is_404(api: Api, alice: dict[str, str]) -> None:
    r = api.client.get("/v1/jobs/999", headers=alice)
    assert r.status_code == 404 and r.json()["detail"] == "no job 999"
    assert api.client.post("/v1/jobs/999/cancel", headers=alice).status_code == 404


def test_cancel_pending_ends_it_at_once(api: Api, alice: dict[str, str]) -> None:
    job = api.submit(alice)
    out = api.ok("POST", f"/v1/jobs/{job['id']}/cancel", alice)
    assert out["state"] == "CANCELLED" and out["ended_at"] is not None
    assert api.dispatcher.calls == []
    api.cycle()
    assert api.job(job["id"])["state"] == "CANCELLED"
    assert api.dispatcher.calls == []


def test_cancel_running_asks_the_node_and_keeps_gpus_until_confirmed(
        api: Api, alice: dict[str, str]) -> None:
    node = api.node("gpu02", gpus=0)  # a CPU-only node; the job goes to gpu01
    job = api.submit(alice, gpus=4)
    api.cycle()
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job['id']}/events", _node(api, "gpu01"),
           json={"state": "RUNNING"})
    out = api.ok("POST", f"/v1/jobs/{job['id']}/cancel", alice)
    assert out["state"] == "RUNNING" and out["cancel_requested"] is True
    assert ("kill", "gpu01", job["id"]) in api.dispatcher.calls
    # The GPUs stay held until the node says the process is gone.
    nxt = api.submit(alice, gpus=4)
    api.cycle()
    assert api.job(nxt["id"])["state"] == "PENDING"
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job['id']}/events", _node(api, "gpu01"),
           json={"state": "CANCELLED", "exit_code": 143})
    assert api.job(job["id"])["state"] == "CANCELLED"
    api.cycle()
    assert api.job(nxt["id"])["state"] == "DISPATCHED"
    assert node  # the CPU-only node registered fine


def test_cancel_twice_is_harmless(api: Api, alice: dict[str, str]) -> None:
    job = api.submit(alice)
    api.ok("POST", f"/v1/jobs/{job['id']}/cancel", alice)
    out = api.ok("POST", f"/v1/jobs/{job['id']}/cancel", alice)
    assert out["state"] == "CANCELLED"


def test_log_read_with_offsets(api: Api, alice: dict[str, str]) -> None:
    job = api.submit(alice)
    api.cycle()
    node = _node(api, "gpu01")
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job['id']}/log?offset=0", node,
           content=b"hello\nworld\n")
    r = api.client.get(f"/v1/jobs/{job['id']}/log", headers=alice)
    assert r.content == b"hello\nworld\n"
    assert r.headers["X-Gpuq-Next-Offset"] == "12"
    assert r.headers["X-Gpuq-Job-State"] == "DISPATCHED"
    r = api.client.get(f"/v1/jobs/{job['id']}/log?offset=6&limit=3", headers=alice)
    assert r.content == b"wor" and r.headers["X-Gpuq-Next-Offset"] == "9"
    r = api.client.get(f"/v1/jobs/{job['id']}/log?offset=12", headers=alice)
    assert r.content == b""


_NODE_TOKENS: dict[tuple[int, str], dict[str, str]] = {}


def _node(api: Api, name: str) -> dict[str, str]:
    """A fresh token for an already registered node."""
    key = (id(api), name)
    if key not in _NODE_TOKENS:
        tok = api.ok("POST", "/v1/admin/tokens", api.admin, 201,
                     json={"role": "node", "node": name})
        _NODE_TOKENS[key] = {"Authorization": f"Bearer {tok['token']}"}
    return _NODE_TOKENS[key]
