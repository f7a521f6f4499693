"""Facts about this host for the registration, and the node token."""

from __future__ import annotations

import logging
import os
import stat
from importlib import metadata
from pathlib import Path

from gpuq.config import Settings
from gpuq.wire.nodes import GpuInfo as WireGpuInfo
from gpuq.wire.nodes import NodeRegister
from gpuq.worker.gpus import GpuBackend

log = logging.getLogger(__name__)


class NoNodeToken(RuntimeError):
    pass


def read_node_token(settings: Settings) -> str:
    """``settings.node_token`` (``GPUQ_NODE_TOKEN``), else the content of
    ``settings.node_token_file``. The token itself never appears in a message."""
    if settings.node_token.strip():
        return settings.node_token.strip()
    if not settings.node_token_file:
        raise NoNodeToken("no node token: set GPUQ_NODE_TOKEN or node_token_file "
                          f"(an admin creates a token with role 'node' for node "
                          f"{settings.node_name!r})")
    path = Path(settings.node_token_file).expanduser()
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as e:
        raise NoNodeToken(f"cannot read the node token file {path}: {e.strerror}") from None
    if not token:
        raise NoNodeToken(f"the node token file {path} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the node token file %s is readable by others; chmod 600 it", path)
    return token


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 0


def memory_mib() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))
    except (ValueError, OSError):
        return 0


def worker_version() -> str:
    try:
        return metadata.version("gpuq")[:32]
    except metadata.PackageNotFoundError:
        return ""


def registration(backend: GpuBackend, *, cpus: int = 0, memory: int = 0,
                 enforcement: str | None = None) -> NodeRegister:
    """The node's inventory. ``cpus`` and ``memory`` (MiB), when set, replace what the
    host has (to keep cores and memory for the system, or to give a simulated node more);
    ``enforcement``: the job limits it enforces (``limits.Enforcement.summary``)."""
    gpus = [WireGpuInfo(index=g.index, uuid=g.uuid, model=g.model, memory_mib=g.memory_mib,
                        healthy=g.healthy) for g in backend.inventory()]
    return NodeRegister(cpus=cpus or cpu_count(), memory_mib=memory or memory_mib(),
                        gpu_backend=backend.name,  # type: ignore[arg-type]
                        worker_version=worker_version(), gpus=gpus, enforcement=enforcement)
