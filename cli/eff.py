"""``gpuq eff JOB``: a one-screen efficiency report (like HPC ``seff``/``jobstats``), and
the accounting lines of ``gpuq show``. Pure functions of the API's ``JobRead`` JSON."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import click

from gpuq.cli.accounting_render import idle_text, kwh_text, pct_text
from gpuq.cli.context import Env, echo_json, pass_env
from gpuq.cli.units import format_duration, format_mib
from gpuq.wire.states import ACTIVE

Job = Mapping[str, Any]
#: A GPU whose mean utilisation is at most this is called unused, percent.
UNUSED_PCT = 1.0
#: Memory headroom over which a smaller GPU would do, as a fraction of the GPU's memory.
LOW_MEMORY_FRACTION = 0.25
#: A run shorter than this fraction of its time limit gets a tighter-limit suggestion.
SHORT_RUN_FRACTION = 0.25


def suggestion(job: Job) -> str | None:
    """One concrete suggestion when something was wasted, the biggest waste first (a job
    killed for memory first of all: it gets more, or fails again)."""
    if job.get("state") == "OUT_OF_MEMORY":
        asked = job.get("memory_mib")
        return ("the job ran out of memory" + (f" (--mem {format_mib(asked)})" if asked else "")
                + ": ask for more with --mem, or make it use less.")
    acct = job.get("accounting") or {}
    gpus = acct.get("gpus") or []
    unused = [g for g in gpus if g.get("utilization_mean_pct") is not None
              and g["utilization_mean_pct"] <= UNUSED_PCT]
    if unused and len(unused) < len(gpus):
        n = len(gpus) - len(unused)
        return (f"{len(unused)} of {len(gpus)} GPUs stayed at ~0%: ask for --gpus {n}, or "
                "make the program use every GPU it gets (e.g. torchrun --nproc-per-node).")
    if unused:
        return ("the GPUs stayed at ~0%: the job ran on the CPU or waited on I/O. Check that "
                "it sees the GPU (CUDA_VISIBLE_DEVICES, torch.cuda.is_available()).")
    mean = acct.get("utilization_mean_pct")
    if mean is not None and mean < 30:
        return (f"mean GPU utilisation was {mean:.0f}%: feed the GPU faster (more data "
                "loader workers, larger batches) or use fewer GPUs.")
    peaks = [g.get("memory_peak_mib") for g in gpus]
    sizes = [g.get("memory_mib") for g in gpus]
    if gpus and all(p is not None for p in peaks) and all(sizes):
        used = max(p / s for p, s in zip(peaks, sizes, strict=True))
        if used < LOW_MEMORY_FRACTION:
            return (f"at most {used:.0%} of each GPU's memory was used: a smaller GPU model "
                    "(--gpu-model) would do, and is billed less.")
    run = _run_s(job)
    limit = job.get("time_limit_s")
    if run and limit and job.get("state") == "COMPLETED" and run < SHORT_RUN_FRACTION * limit:
        return (f"it ran {format_duration(run)} of a {format_duration(limit)} limit: a "
                f"tighter --time (say {format_duration(min(limit, run * 2))}) lets backfill "
                "start it sooner.")
    return None


def _run_s(job: Job) -> float | None:
    start, end = job.get("started_at"), job.get("ended_at")
    if not start:
        return None
    t0 = datetime.fromisoformat(start)
    t1 = datetime.fromisoformat(end) if end else datetime.now(UTC)
    if t0.tzinfo is None:
        t0 = t0.replace(tzinfo=UTC)
    if t1.tzinfo is None:
        t1 = t1.replace(tzinfo=UTC)
    return (t1 - t0).total_seconds()


def eff_report(job: Job) -> str:
    """The report: requested vs used GPUs, memory, time, energy and carbon, a suggestion."""
    acct = job.get("accounting") or {}
    lines = [f"Job {job['id']} ({job.get('name') or ''})  {job.get('user')} / "
             f"{job.get('account')}  {job['state']}"
             + ("" if acct.get("final") else "  (still running: figures so far)"
                if job["state"] in ACTIVE else "")]
    if not acct:
        lines.append("No accounting yet: the job has not run.")
        return "\n".join(lines)
    gpus = acct.get("gpus") or []
    used = [g for g in gpus if (g.get("utilization_mean_pct") or 0) > UNUSED_PCT]
    lines.append(f"GPUs:        {job['gpus']} requested, {len(used)} used "
                 f"(mean {pct_text(acct.get('utilization_mean_pct'))}, peak "
                 f"{pct_text(acct.get('utilization_peak_pct'))})")
    for g in gpus:
        zero = "   <- stayed at 0%" if (g.get("utilization_mean_pct") is not None
                                       and g["utilization_mean_pct"] <= UNUSED_PCT) else ""
        mem = ""
        if g.get("memory_peak_mib") is not None:
            mem = f", memory peak {format_mib(g['memory_peak_mib'])}"
            if g.get("memory_mib"):
                mem += (f" of {format_mib(g['memory_mib'])} "
                        f"({g['memory_peak_mib'] / g['memory_mib']:.0%})")
        lines.append(f"  GPU {g['index']}:     util mean {pct_text(g.get('utilization_mean_pct'))}"
                     f", peak {pct_text(g.get('utilization_peak_pct'))}{mem}{zero}")
    run = _run_s(job)
    limit = job.get("time_limit_s")
    if run is not None:
        frac = f" ({run / limit:.0%} of the limit)" if limit else ""
        lines.append(f"Time:        ran {format_duration(run)} of "
                     f"{format_duration(limit)}{frac}")
    lines.append(f"GPU-hours:   {acct['gpu_hours']:.2f} (billed {acct['billed_gpu_hours']:.2f}"
                 f"); idle GPU-hours {acct.get('idle_gpu_hours', 0):.2f}")
    lines.append(f"Energy:      {kwh_text(acct.get('energy_kwh'))}, carbon "
                 f"{acct.get('carbon_kg', 0):.3f} kg CO2e")
    if acct.get("idle"):
        lines.append(f"Idle:        {idle_text(acct)}")
    tip = suggestion(job)
    lines.append(f"Suggestion:  {tip}" if tip else "Suggestion:  none: nothing obvious "
                 "was wasted.")
    return "\n".join(lines)


@click.command("eff")
@click.argument("job_id", type=int, metavar="JOB")
@click.option("--json", "as_json", is_flag=True, help="Print the job's accounting as JSON.")
@pass_env
def eff(env: Env, job_id: int, as_json: bool) -> None:
    """How well a job used what it asked for (like seff): GPUs, memory, time, energy,
    carbon, and one suggestion when something was wasted."""
    with env.client() as api:
        job = api.get(f"/v1/jobs/{job_id}", not_found=f"no job {job_id}")
    if as_json:
        echo_json(job.get("accounting"))
    else:
        click.echo(eff_report(job))
