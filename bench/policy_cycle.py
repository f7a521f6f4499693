"""One full policy cycle (fair share, priorities, placement and backfill over every pending
job) on a big cluster: 1,000 nodes x 8 GPUs, 5,000 running jobs, 500 users in 50 accounts
(3 levels), and 10k / 100k / 1M pending jobs.

Targets (100k pending, on a 2-core machine): median cycle < 1 s, peak RSS < 500 MB.
Each size runs in its own process so that its peak RSS is its own; RSS includes the
snapshot itself. The snapshot is built from a seeded generator, so every run sees the same
cluster and queue (the policy itself has no randomness).

Run from the repository root:

  python -m bench.policy_cycle                 # 10k, 100k, 1M
  python -m bench.policy_cycle --sizes 100000 --runs 9
  python -m bench.policy_cycle --json          # one JSON object
  python -m bench.policy_cycle --smoke         # CI: a tiny cluster, a few runs
  python -m bench.policy_cycle --profile 100000  # cProfile of one cycle
  python -m bench.policy_cycle --distinct-shapes  # every job its own CPUs / memory
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time

from gpuq.scheduler.policy import (
    AccountView,
    AssocView,
    GpuView,
    JobView,
    NodeView,
    PolicyConfig,
    Snapshot,
    schedule,
)

TARGET_MEDIAN_S = 1.0
TARGET_RSS_MB = 500.0
TARGET_PENDING = 100_000
SIZES = (10_000, 100_000, 1_000_000)

MODELS = ("A100-80GB", "H100-80GB")
HOUR = 3600.0
TIME_LIMITS = (1800.0, HOUR, 4 * HOUR, 12 * HOUR, 24 * HOUR, 48 * HOUR)
NOW = 1_750_000_000.0


def build(pending: int, *, nodes: int = 1000, gpus: int = 8, running: int = 5000,
          users: int = 500, accounts: int = 50, seed: int = 4,
          distinct: bool = False) -> Snapshot:
    """The benchmark snapshot: deterministic for given arguments. ``distinct``: every
    pending job asks for its own number of CPUs and MiB (the worst case for the policy's
    per-shape caches) instead of a few usual sizes."""
    rng = random.Random(seed)
    # Accounts, 3 levels below the root: departments, labs, users in labs.
    depts = max(accounts // 10, 1)
    tree = [AccountView("root", None)]
    tree += [AccountView(f"dept{d}", "root", shares=rng.randint(1, 10)) for d in range(depts)]
    labs = [f"lab{a}" for a in range(accounts - depts)]
    tree += [AccountView(lab, f"dept{k % depts}", shares=rng.randint(1, 20))
             for k, lab in enumerate(labs)]
    assocs = [AssocView(f"user{u}", labs[u % len(labs)], shares=rng.randint(1, 5))
              for u in range(users)]
    assocs += [AssocView(f"user{u}", labs[(u * 7 + 3) % len(labs)])  # some in two labs
               for u in range(0, users, 10)]
    usage = {(a.user, a.account): rng.expovariate(1 / 5e6) for a in assocs}

    # Nodes and the jobs running on them.
    node_views, run_jobs = [], []
    per_node = running / nodes
    job_id = 1
    for n in range(nodes):
        model = MODELS[0] if n % 10 < 7 else MODELS[1]
        state = "DRAIN" if n % 100 == 37 else "DOWN" if n % 200 == 99 else "UP"
        free_cpus, free_mem, free = 64, 512_000, set(range(gpus))
        count = int(per_node * (n + 1)) - int(per_node * n)
        for _ in range(count if state == "UP" else 0):
            want = rng.choice((1, 1, 1, 1, 2, 2))
            if len(free) < want:
                break
            idx = tuple(sorted(free)[:want])
            free -= set(idx)
            a = rng.choice(assocs)
            limit = rng.choice(TIME_LIMITS)
            run_jobs.append(JobView(
                id=job_id, gpus=want, submitted_at=NOW - 2 * limit, user=a.user,
                account=a.account, cpus=4 * want, memory_mib=32_000 * want,
                time_limit_s=limit, node=f"node{n:04d}", gpu_indices=idx,
                started_at=NOW - rng.uniform(0, limit)))
            free_cpus -= 4 * want
            free_mem -= 32_000 * want
            job_id += 1
        node_views.append(NodeView(
            name=f"node{n:04d}", gpus=tuple(GpuView(i, model) for i in range(gpus)),
            free_gpus=frozenset(free), cpus=64, free_cpus=free_cpus, memory_mib=512_000,
            free_memory_mib=free_mem, state=state))

    jobs = []
    job_id = 10_000_000
    for _ in range(pending):
        want = rng.choice((1,) * 10 + (2,) * 5 + (4,) * 3 + (8,) * 2)
        a = rng.choice(assocs)
        r = rng.random()
        if distinct:
            cpus, mem = rng.randint(1, 32), rng.randint(1_000, 400_000)
        else:
            cpus, mem = want * rng.choice((4, 8)), want * rng.choice((32_000, 64_000))
        jobs.append(JobView(
            id=job_id, gpus=want, submitted_at=NOW - rng.uniform(0, 14 * 86400),
            gpu_model=None if r < 0.6 else MODELS[0] if r < 0.85 else MODELS[1],
            cpus=cpus, memory_mib=mem,
            user=a.user, account=a.account, time_limit_s=rng.choice(TIME_LIMITS),
            nice=rng.choice((0,) * 19 + (100,)), qos=rng.choice(("normal",) * 9 + ("high",))))
        job_id += 1
    config = PolicyConfig(policy="fairshare+backfill", weight_jobsize=500, weight_qos=2000)
    return Snapshot(now=NOW, nodes=tuple(node_views), pending=tuple(jobs),
                    running=tuple(run_jobs), accounts=tuple(tree), assocs=tuple(assocs),
                    usage=usage, config=config)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(pending: int, runs: int, **kw: int | bool) -> dict[str, float | int]:
    t0 = time.perf_counter()
    snap = build(pending, **kw)  # type: ignore[arg-type]
    built_s = time.perf_counter() - t0
    rss_snapshot = peak_rss_mb()
    times, cpu = [], []
    d = None
    load = os.getloadavg()[0]
    for _ in range(runs):
        d = None  # let the previous decisions go before the next cycle
        t, c = time.perf_counter(), time.process_time()
        d = schedule(snap)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    assert d is not None
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {
        "pending": pending, "runs": runs, "median_s": statistics.median(times),
        "p95_s": p95, "min_s": times[0], "cpu_median_s": statistics.median(cpu),
        "loadavg_1m": load, "peak_rss_mb": peak_rss_mb(),
        "snapshot_rss_mb": rss_snapshot, "build_s": built_s, "starts": len(d.starts),
        "reasons": len(d.pending_reasons), "estimates": len(d.estimated_starts),
        "reserved": d.reservation is not None, "distinct_shapes": bool(kw.get("distinct")),
    }


def in_subprocess(pending: int, runs: int, distinct: bool) -> dict[str, float | int]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.policy_cycle", "--one", str(pending), "--runs",
         str(runs), *(["--distinct-shapes"] if distinct else [])],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def report(results: list[dict[str, float | int]], where: dict[str, object]) -> None:
    from bench.harness import describe

    print(f"policy cycle, one process, no database; {where['platform']}, {describe(where)}")
    if any(r["distinct_shapes"] for r in results):
        print("every job asks for its own CPUs and memory (worst case; the target is for the "
              "standard queue)")
    print(f"{'pending':>9} {'runs':>4} {'median s':>9} {'p95 s':>7} {'CPU s':>6} "
          f"{'peak RSS MB':>11} {'starts':>6} {'load':>5}   target")
    for r in results:
        on_target = r["pending"] == TARGET_PENDING and not r["distinct_shapes"]
        target = (f"median < {TARGET_MEDIAN_S:.0f} s, RSS < {TARGET_RSS_MB:.0f} MB"
                  if on_target else "(shows growth)")
        ok = ""
        if on_target:
            met = r["median_s"] < TARGET_MEDIAN_S and r["peak_rss_mb"] < TARGET_RSS_MB
            ok = "  MET" if met else "  MISSED"
        print(f"{r['pending']:>9} {r['runs']:>4} {r['median_s']:>9.3f} {r['p95_s']:>7.3f} "
              f"{r['cpu_median_s']:>6.3f} {r['peak_rss_mb']:>11.0f} {r['starts']:>6} "
              f"{r['loadavg_1m']:>5.1f}   {target}{ok}")
    print("median/p95: wall-clock seconds of one schedule(); CPU s: its process time (less "
          "sensitive to other load); load: the 1-minute load average when it ran")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--runs", type=int, default=0, help="cycles per size (default by size)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--smoke", action="store_true", help="a tiny, quick run for CI")
    ap.add_argument("--profile", type=int, metavar="PENDING", help="cProfile one cycle")
    ap.add_argument("--distinct-shapes", action="store_true",
                    help="every job asks for its own CPUs and memory (worst case for caches)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: one size, JSON out
    args = ap.parse_args()

    if args.one is not None:
        print(json.dumps(measure(args.one, args.runs or 5, distinct=args.distinct_shapes)))
        return 0
    if args.profile is not None:
        import cProfile
        import pstats

        snap = build(args.profile, distinct=args.distinct_shapes)
        schedule(snap)
        profiler = cProfile.Profile()
        profiler.runcall(schedule, snap)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        return 0
    met: dict[str, bool] = {}  # a smoke run, or sizes without the target's: nothing to say
    if args.smoke:
        results = [measure(2000, args.runs or 3, nodes=50, running=250, users=40,
                           accounts=10, distinct=args.distinct_shapes)]
    else:
        results = []
        for size in args.sizes:
            runs = args.runs or (3 if size >= 1_000_000 else 9)
            results.append(in_subprocess(size, runs, args.distinct_shapes))
        main_result = [r for r in results if r["pending"] == TARGET_PENDING]
        if main_result and not args.distinct_shapes:
            met = {"median_s": all(r["median_s"] < TARGET_MEDIAN_S for r in main_result),
                   "peak_rss_mb": all(r["peak_rss_mb"] < TARGET_RSS_MB for r in main_result)}
    # Only now: a child's peak RSS starts from this process's size when it was forked
    # (Linux keeps it across exec), and the harness brings SQLAlchemy and more.
    from bench.harness import finish, machine

    where = machine()
    result = {"benchmark": "policy_cycle", "machine": where,
              "target": {"pending": TARGET_PENDING, "median_s": TARGET_MEDIAN_S,
                         "peak_rss_mb": TARGET_RSS_MB},
              "met": met, "results": results}
    return finish(result, as_json=args.json, smoke=args.smoke,
                  human=lambda r, _smoke: report(r["results"], r["machine"]))


if __name__ == "__main__":
    sys.exit(main())
