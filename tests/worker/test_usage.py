"""Per-job GPU samples: means, sums, and energy since the run started."""

from __future__ import annotations

import pytest

from gpuq.wire.nodes import JobSample
from gpuq.worker.gpus.base import GpuSample
from gpuq.worker.usage import (
    advance,
    begin,
    end_sample,
    ended_at,
    finish,
    last_sample,
    start_record,
)


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


# --- the run's start and end (issue 16 item 7) --------------------------------------------


def test_the_energy_counts_from_the_process_start_not_the_launch() -> None:
    """Launched at 0 s, the process started at 0.4 s, the GPUs read at 0.5 s (counter
    1,200 J, 400 W): the run counts from 1,200 - 400 x 0.1 = 1,160 J."""
    rec = start_record([0, 1], [sample(0, power=400.0, energy=1000.0),
                                sample(1, power=400.0)], now_s=0.0)
    rec = begin(rec, [0, 1], [sample(0, power=400.0, energy=1200.0),
                              sample(1, power=400.0)], now_s=0.5, started_s=0.4)
    assert rec["begun"] == 0.4
    assert rec["gpus"]["0"]["energy_start_j"] == pytest.approx(1160.0)  # 1200 - 400 x 0.1
    assert rec["gpus"]["1"]["integrated_j"] == pytest.approx(40.0)  # no counter: 400 x 0.1
    again = begin(rec, [0, 1], [sample(0, power=400.0, energy=5000.0)], now_s=9.0,
                  started_s=0.4)
    assert again == rec, "once per run"
    rec, s = advance(rec, [0, 1], [sample(0, power=400.0, energy=1160.0 + 4000.0),
                                   sample(1, power=400.0)], now_s=10.4)
    assert [g.energy_j for g in s.gpus or []] == [pytest.approx(4000.0)] * 2


def test_begin_leaves_a_gpu_sampled_since_the_start() -> None:
    """A run adopted from an older daemon: its record was advanced after the start."""
    rec = start_record([0], [sample(0, power=400.0, energy=1000.0)], now_s=0.0)
    rec, _ = advance(rec, [0], [sample(0, power=400.0, energy=5000.0)], now_s=10.0)
    after = begin(rec, [0], [sample(0, power=400.0, energy=9000.0)], now_s=20.0, started_s=1.0)
    assert after["gpus"] == rec["gpus"] and after["begun"] == 1.0


def test_the_end_sample_is_taken_once_and_stops_at_the_end() -> None:
    rec = start_record([0, 1], [sample(0, power=400.0, energy=0.0),
                                sample(1, power=400.0)], now_s=0.0)
    rec, last = advance(rec, [0, 1], [sample(0, power=400.0, energy=4000.0),
                                      sample(1, power=400.0)], now_s=10.0)
    assert last.energy_j == pytest.approx(8000.0)
    # The job ended at 12 s; the GPUs are read at 12.5 s (now idle at 60 W).
    rec, end = finish(rec, [0, 1], [sample(0, util=0.0, power=60.0, energy=4800.0 + 30.0),
                                    sample(1, util=0.0, power=60.0)], now_s=12.5, ended_s=12.0)
    assert end is not None
    per = {g.index: g.energy_j for g in end.gpus or []}
    assert per[0] == pytest.approx(4800.0)  # the counter less 60 W x 0.5 s
    # Integrated: 400 W for 10 s, (400 + 60) / 2 W for 2.5 s, less 60 W x 0.5 s.
    assert per[1] == pytest.approx(4000.0 + 575.0 - 30.0)
    assert end.energy_j == pytest.approx(per[0] + per[1])
    assert end_sample(rec) == end and last_sample(rec) == end and ended_at(rec) == 12.0
    same, again = finish(rec, [0, 1], [sample(0, energy=99_999.0)], now_s=99.0, ended_s=12.0)
    assert again == end and same["end"] == rec["end"], "taken once"
    rec2, _ = advance(rec, [0, 1], [sample(0, energy=99_999.0)], now_s=100.0)
    assert rec2["end"] == rec["end"], "a late advance keeps the end sample"


def test_the_end_sample_is_never_below_the_last_one() -> None:
    """Read long after the end (a restarted daemon) at a high power: not below the last."""
    rec = start_record([0], [sample(0, power=400.0, energy=0.0)], now_s=0.0)
    rec, last = advance(rec, [0], [sample(0, power=400.0, energy=4000.0)], now_s=10.0)
    rec, end = finish(rec, [0], [sample(0, power=400.0, energy=4100.0)], now_s=100.0,
                      ended_s=11.0)
    assert end is not None and end.energy_j == last.energy_j == 4000.0


def test_without_a_reading_the_last_sample_stands_for_the_end() -> None:
    rec = start_record([0], [sample(0, power=400.0, energy=0.0)], now_s=0.0)
    rec, last = advance(rec, [0], [sample(0, power=400.0, energy=4000.0)], now_s=10.0)
    rec, end = finish(rec, [0], None, now_s=12.0, ended_s=11.0)
    assert end == last and end_sample(rec) == last
    assert finish(None, [0], None, now_s=1.0, ended_s=1.0) == ({"end": {
        "ended_at": 1.0, "sampled_at": 1.0, "sample": None}}, None)
