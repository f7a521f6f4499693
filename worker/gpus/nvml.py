"""The real GPU backend, through NVML (``pynvml`` from the ``nvidia-ml-py`` package).

Readings: every optional one goes through ``_optional``: a card that cannot report it
(``NVMLError_NotSupported``) gives ``None``; a card that has fallen off the bus
(``NVMLError_GpuIsLost``, or ``NVMLError_Unknown`` from a call on its handle) is lost.

Health (``GpuSample.healthy`` / ``health_reason``), worst first:

* GPU lost: unhealthy until the daemon restarts;
* a critical XID error (``CRITICAL_XIDS``), from NVML's event set polled at every sample:
  unhealthy until the daemon restarts (the card needs a reset or a reboot);
* volatile uncorrected ECC errors > 0 (since the driver loaded).

Cards that cannot report ECC counters or XID events are simply not checked for them.

Processes: ``nvmlDeviceGetComputeRunningProcesses`` and ``...GraphicsRunningProcesses``;
the pids are as the driver sees them, which may be another PID namespace's (a worker in a
container): the daemon copes with pids it cannot see.

The NVML module is injectable so that all of this can be tested without a GPU.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any, TypeVar

from gpuq.worker.gpus.base import GpuBackendUnavailable, GpuInfo, GpuProcess, GpuSample
from gpuq.worker.gpus.models import normalise_model

log = logging.getLogger(__name__)
T = TypeVar("T")
MIB = 1024 * 1024
#: XID errors after which a GPU is not given to jobs until the daemon restarts (after the
#: card was reset or the host rebooted). Others (13, 31, 43, 45 ...) are errors of the
#: application, not of the card: they are logged only.
CRITICAL_XIDS: dict[int, str] = {
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint/warning",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping recording event",
    64: "ECC page retirement or row remapper recording failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}
#: Events read per sample at most (the rest wait for the next sample).
MAX_EVENTS_PER_POLL = 64
#: Where the driver's device nodes are.
DEV_DIR = "/dev"


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
        #: index -> why the GPU is out of service until the daemon restarts.
        self._lost: dict[int, str] = {}
        self._xid: dict[int, str] = {}
        #: (index, what, error) already logged as a warning: the next ones go to debug.
        self._warned: set[tuple[int, str, str]] = set()
        self._events = self._open_events()

    # --- the interface ---------------------------------------------------------------
    def inventory(self) -> list[GpuInfo]:
        nvml = self._nvml
        out = []
        with self._lock:
            self._poll_events()
            for i, h in enumerate(self._handles):
                raw = self._optional(i, "name", lambda h=h: _text(nvml.nvmlDeviceGetName(h)))
                uuid = self._optional(i, "uuid", lambda h=h: _text(nvml.nvmlDeviceGetUUID(h)))
                mem = self._optional(i, "memory", lambda h=h: nvml.nvmlDeviceGetMemoryInfo(h))
                memory_mib = int(mem.total // MIB) if mem is not None else 0
                raw = raw or "unknown"
                reason = self._health_reason(i, h)
                out.append(GpuInfo(index=i, uuid=uuid or f"GPU-unknown-{i}",
                                   model=normalise_model(raw, memory_mib), memory_mib=memory_mib,
                                   healthy=reason is None, raw_name=raw, health_reason=reason))
        return out

    def samples(self) -> list[GpuSample]:
        nvml = self._nvml
        out = []
        with self._lock:
            self._poll_events()
            for i, h in enumerate(self._handles):
                if i in self._lost:  # nothing more to read from it
                    out.append(GpuSample(index=i, healthy=False, health_reason=self._lost[i]))
                    continue
                util = self._optional(i, "utilization",
                                      lambda h=h: nvml.nvmlDeviceGetUtilizationRates(h))
                mem = self._optional(i, "memory", lambda h=h: nvml.nvmlDeviceGetMemoryInfo(h))
                power_mw = self._optional(i, "power", lambda h=h: nvml.nvmlDeviceGetPowerUsage(h))
                energy_mj = self._optional(
                    i, "energy", lambda h=h: nvml.nvmlDeviceGetTotalEnergyConsumption(h))
                temp = self._optional(
                    i, "temperature",
                    lambda h=h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))
                processes = self._processes(i, h)
                reason = self._health_reason(i, h)
                out.append(GpuSample(
                    index=i,
                    utilization_pct=float(util.gpu) if util is not None else None,
                    memory_used_mib=round(mem.used / MIB, 1) if mem is not None else None,
                    power_w=power_mw / 1000.0 if power_mw is not None else None,
                    energy_j=energy_mj / 1000.0 if energy_mj is not None else None,
                    temperature_c=float(temp) if temp is not None else None,
                    healthy=reason is None, health_reason=reason, processes=processes,
                ))
        return out

    def set_busy(self, processes: Mapping[int, Iterable[int]]) -> None:
        """Real cards show their own load."""

    def device_nodes(self) -> dict[int, tuple[str, ...]]:
        """GPU index -> its device node, ``/dev/nvidia<minor>`` (NVML's minor number; the
        node must exist). The driver's shared nodes (``nvidiactl``, ``nvidia-uvm``,
        ``nvidia-modeset``) are every job's and are not listed; nor are MIG instances'
        ``/dev/nvidia-caps`` nodes."""
        out: dict[int, tuple[str, ...]] = {}
        get_minor = getattr(self._nvml, "nvmlDeviceGetMinorNumber", None)
        if get_minor is None:
            return out
        with self._lock:
            for i, h in enumerate(self._handles):
                minor = self._optional(i, "minor number", lambda h=h: get_minor(h))
                if minor is None:
                    continue
                path = f"{DEV_DIR}/nvidia{int(minor)}"
                if os.path.exists(path):
                    out[i] = (path,)
        return out

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._events is not None:
                try:
                    self._nvml.nvmlEventSetFree(self._events)
                except self._nvml.NVMLError as e:
                    log.debug("nvmlEventSetFree: %s", e)
                self._events = None
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as e:
                log.debug("nvmlShutdown: %s", e)

    # --- health ----------------------------------------------------------------------
    def _health_reason(self, index: int, handle: Any) -> str | None:
        if index not in self._lost and index not in self._xid:
            nvml = self._nvml
            errors = self._optional(index, "ECC errors", lambda: nvml.nvmlDeviceGetTotalEccErrors(
                handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC))
            if errors:
                return f"{int(errors)} uncorrected ECC error(s) since the driver loaded"
        return self._lost.get(index) or self._xid.get(index)

    def _open_events(self) -> Any:
        """An event set with every GPU that reports critical XID errors, or ``None``."""
        nvml = self._nvml
        try:
            events = nvml.nvmlEventSetCreate()
        except (nvml.NVMLError, AttributeError) as e:
            log.info("NVML events unavailable (%s): XID errors are not watched", e)
            return None
        registered = 0
        for i, h in enumerate(self._handles):
            try:
                nvml.nvmlDeviceRegisterEvents(h, nvml.nvmlEventTypeXidCriticalError, events)
                registered += 1
            except nvml.NVMLError_NotSupported:
                log.info("GPU %d: cannot report XID errors (not supported); not watched", i)
            except nvml.NVMLError as e:
                log.warning("GPU %d: cannot watch XID errors: %s", i, e)
        if registered:
            return events
        try:
            nvml.nvmlEventSetFree(events)
        except nvml.NVMLError as e:
            log.debug("nvmlEventSetFree: %s", e)
        return None

    def _poll_events(self) -> None:
        """Read the XID events that arrived since the last look, without waiting."""
        if self._events is None:
            return
        nvml = self._nvml
        for _ in range(MAX_EVENTS_PER_POLL):
            try:
                data = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError_Timeout:
                return
            except nvml.NVMLError as e:
                log.warning("reading NVML events failed: %s", e)
                return
            if not int(data.eventType) & int(nvml.nvmlEventTypeXidCriticalError):
                continue
            xid = int(data.eventData)
            index = self._index_of(data.device)
            where = f"GPU {index}" if index is not None else "a GPU"
            if xid not in CRITICAL_XIDS:
                log.warning("%s: XID %d (an application's error; the GPU stays in service)",
                            where, xid)
                continue
            reason = f"XID {xid}: {CRITICAL_XIDS[xid]}"
            log.error("%s: %s; it gets no jobs until the worker restarts", where, reason)
            if index is not None:
                self._xid.setdefault(index, reason)

    def _index_of(self, device: Any) -> int | None:
        nvml = self._nvml
        try:
            index = int(nvml.nvmlDeviceGetIndex(device))
        except nvml.NVMLError as e:
            log.warning("an XID event for a device NVML cannot name: %s", e)
            return None
        return index if 0 <= index < len(self._handles) else None

    # --- processes -------------------------------------------------------------------
    def _processes(self, index: int, handle: Any) -> tuple[GpuProcess, ...]:
        nvml = self._nvml
        found: dict[int, float | None] = {}
        for what, fn in (("compute processes", nvml.nvmlDeviceGetComputeRunningProcesses),
                         ("graphics processes", nvml.nvmlDeviceGetGraphicsRunningProcesses)):
            for p in self._optional(index, what, lambda fn=fn: fn(handle)) or ():
                pid = int(p.pid)
                used = getattr(p, "usedGpuMemory", None)
                mib = round(used / MIB, 1) if used is not None else None
                if pid not in found or (mib or 0) > (found[pid] or 0):
                    found[pid] = mib
        return tuple(GpuProcess(pid=pid, used_memory_mib=m) for pid, m in found.items())

    # --- readings --------------------------------------------------------------------
    def _optional(self, index: int, what: str, read: Callable[[], T]) -> T | None:
        nvml = self._nvml
        try:
            return read()
        except nvml.NVMLError_NotSupported:
            return None
        except (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown) as e:
            if index not in self._lost:
                log.error("GPU %d is lost (NVML: %s reading its %s); it gets no jobs until "
                          "the worker restarts", index, e, what)
                self._lost[index] = f"GPU is lost (NVML: {e})"
            return None
        except nvml.NVMLError as e:
            key = (index, what, str(e))
            if key in self._warned:
                log.debug("GPU %d: reading its %s failed: %s", index, what, e)
            else:
                log.warning("GPU %d: reading its %s failed: %s", index, what, e)
                self._warned.add(key)
            return None
