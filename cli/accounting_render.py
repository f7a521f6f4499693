"""The accounting lines of ``gpuq show`` (pure functions of ``JobRead['accounting']``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

Job = Mapping[str, Any]


def pct_text(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}%"


def kwh_text(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f} kWh"


def idle_text(acct: Mapping[str, Any]) -> str:
    """``idle since 14:02 (owner notified)``."""
    action = {"none": "", "notified": "owner notified",
              "cancel-pending": "will be cancelled after the grace period",
              "cancelled": "cancelled for it"}.get(acct.get("idle_action") or "", "")
    since = acct.get("idle_since")
    when = ""
    if since:
        t = datetime.fromisoformat(since)
        when = f" since {t.astimezone().strftime('%Y-%m-%d %H:%M')}"
    return f"GPUs idle{when}" + (f" ({action})" if action else "")


def accounting_rows(job: Job) -> list[tuple[str, str]]:
    """Lines of ``gpuq show`` from ``job['accounting']``."""
    acct = job.get("accounting")
    if not acct:
        return []
    so_far = "" if acct.get("final") else " so far"
    rows = [("GPU-hours", f"{acct['gpu_hours']:.2f} (billed {acct['billed_gpu_hours']:.2f})"
                          f"{so_far}")]
    if acct.get("energy_kwh") is not None:
        how = {"counter": "NVML energy counter", "power": "integral of sampled power",
               "mixed": "counter where the GPU has one, else sampled power"}.get(
                   acct.get("energy_method") or "", "")
        rows.append(("Energy", kwh_text(acct["energy_kwh"]) + (f" ({how})" if how else "")))
        intensity = acct.get("carbon_intensity_g_per_kwh")
        rows.append(("Carbon", f"{acct['carbon_kg']:.3f} kg CO2e" + (
            f" (at {intensity:g} g/kWh)" if intensity is not None else "")))
    if acct.get("utilization_mean_pct") is not None:
        per = ", ".join(f"{g['index']}: {pct_text(g.get('utilization_mean_pct'))}"
                        for g in acct.get("gpus") or [])
        rows.append(("GPU util", f"mean {pct_text(acct['utilization_mean_pct'])}, peak "
                                 f"{pct_text(acct.get('utilization_peak_pct'))}"
                                 + (f" (per GPU {per})" if per else "")))
    if acct.get("idle_gpu_hours"):
        rows.append(("Idle GPU-h", f"{acct['idle_gpu_hours']:.2f}"))
    if acct.get("idle"):
        rows.append(("Idle", idle_text(acct)))
    return rows
