"""The JobManager: starts job supervisors, stops them, and tells the server what they did.

Everything it knows lives in ``<state_dir>/jobs/<id>/`` (see ``worker.jobdir``), so a
restarted daemon re-adopts its jobs by listing that directory: supervisors still running
keep running, jobs that ended while it was away get reported. Once the server has
acknowledged a job's final state (after all of its output), the directory moves to
``<state_dir>/done/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import worker
from scheduler.api.schemas import LaunchSpec, WorkerJob
from worker import jobdir as jd
from worker.client import NodeClient
from worker.jobenv import Identity, LaunchRefused, build_env, identity_for
from worker.reporting import Reporter

log = logging.getLogger(__name__)
#: Seconds a job directory may go without a supervisor taking its lock before the
#: job counts as failed to start (only for supervisors this daemon did not start itself).
START_TIMEOUT_S = 60.0
DONE_KEEP = 200
#: Of the daemon's environment, only these reach the supervisor (never the node token).
SUPERVISOR_ENV = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LANG", "LC_ALL", "TZ")


@dataclass(frozen=True)
class Observed:
    """What the daemon sees of one job directory."""

    job_id: int
    dir: Path
    #: ``RUNNING`` (also while the supervisor is starting) or a final state.
    state: str
    #: Whether the job's process was started (state.json says so).
    started: bool = False
    exit_code: int | None = None
    reason: str = ""


class JobManager:
    def __init__(self, *, state_dir: Path, node: str, api: NodeClient, kill_grace_s: float,
                 identity: Callable[[str], Identity] = identity_for,
                 python: str = sys.executable, wall: Callable[[], float] = time.time,
                 chunk_bytes: int = 256 * 1024) -> None:
        self.jobs_dir, self.done_dir = state_dir / "jobs", state_dir / "done"
        for d in (state_dir, self.jobs_dir, self.done_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.node, self.kill_grace_s = node, kill_grace_s
        self._identity, self._python, self._wall = identity, python, wall
        self._lock = threading.Lock()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self.reporter = Reporter(api, chunk_bytes=chunk_bytes)

    # --- launch and kill ---------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> bool:
        """Start a supervisor for ``spec``; ``False`` if this job id was seen before."""
        d = self.jobs_dir / str(int(spec.job_id))
        with self._lock:
            if (self.done_dir / d.name).exists():
                log.info("job %s ran here before; not launching it again", spec.job_id)
                return False
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                log.info("job %s is already here; launch ignored", spec.job_id)
                return False
        refused, env, run_as = None, {}, None
        try:
            who = self._identity(spec.user)
            env = build_env(spec, node=self.node, who=who)
            run_as = {"name": who.name, "uid": who.uid, "gid": who.gid,
                      "groups": list(who.groups) if who.groups is not None else None}
        except LaunchRefused as e:
            refused = str(e)
        if spec.script is not None:
            fd = os.open(d / jd.SCRIPT, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(fd, "w") as f:
                f.write(spec.script)
        jd.write_json_atomic(d / jd.SPEC, {
            "job_id": spec.job_id, "launch": spec.model_dump(mode="json"), "env": env,
            "kill_grace_s": self.kill_grace_s, "run_as": run_as, "refused": refused})
        self._spawn(spec.job_id, d)
        if run_as is None:
            log.warning("job %s: not started: %s", spec.job_id, refused)
        else:
            log.info("job %s: launched on GPUs %s as %s", spec.job_id, spec.gpu_indices,
                     run_as["name"])
        return True

    def _spawn(self, job_id: int, d: Path) -> None:
        env = {k: os.environ[k] for k in SUPERVISOR_ENV if k in os.environ}
        src = str(Path(worker.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        with open(d / jd.SUPERVISOR_LOG, "ab") as out:
            proc = subprocess.Popen([self._python, "-m", "worker.supervisor", str(d)],
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    close_fds=True, cwd="/", env=env)
        with self._lock:
            self._children[job_id] = proc

    def kill(self, job_id: int) -> bool:
        """Cancel a job: its supervisor sends SIGTERM, then SIGKILL after the grace period,
        and records CANCELLED. ``False`` if the job is not here (or already ended)."""
        d = self.jobs_dir / str(int(job_id))
        if not d.is_dir():
            return False
        state = jd.read_json(d / jd.STATE)
        if state is not None and state.get("state") in jd.FINAL:
            return False
        try:
            (d / jd.CANCEL).touch()  # seen by a supervisor that has not started the job yet
        except FileNotFoundError:
            return False  # retired meanwhile
        if state is not None and jd.supervisor_alive(d):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(state["supervisor_pid"]), signal.SIGTERM)
        log.info("job %s: cancel sent", job_id)
        return True

    # --- what is here ------------------------------------------------------------------
    def job_ids(self) -> list[int]:
        try:
            names = os.listdir(self.jobs_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def jobs(self) -> list[WorkerJob]:
        """Every job still here, for the heartbeat: RUNNING unless it has ended."""
        out = []
        for job_id in self.job_ids():
            state = jd.read_json(self.jobs_dir / str(job_id) / jd.STATE) or {}
            final = state.get("state") if state.get("state") in jd.FINAL else None
            out.append(WorkerJob(job_id=job_id, state=final or jd.RUNNING))
        return out

    def busy_gpu_indices(self) -> set[int]:
        busy: set[int] = set()
        for job in self.jobs():
            if job.state == jd.RUNNING:
                spec = jd.read_json(self.jobs_dir / str(job.job_id) / jd.SPEC) or {}
                busy.update(spec.get("launch", {}).get("gpu_indices", []))
        return busy

    # --- the poll ----------------------------------------------------------------------
    def poll(self) -> None:
        """Ship new output and report state changes of every job here (one pass).

        Raises ``ServerUnavailable`` when the server cannot be reached; the next pass
        carries on where this one stopped.
        """
        self._reap_children()
        for job_id in self.job_ids():
            d = self.jobs_dir / str(job_id)
            try:
                obs = self.observe(job_id, d)
            except FileNotFoundError:
                continue  # retired meanwhile
            if self.reporter.sync(obs):
                self._retire(obs)

    def observe(self, job_id: int, d: Path) -> Observed:
        state = jd.read_json(d / jd.STATE)
        if state is not None and state.get("state") in jd.FINAL:
            return self._observed(job_id, d, state)
        if jd.supervisor_alive(d) or self._starting(job_id, d, state):
            return Observed(job_id, d, jd.RUNNING, started=state is not None)
        return self._observed(job_id, d, self._supervisor_lost(job_id, d, state))

    @staticmethod
    def _observed(job_id: int, d: Path, state: dict[str, Any]) -> Observed:
        return Observed(job_id, d, state["state"], started=state.get("pid") is not None,
                        exit_code=state.get("exit_code"), reason=state.get("reason") or "")

    def _starting(self, job_id: int, d: Path, state: dict[str, Any] | None) -> bool:
        if state is not None:
            return False
        with self._lock:
            child = self._children.get(job_id)
        if child is not None:
            return child.poll() is None
        try:
            age_s = self._wall() - d.stat().st_mtime
        except FileNotFoundError:
            return False
        return age_s < START_TIMEOUT_S

    def _supervisor_lost(self, job_id: int, d: Path,
                         state: dict[str, Any] | None) -> dict[str, Any]:
        """The supervisor is gone without recording an end: record one for it."""
        state = dict(state or {"job_id": job_id, "pid": None, "pgid": None})
        cancelled = (d / jd.CANCEL).exists()
        if state.get("pid") is None:
            reason = ("cancelled before it started" if cancelled else
                      f"the job's supervisor exited before starting it (see {d}/supervisor.log)")
        elif state.get("boot_id") != jd.boot_id():
            reason = "the node restarted while the job was running"
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(state["pgid"]), signal.SIGKILL)
            reason = "the job's supervisor died; the job was killed"
        state.update(state="CANCELLED" if cancelled else "FAILED", exit_code=None,
                     reason=reason, ended_at=jd.iso_utc(self._wall()))
        with jd.try_lock(d) as got:
            if not got:  # a supervisor has just appeared after all
                return {"state": jd.RUNNING, "pid": state.get("pid")}
            jd.write_json_atomic(d / jd.STATE, state, mode=0o644)
        log.warning("job %s: %s", job_id, reason)
        return state

    # --- housekeeping ------------------------------------------------------------------
    def _retire(self, obs: Observed) -> None:
        dest = self.done_dir / obs.dir.name
        with self._lock:
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(obs.dir, dest)
            self._children.pop(obs.job_id, None)
        self._prune_done()

    def _prune_done(self) -> None:
        entries = sorted(self.done_dir.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in entries[:-DONE_KEEP]:
            shutil.rmtree(old, ignore_errors=True)

    def _reap_children(self) -> None:
        with self._lock:
            for job_id, proc in list(self._children.items()):
                if proc.poll() is not None and (self.jobs_dir / str(job_id) / jd.STATE).exists():
                    del self._children[job_id]
