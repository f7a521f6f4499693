"""The node's lease (fencing, worker/lease.py): the pure rule, the daemon's keeper, and a
real supervisor that stops its job when the lease runs out (issue 16, item 3)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

from gpuq.worker import jobdir as jd
from gpuq.worker.lease import LEASE, Fence, Keeper, Lease, boot_id, boottime, read, write
from tests.worker.test_supervisor import gone, make_jobdir, running, start

BOOT = "boot-1"


# --- the rule ------------------------------------------------------------------------------


def test_a_lease_runs_out_fence_after_s_after_the_request_was_sent() -> None:
    lease = Lease(BOOT, renewed_at=100.0, fence_after_s=30.0, grace_s=5.0)
    assert lease.deadline == 130.0
    assert not lease.expired(129.9, BOOT)
    assert lease.expired(130.0, BOOT)
    assert lease.expired(101.0, "another boot")  # its clock means nothing after a reboot


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_fence_reads_the_newest_lease_once_the_one_it_knows_ran_out(tmp_path: Path) -> None:
    path = tmp_path / LEASE
    clock = Clock()
    fence = Fence(path, clock=clock, boot=BOOT)
    assert not fence.due()  # no lease: this node does not fence
    write(path, Lease(BOOT, 100.0, 10.0, 2.0))
    clock.t = 105.0
    assert not fence.due() and (fence.after_s, fence.grace_s) == (10.0, 2.0)
    write(path, Lease(BOOT, 108.0, 10.0, 2.0))  # renewed
    clock.t = 112.0
    assert not fence.due()  # read again (the one it knew ran out at 110): renewed
    clock.t = 118.0
    assert fence.due()
    write(path, Lease("the last boot", 117.0, 10.0, 2.0))
    assert fence.due()
    assert not Fence(None, clock=clock, boot=BOOT).due()  # a run started without a lease


def test_the_keeper_renews_at_contact_and_never_moves_the_lease_back(tmp_path: Path) -> None:
    path = tmp_path / LEASE
    keeper = Keeper(path, boot=BOOT)
    assert not keeper.contact(50.0)  # registration answered: its terms come next
    assert read(path) is None
    keeper.set_terms(30.0, 5.0, True)  # ... and the lease is written from its send time
    assert read(path) == Lease(BOOT, 50.0, 30.0, 5.0)
    assert keeper.contact(60.0) and read(path) == Lease(BOOT, 60.0, 30.0, 5.0)
    assert not keeper.contact(55.0)  # an older request answered late
    assert read(path) == Lease(BOOT, 60.0, 30.0, 5.0)
    assert keeper.contact(61.0, database_away=True)  # the scheduler's database is away
    keeper.set_terms(20.0, 5.0, False)  # the scheduler's settings changed
    assert read(path) == Lease(BOOT, 61.0, 20.0, 5.0)
    assert not keeper.contact(62.0, database_away=True)  # no longer counts
    assert keeper.terms == (20.0, 5.0, False)
    keeper.clear()  # an older scheduler: no fence
    assert read(path) is None and not keeper.fencing and not keeper.contact(70.0)


def test_boottime_goes_on() -> None:
    a = boottime()
    time.sleep(0.01)
    assert boottime() > a > 0


# --- a real supervisor -------------------------------------------------------------------


def lease_for(tmp_path: Path, fence_after_s: float, grace_s: float = 0.5,
              renewed_at: float | None = None) -> Path:
    path = tmp_path / LEASE
    write(path, Lease(boot_id(), boottime() if renewed_at is None else renewed_at,
                      fence_after_s, grace_s))
    return path


def test_a_job_is_stopped_when_the_lease_runs_out(tmp_path: Path, wait_for: Any) -> None:
    path = lease_for(tmp_path, 1.5)
    d = make_jobdir(tmp_path, command=["sleep", "30"], extra={"lease": str(path)})
    t0 = time.monotonic()
    p = start(d)
    job = running(d, wait_for)["pid"]
    assert p.wait(10) == 0
    took = time.monotonic() - t0
    s = jd.read_json(d / jd.STATE)
    assert s is not None and gone(job)
    assert (s["state"], s["exit_code"]) == ("NODE_FAIL", 128 + signal.SIGTERM)
    assert s["reason"] == "fenced: no contact with the scheduler for 1.5 s"
    assert 1.0 < took < 4.0, took


def test_a_job_that_ignores_sigterm_is_killed_after_the_lease_s_grace(tmp_path: Path) -> None:
    path = lease_for(tmp_path, 0.5, grace_s=0.5)
    d = make_jobdir(tmp_path, command=["/bin/sh", "-c", "trap '' TERM; echo ready; "
                                       "while :; do sleep 0.05; done"],
                    kill_grace_s=30, extra={"lease": str(path)})
    p = start(d)
    assert p.wait(10) == 0  # not the 30 s of the worker's own grace
    s = jd.read_json(d / jd.STATE)
    assert s is not None and (s["state"], s["exit_code"]) == ("NODE_FAIL", 128 + signal.SIGKILL)


def test_a_renewed_lease_keeps_the_job_running(tmp_path: Path, wait_for: Any) -> None:
    path = lease_for(tmp_path, 1.0)
    d = make_jobdir(tmp_path, command=["sleep", "3"], extra={"lease": str(path)})
    stop = threading.Event()

    def renew() -> None:  # the daemon's heartbeats, every 0.2 s
        while not stop.wait(0.2):
            lease_for(tmp_path, 1.0)

    t = threading.Thread(target=renew)
    t.start()
    try:
        p = start(d)
        assert p.wait(10) == 0
    finally:
        stop.set()
        t.join()
    s = jd.read_json(d / jd.STATE)
    assert s is not None and (s["state"], s["exit_code"]) == ("COMPLETED", 0)


def test_a_job_is_not_started_once_the_lease_has_run_out(tmp_path: Path) -> None:
    path = lease_for(tmp_path, 5.0, renewed_at=boottime() - 10)
    d = make_jobdir(tmp_path, command=["/bin/sh", "-c", "echo started"],
                    extra={"lease": str(path)})
    p = start(d)
    assert p.wait(10) == 0
    s = jd.read_json(d / jd.STATE)
    assert s is not None and (s["state"], s["pid"]) == ("NODE_FAIL", None)
    assert s["reason"] == "not started: fenced: no contact with the scheduler for 5 s"
    assert not (d / jd.LOG).exists() or "started" not in (d / jd.LOG).read_text()


# --- the daemon keeps it ---------------------------------------------------------------


def test_the_daemon_renews_the_lease_at_each_accepted_heartbeat(
        tmp_path: Path, server: Any, token: str, make_spec: Any, wait_for: Any) -> None:
    import httpx

    from gpuq.config import Settings
    from gpuq.worker.client import NodeClient
    from gpuq.worker.daemon import Daemon
    from gpuq.worker.gpus import open_backend
    from gpuq.worker.jobenv import daemon_identity

    fence = {"after_s": 30.0, "grace_s": 5.0, "hold_on_database_outage": True}
    given: dict[str, Any] = {"fence": fence}

    def handle(request: httpx.Request) -> httpx.Response:
        r = server.handle(request)
        if request.url.path.endswith(("/register", "/heartbeat")) and r.status_code == 200:
            return httpx.Response(200, json={**r.json(), **given})
        return r

    api = NodeClient("http://sched", "n1", token, transport=httpx.MockTransport(handle),
                     retries=0)
    conf = Settings(data_dir=tmp_path / "data", node_name="n1", worker_cgroup_root="",
                    kill_grace_s=0.3, simulate_gpus="1xT4-16GB")
    daemon = Daemon(conf, open_backend(conf), api, identity=lambda user: daemon_identity())
    path = daemon.manager.lease_path
    try:
        before = boottime()
        assert daemon.register() is not None
        first = read(path)
        assert first is not None and (first.fence_after_s, first.grace_s) == (30.0, 5.0)
        assert before <= first.renewed_at <= boottime()
        given = {}  # the scheduler's fence has not changed: it says nothing more
        daemon.heartbeat()
        second = read(path)
        assert second is not None and second.renewed_at > first.renewed_at
        assert server.heartbeats[-1]["fence"] == fence  # the node says which it keeps
        given = {"fence": {**fence, "after_s": 20.0}}  # the scheduler's settings changed
        daemon.heartbeat()
        third = read(path)
        assert third is not None and third.fence_after_s == 20.0
        # Each run's supervisor is told where the lease is.
        server.specs[1] = make_spec(command=["true"], gpu_indices=[0])
        assert daemon.handlers.launch(1).startswith("launched")
        spec = jd.read_json(daemon.manager.jobs_dir / "1.1" / jd.SPEC)
        assert spec is not None and spec["lease"] == str(path)
        given = {"fence": None}  # an older scheduler: no fence, no lease
        daemon.register()
        assert not path.exists()
    finally:
        daemon.manager.close()
        api.close()
