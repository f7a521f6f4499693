"""GPU backends: NVML on real hosts, a simulation elsewhere; one small interface."""

from __future__ import annotations

from gpuq.config import Settings
from gpuq.worker.gpus.base import GpuBackend, GpuBackendUnavailable, GpuInfo, GpuProcess, GpuSample
from gpuq.worker.gpus.models import normalise_model

__all__ = ["GpuBackend", "GpuBackendUnavailable", "GpuInfo", "GpuProcess", "GpuSample",
           "normalise_model", "open_backend"]


def open_backend(settings: Settings) -> GpuBackend:
    """The simulated backend when ``settings.simulate_gpus`` is set, else NVML.

    The simulation reads injected faults and foreign processes from
    ``<worker state dir>/sim-gpus.json`` (see ``worker.gpus.sim``).

    Raises ``GpuBackendUnavailable`` (saying to pass ``--simulate-gpus``) when NVML cannot
    start, and ``ValueError`` for a bad simulation spec.
    """
    if settings.simulate_gpus:
        from gpuq.worker.gpus.sim import FAULTS_FILE, SimulatedBackend

        return SimulatedBackend(settings.simulate_gpus, node=settings.node_name,
                                faults_file=settings.effective_worker_state_dir / FAULTS_FILE,
                                device_dir=settings.simulate_gpu_devices or None)
    from gpuq.worker.gpus.nvml import NvmlBackend

    return NvmlBackend()
