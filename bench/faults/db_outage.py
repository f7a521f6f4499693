"""The scheduler's database away for longer than the node timeout: no job may be stopped,
requeued or failed for it (issue 16, item 4).

Real processes on this machine: PostgreSQL, Redis, ``gpuq server`` (which reaches
PostgreSQL through a TCP proxy on loopback, ``bench.faults.proxy``), one ``gpuq worker``
with simulated GPUs, running jobs that allow a requeue and jobs that do not
(``--no-requeue``). The proxy then closes every database connection and refuses new ones
(the database restarting, its host down) for ``node_down_after_s`` and more; meanwhile
the API answers 503 "database unavailable" (the worker counts that as contact: its lease
holds, its jobs run on), and afterwards the scheduler gives every node a fresh timeout.

Figures: jobs, how the API answered during the outage (503s and anything else), what
/healthz said, jobs requeued (attempt > 1), ended (not RUNNING), fenced or restarted (a
job process gone): all 0; nodes marked down: 0; how long after the database came back the
API answered again and the node's heartbeats were recorded.

    python -m bench.faults.db_outage              # 4 jobs, an outage of node_down + 2 s
    python -m bench.faults.db_outage --smoke      # CI: 2 jobs
    python -m bench.faults.db_outage --json       # one JSON object

The exit status is 1 when a guarantee is broken.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from bench.faults.jobruns import (
    FAST,
    RunWatch,
    Timings,
    alive,
    cancel_all,
    job_file,
    jobs,
    node,
    submit,
)
from bench.faults.proxy import Proxy
from bench.harness import REDIS_URL, describe, machine, pg_database
from tests.e2e.conftest import start_server, wait_for

JOB_S = 120.0


def _through(url: str, proxy: Proxy) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False)


def run_scenario(*, n_jobs: int = 4, outage_s: float | None = None,
                 timings: Timings = FAST, database_url: str, redis_url: str = REDIS_URL,
                 tmp: Path | None = None) -> dict[str, Any]:
    """Run the scenario once; its figures, ``ok`` False (with ``broken``) if a guarantee
    did not hold."""
    tmp = tmp or Path(tempfile.mkdtemp(prefix="gpuq-db-outage-"))
    outage_s = outage_s if outage_s is not None else timings.node_down_s + 2.0
    db = int(uuid.uuid4().int % 15) + 1
    broker = redis_url.rsplit("/", 1)[0] + f"/{db}"
    name = f"w-{uuid.uuid4().hex[:6]}"
    pg = make_url(database_url)
    with ExitStack() as stack:
        proxy = Proxy(pg.port or 5432, upstream_host=pg.host or "127.0.0.1").start()
        stack.callback(proxy.stop)
        c = start_server(tmp, {"GPUQ_DATABASE_URL": _through(database_url, proxy),
                               "GPUQ_BROKER_URL": broker, **timings.env()})
        stack.callback(lambda: [p.stop() for p in reversed(c.procs)])
        token = c.add_user("alice")
        c.add_worker(name, f"{n_jobs}xA100-80GB", GPUQ_WORKER_CPUS="16",
                     GPUQ_WORKER_CGROUP_ROOT="")
        runs_path = tmp / "runs.txt"
        watch = RunWatch(runs_path)
        watch.start()
        stack.callback(watch.stop)
        job_py = job_file(tmp)
        ids = [submit(c, token, job_py, runs_path, seconds=JOB_S, requeue=i % 2 == 0)
               for i in range(n_jobs)]
        stack.callback(lambda: cancel_all(c, ids, watch))
        wait_for(lambda: len(watch.runs()) == n_jobs
                 and all(j["state"] == "RUNNING" for j in jobs(c, ids).values()),
                 30, lambda: f"the jobs to run: {jobs(c, ids)}")
        before = {r.job_id: r.pid for r in watch.runs()}
        auth = {"Authorization": f"Bearer {c.admin_token}"}

        # The database goes away.
        answers: Counter[str] = Counter()
        health: Counter[str] = Counter()
        leaks: list[str] = []
        stop = threading.Event()

        def ask() -> None:
            with httpx.Client(base_url=c.url, timeout=10) as h:
                while not stop.wait(0.25):
                    try:
                        r = h.get(f"/v1/jobs/{ids[0]}", headers=auth)
                        answers[str(r.status_code)] += 1
                        z = h.get("/healthz")
                        health[f"{z.status_code} {z.json().get('database')}"] += 1
                        if any(s in z.text + r.text for s in (pg.database or "?", "psycopg",
                                                              "refused", str(pg.port))):
                            leaks.append(z.text + r.text)
                    except httpx.HTTPError as e:
                        answers[type(e).__name__] += 1

        asker = threading.Thread(target=ask, daemon=True)
        t_cut = time.time()
        proxy.cut("refuse")
        asker.start()
        time.sleep(outage_s)
        stop.set()
        asker.join(15)
        proxy.restore()
        t_back = time.time()

        # Back: the API answers, the node's heartbeats are recorded again.
        api_s = _until(lambda: httpx.get(c.url + "/healthz", timeout=5).status_code == 200)
        beat_s = _until(lambda: (at := node(c, name)["last_heartbeat_at"]) is not None
                        and datetime.fromisoformat(at).timestamp() > t_back)
        # A whole node timeout (and a little) after it: nothing may have been lost meanwhile.
        time.sleep(timings.node_down_s + 1.0)
        after = jobs(c, ids)
        runs = watch.runs()
        state = node(c, name)
        events = [e["new_state"] for j in after.values() for e in j["events"]]
        return _figures(ids, after, before, runs, answers, health, leaks, state, events,
                        outage_s, t_back - t_cut, api_s, beat_s, timings)
    raise AssertionError("unreachable")


def _until(pred: Any, timeout_s: float = 30.0) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        try:
            if pred():
                return round(time.time() - t0, 2)
        except (httpx.HTTPError, AssertionError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s")


def _figures(ids: list[int], after: dict[int, dict[str, Any]], before: dict[int, int],
             runs: list[Any], answers: Counter[str], health: Counter[str], leaks: list[str],
             state: dict[str, Any], events: list[str], planned_s: float, outage_s: float,
             api_s: float, beat_s: float, timings: Timings) -> dict[str, Any]:
    restarted = [r.job_id for r in runs if before.get(r.job_id) != r.pid]
    gone = [r.job_id for r in runs if not alive(r.pid)]
    result: dict[str, Any] = {
        "scenario": "db_outage", "settings": timings.as_dict(), "jobs": len(ids),
        "no_requeue_jobs": len(ids) // 2,
        "outage_s": round(outage_s, 2),
        "answers_during": dict(answers), "healthz_during": dict(health),
        "error_text_shown": len(leaks),
        "requeued": sum(1 for j in after.values() if j["attempt"] > 1),
        "ended": sum(1 for j in after.values() if j["state"] != "RUNNING"),
        "failed_no_requeue": sum(1 for j in after.values()
                                 if not j["requeue"] and j["state"] != "RUNNING"),
        "job_processes_gone": len(set(gone)), "job_processes_restarted": len(set(restarted)),
        "node_fail_events": events.count("NODE_FAIL"),
        "node_state": state["state"],
        "api_back_s": api_s, "heartbeats_back_s": beat_s,
    }
    broken = []
    for key in ("requeued", "ended", "failed_no_requeue", "job_processes_gone",
                "job_processes_restarted", "node_fail_events", "error_text_shown"):
        if result[key]:
            broken.append(f"{key}: {result[key]}")
    if state["state"] != "UP":
        broken.append(f"the node is {state['state']}")
    other = {k: v for k, v in answers.items() if k != "503"}
    if not answers.get("503") or other:
        broken.append(f"the API answered {dict(answers)} during the outage (503 only)")
    if set(health) != {"503 unavailable"}:
        broken.append(f"/healthz said {dict(health)} during the outage")
    if outage_s < timings.node_down_s:
        broken.append(f"the outage ({outage_s:.1f} s) was shorter than the node timeout")
    result["broken"], result["ok"] = broken, not broken
    return result


def human(r: dict[str, Any]) -> None:
    s = r["settings"]
    print(f"database outage: {r['jobs']} jobs ({r['no_requeue_jobs']} --no-requeue); "
          f"outage {r['outage_s']} s; node down after {s['node_down_after_s']} s, fence "
          f"{s['fence_after_s']} s")
    print(f"  during: API {r['answers_during']}, /healthz {r['healthz_during']}, error text "
          f"shown {r['error_text_shown']}")
    print(f"  after: requeued {r['requeued']}, ended {r['ended']} (--no-requeue failed "
          f"{r['failed_no_requeue']}), job processes gone {r['job_processes_gone']}, "
          f"NODE_FAIL events {r['node_fail_events']}, node {r['node_state']}; API back "
          f"{r['api_back_s']} s, heartbeats recorded {r['heartbeats_back_s']} s after")
    print("  OK" if r["ok"] else "  BROKEN: " + "; ".join(r["broken"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.faults.db_outage",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="2 jobs")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--outage", type=float, default=None,
                    help="seconds (default: the node timeout + 2)")
    ap.add_argument("--json", action="store_true", help="one JSON object on the last line")
    args = ap.parse_args(argv)
    m = machine()
    if not args.json:
        print(f"machine: {describe(m)}")
    with pg_database() as url:
        r = run_scenario(n_jobs=2 if args.smoke else args.jobs, outage_s=args.outage,
                         database_url=url)
    if args.json:
        print(json.dumps({"benchmark": "db_outage", "machine": m, "results": [r],
                          "ok": r["ok"]}))
    else:
        human(r)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
