"""The GPU backend interface (after Nomad's nvidia device plugin): an inventory, samples,
and a name. Fields a card cannot report are ``None``; units are in the field names."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    #: The short model the scheduler bills and matches on, e.g. ``A100-80GB``.
    model: str
    memory_mib: int
    healthy: bool = True
    #: What the driver calls the card, e.g. ``NVIDIA A100-SXM4-80GB``.
    raw_name: str = ""
    #: Why the GPU is unhealthy, for people (``None`` when healthy).
    health_reason: str | None = None


@dataclass(frozen=True)
class GpuProcess:
    """A process the driver says is using a GPU (pid as the driver sees it)."""

    pid: int
    used_memory_mib: float | None = None


@dataclass(frozen=True)
class GpuSample:
    index: int
    utilization_pct: float | None = None
    memory_used_mib: float | None = None
    power_w: float | None = None
    #: Cumulative energy counter of the card, joules (``None`` when it has none).
    energy_j: float | None = None
    temperature_c: float | None = None
    healthy: bool = True
    #: Why the GPU is unhealthy (XID error, ECC errors, GPU lost ...), for people.
    health_reason: str | None = None
    #: Every process on the GPU, gpuq's jobs included: the daemon tells them apart.
    processes: tuple[GpuProcess, ...] = ()


class GpuBackend(Protocol):
    #: ``"nvml"`` or ``"simulated"`` (the ``gpu_backend`` of the node registration).
    name: str

    def inventory(self) -> list[GpuInfo]: ...

    def samples(self) -> list[GpuSample]: ...

    def set_busy(self, processes: Mapping[int, Iterable[int]]) -> None:
        """The GPUs jobs hold now, each with the pids of the jobs on it (the simulated
        backend's load and process lists follow it; real cards show their own)."""
        ...

    def close(self) -> None: ...

    # Optional (``getattr``): ``device_nodes() -> dict[int, tuple[str, ...]]``, each GPU's
    # device nodes (``/dev/nvidia<minor>``), which the GPU fence denies to the jobs not
    # given that GPU (``worker.limits``). A backend without it fences nothing.


class GpuBackendUnavailable(RuntimeError):
    """No GPU backend could be opened; the message says what to do instead."""
