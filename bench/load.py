"""A department's load at once: many nodes heartbeating, a long queue, people listing it.

Starts a real ``gpuq server`` (PostgreSQL, Redis broker, its loop running), registers 200
simulated nodes of 8 GPUs that only talk HTTP, fills them with 8-GPU jobs (one array) and
queues 10,000 more (single jobs, a row each: an array's waiting elements would be one
record and one folded line in a listing), then for a while:

- each node sends a heartbeat every second as a worker does: its GPUs' samples and the
  jobs it was told to run, each with its GPUs' sample (utilisation, memory, power, energy
  counter); the nodes' phases spread evenly over the second as independent daemons' are;
- 20 clients list the queue once a second, as ``gpuq q`` does
  (``GET /v1/jobs?active=true&view=brief``);
- once a second a probe job is submitted, and the time until the loop has looked at it
  (its reason is no longer ``Submitted``) is the loop's lag.

The figures are the steady state's: everything above starts at once, and the measured
``--seconds`` begin once the loop has taken in the whole queue (the first probe, submitted
after the 10,000 jobs, has been looked at: the cycle that first reads, ranks and writes
10,000 new jobs is the heaviest) and ``--settle`` seconds more have passed. How long that
warm-up took is printed too.

Targets (2-core machine): API p99 < 100 ms (heartbeats and listings), and the loop keeps
up: its lag does not grow (the last third's median lag is at most twice the first
third's plus 0.5 s, and every probe was seen).

Run from the repository root:

  python -m bench.load                      # 200 nodes, 10,000 pending, 20 clients, 30 s
  python -m bench.load --json               # one JSON object
  python -m bench.load --smoke              # CI: a tiny cluster for a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
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
    submit_singles,
    summary_ms,
    verdict,
)

TARGET_P99_MS = 100.0
NODES, PENDING, CLIENTS, SECONDS, SETTLE = 200, 10_000, 20, 30.0, 5.0
#: The longest warm-up before the measured window starts anyway, in seconds.
MAX_WARMUP = 180.0
GPUS_PER_NODE = 8
#: What ``gpuq q`` asks for (its table reads the brief listing).
LIST_PATH = "/v1/jobs?active=true&view=brief"


class Window:
    """The measured stretch of the run: samples taken from ``start`` count; everything
    stops at ``end`` (both unknown until the warm-up is over)."""

    def __init__(self) -> None:
        self.start = self.end = float("inf")

    def open(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.end = self.start + seconds

    def over(self) -> bool:
        return time.perf_counter() >= self.end


def _job(**kw: Any) -> dict[str, Any]:
    return {"command": ["/bin/true"], "workdir": "/tmp", "gpus": GPUS_PER_NODE,
            "environment": {"PATH": "/usr/bin:/bin"}, **kw}


def _sample(seconds: float) -> dict[str, Any]:
    """A running 8-GPU job's sample, as a worker sends it with every heartbeat: its GPUs
    busy at 90 %, 300 W each, energy counters since its start."""
    gpus = [{"index": i, "utilization_pct": 90.0, "memory_used_mib": 40_000.0,
             "power_w": 300.0, "energy_j": round(300.0 * seconds, 1),
             "energy_method": "counter"} for i in range(GPUS_PER_NODE)]
    return {"utilization_pct": 90.0, "memory_used_mib": 40_000.0 * GPUS_PER_NODE,
            "power_w": 300.0 * GPUS_PER_NODE,
            "energy_j": round(300.0 * GPUS_PER_NODE * seconds, 1), "gpus": gpus}


class Fleet:
    """Simulated nodes: each heartbeats every second with the jobs it was told to run.
    Their phases are spread evenly over the second, as independent worker daemons'
    are (each started at its own moment), not fired together at the top of each second."""

    def __init__(self, url: str, tokens: dict[str, str], threads: int) -> None:
        self.url, self.tokens = url, tokens
        self.latencies: list[tuple[float, float]] = []  # (sent at, seconds)
        self.errors = 0
        #: When beats were not sent: their node's thread was over a second late for them.
        self.skipped: list[float] = []
        names = sorted(tokens)
        phase = {n: i / len(names) for i, n in enumerate(names)}
        self.groups = [[(n, phase[n]) for n in names[i::threads]] for i in range(threads)]

    def run(self, window: Window) -> None:
        start = time.perf_counter()
        ts = [threading.Thread(target=self._group, args=(g, start, window))
              for g in self.groups]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    def _group(self, nodes: list[tuple[str, float]], start: float, window: Window) -> None:
        conns = {n: Http(self.url, self.tokens[n]) for n, _ in nodes}
        running: dict[str, dict[int, float]] = {n: {} for n, _ in nodes}  # job: started
        second = 0
        while start + second < window.end:
            for n, phase in nodes:
                at = start + second + phase
                if at >= window.end:
                    break
                late = time.perf_counter() - at
                if late > 1.0:
                    # A worker beats once per interval after its last beat: one that was
                    # held up does not send the beats it missed in a burst.
                    self.skipped.append(at)
                    continue
                time.sleep(max(0.0, -late))
                now = time.perf_counter()
                body = {"jobs": [{"job_id": j, "attempt": 1, "state": "RUNNING",
                                  "sample": _sample(now - t)}
                                 for j, t in sorted(running[n].items())],
                        "gpus": [{"index": i, "utilization_pct": 90.0, "power_w": 300.0}
                                 for i in range(GPUS_PER_NODE)]}
                t0 = time.perf_counter()
                status, reply = conns[n].request("POST", f"/v1/nodes/{n}/heartbeat", body)
                self.latencies.append((t0, time.perf_counter() - t0))
                if status != 200:
                    self.errors += 1
                    continue
                for j in reply["launch"]:
                    running[n].setdefault(j, time.perf_counter())
                for k in reply["kill"]:
                    running[n].pop(k["job_id"], None)
            second += 1
        for c in conns.values():
            c.__exit__()


def listers(url: str, token: str, clients: int, window: Window
            ) -> tuple[list[tuple[float, float]], int]:
    latencies: list[tuple[float, float]] = []
    errors = [0]

    def client(offset: float) -> None:
        with Http(url, token) as h:
            time.sleep(offset)
            next_at = time.perf_counter()
            while next_at < window.end:
                t0 = time.perf_counter()
                # The bytes, not decoded: the latency is the server's, and decoding 1,000
                # jobs twenty times a second would take CPU from the server it measures.
                status, _ = h.request("GET", LIST_PATH, raw=True)
                latencies.append((t0, time.perf_counter() - t0))
                errors[0] += status != 200
                next_at += 1.0
                time.sleep(max(0.0, next_at - time.perf_counter()))

    ts = [threading.Thread(target=client, args=(i / clients,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return latencies, errors[0]


def probes(url: str, token: str, window: Window,
           lags: list[tuple[float, float | None]]) -> None:
    """One probe a second, each appended to ``lags`` as it is seen: (submitted at,
    seconds until the loop gave it a reason, None: never)."""
    with Http(url, token) as h:
        while not window.over():
            t0 = time.perf_counter()
            status, job = h.request("POST", "/v1/jobs", _job())
            assert status == 201, job
            lag = None
            while time.perf_counter() < t0 + 30:
                if h.request("GET", f"/v1/jobs/{job['id']}")[1]["reason"] != "Submitted":
                    lag = time.perf_counter() - t0
                    break
                time.sleep(0.1)  # a person polling, not a tight loop on the API
            lags.append((t0, lag))
            time.sleep(max(0.0, t0 + 1.0 - time.perf_counter()))


def run(nodes: int, pending: int, clients: int, seconds: float,
        workers: int = WORKERS, settle: float = SETTLE) -> dict[str, Any]:
    where = machine()
    with server({"GPUQ_SCHEDULE_INTERVAL_S": "5", "GPUQ_NODE_DOWN_AFTER_S": "60",
                 "GPUQ_DISPATCH_RESEND_AFTER_S": "2", "GPUQ_API_WORKERS": str(workers)},
                redis_db=12) as cluster:
        tokens = {f"n{i:03d}": fake_node(cluster, f"n{i:03d}", GPUS_PER_NODE)
                  for i in range(nodes)}
        token = cluster.add_user("bench")
        with Http(cluster.url, token) as h:
            # Fill every node (an array: its elements get rows as they start) ...
            status, out = h.request("POST", "/v1/jobs/array", _job(array=f"0-{nodes - 1}"))
            assert status == 201, out
        # ... then queue ``pending`` more that must wait, as single jobs: a row each, as
        # the listings and the loop read them (an array would be one record, one line).
        submit_singles(cluster.url, token, _job(), pending)
        fleet = Fleet(cluster.url, tokens, threads=min(50, nodes))
        window = Window()
        lists: list[Any] = []
        lags: list[tuple[float, float | None]] = []
        began = time.perf_counter()
        threads = [threading.Thread(target=fleet.run, args=(window,)),
                   threading.Thread(target=lambda: lists.extend(
                       listers(cluster.url, token, clients, window))),
                   threading.Thread(target=probes, args=(cluster.url, token, window, lags))]
        for t in threads:
            t.start()
        # Warm-up: until the first probe (submitted after the whole queue) was looked at.
        while time.perf_counter() - began < MAX_WARMUP and not any(lag for _, lag in lags):
            time.sleep(0.1)
        time.sleep(settle)
        warmup = time.perf_counter() - began
        cpu = CpuUse.of(cluster)
        cpu.start()
        window.open(seconds)
        for t in threads:
            t.join()
        cores = cpu.stop()
        list_all, list_errors = lists
    beats = [d for t0, d in fleet.latencies if t0 >= window.start]
    list_lat = [d for t0, d in list_all if t0 >= window.start]
    measured = [lag for t0, lag in lags if t0 >= window.start]
    seen = [x for x in measured if x is not None]
    third = max(1, len(measured) // 3)
    first = [x for x in measured[:third] if x is not None] or [0.0]
    last = [x for x in measured[-third:] if x is not None] or [float("inf")]
    keeps_up = (bool(measured) and len(seen) == len(measured) and
                statistics.median(last) <= 2 * statistics.median(first) + 0.5)
    api = summary_ms(beats + list_lat)
    return {
        "benchmark": "load", "machine": where,
        "nodes": nodes, "pending": pending, "clients": clients, "seconds": seconds,
        "workers": workers, "warmup_s": round(warmup, 1),
        "heartbeat": {**summary_ms(beats), "errors": fleet.errors,
                      "skipped": sum(at >= window.start for at in fleet.skipped)},
        "list": {**summary_ms(list_lat), "errors": list_errors},
        "api": api,
        "cpu_cores": cores,
        "loop_lag_s": {"probes": len(measured), "seen": len(seen),
                       "first_third_median": round(statistics.median(first), 3),
                       "last_third_median": round(statistics.median(last), 3),
                       "max": round(max(seen), 3) if seen else None,
                       "warmup_first_probe": next(
                           (round(lag, 3) for _, lag in lags if lag), None)},
        "target": {"api_p99_ms": TARGET_P99_MS, "nodes": NODES, "pending": PENDING,
                   "clients": CLIENTS},
        "met": {"api_p99_ms": api["p99_ms"] < TARGET_P99_MS, "loop_keeps_up": keeps_up},
    }


def print_human(r: dict[str, Any], smoke: bool) -> None:
    m = r["machine"]
    print(f"load: {r['nodes']} nodes heartbeating every 1 s, {r['pending']} pending, "
          f"{r['clients']} clients listing every 1 s, {r['seconds']:.0f} s; "
          f"gpuq server --workers {r['workers']}; {describe(m)}")
    print(f"warm-up before the measured {r['seconds']:.0f} s: {r['warmup_s']} s (the first "
          f"probe after the queue was looked at in {r['loop_lag_s']['warmup_first_probe']} s)")
    print(f"{'calls':<11} {'n':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>8}")
    for key in ("heartbeat", "list", "api"):
        s = r[key]
        print(f"{key:<11} {s['n']:>6} {s['p50_ms']:>7.1f} {s['p95_ms']:>7.1f} "
              f"{s['p99_ms']:>7.1f} {s['max_ms']:>8.1f}")
    print(f"heartbeats not sent, their node's thread over 1 s late: "
          f"{r['heartbeat']['skipped']} (a node that falls behind does not catch up)")
    print("CPU during the run, cores: " + ", ".join(f"{k} {v:.2f}"
                                                   for k, v in r["cpu_cores"].items()))
    lag = r["loop_lag_s"]
    note = " (smoke run: not the target's measurement)" if smoke else ""
    print(f"loop lag (submit -> looked at): {lag['seen']}/{lag['probes']} probes seen, "
          f"median first third {lag['first_third_median']} s, last third "
          f"{lag['last_third_median']} s, max {lag['max']} s")
    print(f"target: API p99 < {TARGET_P99_MS:.0f} ms: {r['api']['p99_ms']:.1f} ms "
          f"{verdict(r['met']['api_p99_ms'])}; loop keeps up: "
          f"{verdict(r['met']['loop_keeps_up'])}{note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=NODES)
    ap.add_argument("--pending", type=int, default=PENDING)
    ap.add_argument("--clients", type=int, default=CLIENTS)
    ap.add_argument("--seconds", type=float, default=SECONDS, help="the measured window")
    ap.add_argument("--settle", type=float, default=SETTLE,
                    help="seconds between the warm-up's end and the measured window")
    add_workers_option(ap)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--smoke", action="store_true", help="a tiny run for CI")
    args = ap.parse_args()
    if args.smoke:
        r = run(3, 50, 2, 3.0, args.workers, settle=0.5)
    else:
        r = run(args.nodes, args.pending, args.clients, args.seconds, args.workers,
                args.settle)
    return finish(r, as_json=args.json, smoke=args.smoke, human=print_human)


if __name__ == "__main__":
    sys.exit(main())
