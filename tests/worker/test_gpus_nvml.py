"""NVML: the error handling against a stand-in module (runs anywhere), and the real
thing on a GPU host (``-m gpu``; skipped cleanly where NVML cannot start)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from scheduler.config import Settings
from worker.gpus import GpuBackendUnavailable, open_backend
from worker.gpus.nvml import MIB, NvmlBackend


class StandIn:
    """The part of pynvml the backend uses, with a failure switch per call."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, names: list[bytes | str]) -> None:
        self.names = names
        self.fail: dict[tuple[str, int], type[Exception]] = {}
        self.calls: list[str] = []
        self.init_error: Exception | None = None

    def _check(self, call: str, h: int) -> None:
        exc = self.fail.get((call, h))
        if exc is not None:
            raise exc()

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes | str:
        self._check("name", h)
        return self.names[h]

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h:08d}-aaaa-bbbb-cccc-dddddddddddd"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        self._check("memory", h)
        return SimpleNamespace(total=81920 * MIB, used=1024 * MIB, free=80896 * MIB)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        self._check("util", h)
        return SimpleNamespace(gpu=42, memory=10)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        self._check("power", h)
        return 250_500  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        self._check("energy", h)
        return 3_600_000  # mJ

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        self._check("temp", h)
        return 61


def test_inventory_and_units() -> None:
    nv = StandIn([b"NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB"])
    b = NvmlBackend(nv)
    inv = b.inventory()
    assert [(g.index, g.model, g.memory_mib, g.raw_name) for g in inv] == [
        (0, "A100-80GB", 81920, "NVIDIA A100-SXM4-80GB"),
        (1, "A100-80GB", 81920, "NVIDIA A100-SXM4-80GB")]
    s = b.samples()[0]
    assert (s.utilization_pct, s.memory_used_mib, s.power_w, s.energy_j, s.temperature_c) == (
        42.0, 1024.0, 250.5, 3600.0, 61.0)
    b.close()
    b.close()
    assert nv.calls == ["init", "shutdown"]


def test_unsupported_readings_are_none() -> None:
    nv = StandIn(["Tesla T4"])
    nv.fail.update({("power", 0): pynvml.NVMLError_NotSupported,
                    ("energy", 0): pynvml.NVMLError_NotSupported,
                    ("util", 0): pynvml.NVMLError_NotSupported})
    [s] = NvmlBackend(nv).samples()
    assert (s.power_w, s.energy_j, s.utilization_pct) == (None, None, None)
    assert s.temperature_c == 61.0 and s.healthy


def test_lost_gpu_is_unhealthy() -> None:
    nv = StandIn(["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"])
    b = NvmlBackend(nv)
    nv.fail[("memory", 1)] = pynvml.NVMLError_GpuIsLost
    samples = b.samples()
    assert [s.healthy for s in samples] == [True, False]
    assert samples[1].memory_used_mib is None
    assert [g.healthy for g in b.inventory()] == [True, False]


def test_init_failure_says_to_simulate() -> None:
    nv = StandIn([])
    nv.init_error = pynvml.NVMLError_LibraryNotFound()
    with pytest.raises(GpuBackendUnavailable, match="--simulate-gpus"):
        NvmlBackend(nv)


def _nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_open_backend_without_nvml_says_to_simulate() -> None:
    if _nvml_works():
        pytest.skip("this host has working NVML")
    with pytest.raises(GpuBackendUnavailable, match="--simulate-gpus"):
        open_backend(Settings(simulate_gpus="", node_name="x"))


# --- a real GPU ---------------------------------------------------------------------------


@pytest.fixture
def real() -> Iterator[NvmlBackend]:
    if not _nvml_works():
        pytest.skip("NVML cannot start here (no NVIDIA driver or GPU)")
    b = NvmlBackend()
    yield b
    b.close()


@pytest.mark.gpu
def test_real_inventory(real: NvmlBackend) -> None:
    inv = real.inventory()
    assert inv, "NVML started but reports no GPU"
    assert [g.index for g in inv] == list(range(len(inv)))
    for g in inv:
        assert g.uuid.startswith(("GPU-", "MIG-")), g.uuid
        assert g.memory_mib > 1024
        assert re.fullmatch(r"[A-Z0-9]+(-[A-Z0-9]+)*-\d+GB", g.model), (g.raw_name, g.model)
        assert g.healthy
    print({g.raw_name: g.model for g in inv})


@pytest.mark.gpu
def test_real_samples(real: NvmlBackend) -> None:
    inv, samples = real.inventory(), real.samples()
    assert [s.index for s in samples] == [g.index for g in inv]
    for s, g in zip(samples, inv, strict=True):
        if s.utilization_pct is not None:
            assert 0 <= s.utilization_pct <= 100
        if s.memory_used_mib is not None:
            assert 0 <= s.memory_used_mib <= g.memory_mib
        if s.power_w is not None:
            assert 0 < s.power_w < 2000
        if s.energy_j is not None:
            assert s.energy_j >= 0
        if s.temperature_c is not None:
            assert 0 < s.temperature_c < 120
        assert s.healthy


@pytest.mark.gpu
def test_real_open_backend(real: NvmlBackend) -> None:
    b = open_backend(Settings(simulate_gpus="", node_name="x"))
    assert b.name == "nvml"
    assert len(b.inventory()) == len(real.inventory())
    b.close()
