"""What the daemon sees of a run directory (``Observed``), for the poll and the reporter.

A run is RUNNING from its launch (while its supervisor starts, too) until its supervisor
records a final state in ``state.json``. A run whose supervisor is gone without recording
one (it died, or the node restarted) gets an end recorded here instead: its job is killed
if it can still be there, and it counts as FAILED (CANCELLED when a cancel was asked for).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuq.wire.states import JobState
from gpuq.worker import jobdir as jd
from gpuq.worker.cgroups import JobCgroup, looks_like_job_cgroup
from gpuq.worker.jobdir import RunKey

log = logging.getLogger(__name__)
#: Seconds a job directory may go without a supervisor taking its lock before the
#: job counts as failed to start (only for supervisors this daemon did not start itself).
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Observed:
    """What the daemon sees of one run directory."""

    key: RunKey
    dir: Path
    #: ``RUNNING`` (also while the supervisor is starting) or a final state.
    state: str
    #: Whether the job's process was started (state.json says so).
    started: bool = False
    exit_code: int | None = None
    reason: str = ""

    @property
    def job_id(self) -> int:
        return self.key.job_id


def observe(key: RunKey, d: Path, *, launched: Callable[[RunKey], bool | None],
            wall: Callable[[], float]) -> Observed:
    """The run ``key`` in ``d`` as it is now; records the end of a run whose supervisor is
    gone without recording one. ``launched(key)``: whether the supervisor this daemon
    started for the run is still there (``None`` when it started none: a re-adopted run).
    """
    state = jd.read_json(d / jd.STATE)
    if state is not None and state.get("state") in jd.FINAL:
        return _observed(key, d, state)
    if jd.supervisor_alive(d) or _starting(key, d, state, launched, wall):
        return Observed(key, d, jd.RUNNING, started=state is not None)
    # A supervisor writes the job's end before it exits: it may have done both since
    # the read above (a job of a few ms, observed as it starts). Read it again.
    state = jd.read_json(d / jd.STATE) or state
    if state is not None and state.get("state") in jd.FINAL:
        return _observed(key, d, state)
    return _observed(key, d, _supervisor_lost(key, d, state, wall))


def _observed(key: RunKey, d: Path, state: dict[str, Any]) -> Observed:
    return Observed(key, d, state["state"], started=state.get("pid") is not None,
                    exit_code=state.get("exit_code"), reason=state.get("reason") or "")


def _starting(key: RunKey, d: Path, state: dict[str, Any] | None,
              launched: Callable[[RunKey], bool | None], wall: Callable[[], float]) -> bool:
    """Whether the run's supervisor may still be starting: the one this daemon started
    is still there, or (one it did not start) the directory is younger than
    ``START_TIMEOUT_S``."""
    if state is not None:
        return False
    running = launched(key)
    if running is not None:
        return running
    try:
        age_s = wall() - d.stat().st_mtime
    except FileNotFoundError:
        return False
    return age_s < START_TIMEOUT_S


def _supervisor_lost(key: RunKey, d: Path, state: dict[str, Any] | None,
                     wall: Callable[[], float]) -> dict[str, Any]:
    """The supervisor is gone without recording an end: record one for it."""
    state = dict(state or {"job_id": key.job_id, "attempt": key.attempt, "pid": None,
                           "pgid": None})
    cancelled = (d / jd.CANCEL).exists()
    if state.get("pid") is None:
        reason = ("cancelled before it started" if cancelled else
                  f"the job's supervisor exited before starting it (see {d}/supervisor.log)")
    elif state.get("boot_id") != jd.boot_id():
        reason = "the node restarted while the job was running"
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(state["pgid"]), signal.SIGKILL)
        cgroup = job_cgroup(state)
        if cgroup is not None:  # processes that left the job's process group too
            cgroup.kill()
            give_up_at = time.monotonic() + 1.0
            while not cgroup.remove() and time.monotonic() < give_up_at:
                time.sleep(0.02)
        reason = "the job's supervisor died; the job was killed"
    state.update(state=JobState.CANCELLED if cancelled else JobState.FAILED, exit_code=None,
                 reason=reason, ended_at=jd.iso_utc(wall()))
    with jd.try_lock(d) as got:
        if not got:  # a supervisor has just appeared after all
            return {"state": jd.RUNNING, "pid": state.get("pid")}
        jd.write_json_atomic(d / jd.STATE, state)
    log.warning("job %s: %s", key, reason)
    return state


def job_cgroup(state: dict[str, Any] | None) -> JobCgroup | None:
    """The cgroup a run's ``state.json`` names, if it is still there (and is one)."""
    path = (state or {}).get("cgroup")
    if not path or not looks_like_job_cgroup(Path(path)):
        return None
    return JobCgroup(Path(path))
