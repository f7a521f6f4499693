"""The GPU backend interface (after Nomad's nvidia device plugin): an inventory, samples,
and a name. Fields a card cannot report are ``None``; units are in the field names."""

from __future__ import annotations

from collections.abc import Iterable
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


@dataclass(frozen=True)
class GpuSample:
    index: int
    utilization_pct: float | None = None
    memory_used_mib: float | None = None
    power_w: float | None = None
    energy_j: float | None = None
    temperature_c: float | None = None
    healthy: bool = True


class GpuBackend(Protocol):
    #: ``"nvml"`` or ``"simulated"`` (the ``gpu_backend`` of the node registration).
    name: str

    def inventory(self) -> list[GpuInfo]: ...

    def samples(self) -> list[GpuSample]: ...

    def set_busy(self, indices: Iterable[int]) -> None:
        """The GPUs jobs hold now (the simulated backend's load follows it)."""
        ...

    def close(self) -> None: ...


class GpuBackendUnavailable(RuntimeError):
    """No GPU backend could be opened; the message says what to do instead."""
