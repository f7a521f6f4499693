"""The on-disk layout of one job, shared by the daemon and the job's supervisor.

``<state_dir>/jobs/<id>/``::

    spec.json       written by the daemon before it starts the supervisor
    script          the job's script, when it has one
    state.json      written by the supervisor only (atomically), read by the daemon
    output.log      the job's stdout and stderr
    lock            flock held by the supervisor while it lives
    cancel          present once a cancel was asked for
    supervisor.log  the supervisor's own messages
    shipped         bytes of output.log the server has acknowledged (daemon)
    reported        the last state the server acknowledged (daemon)

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
from typing import Any

SPEC = "spec.json"
SCRIPT = "script"
STATE = "state.json"
LOG = "output.log"
LOCK = "lock"
CANCEL = "cancel"
SUPERVISOR_LOG = "supervisor.log"
SHIPPED = "shipped"
REPORTED = "reported"

RUNNING = "RUNNING"
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})


def write_json_atomic(path: Path, obj: Any, *, mode: int = 0o600) -> None:
    """Write ``obj`` so that readers see the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, sort_keys=True)
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
