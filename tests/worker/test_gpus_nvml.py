"""NVML: the error handling against a stand-in module (runs anywhere), and the real
thing on a GPU host (``-m gpu``; skipped cleanly where NVML cannot start)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from gpuq.config import Settings
from gpuq.worker.gpus import GpuBackendUnavailable, GpuProcess, open_backend
from gpuq.worker.gpus.nvml import CRITICAL_XIDS, MIB, NvmlBackend
from gpuq.worker.procs import JobProcesses, foreign_processes


class StandIn:
    """The part of pynvml the backend uses, with a failure switch per call (``fail``, by
    call name and handle; handles are the GPU indices) and queued XID events."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
    NVMLError_Unknown = pynvml.NVMLError_Unknown
    NVMLError_Timeout = pynvml.NVMLError_Timeout
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC
    nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError

    def __init__(self, names: list[bytes | str]) -> None:
        self.names = names
        self.fail: dict[tuple[str, int], type[Exception]] = {}
        self.calls: list[str] = []
        self.init_error: Exception | None = None
        self.ecc: dict[int, int] = {}
        self.compute: dict[int, list[Any]] = {}
        self.graphics: dict[int, list[Any]] = {}
        self.events: list[Any] = []
        self.registered: list[int] = []
        self.event_set_error: Exception | None = None

    def xid(self, h: int, xid: int) -> None:
        """Queue an XID event of GPU ``h``, as the driver would."""
        self.events.append(SimpleNamespace(device=h, eventData=xid,
                                           eventType=pynvml.nvmlEventTypeXidCriticalError))

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

    def nvmlDeviceGetTotalEccErrors(self, h: int, error_type: int, counter: int) -> int:
        assert (error_type, counter) == (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                         pynvml.NVML_VOLATILE_ECC)
        self._check("ecc", h)
        return self.ecc.get(h, 0)

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        self._check("compute", h)
        return self.compute.get(h, [])

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: int) -> list[Any]:
        self._check("graphics", h)
        return self.graphics.get(h, [])

    def nvmlEventSetCreate(self) -> str:
        if self.event_set_error is not None:
            raise self.event_set_error
        self.calls.append("event set")
        return "the-event-set"

    def nvmlDeviceRegisterEvents(self, h: int, types: int, events: str) -> None:
        assert (types, events) == (pynvml.nvmlEventTypeXidCriticalError, "the-event-set")
        self._check("register", h)
        self.registered.append(h)

    def nvmlEventSetWait_v2(self, events: str, timeout_ms: int) -> Any:
        assert (events, timeout_ms) == ("the-event-set", 0), "never wait for events"
        if not self.events:
            raise pynvml.NVMLError_Timeout()
        return self.events.pop(0)

    def nvmlEventSetFree(self, events: str) -> None:
        self.calls.append("event set freed")

    def nvmlDeviceGetIndex(self, h: int) -> int:
        return h


def proc(pid: int, mib: float | None) -> Any:
    return SimpleNamespace(pid=pid, usedGpuMemory=None if mib is None else int(mib * MIB))


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
    assert (s.healthy, s.health_reason, s.processes) == (True, None, ())
    b.close()
    b.close()
    assert nv.calls == ["init", "event set", "event set freed", "shutdown"]


def test_unsupported_readings_are_none() -> None:
    nv = StandIn(["Tesla T4"])
    nv.fail.update({("power", 0): pynvml.NVMLError_NotSupported,
                    ("energy", 0): pynvml.NVMLError_NotSupported,
                    ("util", 0): pynvml.NVMLError_NotSupported})
    [s] = NvmlBackend(nv).samples()
    assert (s.power_w, s.energy_j, s.utilization_pct) == (None, None, None)
    assert s.temperature_c == 61.0 and s.healthy


@pytest.mark.parametrize("error", [pynvml.NVMLError_GpuIsLost, pynvml.NVMLError_Unknown])
def test_lost_gpu_is_unhealthy_until_the_daemon_restarts(error: type[Exception]) -> None:
    nv = StandIn(["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"])
    b = NvmlBackend(nv)
    nv.fail[("memory", 1)] = error
    samples = b.samples()
    assert [s.healthy for s in samples] == [True, False]
    assert samples[1].memory_used_mib is None
    assert samples[1].health_reason is not None
    assert samples[1].health_reason.startswith("GPU is lost (NVML: ")
    assert [g.healthy for g in b.inventory()] == [True, False]
    del nv.fail[("memory", 1)]
    lost = b.samples()[1]
    assert (lost.healthy, lost.utilization_pct) == (False, None), "a lost GPU is not read again"
    assert NvmlBackend(nv).samples()[1].healthy, "a restarted daemon looks again"


def test_uncorrected_ecc_errors_make_a_gpu_unhealthy() -> None:
    nv = StandIn(["NVIDIA A100-SXM4-80GB"] * 3)
    nv.ecc[1] = 2
    nv.fail[("ecc", 2)] = pynvml.NVMLError_NotSupported  # no ECC (a consumer card): fine
    b = NvmlBackend(nv)
    assert [(s.healthy, s.health_reason) for s in b.samples()] == [
        (True, None), (False, "2 uncorrected ECC error(s) since the driver loaded"),
        (True, None)]
    assert [g.healthy for g in b.inventory()] == [True, False, True]
    nv.ecc[1] = 0  # the counter is volatile: a driver reload clears it
    assert b.samples()[1].healthy


def test_critical_xid_makes_a_gpu_unhealthy_until_the_daemon_restarts(
        caplog: pytest.LogCaptureFixture) -> None:
    nv = StandIn(["NVIDIA H100 80GB HBM3"] * 3)
    b = NvmlBackend(nv)
    assert nv.registered == [0, 1, 2]
    nv.xid(1, 79)
    nv.xid(2, 13)  # a graphics engine exception: the application's error, not the card's
    samples = b.samples()
    assert [(s.healthy, s.health_reason) for s in samples] == [
        (True, None), (False, "XID 79: GPU has fallen off the bus"), (True, None)]
    assert nv.events == []
    assert "GPU 2: XID 13" in caplog.text
    assert not b.samples()[1].healthy, "it stays out of service"
    nv.xid(1, 48)
    assert b.samples()[1].health_reason == "XID 79: GPU has fallen off the bus", "the first"
    assert not [g for g in b.inventory() if g.index == 1][0].healthy


@pytest.mark.parametrize("xid", sorted(CRITICAL_XIDS))
def test_every_critical_xid(xid: int) -> None:
    nv = StandIn(["NVIDIA A100-SXM4-80GB"])
    b = NvmlBackend(nv)
    nv.xid(0, xid)
    [s] = b.samples()
    assert not s.healthy and s.health_reason == f"XID {xid}: {CRITICAL_XIDS[xid]}"


def test_gpus_without_xid_events_are_not_watched() -> None:
    nv = StandIn(["Tesla T4", "Tesla T4"])
    nv.fail[("register", 0)] = pynvml.NVMLError_NotSupported
    b = NvmlBackend(nv)
    assert nv.registered == [1]
    nv.xid(1, 95)
    assert [s.healthy for s in b.samples()] == [True, False]
    nv2 = StandIn(["Tesla T4"])
    nv2.fail[("register", 0)] = pynvml.NVMLError_NotSupported
    b2 = NvmlBackend(nv2)
    assert b2.samples()[0].healthy
    b2.close()
    assert nv2.calls == ["init", "event set", "event set freed", "shutdown"]
    nv3 = StandIn(["Tesla T4"])
    nv3.event_set_error = pynvml.NVMLError_NotSupported()
    assert NvmlBackend(nv3).samples()[0].healthy


def test_processes_on_a_gpu() -> None:
    nv = StandIn(["NVIDIA A100-SXM4-80GB"] * 3)
    nv.compute[0] = [proc(100, 2048), proc(101, None)]
    nv.graphics[0] = [proc(100, 2048), proc(102, 10)]  # 100 does both
    nv.fail[("compute", 1)] = pynvml.NVMLError_NotSupported
    nv.fail[("graphics", 1)] = pynvml.NVMLError_NotSupported
    nv.fail[("compute", 2)] = pynvml.NVMLError_NoPermission
    nv.graphics[2] = [proc(4_194_999, 5)]  # a pid of another PID namespace: reported as is
    s0, s1, s2 = NvmlBackend(nv).samples()
    assert s0.processes == (GpuProcess(100, 2048.0), GpuProcess(101, None),
                            GpuProcess(102, 10.0))
    assert s1.processes == () and s1.healthy
    assert s2.processes == (GpuProcess(4_194_999, 5.0),) and s2.healthy


def test_a_failing_reading_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gpuq.worker.gpus.nvml")
    nv = StandIn(["Tesla T4"])
    nv.fail[("power", 0)] = pynvml.NVMLError_NoPermission
    b = NvmlBackend(nv)
    for _ in range(3):
        assert b.samples()[0].power_w is None
    assert [r.levelname for r in caplog.records if "power" in r.getMessage()] == [
        "WARNING", "DEBUG", "DEBUG"]


def test_device_nodes_are_dev_nvidia_minor(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """Each GPU's node is ``/dev/nvidia<minor>`` (NVML's minor number, not its index);
    one that cannot be read, or whose node is missing, is left out (not fenced)."""
    nvml = StandIn(["NVIDIA A100-SXM4-80GB"] * 3)
    minors = {0: 4, 1: 2, 2: 7}

    def minor(h: int) -> int:
        nvml._check("minor", h)
        return minors[h]

    nvml.nvmlDeviceGetMinorNumber = minor  # type: ignore[attr-defined]
    nvml.fail[("minor", 2)] = pynvml.NVMLError_NotSupported
    for m in (4, 2):
        (tmp_path / f"nvidia{m}").write_text("")
    monkeypatch.setattr("gpuq.worker.gpus.nvml.DEV_DIR", str(tmp_path))
    b = NvmlBackend(nvml)
    assert b.device_nodes() == {0: (f"{tmp_path}/nvidia4",), 1: (f"{tmp_path}/nvidia2",)}
    (tmp_path / "nvidia2").unlink()
    assert b.device_nodes() == {0: (f"{tmp_path}/nvidia4",)}
    # A stand-in (an older pynvml) without the call: no nodes, no fence.
    assert NvmlBackend(StandIn(["NVIDIA T4"])).device_nodes() == {}


@pytest.mark.gpu
def test_real_device_nodes(real: NvmlBackend) -> None:
    nodes = real.device_nodes()
    assert sorted(nodes) == [g.index for g in real.inventory()]
    for (path,) in nodes.values():
        st = os.stat(path)
        assert os.major(st.st_rdev) == 195, path  # the NVIDIA driver's major


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


@pytest.mark.gpu
def test_real_health_and_processes(real: NvmlBackend) -> None:
    for s in real.samples():
        assert (s.healthy, s.health_reason) == (True, None), s
        assert all(p.pid >= 0 for p in s.processes)
    print({"xid events watched": real._events is not None})


#: Holds a CUDA context (and 256 MiB) on GPU 0 through the driver API, as a hand-run
#: ``python train.py`` would: no CUDA toolkit or framework needed, only the driver.
CUDA_HOLDER = """
import ctypes, time
cuda = ctypes.CDLL("libcuda.so.1")
dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p()
assert cuda.cuInit(0) == 0
assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
assert cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev) == 0
assert cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(256 << 20)) == 0
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.gpu
def test_real_hand_run_process_is_foreign(real: NvmlBackend, wait_for: Any) -> None:
    holder = subprocess.Popen([sys.executable, "-c", CUDA_HOLDER], stdout=subprocess.PIPE,
                              start_new_session=True)
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != b"ready":
            pytest.skip("cannot hold a CUDA context here (no libcuda.so.1?)")
        procs = wait_for(lambda: real.samples()[0].processes, timeout_s=10,
                         what="a process on GPU 0")
        print({"processes": procs, "holder": holder.pid})
        mine = [p for p in procs if p.pid == holder.pid]
        if not mine:
            # The driver names pids of another PID namespace (this test runs in a
            # container): not visible here, so on a GPU no job holds, foreign.
            assert foreign_processes(procs, JobProcesses(), held=False)
            assert not foreign_processes(procs, JobProcesses(), held=True)
            return
        [p] = mine
        assert p.used_memory_mib is None or p.used_memory_mib >= 256
        [foreign] = foreign_processes(mine, JobProcesses(), held=False)
        assert foreign.pid == holder.pid and "python" in (foreign.command or "")
        assert foreign.user is not None
        as_job = JobProcesses(sessions=frozenset({os.getsid(holder.pid)}))
        assert foreign_processes(mine, as_job, held=True) == []
    finally:
        holder.kill()
        holder.wait()

