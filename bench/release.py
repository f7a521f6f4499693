"""Release latency: from a job's end (its process exit) to the next job's process start on
the GPU it freed, with a deep queue.

Starts a real ``gpuq server`` (PostgreSQL + Redis) and a real ``gpuq worker`` with 8
simulated GPUs, queues ``--pending`` one-GPU jobs (arrays of up to 10,000, or single jobs:
``--queue``) and lets them
run: each job writes the time it started and, last thing before it exits, the time it
ended, with the GPU it was given (``CUDA_VISIBLE_DEVICES``), into a file of its own. A
release is one GPU's end followed by that GPU's next start; the figure is the time
between the two (same machine, same clock). Each job runs ``--duration`` seconds, so all
8 GPUs are busy and free up by themselves, as a queue of short jobs does. The first
starts (the queue filling the idle GPUs) are no releases; the server stops with the
rest of the queue pending once enough releases are measured.

Targets (issue 17): at 10,000 pending p50 <= 50 ms and p99 <= 200 ms over >= 100
releases; at 100,000 pending p50 <= 100 ms.

Run from the repository root:

  python -m bench.release                   # 10,000 then 100,000 pending
  python -m bench.release --pending 10000 --releases 200
  python -m bench.release --json            # one JSON object
  python -m bench.release --smoke           # CI: 300 pending, a few releases
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import (
    WORKERS,
    CpuUse,
    Http,
    add_workers_option,
    describe,
    finish,
    machine,
    server,
    submit_singles,
    summary_ms,
    verdict,
)
from tests.e2e.conftest import wait_for

GPUS = 8
ARRAY_MAX = 10_000
#: Target figures by queue depth: (p50 ms, p99 ms or None).
TARGETS: dict[int, tuple[float, float | None]] = {10_000: (50.0, 200.0),
                                                  100_000: (100.0, None)}
TARGET_MIN_RELEASES = 100
#: What each job runs: its start, a sleep, its end (the last thing before it exits).
JOB = ('echo "s $(date +%s.%N) $CUDA_VISIBLE_DEVICES" > "$0/$GPUQ_JOB_ID"; sleep "$1"; '
       'echo "e $(date +%s.%N) $CUDA_VISIBLE_DEVICES" >> "$0/$GPUQ_JOB_ID"')


def releases(folder: Path) -> list[tuple[float, float, int]]:
    """Each GPU's releases: (one job's end, its next job's start, that job's id)."""
    by_gpu: dict[str, list[tuple[float, str, int]]] = {}
    for f in folder.iterdir():
        for line in f.read_text().splitlines():
            kind, at, gpu = line.split()
            by_gpu.setdefault(gpu, []).append((float(at), kind, int(f.name)))
    out = []
    for events in by_gpu.values():
        events.sort()
        for (t0, k0, _), (t1, k1, job) in zip(events, events[1:], strict=False):
            if k0 == "e" and k1 == "s":
                out.append((t0, t1, job))
    return out


def _t(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def measure(pending: int, wanted: int, duration_s: float, workers: int,
            singles: bool = False) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="gpuq-bench-release-"))
    with server({"GPUQ_API_WORKERS": str(workers), "GPUQ_NODE_DOWN_AFTER_S": "60",
                 # The default timer, as the other benchmarks run (the test harness sets
                 # 1 s, which made a full pass come every 1-2 s at 10,000 pending).
                 "GPUQ_SCHEDULE_INTERVAL_S": "5"},
                redis_db=12) as cluster:
        print(f"server and worker logs: {cluster.tmp}", file=sys.stderr)
        # One CPU a job (the default): the node offers one per GPU, whatever the host has.
        cluster.add_worker("bench", f"{GPUS}xA100-80GB", GPUQ_WORKER_CPUS=str(GPUS))
        token = cluster.add_user("bench")
        job = {"command": ["/bin/sh", "-c", JOB, str(folder), str(duration_s)],
               "workdir": str(folder), "gpus": 1, "environment": {"PATH": "/usr/bin:/bin"}}
        with Http(cluster.url, token, timeout=600) as h:
            t0 = time.monotonic()
            if singles:
                submit_singles(cluster.url, token, job, pending)
            left = 0 if singles else pending
            while left:
                n = min(left, ARRAY_MAX)
                status, reply = h.request("POST", "/v1/jobs/array",
                                          {**job, "array": f"0-{n - 1}"})
                assert status == 201, reply
                left -= n
            queued_s = time.monotonic() - t0
            # Releases count from here: single jobs take a while to submit, and the jobs
            # that ran meanwhile shared the machine with the submits.
            queued_at = time.time()
            cpu = CpuUse.of(cluster)
            cpu.start()
            # The first GPUS starts fill the idle GPUs: no release before them.
            wait_for(lambda: sum(1 for end, _, _ in releases(folder) if end >= queued_at)
                     >= wanted, max(120.0, 20 * wanted * duration_s), "enough jobs to run")
            used = cpu.stop()
            found = [r for r in releases(folder) if r[0] >= queued_at]
            # The server's time of each next job's dispatch splits the release in two.
            split: dict[str, list[float]] = {"end -> DISPATCHED": [],
                                             "DISPATCHED -> start": []}
            for end, start, job_id in found[:100]:
                dispatched = _t(h.request("GET", f"/v1/jobs/{job_id}")[1]["dispatched_at"])
                split["end -> DISPATCHED"].append(dispatched - end)
                split["DISPATCHED -> start"].append(start - dispatched)
            gaps = [start - end for end, start, _ in found]  # the rest stays queued
    return {"pending": pending, "queue": "single jobs" if singles else "arrays",
            "duration_s": duration_s, "queued_s": round(queued_s, 2),
            "release": summary_ms(gaps), "cpu": used,
            "split": {k: summary_ms(v) for k, v in split.items()}}


def run(depths: list[int], wanted: int, duration_s: float, workers: int,
        queues: tuple[str, ...] = ("arrays", "singles")) -> dict[str, Any]:
    where = machine()
    results = [measure(d, wanted, duration_s, workers, singles=kind == "singles")
               for kind in queues for d in depths]
    met: dict[str, bool] = {}
    for r in results:
        target = TARGETS.get(r["pending"])
        if target is None:
            continue
        s = r["release"]
        key = f"{r['pending']}_{'singles' if r['queue'] == 'single jobs' else 'arrays'}"
        met[f"{key}_p50_ms"] = s["p50_ms"] <= target[0]
        if target[1] is not None:
            met[f"{key}_p99_ms"] = s["p99_ms"] <= target[1]
        met[f"{key}_releases"] = s["n"] >= TARGET_MIN_RELEASES
    return {"benchmark": "release", "machine": where, "gpus": GPUS, "workers": workers,
            "results": results,
            "target": {str(k): {"p50_ms": v[0], "p99_ms": v[1]} for k, v in TARGETS.items()}
            | {"releases": TARGET_MIN_RELEASES},
            "met": met}


def print_human(r: dict[str, Any], smoke: bool) -> None:
    print(f"release latency: a job's end -> the next job's start on its GPU, {r['gpus']} "
          f"GPUs busy, gpuq server --workers {r['workers']}; {describe(r['machine'])}")
    print(f"{'pending':>8} {'queue':>11} {'job s':>6} {'n':>5} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7}  target")
    for res in r["results"]:
        s = res["release"]
        target = TARGETS.get(res["pending"])
        text = ""
        if target is not None:
            text = f"p50 <= {target[0]:.0f} ms {verdict(s['p50_ms'] <= target[0])}"
            if target[1] is not None:
                text += f", p99 <= {target[1]:.0f} ms {verdict(s['p99_ms'] <= target[1])}"
            text += (f", >= {TARGET_MIN_RELEASES} releases "
                     f"{verdict(s['n'] >= TARGET_MIN_RELEASES)}")
        print(f"{res['pending']:>8} {res['queue']:>11} {res['duration_s']:>6} {s['n']:>5} "
              f"{s['p50_ms']:>7.1f} "
              f"{s['p95_ms']:>7.1f} {s['p99_ms']:>7.1f} {s['max_ms']:>7.1f}  {text}")
        for k, v in res["split"].items():
            print(f"{'':>8} {k:<22} p50 {v['p50_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms "
                  f"(server clock, first {v['n']})")
        print(f"{'':>8} queued in {res['queued_s']} s; CPU while measured: "
              + ", ".join(f"{k} {v}" for k, v in res["cpu"].items()))
    if smoke:
        print("(smoke run: not the target's measurement)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pending", type=int, action="append",
                    help="jobs queued (repeat for several runs) [10000 and 100000]")
    ap.add_argument("--releases", type=int, default=2 * TARGET_MIN_RELEASES)
    ap.add_argument("--duration", type=float, default=0.3, help="seconds each job runs")
    ap.add_argument("--queue", choices=("arrays", "singles", "both"), default="both",
                    help="the pending jobs as arrays (one record each, elements made as "
                         "they start) or as single jobs (a row each), or both in turn")
    add_workers_option(ap)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--smoke", action="store_true", help="300 pending, a few releases, for CI")
    args = ap.parse_args()
    if args.smoke:
        r = run([300], 10, 0.3, WORKERS)
    else:
        queues = ("arrays", "singles") if args.queue == "both" else (args.queue,)
        r = run(args.pending or sorted(TARGETS), args.releases, args.duration, args.workers,
                queues)
    return finish(r, as_json=args.json, smoke=args.smoke, human=print_human)


if __name__ == "__main__":
    sys.exit(main())
