"""Per-job GPU samples for the heartbeat (``JobSample``): what a run's GPUs do now, and
the energy they used since the run started.

Energy is the card's cumulative counter now minus at the run's start (recorded in the
run's ``usage.json``), summed over the run's GPUs. A GPU without a counter (or whose counter
went backwards: a driver reload) counts the integral of its power over time instead,
advanced at every sample (trapezoids: the mean of the power at the previous sample and
now, times the time between them). Each GPU's figures are also sent on their own
(``JobSample.gpus``, with how its energy was measured), so the scheduler sees a GPU of a
job that stays at 0% while the others work. The record is kept in the run's directory, so a
restarted daemon carries on.

The record is taken at launch, a little before the job's process starts (its supervisor
starts first): once the process has started, the GPUs are read again (``begin``) and the
run's energy counts from the process's start.

Once the run has ended its GPUs are read once more (``finish``): the *end sample*, the
energy up to the end (the last heartbeat's sample stops up to a heartbeat interval
before it), sent with the final report and, from then on, in place of a heartbeat sample.
It is kept in the record (``end``), so it is taken once and a restarted daemon sends the
same figures. Pure functions over plain dicts (the JSON content), the caller does the I/O.
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


def begin(record: Mapping[str, Any] | None, gpu_indices: Iterable[int],
          samples: Iterable[GpuSample], now_s: float, started_s: float) -> dict[str, Any]:
    """The record counting from the job's process start (``started_s``) instead of the
    launch, with ``samples`` read at ``now_s``, just after the start: each GPU's energy
    from then on counts from its counter now less its power now times the seconds since
    the start (not before its counter at launch), or from that product where it is
    integrated. Once per run (``begun``); a GPU advanced after the start is left as it
    is (a run adopted from an older daemon)."""
    rec: dict[str, Any] = {"started_at": now_s, "sample": None, "gpus": {}}
    if record:
        rec.update({k: v for k, v in record.items() if k != "gpus"})
        rec["gpus"] = {k: dict(v) for k, v in (record.get("gpus") or {}).items()}
        if record.get("begun") is not None:
            return rec
    by_index = {s.index: s for s in samples}
    lag_s = max(0.0, now_s - started_s)
    for i in gpu_indices:
        s, g = by_index.get(i), rec["gpus"].get(str(i))
        if s is None or g is None or float(g.get("at") or 0.0) > started_s:
            continue
        since_j = (s.power_w or 0.0) * lag_s
        start = g.get("energy_start_j")
        if s.energy_j is not None and start is not None and s.energy_j >= float(start):
            g["energy_start_j"] = min(s.energy_j, max(float(start), s.energy_j - since_j))
        g.update(integrated_j=since_j, power_w=s.power_w, at=now_s)
    rec["begun"] = started_s
    return rec


def advance(record: Mapping[str, Any] | None, gpu_indices: Iterable[int],
            samples: Iterable[GpuSample], now_s: float) -> tuple[dict[str, Any], JobSample]:
    """The record brought up to ``now_s`` with ``samples``, and the run's sample now."""
    by_index = {s.index: s for s in samples}
    rec: dict[str, Any] = {"started_at": now_s, "sample": None, "gpus": {}}
    if record:
        rec.update(started_at=record.get("started_at", now_s),
                   gpus={k: dict(v) for k, v in (record.get("gpus") or {}).items()})
        rec.update((k, record[k]) for k in ("begun", "end") if record.get(k) is not None)
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
    """The sample recorded last (the end sample, once ``finish`` has taken it)."""
    raw = (record or {}).get("sample")
    return JobSample.model_validate(raw) if isinstance(raw, dict) else None


def finish(record: Mapping[str, Any] | None, gpu_indices: Iterable[int],
           samples: Iterable[GpuSample] | None, now_s: float,
           ended_s: float) -> tuple[dict[str, Any], JobSample | None]:
    """The record with the run's end sample (``end``), and that sample: the GPUs read at
    ``now_s``, just after the run ended at ``ended_s``. A record that has one already is
    returned as it is (the end is sampled once).

    The energy read after the end counts the draw since the end too (the GPUs idle by
    then, or a restarted daemon's delay): each GPU's ``power_w`` now times the seconds
    since the end is taken off, never below its figure at the last sample. ``samples``
    ``None`` (the GPUs could not be read): the last sample stands for the end."""
    if record and record.get("end") is not None:
        return dict(record), end_sample(record)
    last = last_sample(record)
    if samples is None:
        rec = dict(record or {})
        sample = last
    else:
        rec, sample = advance(record, gpu_indices, samples, now_s)
        lag_s = max(0.0, now_s - ended_s)
        if lag_s > 0 and sample.gpus:
            sample = _back_to_the_end(sample, last, lag_s)
            rec["sample"] = sample.model_dump()
    rec["end"] = {"ended_at": ended_s, "sampled_at": now_s,
                  "sample": sample.model_dump() if sample is not None else None}
    return rec, sample


def _back_to_the_end(sample: JobSample, last: JobSample | None, lag_s: float) -> JobSample:
    """``sample``, read ``lag_s`` after the end, with each GPU's draw since the end (its
    power now times ``lag_s``) taken off its energy, not below its last figure."""
    before = {g.index: g.energy_j for g in (last.gpus or [])} if last is not None else {}
    gpus = []
    for g in sample.gpus or []:
        if g.energy_j is not None and g.power_w is not None:
            floor = before.get(g.index) or 0.0
            g = g.model_copy(update={
                "energy_j": round(max(floor, min(g.energy_j, g.energy_j - g.power_w * lag_s)),
                                  1)})
        gpus.append(g)
    known = [g.energy_j for g in gpus if g.energy_j is not None]
    return sample.model_copy(update={
        "gpus": gpus, "energy_j": round(sum(known), 1) if known else sample.energy_j})


def end_sample(record: Mapping[str, Any] | None) -> JobSample | None:
    """The run's end sample (``finish``'s), ``None`` before it was taken or without one."""
    raw = ((record or {}).get("end") or {}).get("sample")
    return JobSample.model_validate(raw) if isinstance(raw, dict) else None


def ended_at(record: Mapping[str, Any] | None) -> float | None:
    """When the run ended (epoch seconds), as ``finish`` recorded it."""
    end = (record or {}).get("end") or {}
    return float(end["ended_at"]) if end.get("ended_at") is not None else None
