"""The JobManager: starts job supervisors, stops them, and tells the server what they did.

Everything is keyed by *run*: (job id, attempt), as a requeued job runs again as its next
attempt. All it knows lives in ``<state_dir>/jobs/<id>.<attempt>/`` (see
``worker.jobdir``; directories of the first layout, ``jobs/<id>/``, are attempt 1), so a
restarted daemon re-adopts its runs by listing that directory: supervisors still running
keep running, runs that ended while it was away get reported. Once the server has
acknowledged a run's final state (after all of its output), or has said it is not the
job's current run, the directory moves to ``<state_dir>/done/`` once the run has ended.

Supervisors are started by ``worker.starter``; what a run directory shows is
``worker.observe``'s; what is sent to the server, ``worker.reporting``'s.
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
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from gpuq.files import private_dir
from gpuq.wire.nodes import JobSample, LaunchSpec, WorkerJob
from gpuq.worker import jobdir as jd
from gpuq.worker import limits, usage
from gpuq.worker.cgroups import CgroupUnavailable, prepare_node
from gpuq.worker.client import NodeClient
from gpuq.worker.gpus.base import GpuBackend, GpuSample
from gpuq.worker.jobdir import RunKey
from gpuq.worker.jobenv import Identity, LaunchRefused, build_env, identity_for
from gpuq.worker.lease import LEASE
from gpuq.worker.observe import Observed, job_cgroup, observe
from gpuq.worker.procs import JobProcesses
from gpuq.worker.reporting import Reporter
from gpuq.worker.starter import Forked, SupervisorStarter

log = logging.getLogger(__name__)
#: Beyond the kill grace period, how long a launch waits for an older attempt of the
#: same job to end before it starts the new one anyway.
OLDER_ATTEMPT_EXTRA_WAIT_S = 5.0
#: Ended runs' directories kept in ``done/`` (the newest, for a look after the fact).
DONE_KEEP = 200
#: The older ones go in batches, once this many runs have been retired since the last, by
#: a thread of their own: removing one directory per retired run in the poll thread (some
#: 2 ms each) held up the report of the next job's end or start (bench/release.py).
DONE_SLACK = 50


class JobManager:
    def __init__(self, *, state_dir: Path, node: str, api: NodeClient, kill_grace_s: float,
                 identity: Callable[[str], Identity] = identity_for,
                 gpus: GpuBackend | None = None,
                 python: str = sys.executable, wall: Callable[[], float] = time.time,
                 chunk_bytes: int = 256 * 1024, cgroup_root: str = "") -> None:
        self.jobs_dir, self.done_dir = state_dir / "jobs", state_dir / "done"
        for d in (state_dir, self.jobs_dir, self.done_dir):
            private_dir(d)  # 0700 (an existing one of ours made so, logged)
        self.node, self.kill_grace_s = node, kill_grace_s
        #: The node's lease, which the daemon renews and each supervisor reads (fencing).
        self.lease_path = state_dir / LEASE
        self.cgroup_root = self._cgroup_root(cgroup_root)
        self._identity, self._gpus = identity, gpus
        #: GPU index -> its device nodes (what the GPU fence denies the jobs not given it).
        self._gpu_devices: dict[int, tuple[str, ...]] = {}
        #: The job limits this node enforces (``worker.limits``), said once here.
        self.enforcement = self._enforcement(cgroup_root)
        self._wall = wall
        self._lock = threading.Lock()
        #: Held over each read-change-write of a run's ``usage.json`` (the heartbeat
        #: advances it, the poll reads the GPUs at the start and at the end).
        self._usage_lock = threading.Lock()
        #: The supervisors this daemon started, by run; one is dropped once it has exited
        #: and its run has a state (or is gone), or when its run is retired.
        self._children: dict[RunKey, subprocess.Popen[bytes] | Forked] = {}
        self.starter = SupervisorStarter(python)
        self.reporter = Reporter(api, chunk_bytes=chunk_bytes, wall=wall)
        #: Runs retired since ``done/`` was last pruned, and the thread pruning it.
        self._retired_since_prune = 0
        self._pruner: threading.Thread | None = None

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

    def _enforcement(self, setting: str) -> limits.Enforcement:
        """What this node enforces of its jobs' limits (``limits.probe``), logged: the
        devices only where the GPUs have device nodes to fence."""
        enforcement = limits.probe(setting, self.node)
        nodes = getattr(self._gpus, "device_nodes", None)
        if self._gpus is not None and limits.DEVICES in enforcement.how:
            why = None
            try:
                self._gpu_devices = dict(nodes()) if nodes is not None else {}
                bare = [g.index for g in self._gpus.inventory()
                        if g.index not in self._gpu_devices]
            except Exception as e:
                log.exception("listing the GPUs' device nodes failed: no GPU fence")
                self._gpu_devices, bare = {}, []
                why = f"cannot list the GPUs' device nodes: {e}"
            if bare:
                hint = (" (simulated GPUs: see the setting simulate_gpu_devices)"
                        if getattr(self._gpus, "name", "") == "simulated" else "")
                why = f"no device node for GPU(s) {','.join(map(str, bare))}{hint}"
            if why is not None:
                enforcement = enforcement.without(limits.DEVICES, why)
        if enforcement.why_not:
            log.warning("job limits: %s", enforcement.summary())
        else:
            log.info("job limits: %s", enforcement.summary())
        if (any(how not in (limits.V2, limits.BPF) for how in enforcement.how.values())
                and not limits.dynmods_favored()):
            log.info("job limits: %s", limits.SLOW_JOIN_HINT)
        return enforcement

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
            "refused": refused, "node": self.node, "cgroup_root": self.cgroup_root,
            "lease": str(self.lease_path),
            "limits": limits.plan(self.enforcement, memory_mib=spec.memory_mib, cpus=spec.cpus,
                                  deny=limits.deny_list(self._gpu_devices, spec.gpu_indices))},
            durable=False)  # read by this boot's supervisor and daemon only
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
                                                               self._wall()), durable=False)

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

    def _spawn(self, key: RunKey, d: Path) -> None:
        """Start the run's supervisor (``SupervisorStarter.start``) and keep it."""
        proc = self.starter.start(d)
        with self._lock:
            self._children[key] = proc

    def close(self) -> None:
        """Stop the fork server (the supervisors it started keep running)."""
        self.starter.close()

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
            jd.write_text_atomic(d / jd.CANCEL, "" if grace_s is None else f"{float(grace_s)}\n")
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
        GPUs' sample (computed from ``samples`` while it runs; once it has ended, its end
        sample: ``end_sample``)."""
        out = []
        for key, d in self.runs().items():
            state = jd.read_json(d / jd.STATE) or {}
            final = state.get("state") if state.get("state") in jd.FINAL else None
            out.append(WorkerJob(job_id=key.job_id, attempt=key.attempt,
                                 state=final or jd.RUNNING,
                                 sample=self._sample(d, state=state, samples=samples)))
        return out

    def _sample(self, d: Path, *, state: dict[str, Any],
                samples: Sequence[GpuSample] | None) -> JobSample | None:
        indices = self._gpu_indices(d)
        if not indices:
            return None
        if state.get("state") in jd.FINAL:
            return self._end_sample(d, indices, state, samples)
        with self._usage_lock:
            record = _read_usage(d)
            if samples is None or (record or {}).get("end") is not None:
                return usage.last_sample(record)
            now_s = self._wall()
            started_s = _epoch(state.get("started_at")) if state.get("pid") else None
            if started_s is not None:  # counting from the process's start (once)
                record = usage.begin(record, indices, samples, now_s, started_s)
            record, sample = usage.advance(record, indices, samples, now_s)
            with contextlib.suppress(FileNotFoundError):  # retired meanwhile
                jd.write_json_atomic(d / jd.USAGE, record, durable=False)
        return sample

    def start_sample(self, d: Path) -> None:
        """Read the run's GPUs as its process has just started, so that its energy counts
        from then (``usage.begin``; once, and only while it runs)."""
        state = jd.read_json(d / jd.STATE) or {}
        started_s = _epoch(state.get("started_at")) if state.get("pid") else None
        indices = self._gpu_indices(d)
        if (started_s is None or state.get("state") in jd.FINAL or not indices
                or self._gpus is None):
            return
        with self._usage_lock:
            record = _read_usage(d)
            if record is None or record.get("begun") is not None:
                return
            try:
                samples = self._gpus.samples()
            except Exception:
                log.exception("reading the GPUs as a job started failed; its energy counts "
                              "from its launch")
                return
            record = usage.begin(record, indices, samples, self._wall(), started_s)
            with contextlib.suppress(FileNotFoundError):  # retired meanwhile
                jd.write_json_atomic(d / jd.USAGE, record, durable=False)

    def end_sample(self, d: Path) -> JobSample | None:
        """The run's GPUs at its end (read now, once, and kept in its ``usage.json``), for
        its final report; ``None`` for a run that has not ended, never started, or has no
        GPUs."""
        state = jd.read_json(d / jd.STATE) or {}
        indices = self._gpu_indices(d)
        if state.get("state") not in jd.FINAL or not indices:
            return None
        return self._end_sample(d, indices, state, None)

    def _end_sample(self, d: Path, indices: list[int], state: dict[str, Any],
                    samples: Sequence[GpuSample] | None) -> JobSample | None:
        with self._usage_lock:
            record = _read_usage(d)
            if (record or {}).get("end") is not None:
                return usage.end_sample(record)
            if state.get("pid") is None:  # it never started: nothing ran on its GPUs
                return usage.last_sample(record)
            if state.get("boot_id") not in (None, jd.boot_id()):
                samples = None  # the node restarted: its counters and the end are unknown
            elif samples is None and self._gpus is not None:
                try:
                    samples = self._gpus.samples()
                except Exception:
                    log.exception("reading the GPUs at the end of a job failed; its last "
                                  "sample stands for its end")
            now_s = self._wall()
            ended_s = _epoch(state.get("ended_at"))
            record, sample = usage.finish(record, indices, samples, now_s,
                                          now_s if ended_s is None else ended_s)
            with contextlib.suppress(FileNotFoundError):  # retired meanwhile
                jd.write_json_atomic(d / jd.USAGE, record, durable=False)
        return sample

    @staticmethod
    def _gpu_indices(d: Path) -> list[int]:
        spec = jd.read_json(d / jd.SPEC)
        return [int(i) for i in (spec or {}).get("launch", {}).get("gpu_indices") or []]

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
                if obs.state in jd.FINAL and obs.started:
                    self.end_sample(d)  # the GPUs at the end, for the final report
                elif obs.started and not jd.read_text(d / jd.REPORTED):
                    self.start_sample(d)  # the GPUs at the start, before RUNNING is sent
            except FileNotFoundError:
                continue  # retired meanwhile
            if self.reporter.sync(obs):
                self._retire(obs)

    def observe(self, key: RunKey, d: Path) -> Observed:
        """The run as it is now (``worker.observe``)."""
        return observe(key, d, launched=self._launched, wall=self._wall)

    def _launched(self, key: RunKey) -> bool | None:
        """Whether the supervisor this daemon started for ``key`` is still there;
        ``None`` if it keeps none for the run (it did not start one, or dropped it)."""
        with self._lock:
            child = self._children.get(key)
        return None if child is None else child.poll() is None

    # --- housekeeping ------------------------------------------------------------------
    def _retire(self, obs: Observed) -> None:
        cgroup = job_cgroup(jd.read_json(obs.dir / jd.STATE))
        if cgroup is not None and not cgroup.remove():  # its supervisor removes it, or tried
            log.warning("job %s: its cgroup %s is not empty: pids %s", obs.key, cgroup.path,
                        cgroup.pids())
        for left in limits.remove_leftovers((jd.read_json(obs.dir / jd.STATE) or {})
                                            .get("limit_cgroups")):
            log.warning("job %s: its cgroup %s is not empty", obs.key, left)
        dest = self.done_dir / obs.dir.name
        with self._lock:
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(obs.dir, dest)
            self._children.pop(obs.key, None)
        self._prune_done()

    def _prune_done(self) -> None:
        """Every ``DONE_SLACK`` retired runs, prune ``done/`` to the newest ``DONE_KEEP``
        in a thread of its own (the caller reports ends and starts)."""
        self._retired_since_prune += 1
        if self._retired_since_prune < DONE_SLACK or (
                self._pruner is not None and self._pruner.is_alive()):
            return
        self._retired_since_prune = 0
        self._pruner = threading.Thread(target=self.prune_done_now, name="gpuq-prune-done",
                                        daemon=True)
        self._pruner.start()

    def prune_done_now(self) -> None:
        """Remove all but the newest ``DONE_KEEP`` ended runs' directories."""
        def mtime(p: Path) -> float:
            try:
                return p.stat().st_mtime
            except FileNotFoundError:
                return 0.0

        entries = sorted(self.done_dir.iterdir(), key=mtime)
        for old in entries[:-DONE_KEEP]:
            shutil.rmtree(old, ignore_errors=True)

    def _reap_children(self) -> None:
        with self._lock:
            for key, proc in list(self._children.items()):
                d = jd.find_run(self.jobs_dir, key)
                if proc.poll() is not None and (d is None or (d / jd.STATE).exists()):
                    del self._children[key]


def _read_usage(d: Path) -> dict[str, Any] | None:
    try:
        return jd.read_json(d / jd.USAGE)
    except ValueError:
        return None


def _epoch(iso: Any) -> float | None:
    """A time of ``state.json`` (ISO 8601, UTC) in epoch seconds; ``None`` if there is
    none."""
    try:
        return datetime.fromisoformat(str(iso)).timestamp() if iso else None
    except ValueError:
        return None
