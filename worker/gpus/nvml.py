"""The real GPU backend, through NVML (``pynvml`` from the ``nvidia-ml-py`` package).

Every optional reading goes through ``_optional``: a card that cannot report it
(``NVMLError_NotSupported``) gives ``None``; a card that has fallen off the bus
(``NVMLError_GpuIsLost``) is reported unhealthy. The NVML module is injectable so the
error handling can be tested on machines without a GPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, TypeVar

from worker.gpus.base import GpuBackendUnavailable, GpuInfo, GpuSample
from worker.gpus.models import normalise_model

log = logging.getLogger(__name__)
T = TypeVar("T")
MIB = 1024 * 1024


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class NvmlBackend:
    name = "nvml"

    def __init__(self, nvml: ModuleType | Any | None = None) -> None:
        if nvml is None:
            import pynvml as nvml
        self._nvml = nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            raise GpuBackendUnavailable(
                f"NVML could not start ({e}): no NVIDIA driver or GPU here? "
                "Pass --simulate-gpus 4xA100-80GB (GPUQ_SIMULATE_GPUS) to simulate GPUs."
            ) from e
        self._lock = threading.Lock()
        self._closed = False
        try:
            count = nvml.nvmlDeviceGetCount()
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except nvml.NVMLError:
            nvml.nvmlShutdown()
            raise
        self._lost: set[int] = set()

    # --- the interface ---------------------------------------------------------------
    def inventory(self) -> list[GpuInfo]:
        nvml = self._nvml
        out = []
        with self._lock:
            for i, h in enumerate(self._handles):
                raw = self._optional(i, lambda h=h: _text(nvml.nvmlDeviceGetName(h))) or "unknown"
                uuid = self._optional(i, lambda h=h: _text(nvml.nvmlDeviceGetUUID(h)))
                mem = self._optional(i, lambda h=h: nvml.nvmlDeviceGetMemoryInfo(h))
                memory_mib = int(mem.total // MIB) if mem is not None else 0
                out.append(GpuInfo(index=i, uuid=uuid or f"GPU-unknown-{i}",
                                   model=normalise_model(raw, memory_mib), memory_mib=memory_mib,
                                   healthy=i not in self._lost, raw_name=raw))
        return out

    def samples(self) -> list[GpuSample]:
        nvml = self._nvml
        out = []
        with self._lock:
            for i, h in enumerate(self._handles):
                util = self._optional(i, lambda h=h: nvml.nvmlDeviceGetUtilizationRates(h))
                mem = self._optional(i, lambda h=h: nvml.nvmlDeviceGetMemoryInfo(h))
                power_mw = self._optional(i, lambda h=h: nvml.nvmlDeviceGetPowerUsage(h))
                energy_mj = self._optional(
                    i, lambda h=h: nvml.nvmlDeviceGetTotalEnergyConsumption(h))
                temp = self._optional(
                    i, lambda h=h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))
                out.append(GpuSample(
                    index=i,
                    utilization_pct=float(util.gpu) if util is not None else None,
                    memory_used_mib=round(mem.used / MIB, 1) if mem is not None else None,
                    power_w=power_mw / 1000.0 if power_mw is not None else None,
                    energy_j=energy_mj / 1000.0 if energy_mj is not None else None,
                    temperature_c=float(temp) if temp is not None else None,
                    healthy=i not in self._lost,
                ))
        return out

    def set_busy(self, indices: Iterable[int]) -> None:
        """Real cards show their own load."""

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError as e:
                    log.debug("nvmlShutdown: %s", e)

    # --- internals -------------------------------------------------------------------
    def _optional(self, index: int, read: Callable[[], T]) -> T | None:
        nvml = self._nvml
        try:
            return read()
        except nvml.NVMLError_NotSupported:
            return None
        except nvml.NVMLError_GpuIsLost:
            if index not in self._lost:
                log.error("GPU %d has fallen off the bus (NVML: GPU is lost)", index)
            self._lost.add(index)
            return None
        except nvml.NVMLError as e:
            log.warning("GPU %d: NVML read failed: %s", index, e)
            return None
