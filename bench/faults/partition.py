"""A node cut off from the scheduler: its jobs must not run twice (issue 16, item 3).

Real processes on this machine: PostgreSQL, Redis, ``gpuq server``, two ``gpuq worker``
daemons with simulated GPUs. Jobs run on worker 1 (worker 2 drained meanwhile); then
worker 1 is cut off, one of two ways:

* ``stop``: its daemon gets SIGSTOP (its job supervisors, processes of their own, run on);
* ``cut``: the network between it and the server stops carrying anything (a TCP proxy on
  loopback, ``bench.faults.proxy``, that drops every byte: nothing is refused).

Worker 1's supervisors fence their jobs (SIGTERM, grace, SIGKILL) once ``fence_after_s``
has passed since the last heartbeat the server accepted; the server marks worker 1 down
after ``node_down_after_s`` (>= fence + grace + margin) and runs the jobs again on worker 2.
A watcher sees each job's processes start and go (by pid, in ``/proc``). Then worker 1
comes back (SIGCONT, or the line restored): its stale reports change nothing.

Figures: jobs, double runs (jobs whose two copies ran at the same moment) and the seconds
they overlapped (both 0), jobs rerun on worker 2 (all), when the first copies were gone,
when worker 1 was marked down and when the second copies started (seconds after the
fault), the gap between the last first copy gone and the first second copy started.

    python -m bench.faults.partition              # both faults, 4 jobs each
    python -m bench.faults.partition --smoke      # CI: the stopped daemon, 2 jobs
    python -m bench.faults.partition --json       # one JSON object

The exit status is 1 when a guarantee is broken.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

from bench.faults.jobruns import (
    FAST,
    RunWatch,
    Timings,
    cancel_all,
    job_file,
    jobs,
    node,
    submit,
)
from bench.faults.proxy import Proxy
from bench.harness import REDIS_URL, describe, machine, pg_database
from tests.e2e.conftest import start_server, wait_for

Fault = Literal["stop", "cut"]
#: How long each job sleeps: it outlives the scenario (cancelled at the end).
JOB_S = 120.0


def run_scenario(fault: Fault, *, n_jobs: int = 4, timings: Timings = FAST,
                 database_url: str, redis_url: str = REDIS_URL,
                 tmp: Path | None = None) -> dict[str, Any]:
    """Run the scenario once; its figures, ``ok`` False (with ``broken``) if a guarantee
    did not hold."""
    tmp = tmp or Path(tempfile.mkdtemp(prefix=f"gpuq-partition-{fault}-"))
    db = int(uuid.uuid4().int % 15) + 1
    broker = redis_url.rsplit("/", 1)[0] + f"/{db}"
    tag = uuid.uuid4().hex[:6]
    w1, w2 = f"w1-{tag}", f"w2-{tag}"
    with ExitStack() as stack:
        c = start_server(tmp, {"GPUQ_DATABASE_URL": database_url, "GPUQ_BROKER_URL": broker,
                               **timings.env()})
        stack.callback(lambda: [p.stop() for p in reversed(c.procs)])
        token = c.add_user("alice")
        worker_env = {"GPUQ_WORKER_CPUS": "16", "GPUQ_WORKER_CGROUP_ROOT": ""}
        proxy = None
        if fault == "cut":
            proxy = Proxy(int(c.url.rsplit(":", 1)[1])).start()
            stack.callback(proxy.stop)
            worker_env["GPUQ_SERVER_URL"] = f"http://{proxy.url_host}"
        first = c.add_worker(w1, f"{n_jobs}xA100-80GB", **worker_env)
        stack.callback(lambda: os.kill(first.popen.pid, signal.SIGCONT)
                       if first.popen.poll() is None else None)
        c.add_worker(w2, f"{n_jobs}xA100-80GB", **{k: v for k, v in worker_env.items()
                                                   if k != "GPUQ_SERVER_URL"})
        c.admin("POST", f"/v1/admin/nodes/{w2}/drain", json={"reason": "not yet"})
        runs_path = tmp / "runs.txt"
        watch = RunWatch(runs_path)
        watch.start()
        stack.callback(watch.stop)
        job_py = job_file(tmp)
        ids = [submit(c, token, job_py, runs_path, seconds=JOB_S) for _ in range(n_jobs)]
        stack.callback(lambda: cancel_all(c, ids, watch))
        wait_for(lambda: len(watch.runs()) == n_jobs
                 and all(j["state"] == "RUNNING" for j in jobs(c, ids).values()),
                 30, lambda: f"the jobs to run on {w1}: {jobs(c, ids)}")
        c.admin("POST", f"/v1/admin/nodes/{w2}/resume")

        t_fault = time.time()
        if fault == "stop":
            os.kill(first.popen.pid, signal.SIGSTOP)
        else:
            assert proxy is not None
            proxy.cut("drop")
        down_at = None

        def rerun() -> bool:
            nonlocal down_at
            if down_at is None and node(c, w1)["state"] == "DOWN":
                down_at = time.time()
            seconds = [r for r in watch.runs() if r.node == w2]
            return len(seconds) == n_jobs and all(
                j["attempt"] == 2 and j["state"] == "RUNNING" and j["node"] == w2
                for j in jobs(c, ids).values())

        wait_for(rerun, 10 * timings.node_down_s + 20,
                 lambda: f"the jobs to run again on {w2}: {jobs(c, ids)}")
        if down_at is None and node(c, w1)["state"] == "DOWN":
            down_at = time.time()
        runs = watch.runs()
        fenced = {}
        for job_id in ids:
            state = json.loads((tmp / "worker" / w1 / "jobs" / f"{job_id}.1" / "state.json")
                               .read_text())
            fenced[job_id] = f"{state['state']}: {state['reason']}"

        # Worker 1 comes back: what it says of its fenced runs changes nothing.
        t_heal = time.time()
        if fault == "stop":
            os.kill(first.popen.pid, signal.SIGCONT)
        else:
            assert proxy is not None
            proxy.restore()
        wait_for(lambda: node(c, w1)["state"] == "UP", 30, f"{w1} to come back")
        back_s = time.time() - t_heal
        wait_for(lambda: not any((tmp / "worker" / w1 / "jobs").iterdir()), 20,
                 f"{w1} to report its fenced runs")
        after = jobs(c, ids)
        return _figures(fault, ids, runs, fenced, after, w1, w2, t_fault, down_at, back_s,
                        timings)
    raise AssertionError("unreachable")


def _figures(fault: Fault, ids: list[int], runs: list[Any], fenced: dict[int, str],
             after: dict[int, dict[str, Any]], w1: str, w2: str, t_fault: float,
             down_at: float | None, back_s: float, timings: Timings) -> dict[str, Any]:
    per_job, broken = [], []
    for job_id in ids:
        mine = [r for r in runs if r.job_id == job_id]
        firsts = [r for r in mine if r.node == w1]
        seconds = [r for r in mine if r.node == w2]
        overlap = 0.0
        for a in firsts:
            for b in seconds:
                end = a.ended if a.ended is not None else time.time()
                overlap = max(overlap, end - b.started)
        per_job.append({"job_id": job_id, "first": [r.as_dict() for r in firsts],
                        "second": [r.as_dict() for r in seconds],
                        "overlap_s": round(max(0.0, overlap), 3), "fenced": fenced[job_id],
                        "attempt": after[job_id]["attempt"], "state": after[job_id]["state"],
                        "node": after[job_id]["node"]})
    firsts = [r for r in runs if r.node == w1]
    seconds = [r for r in runs if r.node == w2]
    double = [j for j in per_job if j["overlap_s"] > 0]
    still = [r.pid for r in firsts if r.ended is None]
    gone_s = max((r.ended or time.time()) - t_fault for r in firsts)
    rerun_s = min(r.started for r in seconds) - t_fault
    result: dict[str, Any] = {
        "scenario": "partition", "fault": fault, "settings": timings.as_dict(),
        "jobs": len(ids),
        "double_runs": len(double),
        "overlap_s": round(sum(j["overlap_s"] for j in double), 3),
        "first_copies_left": len(still),
        "fenced": sum(1 for v in fenced.values() if v.startswith("NODE_FAIL: fenced")),
        "requeued": sum(1 for j in after.values() if j["attempt"] == 2),
        "rerun_on_other_node": sum(1 for j in after.values() if j["node"] == w2
                                   and j["state"] == "RUNNING" and j["attempt"] == 2),
        "first_copies_gone_s": round(gone_s, 2),
        "node_down_s": None if down_at is None else round(down_at - t_fault, 2),
        "second_copies_started_s": round(rerun_s, 2),
        "recovery_s": round(max(r.started for r in seconds) - t_fault, 2),
        "gap_s": round(rerun_s - gone_s, 2),
        "node_back_s": round(back_s, 2),
        "per_job": per_job,
    }
    if double or result["overlap_s"] > 0:
        broken.append(f"{len(double)} job(s) ran twice at once ({result['overlap_s']} s)")
    if still:
        broken.append(f"first copies still running: pids {still}")
    if result["rerun_on_other_node"] != len(ids):
        broken.append(f"only {result['rerun_on_other_node']}/{len(ids)} jobs reran on {w2}")
    if result["fenced"] != len(ids):
        broken.append(f"only {result['fenced']}/{len(ids)} first runs were fenced")
    result["broken"], result["ok"] = broken, not broken
    return result


def human(r: dict[str, Any]) -> None:
    s = r["settings"]
    print(f"partition ({r['fault']}): {r['jobs']} jobs; heartbeat {s['heartbeat_interval_s']} "
          f"s, fence {s['fence_after_s']} s + grace {s['fence_grace_s']} s, node down "
          f"{s['node_down_after_s']} s")
    print(f"  double runs {r['double_runs']}, overlapping {r['overlap_s']} s; first copies "
          f"left {r['first_copies_left']}; fenced {r['fenced']}/{r['jobs']}; requeued "
          f"{r['requeued']}, rerun on the other node {r['rerun_on_other_node']}")
    print(f"  after the fault: first copies gone {r['first_copies_gone_s']} s, node down "
          f"{r['node_down_s']} s, second copies started {r['second_copies_started_s']} s "
          f"(all {r['recovery_s']} s); gap {r['gap_s']} s; node back {r['node_back_s']} s "
          "after the heal")
    print("  OK" if r["ok"] else "  BROKEN: " + "; ".join(r["broken"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.faults.partition",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="one fault (stop), 2 jobs")
    ap.add_argument("--fault", choices=["stop", "cut", "both"], default="both")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--json", action="store_true", help="one JSON object on the last line")
    args = ap.parse_args(argv)
    faults: list[Fault] = ["stop"] if args.smoke else (
        ["stop", "cut"] if args.fault == "both" else [args.fault])
    n = 2 if args.smoke else args.jobs
    m = machine()
    if not args.json:
        print(f"machine: {describe(m)}")
    results = []
    for fault in faults:
        with pg_database() as url:
            results.append(run_scenario(fault, n_jobs=n, database_url=url))
        if not args.json:
            human(results[-1])
    ok = all(r["ok"] for r in results)
    if args.json:
        print(json.dumps({"benchmark": "partition", "machine": m, "results": results,
                          "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
