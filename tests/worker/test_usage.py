"""Per-job GPU samples: means, sums, and energy since the run started."""

from __future__ import annotations

import pytest

from scheduler.api.schemas import JobSample
from worker.gpus.base import GpuSample
from worker.usage import advance, last_sample, start_record


def sample(index: int, *, util: float | None = 50.0, mem: float | None = 1000.0,
           power: float | None = 200.0, energy: float | None = None) -> GpuSample:
    return GpuSample(index=index, utilization_pct=util, memory_used_mib=mem, power_w=power,
                     energy_j=energy)


def test_means_sums_and_counter_energy() -> None:
    rec = start_record([0, 2], [sample(0, energy=5000.0), sample(1, energy=1.0),
                                sample(2, energy=7000.0)], now_s=100.0)
    rec, s = advance(rec, [0, 2], [sample(0, util=40.0, mem=1000.0, power=250.0, energy=5600.0),
                                   sample(1, util=100.0, energy=9.0),
                                   sample(2, util=80.0, mem=3000.0, power=150.0,
                                          energy=7400.0)], now_s=102.0)
    assert s == JobSample(utilization_pct=60.0, memory_used_mib=4000.0, power_w=400.0,
                          energy_j=1000.0)
    assert last_sample(rec) == s


def test_energy_without_a_counter_integrates_power() -> None:
    rec = start_record([0], [sample(0, power=100.0)], now_s=0.0)
    rec, s = advance(rec, [0], [sample(0, power=300.0)], now_s=10.0)
    assert s.energy_j == pytest.approx(2000.0)  # the trapezoid: (100 + 300) / 2 * 10
    rec, s = advance(rec, [0], [sample(0, power=300.0)], now_s=20.0)
    assert s.energy_j == pytest.approx(5000.0)


def test_a_counter_that_went_backwards_falls_back_to_power() -> None:
    rec = start_record([0], [sample(0, power=100.0, energy=9_000.0)], now_s=0.0)
    rec, s = advance(rec, [0], [sample(0, power=100.0, energy=10.0)], now_s=10.0)
    assert s.energy_j == pytest.approx(1000.0)


def test_unknown_readings_and_a_missing_record() -> None:
    rec, s = advance(None, [0, 1], [sample(0, util=None, mem=None, power=None)], now_s=5.0)
    assert s == JobSample(energy_j=0.0)
    assert set(rec["gpus"]) == {"0", "1"}
    assert last_sample(None) is None and last_sample({"sample": None}) is None
