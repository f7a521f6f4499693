"""GPU backends: NVML on real hosts, a simulation elsewhere; one small interface."""

from __future__ import annotations

from scheduler.config import Settings
from worker.gpus.base import GpuBackend, GpuBackendUnavailable, GpuInfo, GpuSample
from worker.gpus.models import normalise_model

__all__ = ["GpuBackend", "GpuBackendUnavailable", "GpuInfo", "GpuSample", "normalise_model",
           "open_backend"]


def open_backend(settings: Settings) -> GpuBackend:
    """The simulated backend when ``settings.simulate_gpus`` is set, else NVML.

    Raises ``GpuBackendUnavailable`` (saying to pass ``--simulate-gpus``) when NVML cannot
    start, and ``ValueError`` for a bad simulation spec.
    """
    if settings.simulate_gpus:
        from worker.gpus.sim import SimulatedBackend

        return SimulatedBackend(settings.simulate_gpus, node=settings.node_name)
    from worker.gpus.nvml import NvmlBackend

    return NvmlBackend()
