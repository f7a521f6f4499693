"""Job arrays as one record: what a big array costs to submit, and what it costs the
scheduling pass.

1. **Submit** (a real ``gpuq server`` on PostgreSQL with the Redis broker, its loop
   running, one 8-GPU node): ``POST /v1/jobs/array`` of 10,000 elements, ``--repeat``
   times; the end-to-end time (request to answer, on a keep-alive connection) and the
   server's own time (its ``Server-Timing`` header). Then one array of 1,000,000
   elements (accepted, one record).
2. **Scheduling pass** (in process, on a fresh PostgreSQL database, the real API for the
   setup): one 8-GPU node kept full, then a full pass (``runtime.loop.cycle``: snapshot,
   policy, writes) with 100 single jobs pending, and with 100 arrays of 10,000 elements
   pending (1,000,000 jobs); the median of ``--cycles`` passes each.

Targets (2-core machine): a 10,000-element array <= 50 ms server time and <= 100 ms end
to end (medians); 1,000,000 elements accepted; a pass over 100 arrays of 10,000 costs at
most 2x a pass over 100 single jobs.

Run from the repository root:

  python -m bench.arrays              # the whole measurement
  python -m bench.arrays --json       # one JSON object
  python -m bench.arrays --smoke      # CI: small, seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import (
    Http,
    describe,
    fake_node,
    finish,
    machine,
    pg_database,
    server,
    verdict,
)

TARGET_SERVER_MS = 50.0
TARGET_END_TO_END_MS = 100.0
TARGET_ELEMENTS = 10_000
TARGET_HUGE = 1_000_000
#: A pass over 100 arrays of 10,000 against one over 100 single jobs.
TARGET_PASS_RATIO = 2.0


def _body(n: int) -> dict[str, Any]:
    return {"command": ["/bin/true"], "workdir": "/tmp", "gpus": 1,
            "environment": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            "array": f"0-{n - 1}", "idempotency_key": uuid.uuid4().hex}


def _server_ms(headers: Any) -> float:
    timing = headers.get("Server-Timing") or ""
    return float(timing.split("dur=", 1)[1]) if "dur=" in timing else float("nan")


def submits(elements: int, repeat: int, huge: int) -> dict[str, Any]:
    """Part 1: through a real server."""
    with server({"GPUQ_SCHEDULE_INTERVAL_S": "5"}) as cluster:
        fake_node(cluster, "bench-node")
        token = cluster.add_user("bench")
        wall: list[float] = []
        app: list[float] = []
        with Http(cluster.url, token) as h:
            h.request("GET", "/v1/whoami")
            for _ in range(repeat):
                body = _body(elements)
                t0 = time.perf_counter()
                h.conn.request("POST", "/v1/jobs/array", body=_json(body), headers=h.headers)
                r = h.conn.getresponse()
                reply = r.read()
                wall.append((time.perf_counter() - t0) * 1e3)
                assert r.status == 201, (r.status, reply[:200])
                app.append(_server_ms(r.headers))
            t0 = time.perf_counter()
            status, reply = h.request("POST", "/v1/jobs/array", _body(huge))
            huge_s = time.perf_counter() - t0
            assert status == 201, (status, reply)
            status, queue = h.request("GET", "/v1/jobs?view=brief&active=true&limit=5")
    return {"elements": elements, "repeat": repeat,
            "end_to_end_ms": {"p50": round(statistics.median(wall), 1),
                              "max": round(max(wall), 1)},
            "server_ms": {"p50": round(statistics.median(app), 1),
                          "max": round(max(app), 1)},
            "huge": {"elements": reply["count"], "seconds": round(huge_s, 3)},
            "queue_lines": len(queue)}


def _json(body: dict[str, Any]) -> bytes:
    import json

    return json.dumps(body).encode()


def passes(arrays: int, elements: int, cycles: int) -> dict[str, Any]:
    """Part 2: full scheduling passes in process, on a fresh PostgreSQL database."""
    from starlette.testclient import TestClient

    from gpuq.config import Settings
    from gpuq.scheduler.api.app import create_app
    from gpuq.scheduler.entry.bootstrap import build_context
    from gpuq.scheduler.runtime.loop import cycle

    class Nowhere:
        def launch(self, node: str, job_id: int) -> None:
            pass

        def kill(self, node: str, job_id: int) -> None:
            pass

    out: dict[str, Any] = {}
    for case in ("single", "arrays"):
        with pg_database() as url, tempfile.TemporaryDirectory() as tmp:
            settings = Settings(data_dir=Path(tmp), database_url=url)
            ctx = build_context(settings, dispatcher=Nowhere())
            admin = {"Authorization": "Bearer "
                     + settings.effective_admin_token_file.read_text().strip()}
            with TestClient(create_app(ctx)) as client:
                def call(method: str, path: str, headers: dict[str, str],
                         **kw: Any) -> Any:
                    r = client.request(method, path, headers=headers, **kw)
                    assert r.status_code < 300, (r.status_code, r.text)
                    return r.json()

                call("POST", "/v1/admin/accounts", admin, json={"name": "lab"})
                call("POST", "/v1/admin/users", admin, json={"name": "u", "account": "lab"})
                user = {"Authorization": "Bearer " + call(
                    "POST", "/v1/admin/tokens", admin, json={"role": "user", "user": "u"}
                )["token"]}
                node = {"Authorization": "Bearer " + call(
                    "POST", "/v1/admin/tokens", admin, json={"role": "node", "node": "n1"}
                )["token"]}
                call("POST", "/v1/nodes/n1/register", node, json={
                    "cpus": 128, "memory_mib": 1 << 20, "gpu_backend": "simulated",
                    "gpus": [{"index": i, "uuid": f"GPU-{i}", "model": "A100-80GB",
                              "memory_mib": 81920} for i in range(8)]})
                # Fill the node first: the passes measured start nothing.
                call("POST", "/v1/jobs", user, json={
                    "command": ["true"], "workdir": "/tmp", "gpus": 8})
                cycle(ctx)
                for _ in range(arrays):
                    if case == "single":
                        call("POST", "/v1/jobs", user, json={
                            "command": ["true"], "workdir": "/tmp", "gpus": 1})
                    else:
                        call("POST", "/v1/jobs/array", user, json={
                            "command": ["true"], "workdir": "/tmp", "gpus": 1,
                            "array": f"0-{elements - 1}"})
                cycle(ctx)  # the first pass writes every new job's reason and factors
                times = []
                for _ in range(cycles):
                    t0 = time.perf_counter()
                    result = cycle(ctx)
                    times.append((time.perf_counter() - t0) * 1e3)
                    assert result.ran and not result.started
            ctx.sessions.kw["bind"].dispose()
        out[case] = {"pending": arrays * (elements if case == "arrays" else 1),
                     "pass_ms_p50": round(statistics.median(times), 1)}
    out["ratio"] = round(out["arrays"]["pass_ms_p50"] / out["single"]["pass_ms_p50"], 2)
    out["arrays_count"] = arrays
    return out


def run(elements: int, repeat: int, huge: int, arrays: int, cycles: int) -> dict[str, Any]:
    where = machine()
    sub = submits(elements, repeat, huge)
    sched = passes(arrays, elements, cycles)
    return {
        "benchmark": "arrays",
        "machine": where,
        "submit": sub,
        "pass": sched,
        "target": {"elements": TARGET_ELEMENTS, "server_ms": TARGET_SERVER_MS,
                   "end_to_end_ms": TARGET_END_TO_END_MS, "huge": TARGET_HUGE,
                   "pass_ratio": TARGET_PASS_RATIO},
        "met": {
            "server_ms": sub["elements"] == TARGET_ELEMENTS
            and sub["server_ms"]["p50"] <= TARGET_SERVER_MS,
            "end_to_end_ms": sub["elements"] == TARGET_ELEMENTS
            and sub["end_to_end_ms"]["p50"] <= TARGET_END_TO_END_MS,
            "huge": sub["huge"]["elements"] == TARGET_HUGE,
            "pass_ratio": sched["ratio"] <= TARGET_PASS_RATIO,
        },
    }


def print_human(r: dict[str, Any], smoke: bool) -> None:
    m, s, p, t, met = r["machine"], r["submit"], r["pass"], r["target"], r["met"]
    note = " (smoke run: not the target's measurement)" if smoke else ""
    print(f"job arrays: gpuq server, PostgreSQL, Redis broker; {m['platform']}, {describe(m)}")
    print(f"one array of {s['elements']} elements, {s['repeat']} times: server "
          f"p50 {s['server_ms']['p50']:.1f} ms (max {s['server_ms']['max']:.1f}); target "
          f"<= {t['server_ms']:.0f} ms: {verdict(met['server_ms'])}{note}")
    print(f"  end to end p50 {s['end_to_end_ms']['p50']:.1f} ms (max "
          f"{s['end_to_end_ms']['max']:.1f}); target <= {t['end_to_end_ms']:.0f} ms: "
          f"{verdict(met['end_to_end_ms'])}{note}")
    print(f"one array of {s['huge']['elements']:,} elements: accepted in "
          f"{s['huge']['seconds']:.3f} s; target {t['huge']:,} accepted: "
          f"{verdict(met['huge'])}{note}")
    print(f"full scheduling pass, node full: {p['single']['pending']:,} single jobs pending "
          f"{p['single']['pass_ms_p50']:.1f} ms; {p['arrays_count']} arrays "
          f"({p['arrays']['pending']:,} jobs) pending {p['arrays']['pass_ms_p50']:.1f} ms: "
          f"{p['ratio']:.2f}x; target <= {t['pass_ratio']:.0f}x: "
          f"{verdict(met['pass_ratio'])}{note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=TARGET_ELEMENTS)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--huge", type=int, default=TARGET_HUGE)
    ap.add_argument("--arrays", type=int, default=100)
    ap.add_argument("--cycles", type=int, default=9)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--smoke", action="store_true", help="a tiny, quick run for CI")
    args = ap.parse_args()
    if args.smoke:
        r = run(100, 3, 1000, 5, 3)
    else:
        r = run(args.elements, args.repeat, args.huge, args.arrays, args.cycles)
    return finish(r, as_json=args.json, smoke=args.smoke, human=print_human)


if __name__ == "__main__":
    sys.exit(main())
