"""Per-job GPU samples for the heartbeat (``JobSample``): what a run's GPUs do now, and
the energy they used since the run started.

Energy is the card's cumulative counter now minus at launch (recorded in the run's
``usage.json``), summed over the run's GPUs. A GPU without a counter (or whose counter
went backwards: a driver reload) counts the integral of its power over time instead,
advanced at every sample (trapezoids: the mean of the power at the previous sample and
now, times the time between them). Each GPU's figures are also sent on their own
(``JobSample.gpus``, with how its energy was measured), so the scheduler sees a GPU of a
job that stays at 0% while the others work. The record is kept in the run's directory, so a
restarted daemon carries on; once the run has ended its last sample is sent as it is.
Pure functions over plain dicts (the JSON content), the caller does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gpuq.wire.nodes import JobGpuSample, JobSample
from gpuq.worker.gpus.base import GpuSample


def start_record(gpu_indices: Iterable[int], samples: Iterable[GpuSample],
                 now_s: float) -> dict[str, Any]:
    """What ``usage.json`` holds at launch: each GPU's energy counter and power now."""
    by_index = {s.index: s for s in samples}
    return {"started_at": now_s, "sample": None,
            "gpus": {str(i): _gpu_start(by_index.get(i), now_s) for i in gpu_indices}}


def _gpu_start(s: GpuSample | None, now_s: float) -> dict[str, Any]:
    return {"energy_start_j": s.energy_j if s is not None else None, "integrated_j": 0.0,
            "power_w": s.power_w if s is not None else None, "at": now_s}


def advance(record: Mapping[str, Any] | None, gpu_indices: Iterable[int],
            samples: Iterable[GpuSample], now_s: float) -> tuple[dict[str, Any], JobSample]:
    """The record brought up to ``now_s`` with ``samples``, and the run's sample now."""
    by_index = {s.index: s for s in samples}
    rec: dict[str, Any] = {"started_at": now_s, "sample": None, "gpus": {}}
    if record:
        rec.update(started_at=record.get("started_at", now_s),
                   gpus={k: dict(v) for k, v in (record.get("gpus") or {}).items()})
    utils: list[float] = []
    memory: list[float] = []
    power: list[float] = []
    energy: list[float] = []
    per_gpu: list[JobGpuSample] = []
    for i in gpu_indices:
        s = by_index.get(i)
        g = rec["gpus"].get(str(i))
        if g is None:  # not recorded at launch (a run adopted from an older daemon)
            g = rec["gpus"][str(i)] = _gpu_start(s, now_s)
        power_now = s.power_w if s is not None else None
        at = g.get("at")
        dt = max(0.0, now_s - float(at)) if at is not None else 0.0
        known = [p for p in (g.get("power_w"), power_now) if p is not None]
        if known:
            g["integrated_j"] = float(g.get("integrated_j") or 0.0) + sum(known) / len(known) * dt
        g["power_w"], g["at"] = power_now, now_s
        if s is None:
            continue
        if s.utilization_pct is not None:
            utils.append(s.utilization_pct)
        if s.memory_used_mib is not None:
            memory.append(s.memory_used_mib)
        if power_now is not None:
            power.append(power_now)
        start = g.get("energy_start_j")
        if s.energy_j is not None and start is not None and s.energy_j >= start:
            used, method = s.energy_j - float(start), "counter"
        else:
            used, method = float(g["integrated_j"]), "power"
        energy.append(used)
        per_gpu.append(JobGpuSample(index=i, utilization_pct=s.utilization_pct,
                                    memory_used_mib=s.memory_used_mib, power_w=power_now,
                                    energy_j=round(used, 1), energy_method=method))
    sample = JobSample(
        utilization_pct=round(sum(utils) / len(utils), 1) if utils else None,
        memory_used_mib=round(sum(memory), 1) if memory else None,
        power_w=round(sum(power), 1) if power else None,
        energy_j=round(sum(energy), 1) if energy else None,
        gpus=per_gpu or None)
    rec["sample"] = sample.model_dump()
    return rec, sample


def last_sample(record: Mapping[str, Any] | None) -> JobSample | None:
    """The sample recorded last (sent unchanged once the run has ended)."""
    raw = (record or {}).get("sample")
    return JobSample.model_validate(raw) if isinstance(raw, dict) else None
