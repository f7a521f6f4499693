"""The simulator (``gpuq sim``): replays of the shipped trace (lanl-cm5-1994, 2 x 8 GPUs, as
the README runs it), timed.

- FIFO and fairshare+backfill on the trace's first 27,000 jobs. Target: FIFO no slower
  than fairshare+backfill (issue 17: it was 5 times slower, its queue grows long).
- fairshare+backfill on the whole trace (100,000 jobs, 650 days). Target: under 30 s.

The figures are the replay loop's CPU seconds (``SimResult.stats["cpu_s"]``: the engine and
the policy, not reading the trace nor the metrics after it; CPU rather than wall-clock time,
which other load on the machine inflates more); wall-clock seconds of the whole replay
(metrics included, no plots) are shown beside them. No services needed.

Run from the repository root:

  python -m bench.sim              # the three replays (about 2 minutes on 2 cores)
  python -m bench.sim --json       # one JSON object
  python -m bench.sim --smoke      # CI: 1,500 jobs each, a few seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from gpuq.scheduler.sim import build_nodes, load_trace, parse_nodes, replay, shipped_traces

TRACE = "lanl-cm5-1994"
NODES = "2x8"
COMPARE_JOBS = 27_000
FULL_JOBS = 100_000
TARGET_FULL_CPU_S = 30.0
SMOKE_JOBS = 1_500
SMOKE_FULL_JOBS = 2_000


def run_one(policy: str, jobs: int) -> dict[str, Any]:
    trace = load_trace(shipped_traces()[TRACE], jobs)
    began = time.perf_counter()
    run = replay(trace, build_nodes(parse_nodes(NODES)), policy=policy)
    wall = time.perf_counter() - began
    r = run.result
    return {"policy": policy, "jobs": len(trace), "cpu_s": round(r.stats["cpu_s"], 3),
            "loop_wall_s": round(r.stats["wall_s"], 3), "replay_wall_s": round(wall, 3),
            "policy_calls": r.policy_calls, "event_times": r.event_times,
            "gpu_utilization": run.metrics["gpu_utilization"]}


def report(result: dict[str, Any], smoke: bool) -> None:
    from bench.harness import describe

    m = result["machine"]
    print(f"gpuq sim {TRACE} --nodes {NODES}: replay loop CPU seconds; "
          f"{m['platform']}, {describe(m)}")
    print(f"{'policy':>20} {'jobs':>7} {'CPU s':>7} {'wall s':>7} {'calls':>7}   target")
    rows = result["results"]
    fifo, fair, full = rows
    for r in rows:
        target = ""
        if r is fifo:
            target = f"<= fairshare+backfill's {fair['cpu_s']:.1f} s"
        elif r is full:
            target = f"< {TARGET_FULL_CPU_S:.0f} s"
        print(f"{r['policy']:>20} {r['jobs']:>7} {r['cpu_s']:>7.2f} {r['replay_wall_s']:>7.2f} "
              f"{r['policy_calls']:>7}   {target}")
    if smoke:
        print(f"(smoke: {SMOKE_JOBS:,} and {SMOKE_FULL_JOBS:,} jobs; the targets are for "
              f"{COMPARE_JOBS:,} and {FULL_JOBS:,} jobs)")
    else:
        from bench.harness import verdict

        met = result["met"]
        print(f"FIFO no slower than fairshare+backfill: {verdict(met['fifo_vs_fairshare'])}; "
              f"whole trace under {TARGET_FULL_CPU_S:.0f} s: {verdict(met['full_cpu_s'])}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--smoke", action="store_true", help="a tiny, quick run for CI")
    args = ap.parse_args()

    from bench.harness import finish, machine

    where = machine()
    compare = SMOKE_JOBS if args.smoke else COMPARE_JOBS
    full = SMOKE_FULL_JOBS if args.smoke else FULL_JOBS
    results = [run_one("fifo", compare), run_one("fairshare+backfill", compare),
               run_one("fairshare+backfill", full)]
    met: dict[str, bool] = {}
    if not args.smoke:
        met = {"fifo_vs_fairshare": results[0]["cpu_s"] <= results[1]["cpu_s"],
               "full_cpu_s": results[2]["cpu_s"] < TARGET_FULL_CPU_S}
    result = {"benchmark": "sim", "machine": where, "trace": TRACE, "nodes": NODES,
              "target": {"fifo_vs_fairshare": "fifo cpu_s <= fairshare+backfill cpu_s",
                         "compare_jobs": COMPARE_JOBS, "full_jobs": FULL_JOBS,
                         "full_cpu_s": TARGET_FULL_CPU_S},
              "met": met, "results": results}
    return finish(result, as_json=args.json, smoke=args.smoke, human=report)


if __name__ == "__main__":
    sys.exit(main())
