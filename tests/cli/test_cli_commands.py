"""q, show, nodes, whoami and admin against the fake API: what they ask and print."""

from __future__ import annotations

import json

import pytest
from cli_fakeapi import ADMIN_TOKEN, T0, FakeApi, make_gpu, make_job, make_node, make_user


def test_q_asks_for_active_jobs_by_default(api: FakeApi, gpuq) -> None:
    api.jobs[1] = make_job(1, state="RUNNING", reason="", node="gpu01", gpu_indices=[0, 1],
                           started_at=T0)
    api.jobs[2] = make_job(2, state="PENDING", reason="Resources")
    r = gpuq("q")
    assert r.exit_code == 0, r.stderr
    assert api.queries == [[("active", "true"), ("view", "brief")]]
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
        [("user", "bob"), ("account", "lab1"), ("limit", "5"), ("view", "brief")],
        [("state", "RUNNING"), ("state", "FAILED"), ("view", "brief")],
        [("active", "true"), ("user", "alice"), ("view", "brief")],
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


def test_show_a_requeued_job(api: FakeApi, gpuq) -> None:
    api.jobs[4] = make_job(4, state="RUNNING", reason="", node="gpu02", gpu_indices=[0],
                           started_at=T0, attempt=2, gpu_energy_j=12_300.0,
                           max_gpu_memory_mib=12_288.0)
    r = gpuq("show", "4")
    assert r.exit_code == 0, r.stderr
    out = r.stdout.splitlines()
    assert {"Attempt:     2 (requeued)", "Requeue:     yes", "GPU energy:  12.3 kJ (3.4 Wh)",
            "GPU memory:  12G peak"} <= set(out)
    shown = json.loads(gpuq("show", "--json", "4").stdout)
    assert (shown["attempt"], shown["requeue"], shown["gpu_energy_j"]) == (2, True, 12_300.0)


def test_nodes(api: FakeApi, gpuq) -> None:
    assert gpuq("nodes").stdout == "No nodes yet: start `gpuq worker` on a GPU host.\n"
    api.nodes = [{"name": "gpu01", "state": "UP", "state_reason": "", "cpus": 8,
                  "memory_mib": 1024, "gpu_backend": "simulated", "last_heartbeat_at": None,
                  "gpus": [{"index": 0, "uuid": "u", "model": "T4-16GB", "memory_mib": 16384,
                            "healthy": True, "job_id": None, "sample": {}}]}]
    r = gpuq("nodes")
    assert r.stdout.splitlines()[1].split() == ["gpu01", "UP", "1/1", "free", "1xT4-16GB"]
    assert json.loads(gpuq("nodes", "--json").stdout) == api.nodes


def test_nodes_shows_drain_health_and_foreign_processes(api: FakeApi, gpuq) -> None:
    api.nodes = [
        make_node("gpu01", gpus=[
            make_gpu(0),
            make_gpu(1, healthy=False, health_reason="uncorrected ECC errors"),
            make_gpu(2, foreign_processes=[{"pid": 1234, "user": "bob",
                                            "command": "python train.py",
                                            "used_memory_mib": 12288.0}]),
            make_gpu(3, job_id=5),
        ]),
        make_node("gpu02", state="DRAIN", drain=True, drain_reason="replacing GPU 3", gpus=2),
    ]
    r = gpuq("nodes")
    assert r.exit_code == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[1].split() == ["gpu01", "UP", "1/4", "free", "4xA100-80GB"]
    assert out[3].split()[:5] == ["1", "unhealthy", "(uncorrected", "ECC", "errors)"]
    assert out[4].split()[:2] == ["2", "occupied"]
    assert out[5].strip() == "pid 1234 bob: python train.py (12.0G)"
    assert out[6].split()[:2] == ["3", "busy"]
    assert out[7].split() == ["gpu02", "DRAIN", "(replacing", "GPU", "3)", "0/2", "free",
                              "2xA100-80GB"]
    # --json is the server's answer as it is.
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


def admin_ok(gpuq, *args: str):  # noqa: ANN201 - a click Result
    r = gpuq("admin", *args, token=ADMIN_TOKEN)
    assert r.exit_code == 0, r.stderr
    return r


def test_admin_user_unix_user(api: FakeApi, gpuq) -> None:
    assert admin_ok(gpuq, "user", "create", "bob", "-A", "lab1", "--unix-user",
                    "bsmith").stdout == \
        "Created user bob in account lab1; jobs run as Unix user bsmith\n"
    assert api.admin_posts == [("users", {"name": "bob", "account": "lab1",
                                          "unix_user": "bsmith"})]
    assert admin_ok(gpuq, "user", "set", "bob", "--unix-user", "bob2").stdout == \
        "Updated user bob: jobs run as Unix user bob2, not an admin\n"
    assert admin_ok(gpuq, "user", "set", "bob", "--admin").stdout == \
        "Updated user bob: jobs run as Unix user bob2, admin\n"
    assert admin_ok(gpuq, "user", "set", "bob", "--no-admin", "--unix-user", "bob").stdout \
        == "Updated user bob: jobs run as Unix user bob, not an admin\n"
    assert api.admin_patches == [("bob", {"unix_user": "bob2"}), ("bob", {"admin": True}),
                                 ("bob", {"unix_user": "bob", "admin": False})]
    r = admin_ok(gpuq, "user", "list")
    assert r.stdout.splitlines()[0].split() == ["USER", "ADMIN", "UNIX", "USER", "DEFAULT",
                                                "ACCOUNTS(SHARES)", "QOS", "STATUS"]


@pytest.mark.parametrize(("args", "code", "stderr"), [
    (["set", "carol", "--admin"], 1, "gpuq: no user carol\n"),
    (["set", "bob", "--unix-user", "Bob Smith"], 1,
     "gpuq: user.unix_user: String should match pattern '^[a-z_][a-z0-9_.-]{0,31}$'\n"),
    (["create", "bob", "-A", "lab1", "--unix-user", "x" * 40], 1,
     "gpuq: user.unix_user: String should match pattern '^[a-z_][a-z0-9_.-]{0,31}$'\n"),
])
def test_admin_user_refusals(api: FakeApi, gpuq, args: list[str], code: int,
                             stderr: str) -> None:
    api.users["bob"] = make_user("bob")
    r = gpuq("admin", "user", *args, token=ADMIN_TOKEN)
    assert (r.exit_code, r.stderr) == (code, stderr)
    assert api.admin_patches == []


def test_admin_user_set_needs_a_change(api: FakeApi, gpuq) -> None:
    r = gpuq("admin", "user", "set", "bob", token=ADMIN_TOKEN)
    assert r.exit_code == 2
    assert "nothing to change: give --unix-user, --admin or --no-admin" in r.stderr


def test_admin_node_drain_and_resume(api: FakeApi, gpuq) -> None:
    api.nodes = [make_node("gpu01", gpus=2)]
    assert admin_ok(gpuq, "node", "drain", "gpu01", "--reason", "replacing GPU 3").stdout == \
        "Node gpu01 drained: replacing GPU 3 (running jobs finish; nothing new starts)\n"
    assert gpuq("nodes").stdout.splitlines()[1].split() == \
        ["gpu01", "DRAIN", "(replacing", "GPU", "3)", "0/2", "free", "2xA100-80GB"]
    assert admin_ok(gpuq, "node", "resume", "gpu01").stdout == \
        "Node gpu01 resumed: new jobs may start there\n"
    assert gpuq("nodes").stdout.splitlines()[1].split() == \
        ["gpu01", "UP", "2/2", "free", "2xA100-80GB"]
    assert api.admin_posts == [("nodes/gpu01/drain", {"reason": "replacing GPU 3"}),
                               ("nodes/gpu01/resume", {})]
    api.nodes[0]["state"] = "DOWN"
    assert admin_ok(gpuq, "node", "resume", "gpu01").stdout == \
        "Node gpu01 resumed: new jobs may start there once it is up (it is DOWN now)\n"


@pytest.mark.parametrize(("args", "code", "stderr"), [
    (["drain", "gpu09", "--reason", "x"], 1, "gpuq: no node gpu09\n"),
    (["resume", "gpu09"], 1, "gpuq: no node gpu09\n"),
    (["drain", "gpu01", "--reason", ""], 1,
     "gpuq: drain.reason: String should have at least 1 character\n"),
])
def test_admin_node_refusals(api: FakeApi, gpuq, args: list[str], code: int,
                             stderr: str) -> None:
    api.nodes = [make_node("gpu01")]
    r = gpuq("admin", "node", *args, token=ADMIN_TOKEN)
    assert (r.exit_code, r.stderr, r.stdout) == (code, stderr, "")
    assert api.nodes[0]["drain"] is False


def test_admin_node_drain_needs_a_reason_and_an_admin(api: FakeApi, gpuq) -> None:
    api.nodes = [make_node("gpu01")]
    r = gpuq("admin", "node", "drain", "gpu01", token=ADMIN_TOKEN)
    assert r.exit_code == 2 and "Missing option '--reason'" in r.stderr
    r = gpuq("admin", "node", "drain", "gpu01", "--reason", "x")
    assert r.exit_code == 4 and r.stderr.startswith("gpuq: permission denied: ")
    assert api.admin_posts == []


def test_admin_lists(api: FakeApi, gpuq) -> None:
    api.users["bob"] = make_user("bob", unix_user="bsmith")
    api.admin_lists = {
        "tokens": [{"id": 1, "prefix": "gpuq_x", "role": "node", "user": None,
                    "node": "gpu01", "description": "", "created_at": T0.isoformat(),
                    "last_used_at": None, "revoked": True}],
    }
    r = gpuq("admin", "user", "list", token=ADMIN_TOKEN)
    assert r.stdout.splitlines()[1].split() == ["bob", "bsmith", "lab1", "lab1(1)"]
    r = gpuq("admin", "token", "list", token=ADMIN_TOKEN)
    row = r.stdout.splitlines()[1]
    assert row.split()[:5] == ["1", "gpuq_x", "node", "node", "gpu01"]
    assert "never" in row and "revoked" in row
    assert json.loads(gpuq("admin", "account", "list", "--json", token=ADMIN_TOKEN).stdout) \
        == []
