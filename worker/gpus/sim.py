"""A simulated GPU backend for machines without GPUs (development, tests, demos).

Specs look like ``4xA100-80GB`` or ``2xA100-80GB,1xT4-16GB``: a count, ``x``, and a model
ending in its memory (``-80GB`` = 81920 MiB).

A simulated GPU behaves like a real one seen through NVML: while processes are on it, it
shows utilisation, memory in use, more power and heat, and its cumulative energy counter
grows with the power it draws (the integral of the reported power over time). The
processes on a GPU are

* the jobs' processes, which the daemon tells the backend about (``set_busy``), and
* *injected* processes, as if someone had started ``python train.py`` by hand.

Faults and foreign processes are injected from any process (end-to-end tests, demos)
through a JSON file, read again at every sample: by default
``<worker state dir>/sim-gpus.json`` (``FAULTS_FILE``)::

    {
      "foreign":   {"0": [12345, 12346]},
      "unhealthy": {"3": "XID 79: GPU has fallen off the bus"}
    }

      "trace":     {"1": {"utilization_pct": 0, "power_w": 75, "memory_used_mib": 512}},
      "no_energy_counter": [2]

``foreign`` maps a GPU index to pids that are on that GPU without gpuq having started
them; a pid that no longer exists (or is a zombie) is left out, so the GPU is free again
as soon as the hand-run process ends. ``unhealthy`` maps a GPU index to the reason it is
unhealthy; remove the entry to heal the GPU. ``trace`` pins what a GPU shows (busy or not)
from now until the file changes: its utilisation, power and memory in use (each optional;
a missing one keeps the usual behaviour); its energy counter grows by exactly that power x
time, so a test that rewrites the file plays a known power/utilisation trace and knows
the energy to the joule. ``no_energy_counter`` lists GPUs that report no energy counter
(``energy_j`` is ``None``, as on cards without one). Every key is optional; a missing file means
no faults, and a file that cannot be parsed is reported once in the log and ignored.
``write_faults`` writes the file atomically. ``fail``/``recover`` inject a fault from the
daemon's own process.

Device nodes: with ``device_dir`` (the setting ``simulate_gpu_devices``), simulated GPU
``i``'s device node is ``<device_dir>/nvidia<i>`` (where it exists), so that the GPU fence
(``worker.limits``) can be shown without a GPU: make them as root with ``mknod
DIR/nvidia<i> c 195 <i>``. With no NVIDIA driver loaded, opening one fails with ENXIO
where the fence allows it and EPERM where it denies it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuq.worker.gpus.base import GpuInfo, GpuProcess, GpuSample

log = logging.getLogger(__name__)
_PART = re.compile(r"^(?P<count>\d+)[xX](?P<model>[A-Za-z0-9][A-Za-z0-9.]*(?:-[A-Za-z0-9.]+)*"
                   r"-(?P<gb>\d+)GB)$")
MAX_GPUS = 1024
IDLE_POWER_W = 60.0
BUSY_POWER_W = 300.0
#: A busy GPU's power swings by this much around ``BUSY_POWER_W``.
POWER_SWING_W = 25.0
#: Seconds per radian of the slow wobble that makes a busy GPU's numbers move.
WOBBLE_S = 7.0
IDLE_TEMPERATURE_C = 35.0
BUSY_TEMPERATURE_C = 72.0
#: The file of injected faults and foreign processes, in the worker's state directory.
FAULTS_FILE = "sim-gpus.json"
MAX_REASON = 256


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


# --- injected faults ---------------------------------------------------------------------


@dataclass(frozen=True)
class Faults:
    """The content of the faults file."""

    foreign: dict[int, tuple[int, ...]] = field(default_factory=dict)
    unhealthy: dict[int, str] = field(default_factory=dict)
    trace: dict[int, Trace] = field(default_factory=dict)
    no_energy_counter: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Trace:
    """What a GPU shows while the faults file says so (``None``: the usual value)."""

    utilization_pct: float | None = None
    power_w: float | None = None
    memory_used_mib: float | None = None


def _trace(key: Any, raw: Any) -> Trace:
    if not isinstance(raw, dict):
        raise ValueError(f"trace[{key!r}] must be an object")
    values: dict[str, float | None] = {}
    for name in ("utilization_pct", "power_w", "memory_used_mib"):
        v = raw.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v < 0):
            raise ValueError(f"trace[{key!r}].{name} must be a number >= 0")
        values[name] = float(v) if v is not None else None
    return Trace(**values)


def parse_faults(data: Any) -> Faults:
    """Read the faults file's JSON; ``ValueError`` says what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object with 'foreign' and/or 'unhealthy'")
    foreign_raw, unhealthy_raw = data.get("foreign") or {}, data.get("unhealthy") or {}
    if not isinstance(foreign_raw, dict) or not isinstance(unhealthy_raw, dict):
        raise ValueError("'foreign' and 'unhealthy' must map GPU indices to values")
    foreign: dict[int, tuple[int, ...]] = {}
    for key, pids in foreign_raw.items():
        if not isinstance(pids, list) or not all(
                isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in pids):
            raise ValueError(f"foreign[{key!r}] must be a list of pids")
        foreign[_gpu_index(key)] = tuple(pids)
    unhealthy = {_gpu_index(k): (v if isinstance(v, str) and v else "injected fault")[:MAX_REASON]
                 for k, v in unhealthy_raw.items() if v}
    trace_raw, no_counter = data.get("trace") or {}, data.get("no_energy_counter") or []
    if not isinstance(trace_raw, dict) or not isinstance(no_counter, list):
        raise ValueError("'trace' must map GPU indices to objects; 'no_energy_counter' must "
                         "list GPU indices")
    return Faults(foreign=foreign, unhealthy=unhealthy,
                  trace={_gpu_index(k): _trace(k, v) for k, v in trace_raw.items()},
                  no_energy_counter=frozenset(_gpu_index(i) for i in no_counter))


def _gpu_index(key: Any) -> int:
    try:
        index = int(key)
    except (TypeError, ValueError):
        raise ValueError(f"{key!r} is not a GPU index") from None
    if index < 0:
        raise ValueError(f"{key!r} is not a GPU index")
    return index


def write_faults(path: Path | str, *, foreign: Mapping[int, Iterable[int]] | None = None,
                 unhealthy: Mapping[int, str] | None = None,
                 trace: Mapping[int, Mapping[str, float]] | None = None,
                 no_energy_counter: Iterable[int] = ()) -> None:
    """Write the faults file atomically (for tests and demos; any process may)."""
    path = Path(path)
    body = {"foreign": {str(i): [int(p) for p in pids] for i, pids in (foreign or {}).items()},
            "unhealthy": {str(i): str(r) for i, r in (unhealthy or {}).items()},
            "trace": {str(i): dict(t) for i, t in (trace or {}).items()},
            "no_energy_counter": [int(i) for i in no_energy_counter]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:
        return True


# --- the backend -------------------------------------------------------------------------


class SimulatedBackend:
    name = "simulated"

    def __init__(self, spec: str, *, node: str,
                 clock: Callable[[], float] = time.monotonic,
                 faults_file: Path | str | None = None,
                 device_dir: Path | str | None = None) -> None:
        self._clock = clock
        self._device_dir = Path(device_dir) if device_dir else None
        self._faults_file = Path(faults_file) if faults_file is not None else None
        self._gpus: list[GpuInfo] = []
        for t in parse_spec(spec):
            for _ in range(t.count):
                i = len(self._gpus)
                self._gpus.append(GpuInfo(index=i, uuid=sim_uuid(node, i), model=t.model,
                                          memory_mib=t.memory_mib,
                                          raw_name=f"Simulated {t.model}"))
        #: GPU index -> pids of the jobs on it (from ``set_busy``).
        self._jobs: dict[int, tuple[int, ...]] = {}
        self._faults = Faults()
        self._bad_file: str | None = None
        #: Faults injected in-process (``fail``), index -> reason.
        self._failed: dict[int, str] = {}
        self._energy_j = [0.0] * len(self._gpus)
        self._last_s = clock()
        self._lock = threading.Lock()

    # --- the interface ---------------------------------------------------------------
    def inventory(self) -> list[GpuInfo]:
        with self._lock:
            self._load_faults()
            out = []
            for g in self._gpus:
                reason = self._health_reason(g.index)
                out.append(GpuInfo(index=g.index, uuid=g.uuid, model=g.model,
                                   memory_mib=g.memory_mib, healthy=reason is None,
                                   raw_name=g.raw_name, health_reason=reason))
            return out

    def set_busy(self, processes: Mapping[int, Iterable[int]]) -> None:
        with self._lock:
            self._accumulate()
            self._jobs = {int(i): tuple(int(p) for p in pids) for i, pids in processes.items()
                          if 0 <= int(i) < len(self._gpus)}

    def samples(self) -> list[GpuSample]:
        with self._lock:
            self._accumulate()  # up to now, with what was on the GPUs until now
            self._load_faults()
            now = self._clock()
            return [self._sample(g, now) for g in self._gpus]

    def close(self) -> None:
        pass

    def device_nodes(self) -> dict[int, tuple[str, ...]]:
        """GPU index -> its device node (``<device_dir>/nvidia<index>``, where it is)."""
        if self._device_dir is None:
            return {}
        out = {}
        for g in self._gpus:
            path = self._device_dir / f"nvidia{g.index}"
            if path.exists():
                out[g.index] = (str(path),)
        return out

    # --- in-process fault injection -------------------------------------------------
    def fail(self, index: int, reason: str = "injected fault") -> None:
        """Mark GPU ``index`` unhealthy (an injected fault)."""
        with self._lock:
            self._check(index)
            self._failed[index] = reason[:MAX_REASON]

    def recover(self, index: int) -> None:
        with self._lock:
            self._check(index)
            self._failed.pop(index, None)

    # --- internals -------------------------------------------------------------------
    def _check(self, index: int) -> None:
        if not 0 <= index < len(self._gpus):
            raise IndexError(f"no simulated GPU {index} (there are {len(self._gpus)})")

    def _load_faults(self) -> None:
        """Read the faults file (a missing one means no faults; a bad one is ignored)."""
        if self._faults_file is None:
            return
        try:
            text = self._faults_file.read_text()
        except FileNotFoundError:
            self._faults = Faults()
            return
        except OSError as e:
            problem = f"cannot read {self._faults_file}: {e}"
        else:
            try:
                self._faults = parse_faults(json.loads(text) if text.strip() else {})
                self._bad_file = None
                return
            except ValueError as e:
                problem = f"{self._faults_file}: {e}; ignoring it"
        if problem != self._bad_file:
            log.warning("simulated GPUs: %s", problem)
            self._bad_file = problem
        self._faults = Faults()

    def _health_reason(self, index: int) -> str | None:
        return self._faults.unhealthy.get(index) or self._failed.get(index)

    def _foreign(self, index: int) -> tuple[int, ...]:
        return tuple(p for p in self._faults.foreign.get(index, ()) if pid_alive(p))

    def _busy(self, index: int) -> bool:
        return index in self._jobs or bool(self._foreign(index))

    def _accumulate(self) -> None:
        """Add the energy drawn since the last call: the integral of the power curve that
        ``_sample`` reports (busy: a slow sine around ``BUSY_POWER_W``; idle: flat)."""
        now = self._clock()
        t0, dt = self._last_s, max(0.0, now - self._last_s)
        if dt > 0:
            for g in self._gpus:
                traced = self._faults.trace.get(g.index)
                if traced is not None and traced.power_w is not None:
                    self._energy_j[g.index] += traced.power_w * dt
                elif self._busy(g.index):
                    phase = float(g.index)
                    swing = WOBBLE_S * (math.cos(t0 / WOBBLE_S + phase)
                                        - math.cos(now / WOBBLE_S + phase))
                    self._energy_j[g.index] += BUSY_POWER_W * dt + POWER_SWING_W * swing
                else:
                    self._energy_j[g.index] += IDLE_POWER_W * dt
        self._last_s = now

    def _sample(self, g: GpuInfo, now: float) -> GpuSample:
        pids = self._jobs.get(g.index, ()) + self._foreign(g.index)
        busy = self._busy(g.index)
        # A slow wobble, different per GPU, so a busy GPU's numbers move between samples.
        wobble = math.sin(now / WOBBLE_S + g.index)
        if busy:
            util, mem = 90.0 + 8.0 * wobble, g.memory_mib * (0.6 + 0.1 * wobble)
            power, temp = BUSY_POWER_W + POWER_SWING_W * wobble, BUSY_TEMPERATURE_C + 3.0 * wobble
        else:
            util, mem, power, temp = 0.0, 0.0, IDLE_POWER_W, IDLE_TEMPERATURE_C
        traced = self._faults.trace.get(g.index)
        if traced is not None:
            util = traced.utilization_pct if traced.utilization_pct is not None else util
            power = traced.power_w if traced.power_w is not None else power
            mem = traced.memory_used_mib if traced.memory_used_mib is not None else mem
        counter = (None if g.index in self._faults.no_energy_counter
                   else round(self._energy_j[g.index], 1))
        unique = tuple(dict.fromkeys(pids))
        share = round(mem / len(unique), 1) if unique else None
        reason = self._health_reason(g.index)
        return GpuSample(index=g.index, utilization_pct=round(util, 1),
                         memory_used_mib=round(mem, 1), power_w=round(power, 1),
                         energy_j=counter,
                         temperature_c=round(temp, 1), healthy=reason is None,
                         health_reason=reason,
                         processes=tuple(GpuProcess(pid=p, used_memory_mib=share)
                                         for p in unique))
