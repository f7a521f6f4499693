from __future__ import annotations

import pytest

from scheduler.config import Settings
from worker.gpus import open_backend
from worker.gpus.sim import BUSY_POWER_W, IDLE_POWER_W, SimulatedBackend, parse_spec, sim_uuid


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_parse_one_kind() -> None:
    [t] = parse_spec("4xA100-80GB")
    assert (t.count, t.model, t.memory_mib) == (4, "A100-80GB", 81920)


def test_parse_several_kinds_with_spaces() -> None:
    kinds = parse_spec("2xA100-80GB, 1xT4-16GB")
    assert [(k.count, k.model, k.memory_mib) for k in kinds] == [
        (2, "A100-80GB", 81920), (1, "T4-16GB", 16384)]


@pytest.mark.parametrize("spec, bad", [
    ("A100-80GB", "A100-80GB"),
    ("4xA100", "4xA100"),
    ("0xA100-80GB", "0xA100-80GB"),
    ("2xA100-80GB,foo", "foo"),
    ("2xA100-80GB,,1xT4-16GB", "''"),
    ("4x-80GB", "4x-80GB"),
    ("4xA100-0GB", "4xA100-0GB"),
])
def test_bad_specs_name_the_bad_part(spec: str, bad: str) -> None:
    with pytest.raises(ValueError, match="bad GPU spec part") as e:
        parse_spec(spec)
    assert bad in str(e.value)


def test_empty_and_huge_specs() -> None:
    with pytest.raises(ValueError, match="empty GPU spec"):
        parse_spec("  ")
    with pytest.raises(ValueError, match="at most 1024"):
        parse_spec("2000xA100-80GB")


def test_inventory_indices_models_and_stable_uuids() -> None:
    inv = SimulatedBackend("2xA100-80GB,1xT4-16GB", node="gpu01").inventory()
    assert [(g.index, g.model, g.memory_mib) for g in inv] == [
        (0, "A100-80GB", 81920), (1, "A100-80GB", 81920), (2, "T4-16GB", 16384)]
    assert all(g.uuid.startswith("GPU-sim-") and g.healthy for g in inv)
    assert len({g.uuid for g in inv}) == 3
    again = SimulatedBackend("2xA100-80GB,1xT4-16GB", node="gpu01").inventory()
    assert [g.uuid for g in again] == [g.uuid for g in inv]
    assert sim_uuid("gpu02", 0) != sim_uuid("gpu01", 0)


def test_busy_gpus_show_load_and_use_energy() -> None:
    clock = FakeClock()
    b = SimulatedBackend("2xA100-80GB", node="n", clock=clock)
    b.set_busy([1])
    clock.now_s += 10
    idle, busy = b.samples()
    assert idle.utilization_pct == 0 and idle.power_w == IDLE_POWER_W
    assert busy.utilization_pct is not None and busy.utilization_pct > 50
    assert busy.power_w is not None and busy.power_w > IDLE_POWER_W
    assert busy.memory_used_mib is not None and busy.memory_used_mib > 0
    assert busy.temperature_c is not None and idle.temperature_c is not None
    assert busy.temperature_c > idle.temperature_c
    assert idle.energy_j == pytest.approx(10 * IDLE_POWER_W)
    assert busy.energy_j == pytest.approx(10 * BUSY_POWER_W)
    b.set_busy([])
    clock.now_s += 5
    assert b.samples()[1].energy_j == pytest.approx(10 * BUSY_POWER_W + 5 * IDLE_POWER_W)


def test_busy_numbers_move_between_samples() -> None:
    clock = FakeClock()
    b = SimulatedBackend("1xA100-80GB", node="n", clock=clock)
    b.set_busy([0])
    first = b.samples()[0].utilization_pct
    clock.now_s += 3
    assert b.samples()[0].utilization_pct != first


def test_injected_fault_marks_gpu_unhealthy() -> None:
    b = SimulatedBackend("2xT4-16GB", node="n")
    b.fail(1)
    assert [g.healthy for g in b.inventory()] == [True, False]
    assert [s.healthy for s in b.samples()] == [True, False]
    b.recover(1)
    assert all(g.healthy for g in b.inventory())
    with pytest.raises(IndexError):
        b.fail(2)


def test_open_backend_simulates_when_asked() -> None:
    b = open_backend(Settings(simulate_gpus="3xH100-80GB", node_name="x"))
    assert b.name == "simulated"
    assert [g.model for g in b.inventory()] == ["H100-80GB"] * 3
    b.close()


def test_open_backend_rejects_a_bad_spec() -> None:
    with pytest.raises(ValueError, match="bad GPU spec part 'lots'"):
        open_backend(Settings(simulate_gpus="lots", node_name="x"))
