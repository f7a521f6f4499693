from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuq.config import Settings
from gpuq.worker.gpus import GpuProcess, open_backend
from gpuq.worker.gpus.sim import (
    BUSY_POWER_W,
    FAULTS_FILE,
    IDLE_POWER_W,
    Faults,
    SimulatedBackend,
    parse_faults,
    parse_spec,
    sim_uuid,
    write_faults,
)


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


def test_busy_gpus_show_load_and_their_processes() -> None:
    clock = FakeClock()
    b = SimulatedBackend("2xA100-80GB", node="n", clock=clock)
    b.set_busy({1: [os.getpid()]})
    clock.now_s += 10
    idle, busy = b.samples()
    assert idle.utilization_pct == 0 and idle.power_w == IDLE_POWER_W
    assert busy.utilization_pct is not None and busy.utilization_pct > 50
    assert busy.power_w is not None and busy.power_w > IDLE_POWER_W
    assert busy.memory_used_mib is not None and busy.memory_used_mib > 0
    assert busy.temperature_c is not None and idle.temperature_c is not None
    assert busy.temperature_c > idle.temperature_c
    assert idle.processes == ()
    assert busy.processes == (GpuProcess(pid=os.getpid(), used_memory_mib=busy.memory_used_mib),)
    b.set_busy({1: []})  # a job still starting: busy, no process to show yet
    assert b.samples()[1].processes == () and b.samples()[1].utilization_pct > 0  # type: ignore[operator]


def test_energy_is_the_integral_of_the_reported_power() -> None:
    clock = FakeClock()
    b = SimulatedBackend("2xA100-80GB", node="n", clock=clock)
    b.set_busy({1: [1]})
    first = b.samples()
    riemann = [0.0, 0.0]
    for _ in range(600):  # a minute in 0.1 s steps, over a good part of the wobble
        before = b.samples()
        clock.now_s += 0.1
        for s in before:
            riemann[s.index] += (s.power_w or 0) * 0.1
    last = b.samples()
    used = [(last[i].energy_j or 0) - (first[i].energy_j or 0) for i in (0, 1)]
    assert used[0] == pytest.approx(60 * IDLE_POWER_W, abs=1)
    assert used[1] == pytest.approx(riemann[1], rel=0.01)
    assert used[1] != pytest.approx(60 * BUSY_POWER_W, abs=5), "the wobble is drawn too"
    b.set_busy({})
    clock.now_s += 5
    assert (b.samples()[1].energy_j or 0) - (last[1].energy_j or 0) == pytest.approx(
        5 * IDLE_POWER_W, abs=0.2)


def test_busy_numbers_move_between_samples() -> None:
    clock = FakeClock()
    b = SimulatedBackend("1xA100-80GB", node="n", clock=clock)
    b.set_busy({0: [1]})
    first = b.samples()[0].utilization_pct
    clock.now_s += 3
    assert b.samples()[0].utilization_pct != first


def test_injected_fault_marks_gpu_unhealthy() -> None:
    b = SimulatedBackend("2xT4-16GB", node="n")
    b.fail(1)
    assert [g.healthy for g in b.inventory()] == [True, False]
    assert [(s.healthy, s.health_reason) for s in b.samples()] == [
        (True, None), (False, "injected fault")]
    b.recover(1)
    assert all(g.healthy for g in b.inventory())
    with pytest.raises(IndexError):
        b.fail(2)


# --- the faults file: injection from another process ---------------------------------------


@pytest.fixture
def hand_run() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "30"])
    yield p
    p.kill()
    p.wait()


def test_a_foreign_process_from_the_file_is_on_the_gpu_until_it_ends(
        tmp_path: Path, hand_run: subprocess.Popen[bytes]) -> None:
    faults = tmp_path / FAULTS_FILE
    b = SimulatedBackend("2xA100-80GB", node="n", faults_file=faults)
    assert all(s.processes == () for s in b.samples()), "no file: no faults"
    # Another process (a test, a demo script) writes the file; the daemon is not told.
    subprocess.run([sys.executable, "-c",
                    "import sys; from gpuq.worker.gpus.sim import write_faults; "
                    "write_faults(sys.argv[1], foreign={1: [int(sys.argv[2])]})",
                    str(faults), str(hand_run.pid)], check=True)
    idle, used = b.samples()
    assert [p.pid for p in used.processes] == [hand_run.pid] and idle.processes == ()
    assert used.utilization_pct > 0 and used.memory_used_mib > 0  # type: ignore[operator]
    b.set_busy({1: [4242]})  # a job there as well: both are listed
    assert {p.pid for p in b.samples()[1].processes} == {hand_run.pid, 4242}
    b.set_busy({})
    hand_run.kill()
    hand_run.wait()
    assert b.samples()[1].processes == (), "a pid that is gone is dropped"
    assert b.samples()[1].utilization_pct == 0


def test_a_zombie_is_not_on_the_gpu(tmp_path: Path, wait_for: Any) -> None:
    p = subprocess.Popen(["true"])
    write_faults(tmp_path / FAULTS_FILE, foreign={0: [p.pid]})
    b = SimulatedBackend("1xA100-80GB", node="n", faults_file=tmp_path / FAULTS_FILE)
    stat = Path(f"/proc/{p.pid}/stat")
    wait_for(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", what="a zombie")
    assert b.samples()[0].processes == ()
    p.wait()


def test_unhealthy_gpus_from_the_file(tmp_path: Path) -> None:
    faults = tmp_path / FAULTS_FILE
    b = SimulatedBackend("3xT4-16GB", node="n", faults_file=faults)
    faults.write_text(json.dumps({"unhealthy": {"2": "XID 79: GPU has fallen off the bus"}}))
    assert [(s.healthy, s.health_reason) for s in b.samples()] == [
        (True, None), (True, None), (False, "XID 79: GPU has fallen off the bus")]
    assert [(g.healthy, g.health_reason) for g in b.inventory()][2] == (
        False, "XID 79: GPU has fallen off the bus")
    faults.write_text('{"unhealthy": {}}')
    assert all(s.healthy for s in b.samples())


@pytest.mark.parametrize("content, problem", [
    ("{not json", "Expecting property name"),
    ('["a list"]', "expected a JSON object"),
    ('{"foreign": {"0": "123"}}', "foreign['0'] must be a list of pids"),
    ('{"foreign": {"gpu0": [1]}}', "'gpu0' is not a GPU index"),
])
def test_a_bad_faults_file_is_reported_once_and_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, problem: str) -> None:
    faults = tmp_path / FAULTS_FILE
    faults.write_text(content)
    b = SimulatedBackend("1xT4-16GB", node="n", faults_file=faults)
    b.fail(0, "kept")
    b.samples()
    [s] = b.samples()
    assert (s.healthy, s.health_reason, s.processes) == (False, "kept", ())
    [record] = [r for r in caplog.records if r.name == "gpuq.worker.gpus.sim"]
    assert problem in record.getMessage()


def test_parse_faults() -> None:
    assert parse_faults({}) == Faults()
    assert parse_faults({"foreign": {"1": [5, 6]}, "unhealthy": {"0": True, "2": ""}}) == Faults(
        foreign={1: (5, 6)}, unhealthy={0: "injected fault"})
    with pytest.raises(ValueError, match="not a GPU index"):
        parse_faults({"unhealthy": {"-1": "x"}})


def test_open_backend_simulates_when_asked(tmp_path: Path) -> None:
    conf = Settings(simulate_gpus="3xH100-80GB", node_name="x", worker_state_dir=str(tmp_path))
    b = open_backend(conf)
    assert b.name == "simulated"
    assert [g.model for g in b.inventory()] == ["H100-80GB"] * 3
    write_faults(tmp_path / "sim-gpus.json", unhealthy={0: "ECC"})
    assert [g.healthy for g in b.inventory()] == [False, True, True]
    b.close()


def test_open_backend_rejects_a_bad_spec() -> None:
    with pytest.raises(ValueError, match="bad GPU spec part 'lots'"):
        open_backend(Settings(simulate_gpus="lots", node_name="x"))
