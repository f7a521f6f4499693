"""The JobManager: starts job supervisors, stops them, and tells the server what they did.

Everything is keyed by *run*: (job id, attempt), as a requeued job runs again as its next
attempt. All it knows lives in ``<state_dir>/jobs/<id>.<attempt>/`` (see
``worker.jobdir``; directories of the first layout, ``jobs/<id>/``, are attempt 1), so a
restarted daemon re-adopts its runs by listing that directory: supervisors still running
keep running, runs that ended while it was away get reported. Once the server has
acknowledged a run's final state (after all of its output), or has said it is not the
job's current run, the directory moves to ``<state_dir>/done/`` once the run has ended.
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
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gpuq
from gpuq.wire.nodes import JobSample, LaunchSpec, WorkerJob
from gpuq.worker import jobdir as jd
from gpuq.worker import usage
from gpuq.worker.cgroups import CgroupUnavailable, JobCgroup, looks_like_job_cgroup, prepare_node
from gpuq.worker.client import NodeClient
from gpuq.worker.gpus.base import GpuBackend, GpuSample
from gpuq.worker.jobdir import RunKey
from gpuq.worker.jobenv import Identity, LaunchRefused, build_env, identity_for
from gpuq.worker.procs import JobProcesses
from gpuq.worker.reporting import Reporter

log = logging.getLogger(__name__)
#: Seconds a job directory may go without a supervisor taking its lock before the
#: job counts as failed to start (only for supervisors this daemon did not start itself).
START_TIMEOUT_S = 60.0
#: Beyond the kill grace period, how long a launch waits for an older attempt of the
#: same job to end before it starts the new one anyway.
OLDER_ATTEMPT_EXTRA_WAIT_S = 5.0
DONE_KEEP = 200
#: Of the daemon's environment, only these reach the supervisor (never the node token).
SUPERVISOR_ENV = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LANG", "LC_ALL", "TZ")


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


class JobManager:
    def __init__(self, *, state_dir: Path, node: str, api: NodeClient, kill_grace_s: float,
                 identity: Callable[[str], Identity] = identity_for,
                 gpus: GpuBackend | None = None,
                 python: str = sys.executable, wall: Callable[[], float] = time.time,
                 chunk_bytes: int = 256 * 1024, cgroup_root: str = "") -> None:
        self.jobs_dir, self.done_dir = state_dir / "jobs", state_dir / "done"
        for d in (state_dir, self.jobs_dir, self.done_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.node, self.kill_grace_s = node, kill_grace_s
        self.cgroup_root = self._cgroup_root(cgroup_root)
        self._identity, self._gpus = identity, gpus
        self._python, self._wall = python, wall
        self._lock = threading.Lock()
        self._children: dict[RunKey, subprocess.Popen[bytes] | _Forked] = {}
        self._forker_lock = threading.Lock()
        self._forker: subprocess.Popen[bytes] | None = None
        self._forker_done: weakref.finalize | None = None
        self.reporter = Reporter(api, chunk_bytes=chunk_bytes)

    def _cgroup_root(self, setting: str) -> str:
        """The cgroup2 directory job runs get their cgroups under ("" for none), from
        the setting ``worker_cgroup_root``; says once which it is."""
        if not setting.strip():
            return ""
        try:
            root = prepare_node(setting, self.node)
        except CgroupUnavailable as e:
            log.info("job cgroups: none (%s); jobs are killed by process group and "
                     "descendants", e)
            return ""
        log.info("job cgroups: under %s/gpuq/", root)
        return str(root)

    # --- launch and kill ---------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> bool:
        """Start a supervisor for run (``spec.job_id``, ``spec.attempt``); ``False`` if
        that run is here or ran here before. Other attempts of the job still running here
        are killed first (waiting for them up to the kill grace period and a little)."""
        key = RunKey(int(spec.job_id), int(spec.attempt))
        with self._lock:
            if jd.find_run(self.done_dir, key) or jd.find_run(self.jobs_dir, key):
                log.info("job %s is here or ran here before; launch ignored", key)
                return False
        others = [k for k in self.live_attempts(key.job_id) if k != key.attempt]
        if others:
            self._kill_and_wait(key, others)
        d = self.jobs_dir / jd.run_name(key)
        with self._lock:
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                log.info("job %s is already here; launch ignored", key)
                return False
        refused, env, run_as = None, {}, None
        try:
            who = self._identity(spec.unix_user)
            env = build_env(spec, node=self.node, who=who)
            run_as = {"name": who.name, "uid": who.uid, "gid": who.gid,
                      "groups": list(who.groups) if who.groups is not None else None}
        except LaunchRefused as e:
            refused = str(e)
        if spec.script is not None:
            fd = os.open(d / jd.SCRIPT, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(fd, "w") as f:
                f.write(spec.script)
        self._record_start(d, spec.gpu_indices)
        jd.write_json_atomic(d / jd.SPEC, {
            "job_id": key.job_id, "attempt": key.attempt, "launch": spec.model_dump(mode="json"),
            "env": env, "kill_grace_s": self.kill_grace_s, "run_as": run_as,
            "refused": refused, "node": self.node, "cgroup_root": self.cgroup_root})
        self._spawn(key, d)
        if run_as is None:
            log.warning("job %s: not started: %s", key, refused)
        else:
            log.info("job %s: launched on GPUs %s as %s", key, spec.gpu_indices, run_as["name"])
        return True

    def wait_started(self, key: RunKey, timeout_s: float) -> bool:
        """Wait until the run's supervisor has written its first state (the job started,
        or could not start); ``False`` after ``timeout_s``, or if the run is not here."""
        d = self.jobs_dir / jd.run_name(key)
        deadline = time.monotonic() + timeout_s
        while not (d / jd.STATE).exists():
            if not d.exists() or time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def _record_start(self, d: Path, gpu_indices: Sequence[int]) -> None:
        """Each GPU's energy counter at launch, for the run's energy (``usage.json``)."""
        samples: list[GpuSample] = []
        if self._gpus is not None and gpu_indices:
            try:
                samples = self._gpus.samples()
            except Exception:
                log.exception("reading the GPUs at launch failed; the job's energy will "
                              "count from its first heartbeat")
        jd.write_json_atomic(d / jd.USAGE, usage.start_record(gpu_indices, samples,
                                                               self._wall()))

    def _kill_and_wait(self, key: RunKey, attempts: Sequence[int]) -> None:
        log.info("job %s: killing attempt(s) %s of the job still running here first", key,
                 ", ".join(map(str, attempts)))
        dirs = []
        for attempt in attempts:
            self.kill(key.job_id, attempt)
            d = jd.find_run(self.jobs_dir, RunKey(key.job_id, attempt))
            if d is not None:
                dirs.append(d)
        deadline = time.monotonic() + self.kill_grace_s + OLDER_ATTEMPT_EXTRA_WAIT_S
        while any(jd.supervisor_alive(d) for d in dirs):
            if time.monotonic() > deadline:
                log.warning("job %s: an older attempt is still running; launching anyway", key)
                return
            time.sleep(0.02)

    def _supervisor_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in SUPERVISOR_ENV if k in os.environ}
        src = str(Path(gpuq.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        return env

    def _spawn(self, key: RunKey, d: Path) -> None:
        """Start the run's supervisor: forked by the fork server (``python -m
        gpuq.worker.supervisor --serve``, started once), else as a new Python process."""
        proc: subprocess.Popen[bytes] | _Forked | None = self._fork_supervisor(d)
        if proc is None:
            with open(d / jd.SUPERVISOR_LOG, "ab") as out:
                proc = subprocess.Popen([self._python, "-m", "gpuq.worker.supervisor", str(d)],
                                        stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        close_fds=True, cwd="/", env=self._supervisor_env())
        with self._lock:
            self._children[key] = proc

    def _fork_supervisor(self, d: Path) -> _Forked | None:
        """Ask the fork server for a supervisor of ``d`` (starting the server first if it
        is not running); ``None`` if it cannot (the caller starts one itself)."""
        if "\n" in str(d):
            return None
        with self._forker_lock:
            try:
                if self._forker is None or self._forker.poll() is not None:
                    self._forker = subprocess.Popen(
                        [self._python, "-m", "gpuq.worker.supervisor", "--serve"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
                        close_fds=True, cwd="/", env=self._supervisor_env())
                    self._forker_done = weakref.finalize(self, _stop_forker, self._forker)
                assert self._forker.stdin is not None and self._forker.stdout is not None
                self._forker.stdin.write(f"{d}\n".encode())
                self._forker.stdin.flush()
                answer = self._forker.stdout.readline().decode().strip()
                return _Forked(int(answer))
            except (OSError, ValueError) as e:
                log.warning("the supervisor fork server failed (%s); starting the "
                            "supervisor as a new process", e or type(e).__name__)
                if self._forker is not None:
                    _stop_forker(self._forker)
                    self._forker = None
                return None

    def close(self) -> None:
        """Stop the fork server (the supervisors it started keep running)."""
        with self._forker_lock:
            if self._forker is not None:
                _stop_forker(self._forker)
                self._forker = None

    def kill(self, job_id: int, attempt: int, grace_s: float | None = None) -> bool:
        """Cancel one run: its supervisor sends SIGTERM, then SIGKILL after the grace
        period (``grace_s``, e.g. a preemption's; default the worker's ``kill_grace_s``),
        and records CANCELLED. ``False`` if the run is not here (or has ended)."""
        key = RunKey(int(job_id), int(attempt))
        d = jd.find_run(self.jobs_dir, key)
        if d is None:
            return False
        state = jd.read_json(d / jd.STATE)
        if state is not None and state.get("state") in jd.FINAL:
            return False
        try:
            # Seen by a supervisor that has not started the job yet, and read for the
            # grace period (written whole, then renamed: never read half-written); the
            # signal below wakes one that has.
            tmp = d / f".{jd.CANCEL}.tmp"
            tmp.write_text("" if grace_s is None else f"{float(grace_s)}\n")
            tmp.replace(d / jd.CANCEL)
        except FileNotFoundError:
            return False  # retired meanwhile
        if state is not None and jd.supervisor_alive(d):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(state["supervisor_pid"]), signal.SIGTERM)
        log.info("job %s: cancel sent", key)
        return True

    # --- what is here ------------------------------------------------------------------
    def runs(self) -> dict[RunKey, Path]:
        """Every run here (running, or ended and not yet retired), by key."""
        return jd.list_runs(self.jobs_dir)

    def job_ids(self) -> list[int]:
        return sorted({k.job_id for k in self.runs()})

    def live_attempts(self, job_id: int) -> list[int]:
        """Attempts of ``job_id`` here that have not ended."""
        out = []
        for key, d in self.runs().items():
            if key.job_id == job_id:
                state = jd.read_json(d / jd.STATE) or {}
                if state.get("state") not in jd.FINAL:
                    out.append(key.attempt)
        return out

    def jobs(self, samples: Sequence[GpuSample] | None = None) -> list[WorkerJob]:
        """Every run still here, for the heartbeat: RUNNING unless it has ended, with its
        GPUs' sample (computed from ``samples`` while it runs, the last one once ended)."""
        out = []
        for key, d in self.runs().items():
            state = jd.read_json(d / jd.STATE) or {}
            final = state.get("state") if state.get("state") in jd.FINAL else None
            out.append(WorkerJob(job_id=key.job_id, attempt=key.attempt,
                                 state=final or jd.RUNNING,
                                 sample=self._sample(d, running=final is None, samples=samples)))
        return out

    def _sample(self, d: Path, *, running: bool,
                samples: Sequence[GpuSample] | None) -> JobSample | None:
        spec = jd.read_json(d / jd.SPEC)
        indices = (spec or {}).get("launch", {}).get("gpu_indices") or []
        if spec is None or not indices:
            return None
        try:
            record = jd.read_json(d / jd.USAGE)
        except ValueError:
            record = None
        if not running or samples is None:
            return usage.last_sample(record)
        record, sample = usage.advance(record, indices, samples, self._wall())
        with contextlib.suppress(FileNotFoundError):  # retired meanwhile
            jd.write_json_atomic(d / jd.USAGE, record)
        return sample

    def job_processes(self) -> JobProcesses:
        """The running runs' sessions, supervisors and GPUs (to tell gpuq's processes on
        a GPU from foreign ones, and for the simulated GPUs' load)."""
        sessions: set[int] = set()
        supervisors: set[int] = set()
        gpus: dict[int, list[int]] = {}
        for d in self.runs().values():
            state = jd.read_json(d / jd.STATE) or {}
            if state.get("state") in jd.FINAL:
                continue
            spec = jd.read_json(d / jd.SPEC) or {}
            pid = state.get("pid")
            sessions.update(int(state[k]) for k in ("pid", "pgid") if state.get(k))
            if state.get("supervisor_pid"):
                supervisors.add(int(state["supervisor_pid"]))
            if spec.get("refused"):
                continue
            for i in spec.get("launch", {}).get("gpu_indices") or []:
                gpus.setdefault(int(i), [])
                if pid:
                    gpus[int(i)].append(int(pid))
        return JobProcesses(sessions=frozenset(sessions), supervisors=frozenset(supervisors),
                            gpus=gpus)

    def busy_gpu_indices(self) -> set[int]:
        return set(self.job_processes().gpus)

    # --- the poll ----------------------------------------------------------------------
    def poll(self) -> None:
        """Ship new output and report state changes of every run here (one pass).

        Raises ``ServerUnavailable`` when the server cannot be reached; the next pass
        carries on where this one stopped.
        """
        self._reap_children()
        for key, d in self.runs().items():
            try:
                obs = self.observe(key, d)
            except FileNotFoundError:
                continue  # retired meanwhile
            if self.reporter.sync(obs):
                self._retire(obs)

    def observe(self, key: RunKey, d: Path) -> Observed:
        state = jd.read_json(d / jd.STATE)
        if state is not None and state.get("state") in jd.FINAL:
            return self._observed(key, d, state)
        if jd.supervisor_alive(d) or self._starting(key, d, state):
            return Observed(key, d, jd.RUNNING, started=state is not None)
        # A supervisor writes the job's end before it exits: it may have done both since
        # the read above (a job of a few ms, observed as it starts). Read it again.
        state = jd.read_json(d / jd.STATE) or state
        if state is not None and state.get("state") in jd.FINAL:
            return self._observed(key, d, state)
        return self._observed(key, d, self._supervisor_lost(key, d, state))

    @staticmethod
    def _observed(key: RunKey, d: Path, state: dict[str, Any]) -> Observed:
        return Observed(key, d, state["state"], started=state.get("pid") is not None,
                        exit_code=state.get("exit_code"), reason=state.get("reason") or "")

    def _starting(self, key: RunKey, d: Path, state: dict[str, Any] | None) -> bool:
        if state is not None:
            return False
        with self._lock:
            child = self._children.get(key)
        if child is not None:
            return child.poll() is None
        try:
            age_s = self._wall() - d.stat().st_mtime
        except FileNotFoundError:
            return False
        return age_s < START_TIMEOUT_S

    def _supervisor_lost(self, key: RunKey, d: Path,
                         state: dict[str, Any] | None) -> dict[str, Any]:
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
            cgroup = _job_cgroup(state)
            if cgroup is not None:  # processes that left the job's process group too
                cgroup.kill()
                give_up_at = time.monotonic() + 1.0
                while not cgroup.remove() and time.monotonic() < give_up_at:
                    time.sleep(0.02)
            reason = "the job's supervisor died; the job was killed"
        state.update(state="CANCELLED" if cancelled else "FAILED", exit_code=None,
                     reason=reason, ended_at=jd.iso_utc(self._wall()))
        with jd.try_lock(d) as got:
            if not got:  # a supervisor has just appeared after all
                return {"state": jd.RUNNING, "pid": state.get("pid")}
            jd.write_json_atomic(d / jd.STATE, state, mode=0o644)
        log.warning("job %s: %s", key, reason)
        return state

    # --- housekeeping ------------------------------------------------------------------
    def _retire(self, obs: Observed) -> None:
        cgroup = _job_cgroup(jd.read_json(obs.dir / jd.STATE))
        if cgroup is not None and not cgroup.remove():  # its supervisor removes it, or tried
            log.warning("job %s: its cgroup %s is not empty: pids %s", obs.key, cgroup.path,
                        cgroup.pids())
        dest = self.done_dir / obs.dir.name
        with self._lock:
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(obs.dir, dest)
            self._children.pop(obs.key, None)
        self._prune_done()

    def _prune_done(self) -> None:
        entries = sorted(self.done_dir.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in entries[:-DONE_KEEP]:
            shutil.rmtree(old, ignore_errors=True)

    def _reap_children(self) -> None:
        with self._lock:
            for key, proc in list(self._children.items()):
                d = jd.find_run(self.jobs_dir, key)
                if proc.poll() is not None and (d is None or (d / jd.STATE).exists()):
                    del self._children[key]


class _Forked:
    """A supervisor the fork server started (its child, not ours): ``poll()`` says
    whether it is still there, as ``Popen.poll`` does (the exit status is not known)."""

    def __init__(self, pid: int) -> None:
        if pid <= 0:
            raise ValueError(f"bad pid {pid}")
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                with open(f"/proc/{self.pid}/stat", "rb") as f:
                    gone = f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
            except FileNotFoundError:
                gone = os.path.isdir("/proc/self") or not _pid_exists(self.pid)
            except (OSError, IndexError):
                gone = not _pid_exists(self.pid)
            if gone:
                self.returncode = -1
        return self.returncode


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_forker(proc: subprocess.Popen[bytes]) -> None:
    """Close the fork server's stdin (it exits at EOF) and reap it."""
    for stream in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            if stream is not None:
                stream.close()
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _job_cgroup(state: dict[str, Any] | None) -> JobCgroup | None:
    """The cgroup a run's ``state.json`` names, if it is still there (and is one)."""
    path = (state or {}).get("cgroup")
    if not path or not looks_like_job_cgroup(Path(path)):
        return None
    return JobCgroup(Path(path))
