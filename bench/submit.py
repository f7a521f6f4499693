"""Submit throughput: jobs accepted per second through the HTTP API, on PostgreSQL.

Starts a real ``gpuq server`` (PostgreSQL, the Redis broker, its scheduling loop running),
registers one 8-GPU node, then for 1, 2, 4, 8, 16 and 32 concurrent clients submits
single jobs as ``gpuq submit`` does (one ``POST /v1/jobs`` each, with an idempotency key)
for a few seconds and counts the jobs accepted (201). Then one ``POST /v1/jobs/array``
of 10,000 jobs, timed from the request to its answer. The clients run in this process
(keep-alive ``http.client`` connections, one thread each) on the same machine.

Targets (2-core machine): >= 1,000 single-job submits/s (best concurrency), and a
10,000-job array in one request < 1 s.

Run from the repository root:

  python -m bench.submit                    # 1..32 clients, 5 s each, a 10,000-job array
  python -m bench.submit --json             # one JSON object
  python -m bench.submit --smoke            # CI: tiny, seconds
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from typing import Any

from bench.harness import (
    WORKERS,
    CpuUse,
    Http,
    add_workers_option,
    describe,
    fake_node,
    finish,
    machine,
    server,
    summary_ms,
    verdict,
)

TARGET_SUBMITS_PER_S = 1000.0
TARGET_ARRAY_S = 1.0
TARGET_ARRAY_JOBS = 10_000
CLIENTS = (1, 2, 4, 8, 16, 32)


def job_body(key: str | None = None) -> dict[str, Any]:
    return {"command": ["/bin/true"], "workdir": "/tmp", "gpus": 1,
            "environment": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            "idempotency_key": key or uuid.uuid4().hex}


def submit_level(url: str, token: str, clients: int, seconds: float,
                 cpu: CpuUse | None = None) -> dict[str, Any]:
    """``clients`` threads submitting one job at a time for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        with Http(url, token) as h:
            h.request("GET", "/v1/whoami")  # connect first: not part of the figure
            start.wait()
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                status, _ = h.request("POST", "/v1/jobs", job_body())
                latencies[i].append(time.perf_counter() - t0)
                if status != 201:
                    errors[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds + 60  # until the barrier opens
    if cpu is not None:
        cpu.start()
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cores = cpu.stop() if cpu is not None else {}
    flat = [x for lat in latencies for x in lat]
    ok = len(flat) - sum(errors)
    return {"clients": clients, "accepted": ok, "errors": sum(errors),
            "seconds": round(elapsed, 3), "per_s": round(ok / elapsed, 1),
            "latency": summary_ms(flat), "cpu_cores": cores}


def submit_array(url: str, token: str, n: int) -> dict[str, Any]:
    body = {**job_body(), "array": f"0-{n - 1}"}
    with Http(url, token) as h:
        h.request("GET", "/v1/whoami")
        t0 = time.perf_counter()
        status, reply = h.request("POST", "/v1/jobs/array", body)
        elapsed = time.perf_counter() - t0
        # The same request again (a client's retry): the same jobs, none made.
        t1 = time.perf_counter()
        status2, reply2 = h.request("POST", "/v1/jobs/array", body)
        replay = time.perf_counter() - t1
    assert status == 201, (status, reply)
    assert status2 == 200 and reply2["ids"] == reply["ids"], (status2, reply2)
    return {"jobs": len(reply["ids"]), "seconds": round(elapsed, 3),
            "replay_seconds": round(replay, 3)}


def run(clients: tuple[int, ...], seconds: float, array_jobs: int,
        workers: int = WORKERS) -> dict[str, Any]:
    where = machine()
    with server({"GPUQ_SCHEDULE_INTERVAL_S": "5",
                 "GPUQ_API_WORKERS": str(workers)}) as cluster:
        fake_node(cluster, "bench-node")
        token = cluster.add_user("bench")
        cpu = CpuUse.of(cluster)
        levels = [submit_level(cluster.url, token, c, seconds, cpu) for c in clients]
        array = submit_array(cluster.url, token, array_jobs)
    best = max(levels, key=lambda r: r["per_s"])
    return {
        "benchmark": "submit",
        "machine": where,
        "workers": workers,
        "levels": levels,
        "best": {"clients": best["clients"], "per_s": best["per_s"]},
        "array": array,
        "target": {"submits_per_s": TARGET_SUBMITS_PER_S, "array_jobs": TARGET_ARRAY_JOBS,
                   "array_s": TARGET_ARRAY_S},
        "met": {"submits_per_s": best["per_s"] >= TARGET_SUBMITS_PER_S,
                "array_s": (array["jobs"] == TARGET_ARRAY_JOBS
                            and array["seconds"] < TARGET_ARRAY_S)},
    }


def print_human(r: dict[str, Any], smoke: bool) -> None:
    m = r["machine"]
    print(f"submit throughput: HTTP API (gpuq server --workers {r['workers']}), PostgreSQL, "
          f"Redis broker; {m['platform']}, {describe(m)}")
    print(f"{'clients':>7} {'jobs/s':>8} {'accepted':>8} {'errors':>6} {'p50 ms':>7} "
          f"{'p99 ms':>7}")
    for lv in r["levels"]:
        print(f"{lv['clients']:>7} {lv['per_s']:>8.1f} {lv['accepted']:>8} {lv['errors']:>6} "
              f"{lv['latency']['p50_ms']:>7.1f} {lv['latency']['p99_ms']:>7.1f}")
    top = max(r["levels"], key=lambda lv: lv["clients"])
    print(f"CPU at {top['clients']} clients, cores: " + ", ".join(
        f"{k} {v:.2f}" for k, v in top["cpu_cores"].items()))
    note = " (smoke run: not the target's measurement)" if smoke else ""
    b, a, t = r["best"], r["array"], r["target"]
    print(f"single-job submits: best {b['per_s']:.0f}/s ({b['clients']} clients); target "
          f">= {t['submits_per_s']:.0f}/s: {verdict(r['met']['submits_per_s'])}{note}")
    print(f"one array of {a['jobs']} jobs: {a['seconds']:.3f} s (replay {a['replay_seconds']:.3f}"
          f" s); target {t['array_jobs']} jobs < {t['array_s']:.0f} s: "
          f"{verdict(r['met']['array_s'])}{note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    ap.add_argument("--seconds", type=float, default=5.0, help="per concurrency level")
    ap.add_argument("--array-jobs", type=int, default=TARGET_ARRAY_JOBS)
    add_workers_option(ap)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--smoke", action="store_true", help="a tiny, quick run for CI")
    args = ap.parse_args()
    if args.smoke:
        r = run((1, 4), 0.5, 50, args.workers)
    else:
        r = run(tuple(args.clients), args.seconds, args.array_jobs, args.workers)
    return finish(r, as_json=args.json, smoke=args.smoke, human=print_human)


if __name__ == "__main__":
    sys.exit(main())
