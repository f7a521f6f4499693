"""`gpuq show` accounting lines, `gpuq eff`, `gpuq q`'s idle mark, `gpuq usage` (table,
CSV, plot): pure functions of the API's JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gpuq.cli.accounting_render import accounting_rows
from gpuq.cli.eff import eff_report, suggestion
from gpuq.cli.render import IDLE_MARK, jobs_table, render
from gpuq.cli.usage_report import plot, usage_csv, usage_table


def job(**acct: Any) -> dict[str, Any]:
    base = {"gpu_hours": 2.0, "billed_gpu_hours": 9.6, "energy_kwh": 0.3,
            "energy_method": "mixed", "carbon_kg": 0.06, "carbon_intensity_g_per_kwh": 200.0,
            "utilization_mean_pct": 40.0, "utilization_peak_pct": 80.0,
            "idle_gpu_hours": 1.0, "idle": False, "idle_since": None, "idle_action": "",
            "final": True,
            "gpus": [{"index": 0, "utilization_mean_pct": 80.0, "utilization_peak_pct": 80.0,
                      "memory_peak_mib": 40960.0, "memory_mib": 81920},
                     {"index": 1, "utilization_mean_pct": 0.0, "utilization_peak_pct": 0.0,
                      "memory_peak_mib": 0.0, "memory_mib": 81920}]}
    base.update(acct)
    return {"id": 7, "name": "train", "user": "alice", "account": "lab1",
            "state": "COMPLETED", "gpus": 2, "time_limit_s": 7200, "node": "gpu01",
            "gpu_indices": [0, 1], "started_at": "2027-01-01T10:00:00+00:00",
            "ended_at": "2027-01-01T11:00:00+00:00", "accounting": base}


def test_show_lines() -> None:
    rows = dict(accounting_rows(job()))
    assert rows["GPU-hours"] == "2.00 (billed 9.60)"
    assert rows["Energy"].startswith("0.300 kWh")
    assert rows["Carbon"] == "0.060 kg CO2e (at 200 g/kWh)"
    assert rows["GPU util"] == "mean 40.0%, peak 80.0% (per GPU 0: 80.0%, 1: 0.0%)"


def test_eff_calls_out_the_unused_gpu_and_suggests_fewer() -> None:
    text = eff_report(job())
    assert "2 requested, 1 used" in text
    assert "GPU 1:" in text and "<- stayed at 0%" in text
    assert "memory peak 40G of 80G (50%)" in text
    assert "ran 1:00:00 of 2:00:00 (50% of the limit)" in text
    assert "0.300 kWh, carbon 0.060 kg CO2e" in text
    assert "Suggestion:  1 of 2 GPUs stayed at ~0%: ask for --gpus 1" in text


def test_eff_suggestions_in_order() -> None:
    busy = [{"index": 0, "utilization_mean_pct": 95.0, "memory_peak_mib": 60000.0,
             "memory_mib": 81920}]
    assert suggestion(job(gpus=busy, utilization_mean_pct=95.0)) is None
    small = [{**busy[0], "memory_peak_mib": 4096.0}]
    assert "smaller GPU model" in (suggestion(job(gpus=small, utilization_mean_pct=95.0)) or "")
    short = {**job(gpus=busy, utilization_mean_pct=95.0), "time_limit_s": 86400}
    assert "tighter --time" in (suggestion(short) or "")
    low = [{**busy[0], "utilization_mean_pct": 12.0}]
    assert "12%" in (suggestion(job(gpus=low, utilization_mean_pct=12.0)) or "")
    # Out of memory comes first: the job fails again until it gets more.
    oom = {**job(), "state": "OUT_OF_MEMORY", "memory_mib": 10}
    assert suggestion(oom) == ("the job ran out of memory (--mem 10M): ask for more with "
                               "--mem, or make it use less.")


def test_queue_marks_idle_jobs() -> None:
    j = {**job(idle=True, idle_action="notified", final=False), "state": "RUNNING",
         "ended_at": None}
    out = render(jobs_table([j], datetime(2027, 1, 1, 12, tzinfo=UTC)))
    assert f"gpu01(0,1){IDLE_MARK}" in out
    assert dict(accounting_rows(j))["Idle"].endswith("(owner notified)")


REPORT = {"by": ["account"], "rows": [
    {"account": "lab1", "gpu_hours": 2.0, "billed_gpu_hours": 9.6, "energy_kwh": 0.3,
     "carbon_kg": 0.06, "jobs": 1, "utilization_mean_pct": 40.0, "idle_gpu_hours": 1.0},
    {"account": "lab2", "gpu_hours": 1.0, "billed_gpu_hours": 4.8, "energy_kwh": 0.1,
     "carbon_kg": 0.02, "jobs": 2, "utilization_mean_pct": None, "idle_gpu_hours": 0.0}],
    "total": {"gpu_hours": 3.0, "billed_gpu_hours": 14.4, "energy_kwh": 0.4, "carbon_kg": 0.08,
              "jobs": 3, "utilization_mean_pct": 40.0, "idle_gpu_hours": 1.0}}


def test_usage_table_and_csv() -> None:
    lines = render(usage_table(REPORT)).splitlines()
    assert lines[0].split() == ["ACCOUNT", "GPU-H", "BILLED-H", "KWH", "KGCO2E", "JOBS",
                                "UTIL%", "IDLE-GPU-H"]
    assert lines[-1].split() == ["TOTAL", "3.00", "14.40", "0.40", "0.080", "3", "40.0", "1.00"]
    csv_lines = usage_csv(REPORT).splitlines()
    assert csv_lines[0].startswith("account,gpu_hours,")
    assert csv_lines[1] == "lab1,2.0,9.6,0.3,0.06,1,40.0,1.0"


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rows = [{"day": d, "account": a, "gpu_hours": h} for d, a, h in
            (("2027-01-01", "lab1", 3.0), ("2027-01-01", "lab2", 1.0),
             ("2027-01-02", "lab1", 2.0))]
    path = tmp_path / "usage.png"
    plot(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
