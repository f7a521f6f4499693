"""A reservation grant honoured for real: PostgreSQL, Redis, `gpuq server`, two `gpuq
worker`s with simulated GPUs, jobs that checkpoint on SIGTERM, the real CLI."""

from __future__ import annotations

import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, parse_env_dump, start_server, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

GRACE_S = 3.0
CYCLE_S = 1.0

#: Works for `seconds`, saving its progress every 0.1 s; on SIGTERM it checkpoints and
#: exits; a rerun resumes from the checkpoint (as a real training job would).
CHECKPOINTING_JOB = textwrap.dedent("""
    import os, signal, sys, time
    ckpt = sys.argv[2]
    done = float(open(ckpt).read()) if os.path.exists(ckpt) else 0.0
    print("RESUMED_AT=%.1f" % done, flush=True)
    def stop(signum, frame):
        open(ckpt, "w").write("%.1f" % done)
        print("CHECKPOINTED_AT=%.1f" % done, flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if "ignore-term" in sys.argv else stop)
    while done < float(sys.argv[1]):
        time.sleep(0.1)
        done += 0.1
    print("DONE", flush=True)
""")


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[Cluster]:
    db = int(uuid.uuid4().int % 15) + 1
    broker = redis_url.rsplit("/", 1)[0] + f"/{db}"
    c = start_server(tmp_path, {"GPUQ_DATABASE_URL": pg_url, "GPUQ_BROKER_URL": broker,
                                "GPUQ_PREEMPT_GRACE_S": str(GRACE_S),
                                "GPUQ_SCHEDULE_INTERVAL_S": str(CYCLE_S)})
    try:
        tag = uuid.uuid4().hex[:6]
        # Eight 1-CPU jobs at once on a 2-core test machine: the nodes offer 8 CPUs each.
        c.add_worker(f"a-{tag}", "4xA100-80GB", GPUQ_WORKER_CPUS="8")
        c.add_worker(f"b-{tag}", "4xA100-80GB", GPUQ_WORKER_CPUS="8")
        c.add_user("gina", "qlab")
        c.add_user("olaf", "biglab")
        (tmp_path / "job.py").write_text(CHECKPOINTING_JOB)
        yield c
    finally:
        for p in reversed(c.procs):
            p.stop()


def submit(cluster: Cluster, user: str, *args: str) -> int:
    r = cluster.gpuq("submit", "--parsable", *args, user=user)
    return int(r.stdout.strip())


@pytest.mark.parametrize("borrowers_on_sigterm", ["checkpoint", "ignore-term"])
def test_a_grantee_job_gets_its_reserved_gpus_back_from_borrowers(
        cluster: Cluster, borrowers_on_sigterm: str) -> None:
    now = datetime.now(UTC)
    grant = cluster.admin("POST", "/v1/admin/grants", json={
        "account": "qlab", "kind": "reservation", "gpus": 4, "note": "2027 award",
        "start": now.isoformat(), "end": (now + timedelta(days=1)).isoformat()})
    job_py = str(cluster.tmp / "job.py")
    # biglab fills the whole cluster: four of its eight jobs borrow qlab's idle GPUs.
    borrowers = [submit(cluster, "olaf", "--gpus", "1", "--", sys.executable, job_py, "8",
                        str(cluster.tmp / f"ckpt-{i}"), borrowers_on_sigterm)
                 for i in range(8)]
    for i in borrowers:
        cluster.wait_state(i, {"RUNNING"}, 60)
    def labels() -> str:
        jobs = [(j["id"], j["node"], j["borrowed_grant"], j["borrowed_gpus"])
                for j in map(cluster.job, borrowers)]
        return f"four borrowed GPUs: {jobs}\n{cluster.procs[0].output()[-3000:]}"

    wait_for(lambda: sum(cluster.job(i)["borrowed_gpus"] for i in borrowers) == 4, 10, labels)
    assert sum(cluster.job(i)["borrowed_gpus"] for i in borrowers) == 4

    t0 = time.monotonic()
    mine = submit(cluster, "gina", "--gpus", "4", "--", sys.executable, job_py, "1",
                  str(cluster.tmp / "ckpt-gina"))
    started = cluster.wait_state(mine, {"RUNNING", "COMPLETED"}, 60)
    took = time.monotonic() - t0
    # The bound is the issue's: the grace period plus one scheduling cycle (and the
    # messages' way there and back). Victims that checkpoint stop at once; victims that
    # ignore SIGTERM are SIGKILLed after the whole grace period, not before.
    print(f"{borrowers_on_sigterm}: grantee job running {took:.2f} s after its submit "
          f"(grace {GRACE_S} s, cycle {CYCLE_S} s)")
    assert took < GRACE_S + CYCLE_S + 2.0, took
    if borrowers_on_sigterm == "ignore-term":
        assert took >= GRACE_S, took
    assert started["node"] is not None

    # Every job completes, the preempted ones after a rerun that resumed from its
    # checkpoint; nothing is lost.
    ends = [cluster.wait_state(i, {"COMPLETED", "FAILED", "CANCELLED", "PREEMPTED"}, 90)
            for i in [*borrowers, mine]]
    assert all(j["state"] == "COMPLETED" for j in ends), [(j["id"], j["state"]) for j in ends]
    preempted = [j for j in ends[:-1] if j["preemptions"]]
    assert 1 <= len(preempted) <= 4
    for j in preempted:
        states = [e["new_state"] for e in j["events"]]
        assert "PREEMPTED" in states and "REQUEUED" in states, states
        assert j["attempt"] == 2
        log = cluster.log(j["id"])
        # The log is the last attempt's: it resumed from the checkpoint it wrote on SIGTERM
        # (or from the start, when it ignored SIGTERM and was killed).
        resumed = float(parse_env_dump(log)["RESUMED_AT"])
        assert (resumed > 0) is (borrowers_on_sigterm == "checkpoint"), log
        assert "DONE" in log, log
    used = cluster.admin("GET", f"/v1/admin/grants/{grant['id']}")["usage"]
    assert used["preemptions"] == len(preempted)

    # `gpuq show` tells a preempted job's history.
    out = cluster.gpuq("show", str(preempted[0]["id"]), user="olaf").stdout
    assert "PREEMPTED" in out and "REQUEUED" in out, out
