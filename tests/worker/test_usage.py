"""Per-job GPU samples: means, sums, and energy since the run started."""

from __future__ import annotations

import pytest

from gpuq.wire.nodes import JobSample
from gpuq.worker.gpus.base import GpuSample
from gpuq.worker.usage import advance, last_sample, start_record


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
    assert s.model_copy(update={"gpus": None}) == JobSample(
        utilization_pct=60.0, memory_used_mib=4000.0, power_w=400.0, energy_j=1000.0)
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
    assert s.model_copy(update={"gpus": None}) == JobSample(energy_j=0.0)
    assert set(rec["gpus"]) == {"0", "1"}
    assert last_sample(None) is None and last_sample({"sample": None}) is None


def test_a_known_sim_trace_gives_the_exact_energy_both_ways(tmp_path) -> None:  # noqa: ANN001
    """GPU 0 reports NVML's energy counter, GPU 1 has none (its power is integrated): a
    known trace gives the same joules either way, and per-GPU utilisation."""
    from gpuq.worker.gpus.sim import FAULTS_FILE, SimulatedBackend, write_faults
    from gpuq.worker.usage import start_record

    now = [1000.0]
    faults = tmp_path / FAULTS_FILE
    write_faults(faults, trace={0: {"utilization_pct": 80, "power_w": 250},
                                1: {"utilization_pct": 0, "power_w": 50}},
                 no_energy_counter=[1])
    b = SimulatedBackend("2xA100-80GB", node="n", clock=lambda: now[0], faults_file=faults)
    rec = start_record([0, 1], b.samples(), now[0])
    for _ in range(60):  # an hour, a sample a minute
        now[0] += 60
        rec, s = advance(rec, [0, 1], b.samples(), now[0])
    assert s.energy_j == 300 * 3600  # 0.3 kWh
    per = {g.index: g for g in s.gpus or []}
    assert per[0].energy_j == 250 * 3600 and per[0].energy_method == "counter"
    assert per[1].energy_j == 50 * 3600 and per[1].energy_method == "power"
    assert (per[0].utilization_pct, per[1].utilization_pct) == (80.0, 0.0)
    assert s.utilization_pct == 40.0 and s.power_w == 300.0
