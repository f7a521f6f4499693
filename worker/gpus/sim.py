"""A simulated GPU backend for machines without GPUs (development, tests, demos).

Specs look like ``4xA100-80GB`` or ``2xA100-80GB,1xT4-16GB``: a count, ``x``, and a model
ending in its memory (``-80GB`` = 81920 MiB). Busy GPUs (``set_busy``) draw power, heat up
and show utilisation; ``fail(index)`` marks a GPU unhealthy, as a failing card would.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from worker.gpus.base import GpuInfo, GpuSample

_PART = re.compile(r"^(?P<count>\d+)[xX](?P<model>[A-Za-z0-9][A-Za-z0-9.]*(?:-[A-Za-z0-9.]+)*"
                   r"-(?P<gb>\d+)GB)$")
MAX_GPUS = 1024
IDLE_POWER_W = 60.0
BUSY_POWER_W = 300.0
IDLE_TEMPERATURE_C = 35.0
BUSY_TEMPERATURE_C = 72.0


@dataclass(frozen=True)
class SimGpuType:
    count: int
    model: str
    memory_mib: int


def parse_spec(spec: str) -> list[SimGpuType]:
    """Parse ``4xA100-80GB[,1xT4-16GB...]``; a ``ValueError`` names the bad part."""
    if not spec or not spec.strip():
        raise ValueError("empty GPU spec: expected e.g. '4xA100-80GB' or '2xA100-80GB,1xT4-16GB'")
    out: list[SimGpuType] = []
    for raw in spec.split(","):
        part = raw.strip()
        m = _PART.match(part)
        if m is None:
            raise ValueError(f"bad GPU spec part {part!r}: expected COUNTxMODEL-<N>GB, "
                             "e.g. '4xA100-80GB'")
        count, gb = int(m["count"]), int(m["gb"])
        if count < 1:
            raise ValueError(f"bad GPU spec part {part!r}: the count must be at least 1")
        if gb < 1:
            raise ValueError(f"bad GPU spec part {part!r}: the memory must be at least 1GB")
        out.append(SimGpuType(count=count, model=m["model"], memory_mib=gb * 1024))
    total = sum(t.count for t in out)
    if total > MAX_GPUS:
        raise ValueError(f"GPU spec {spec!r} has {total} GPUs; at most {MAX_GPUS}")
    return out


def sim_uuid(node: str, index: int) -> str:
    """A stable UUID for simulated GPU ``index`` of ``node`` (``GPU-sim-`` + 8-4-4-4-12)."""
    h = hashlib.sha256(f"{node}/{index}".encode()).hexdigest()
    return f"GPU-sim-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


class SimulatedBackend:
    name = "simulated"

    def __init__(self, spec: str, *, node: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._gpus: list[GpuInfo] = []
        for t in parse_spec(spec):
            for _ in range(t.count):
                i = len(self._gpus)
                self._gpus.append(GpuInfo(index=i, uuid=sim_uuid(node, i), model=t.model,
                                          memory_mib=t.memory_mib,
                                          raw_name=f"Simulated {t.model}"))
        self._busy: set[int] = set()
        self._failed: set[int] = set()
        self._energy_j = [0.0] * len(self._gpus)
        self._last_s = clock()
        self._lock = threading.Lock()

    def inventory(self) -> list[GpuInfo]:
        with self._lock:
            return [GpuInfo(index=g.index, uuid=g.uuid, model=g.model, memory_mib=g.memory_mib,
                            healthy=g.index not in self._failed, raw_name=g.raw_name)
                    for g in self._gpus]

    def set_busy(self, indices: Iterable[int]) -> None:
        with self._lock:
            self._accumulate()
            self._busy = {i for i in indices if 0 <= i < len(self._gpus)}

    def fail(self, index: int) -> None:
        """Mark GPU ``index`` unhealthy (an injected fault)."""
        with self._lock:
            self._check(index)
            self._failed.add(index)

    def recover(self, index: int) -> None:
        with self._lock:
            self._check(index)
            self._failed.discard(index)

    def samples(self) -> list[GpuSample]:
        with self._lock:
            self._accumulate()
            now = self._clock()
            return [self._sample(g, now) for g in self._gpus]

    def close(self) -> None:
        pass

    # --- internals -------------------------------------------------------------------
    def _check(self, index: int) -> None:
        if not 0 <= index < len(self._gpus):
            raise IndexError(f"no simulated GPU {index} (there are {len(self._gpus)})")

    def _power_w(self, index: int) -> float:
        return BUSY_POWER_W if index in self._busy else IDLE_POWER_W

    def _accumulate(self) -> None:
        now = self._clock()
        dt = max(0.0, now - self._last_s)
        for g in self._gpus:
            self._energy_j[g.index] += self._power_w(g.index) * dt
        self._last_s = now

    def _sample(self, g: GpuInfo, now: float) -> GpuSample:
        busy = g.index in self._busy
        # A slow wobble, different per GPU, so a busy GPU's numbers move between samples.
        wobble = math.sin(now / 7.0 + g.index)
        if busy:
            util, mem = 90.0 + 8.0 * wobble, g.memory_mib * (0.6 + 0.1 * wobble)
            power, temp = BUSY_POWER_W + 25.0 * wobble, BUSY_TEMPERATURE_C + 3.0 * wobble
        else:
            util, mem, power, temp = 0.0, 0.0, IDLE_POWER_W, IDLE_TEMPERATURE_C
        return GpuSample(index=g.index, utilization_pct=round(util, 1),
                         memory_used_mib=round(mem, 1), power_w=round(power, 1),
                         energy_j=round(self._energy_j[g.index], 1),
                         temperature_c=round(temp, 1), healthy=g.index not in self._failed)
