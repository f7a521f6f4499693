"""q, show, nodes, whoami and admin against the fake API: what they ask and print."""

from __future__ import annotations

import json

from cli_fakeapi import ADMIN_TOKEN, T0, FakeApi, make_job


def test_q_asks_for_active_jobs_by_default(api: FakeApi, gpuq) -> None:
    api.jobs[1] = make_job(1, state="RUNNING", reason="", node="gpu01", gpu_indices=[0, 1],
                           started_at=T0)
    api.jobs[2] = make_job(2, state="PENDING", reason="Resources")
    r = gpuq("q")
    assert r.exit_code == 0, r.stderr
    assert api.queries == [[("active", "true")]]
    out = [line.split() for line in r.stdout.splitlines()]
    assert out[0][0] == "JOBID"
    assert out[1][:5] == ["1", "train", "alice", "lab1", "RUNNING"]
    assert out[1][-1] == "gpu01(0,1)"
    assert out[2][-1] == "(Resources)"


def test_q_filters(api: FakeApi, gpuq) -> None:
    assert gpuq("queue", "--all", "-u", "bob", "-A", "lab1", "-n", "5").exit_code == 0
    assert gpuq("q", "--state", "running", "--state", "FAILED").exit_code == 0
    assert gpuq("q", "--me").exit_code == 0
    assert api.queries == [
        [("user", "bob"), ("account", "lab1"), ("limit", "5")],
        [("state", "RUNNING"), ("state", "FAILED")],
        [("active", "true"), ("user", "alice")],
    ]
    r = gpuq("q", "--me", "-u", "bob")
    assert r.exit_code == 2 and "--me or --user" in r.stderr


def test_q_json(api: FakeApi, gpuq) -> None:
    api.jobs[1] = make_job(1)
    r = gpuq("q", "--json")
    assert json.loads(r.stdout) == [api.jobs[1]]


def test_show(api: FakeApi, gpuq) -> None:
    api.jobs[4] = make_job(4, command=["python", "a b.py"], workdir="/w", environment={},
                           events=[{"time": T0.isoformat(), "old_state": None,
                                    "new_state": "PENDING", "reason": "submitted"}])
    r = gpuq("show", "4")
    assert r.exit_code == 0, r.stderr
    assert "Command:     python 'a b.py'" in r.stdout
    assert "Events:" in r.stdout
    assert json.loads(gpuq("show", "--json", "4").stdout)["id"] == 4


def test_nodes(api: FakeApi, gpuq) -> None:
    assert gpuq("nodes").stdout == "No nodes yet: start `gpuq worker` on a GPU host.\n"
    api.nodes = [{"name": "gpu01", "state": "UP", "state_reason": "", "cpus": 8,
                  "memory_mib": 1024, "gpu_backend": "simulated", "last_heartbeat_at": None,
                  "gpus": [{"index": 0, "uuid": "u", "model": "T4-16GB", "memory_mib": 16384,
                            "healthy": True, "job_id": None, "sample": {}}]}]
    r = gpuq("nodes")
    assert r.stdout.splitlines()[1].split() == ["gpu01", "UP", "1/1", "free", "1xT4-16GB"]
    assert json.loads(gpuq("nodes", "--json").stdout) == api.nodes


def test_whoami(api: FakeApi, gpuq) -> None:
    r = gpuq("whoami")
    assert r.stdout.splitlines()[:3] == ["user:     alice", "role:     user",
                                         "accounts: lab1 (default), lab2"]
    assert json.loads(gpuq("whoami", "--json").stdout)["user"] == "alice"


def test_admin_commands(api: FakeApi, gpuq) -> None:
    def admin(*args: str):
        r = gpuq("admin", *args, token=ADMIN_TOKEN)
        assert r.exit_code == 0, r.stderr
        return r

    assert admin("account", "create", "lab2", "--parent", "physics", "--description",
                 "x").stdout == "Created account lab2 under physics with 1 shares\n"
    assert admin("user", "create", "bob", "-A", "lab2", "--admin").stdout == \
        "Created user bob in account lab2 (admin)\n"
    assert admin("user", "add-account", "bob", "--account", "lab3", "--shares", "2").stdout \
        == "Added user bob to account lab3\n"
    r = admin("token", "create", "--role", "node", "--node", "gpu01")
    assert r.stdout == "gpuq_abc_SECRET\n"
    assert "shown only now" in r.stderr
    assert admin("token", "revoke", "7").stdout == "Revoked token 7\n"
    assert api.admin_posts == [
        ("accounts", {"name": "lab2", "parent": "physics", "description": "x"}),
        ("users", {"name": "bob", "account": "lab2", "admin": True}),
        ("users/bob/accounts", {"account": "lab3", "shares": 2}),
        ("tokens", {"role": "node", "node": "gpu01"}),
    ]
    r = gpuq("admin", "user", "add-account", "carol", "-A", "lab1", token=ADMIN_TOKEN)
    assert (r.exit_code, r.stderr) == (1, "gpuq: no user carol\n")


def test_admin_lists(api: FakeApi, gpuq) -> None:
    api.admin_lists = {
        "users": [{"name": "bob", "admin": False, "default_account": "lab1",
                   "accounts": [{"account": "lab1", "shares": 1}]}],
        "tokens": [{"id": 1, "prefix": "gpuq_x", "role": "node", "user": None,
                    "node": "gpu01", "description": "", "created_at": T0.isoformat(),
                    "last_used_at": None, "revoked": True}],
    }
    r = gpuq("admin", "user", "list", token=ADMIN_TOKEN)
    assert r.stdout.splitlines()[1].split() == ["bob", "lab1", "lab1(1)"]
    r = gpuq("admin", "token", "list", token=ADMIN_TOKEN)
    row = r.stdout.splitlines()[1]
    assert row.split()[:5] == ["1", "gpuq_x", "node", "node", "gpu01"]
    assert "never" in row and "revoked" in row
    assert json.loads(gpuq("admin", "account", "list", "--json", token=ADMIN_TOKEN).stdout) \
        == []
