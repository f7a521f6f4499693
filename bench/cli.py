"""CLI latency: the installed ``gpuq`` command, timed as a shell runs it.

Starts a real ``gpuq server`` (PostgreSQL, the Redis broker), registers one 8-GPU node
that only talks HTTP and a user, and writes the user's client configuration file (server
URL and token, as ``gpuq up`` does) under a home of its own. Then it installs gpuq as
``pip install`` does (a regular install in a new virtual environment that takes the
dependencies from this one: not the editable install of a checkout, whose import hook
costs every Python start 25 ms), runs its console script ``gpuq`` as a fresh process per
call, each command N times, and times each process from start to exit (wall time, as
``time gpuq q`` says):

  --help            nothing sent
  submit            gpuq submit --parsable -- true        (POST /v1/jobs)
  q                 gpuq q                                (the table of the queue)
  show JOB          gpuq show <the first job>
  cancel JOB        gpuq cancel <a job submitted above>   (a new one each call)

and a shell loop, ``bash -c 'for i in $(seq 200); do gpuq submit ...; done'``, for
submits per second. ``python -c pass`` (CPython's own start, in that environment) is
timed beside them for context: no command can be faster. Beside each
median wall time, the median CPU time of the process (user + system): a busy machine
stretches wall times more than CPU times.

Each command runs once untimed first. ``PYTHONDONTWRITEBYTECODE`` is dropped from the
commands' environment so that their modules' bytecode is cached as it is for an installed
package (pip compiles it at install time); with the variable set, every call compiles
gpuq's modules again.

Targets (2-core machine): median <= 60 ms for each command; the shell loop >= 15
submits/s.

Run from the repository root:

  python -m bench.cli                       # 20 calls of each, a loop of 200 submits
  python -m bench.cli --runs 50 --loop 500
  python -m bench.cli --json                # one JSON object
  python -m bench.cli --smoke               # CI: 3 calls of each, a loop of 10
"""

from __future__ import annotations

import argparse
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    WORKERS,
    add_workers_option,
    describe,
    fake_node,
    finish,
    machine,
    pct,
    server,
    verdict,
)
from tests.e2e.conftest import base_env

TARGET_MEDIAN_MS = 60.0
TARGET_LOOP_PER_S = 15.0
RUNS = 20
LOOP = 200
SUBMIT = ("submit", "--parsable", "--", "true")


def install(where: Path) -> tuple[Path, Path]:
    """gpuq installed as a user's ``pip install`` installs it (a regular install, not the
    editable one of a development checkout, whose import hook every Python start loads:
    25 ms of site.py's 30 ms here), into a new virtual environment at ``where`` that finds
    the dependencies in this environment's site-packages (a plain path line in a ``.pth``
    file; this environment's own ``.pth`` files are not run). Returns (its ``gpuq``
    script, its Python)."""
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    (Path(site.stdout.strip()) / "gpuq-deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--quiet", "--no-deps", "--no-build-isolation", str(root)], check=True,
                   cwd=where)
    return where / "bin" / "gpuq", python


def summary(values_s: list[float], cpu_s: list[float]) -> dict[str, float]:
    """Wall times of the calls: median and p90 (and min, max), in ms; and the median CPU
    time of a call's process (user + system), which a busy machine disturbs less."""
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1),
            "p90_ms": round(pct(ms, 90), 1), "min_ms": round(min(ms), 1),
            "max_ms": round(max(ms), 1),
            "cpu_p50_ms": round(statistics.median(cpu_s) * 1000, 1)}


def client_env(home: Path, url: str, token: str) -> dict[str, str]:
    """A user's environment: no GPUQ_* variables; the configuration file in the home's
    ``~/.config/gpuq/config.toml``, as ``gpuq up`` writes it."""
    env = base_env(home)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONUNBUFFERED", None)
    config = Path(env["XDG_CONFIG_HOME"]) / "gpuq" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'server = "{url}"\ntoken = "{token}"\n')
    config.chmod(0o600)
    return env


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def call(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """One process: its wall time, its CPU time, and its stdout (a failure stops the
    benchmark)."""
    cpu0 = _children_cpu_s()
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
    return elapsed, _children_cpu_s() - cpu0, r.stdout


def timed(argvs: list[list[str]], env: dict[str, str], cwd: Path) -> tuple[dict[str, float],
                                                                           list[str]]:
    """Each argv, after the first once untimed (module bytecode, the page cache): the
    summary of their times, and their outputs."""
    call(argvs[0], env, cwd)
    out = [call(a, env, cwd) for a in argvs]
    return summary([t for t, _, _ in out], [c for _, c, _ in out]), [s for _, _, s in out]


def run(runs: int, loop: int, workers: int = WORKERS) -> dict[str, Any]:
    where = machine()
    home = Path(tempfile.mkdtemp(prefix="gpuq-bench-cli-"))
    script, python = install(home / "venv")
    gpuq = str(script)
    with server({"GPUQ_SCHEDULE_INTERVAL_S": "5", "GPUQ_API_WORKERS": str(workers)}) as cluster:
        fake_node(cluster, "bench-node")
        env = client_env(home, cluster.url, cluster.add_user("bench"))
        results: dict[str, dict[str, Any]] = {}
        baseline, _ = timed([[str(python), "-c", "pass"]] * runs, env, home)
        results["--help"], _ = timed([[gpuq, "--help"]] * runs, env, home)
        results["submit"], out = timed([[gpuq, *SUBMIT]] * runs, env, home)
        ids = [int(s) for s in out]
        results["q"], _ = timed([[gpuq, "q"]] * runs, env, home)
        results["show"], _ = timed([[gpuq, "show", str(ids[0])]] * runs, env, home)
        # The untimed first call cancels ids[0] as well; each timed one a job of its own.
        results["cancel"], _ = timed([[gpuq, "cancel", str(i)] for i in ids], env, home)
        script = f"for i in $(seq {loop}); do {shlex.quote(gpuq)} {shlex.join(SUBMIT)} " \
                 f">/dev/null || exit 1; done"
        t0 = time.perf_counter()
        r = subprocess.run(["bash", "-c", script], env=env, cwd=home, capture_output=True,
                           text=True, timeout=600)
        loop_s = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"the shell loop failed: {r.stdout}{r.stderr}")
    worst = max(s["p50_ms"] for s in results.values())
    per_s = round(loop / loop_s, 1)
    return {
        "benchmark": "cli",
        "machine": where,
        "gpuq": gpuq,
        "runs": runs,
        "python_start": baseline,
        "commands": results,
        "loop": {"submits": loop, "seconds": round(loop_s, 2), "per_s": per_s},
        "target": {"median_ms": TARGET_MEDIAN_MS, "loop_per_s": TARGET_LOOP_PER_S},
        "met": {"median_ms": worst <= TARGET_MEDIAN_MS, "loop_per_s": per_s >= TARGET_LOOP_PER_S},
    }


def print_human(r: dict[str, Any], smoke: bool) -> None:
    m = r["machine"]
    print(f"gpuq CLI, whole process per call ({r['gpuq']}), a real server on PostgreSQL "
          f"and Redis; {m['platform']}, {describe(m)}")
    print(f"{'command':<14} {'median ms':>9} {'p90 ms':>7} {'min ms':>7} {'max ms':>7} "
          f"{'CPU ms':>7}   target median")
    rows = [("python -c pass", r["python_start"], "(CPython's start)")]
    rows += [(name, s, f"<= {r['target']['median_ms']:.0f} ms") for name, s in
             r["commands"].items()]
    for name, s, target in rows:
        print(f"{name:<14} {s['p50_ms']:>9.1f} {s['p90_ms']:>7.1f} {s['min_ms']:>7.1f} "
              f"{s['max_ms']:>7.1f} {s['cpu_p50_ms']:>7.1f}   {target}")
    note = " (smoke run: not the target's measurement)" if smoke else ""
    worst = max(r["commands"].items(), key=lambda kv: kv[1]["p50_ms"])
    print(f"slowest median: {worst[0]} {worst[1]['p50_ms']:.1f} ms; target <= "
          f"{r['target']['median_ms']:.0f} ms each: {verdict(r['met']['median_ms'])}{note}")
    lp = r["loop"]
    print(f"shell loop of {lp['submits']} gpuq submit: {lp['seconds']:.2f} s, "
          f"{lp['per_s']:.1f} submits/s; target >= {r['target']['loop_per_s']:.0f}/s: "
          f"{verdict(r['met']['loop_per_s'])}{note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=RUNS, help="calls of each command")
    ap.add_argument("--loop", type=int, default=LOOP, help="submits in the shell loop")
    add_workers_option(ap)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--smoke", action="store_true", help="a tiny, quick run for CI")
    args = ap.parse_args()
    runs, loop = (3, 10) if args.smoke else (args.runs, args.loop)
    r = run(runs, loop, args.workers)
    return finish(r, as_json=args.json, smoke=args.smoke, human=print_human)


if __name__ == "__main__":
    sys.exit(main())
