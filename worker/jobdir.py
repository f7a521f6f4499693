"""The on-disk layout of one job run, shared by the daemon and the job's supervisor.

A job may run more than once (a requeued job runs again as its next *attempt*), so
everything local is keyed by (job id, attempt): ``<state_dir>/jobs/<id>.<attempt>/``::

    spec.json       written by the daemon before it starts the supervisor
    script          the job's script, when it has one
    state.json      written by the supervisor only (atomically), read by the daemon
    output.log      the job's stdout and stderr
    lock            flock held by the supervisor while it lives
    cancel          present once a cancel was asked for
    supervisor.log  the supervisor's own messages
    usage.json      GPU energy at launch and the job's last sample (daemon)
    shipped         bytes of output.log the server has acknowledged (daemon)
    reported        the last state the server acknowledged (daemon)
    stale           present once the server said this run is not the job's current one
                    (or not this node's): nothing more is sent for it (daemon)

The daemon also keeps ``<state_dir>/poke``, a FIFO: a supervisor writes a byte into it
when its job starts or ends, so the daemon reports it at once instead of at its next
pass (``job_poll_interval_s``; the next job of a freed GPU waited for it).

Directories of the first layout, ``<state_dir>/jobs/<id>/`` (before attempts existed),
are read as attempt 1, so a daemon upgraded under running jobs still re-adopts them.

Standard library only: the supervisor imports it and must start fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from gpuq.wire.states import RUN_ENDS, JobState

SPEC = "spec.json"
SCRIPT = "script"
STATE = "state.json"
LOG = "output.log"
LOCK = "lock"
CANCEL = "cancel"
SUPERVISOR_LOG = "supervisor.log"
SHIPPED = "shipped"
REPORTED = "reported"
USAGE = "usage.json"
STALE = "stale"
#: The daemon's FIFO at ``<state_dir>/poke`` (the parent of ``jobs/``).
POKE = "poke"

#: The state file of a run that has started, and of one that has ended on the node.
RUNNING = JobState.RUNNING.value
FINAL = frozenset(s.value for s in RUN_ENDS)


class RunKey(NamedTuple):
    """One run of a job: its id and which attempt (``LaunchSpec.attempt``) it is."""

    job_id: int
    attempt: int

    def __str__(self) -> str:
        return f"{self.job_id}.{self.attempt}"


def run_name(key: RunKey) -> str:
    """The directory name of a run: ``<job id>.<attempt>``."""
    return f"{int(key.job_id)}.{int(key.attempt)}"


def legacy_name(key: RunKey) -> str | None:
    """The directory name the first layout gave this run (attempt 1 only), else ``None``."""
    return str(int(key.job_id)) if key.attempt == 1 else None


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def parse_run_name(name: str) -> RunKey | None:
    """``"12.3"`` -> (12, 3); ``"12"`` (the first layout) -> (12, 1); anything else ``None``."""
    head, dot, tail = name.partition(".")
    job_id = _number(head)
    if job_id is None:
        return None
    if not dot:
        return RunKey(job_id, 1)
    attempt = _number(tail)
    return RunKey(job_id, attempt) if attempt is not None and attempt >= 1 else None


def find_run(base: Path, key: RunKey) -> Path | None:
    """The directory of ``key`` under ``base`` (either layout), or ``None``."""
    for name in (run_name(key), legacy_name(key)):
        if name is not None and (base / name).is_dir():
            return base / name
    return None


def list_runs(base: Path) -> dict[RunKey, Path]:
    """Every run directory under ``base``, by key, in (job id, attempt) order."""
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return {}
    runs: dict[RunKey, Path] = {}
    for name in names:
        key = parse_run_name(name)
        if key is not None and key not in runs:
            runs[key] = base / name
    return dict(sorted(runs.items()))


def write_json_atomic(path: Path, obj: Any, *, mode: int = 0o600,
                      durable: bool = True) -> None:
    """Write ``obj`` so that readers see the old file or the new one, never half of one.
    ``durable``: on disk before it replaces the old one (``fsync``, some 4 ms on a VM's
    disk), so that it outlives a crash of the host; what matters only while the host
    runs (a run's spec, its GPU counters: its job dies with the host) skips it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, sort_keys=True)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    return data if isinstance(data, dict) else None


def read_text(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return default


def iso_utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat()


def boot_id() -> str:
    """Changes at every boot: processes recorded under another boot id are gone."""
    return read_text(Path("/proc/sys/kernel/random/boot_id"))


def supervisor_alive(jobdir: Path) -> bool:
    """Whether a supervisor holds the job's lock (so its pid cannot have been reused)."""
    try:
        fd = os.open(jobdir / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock if we took it
    return False


@contextlib.contextmanager
def try_lock(jobdir: Path) -> Iterator[bool]:
    """Take the job's lock if nobody holds it; yields whether we got it."""
    fd = os.open(jobdir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def open_poke(state_dir: Path) -> int:
    """The daemon's end of ``<state_dir>/poke`` (made if missing): a non-blocking fd open
    for reading and writing, so that it never sees an end of file between writers."""
    path = state_dir / POKE
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def poke(run_dir: Path) -> None:
    """Tell the daemon that the run in ``run_dir`` (``<state_dir>/jobs/<run>``) changed.
    Best effort: no daemon listening (no FIFO, no reader) or a full FIFO (pokes pending
    already) is fine; the daemon's timer finds the change anyway."""
    try:
        fd = os.open(run_dir.parent.parent / POKE, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, b"!")
    except OSError:
        pass
    finally:
        os.close(fd)


def drain_poke(fd: int) -> None:
    """Read what the supervisors wrote into the daemon's FIFO."""
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while os.read(fd, 4096):
            pass
