"""One supervisor process per job: ``python -m gpuq.worker.supervisor <jobdir>``.

Started detached by the daemon (its own session, stdin from /dev/null), so it outlives a
daemon restart; forked by the fork server (``python -m gpuq.worker.supervisor --serve``,
``worker.forkserver``) or started as a new Python process. It starts the job in its own
session (process group) in ``workdir`` with the environment from ``spec.json``, sends
stdout and stderr to ``output.log``, enforces the time limit, and treats SIGTERM/SIGINT to
itself as a cancel. It fences the job too: when the node's lease has run out (no contact
with the scheduler for the fencing time: ``worker.lease``; checked every half second,
whether the daemon runs or not), the job is stopped as a cancel is (SIGTERM, the lease's
grace period, SIGKILL) and the run ends NODE_FAIL. It is the only writer of
``state.json`` (which records the job's pid = pgid = sid, its cgroup, and the
supervisor's own pid).

Every process of the job goes when the job ends, including those that left its process
group (``setsid``, double forks): the supervisor is a child subreaper, so the job's orphans
become its children (``worker.jobtree``), and where it can it puts the job in a cgroup of
its own (see ``worker.cgroups``; the leader is created in it with ``clone3``
(``worker.spawn``), or joins it before it execs where that cannot be done, so nothing forks
out of it). The job's limits (memory, CPUs, the GPU fence: ``worker.limits``) are set on
its cgroups before it starts; if the OOM killer killed any of its processes, it ends as
OUT_OF_MEMORY. A cancel or the time limit sends SIGTERM to the job's process group, to every
process in its cgroup and to every live descendant of the supervisor (found in ``/proc``),
and SIGKILL (``cgroup.kill``) to what is left after the grace period; when the job's leader
exits by itself, what it left behind is killed at once. The end is recorded only once none
of them is left (or ``KILL_WAIT_S`` after the SIGKILL, for a process that does not die).

When the job runs as another account (a root daemon), the job gets what it needs as that
account: its script is copied to a directory the account owns, its output goes to a file
descriptor the supervisor opened (the state directory stays private), and it enters its
``workdir`` as that account (a job cannot start in a directory its user cannot reach,
the whole path included: it fails with exit code 126 or 127, saying so; see
``worker.jobstart``).

Standard library only (its gpuq imports too): it must start fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuq.files import open_private
from gpuq.wire.states import JobState
from gpuq.worker import forkserver
from gpuq.worker import jobdir as jd
from gpuq.worker.cgroups import CgroupUnavailable, JobCgroup
from gpuq.worker.jobstart import (
    check_workdir_as,
    child_setup,
    read_report,
    report_error,
    start_error,
)
from gpuq.worker.jobtree import MAX_WAIT_S, JobTree, become_subreaper, poll_s, signal_name
from gpuq.worker.lease import Fence
from gpuq.worker.limits import JobLimits, LimitError
from gpuq.worker.spawn import CloneUnavailable, Spawned, spawn_into_cgroup

log = logging.getLogger("gpuq.supervisor")
LOCK_TRIES = 40


class Supervisor:
    def __init__(self, jobdir: Path, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.dir = jobdir
        self.clock, self.wall = clock, wall
        self.spec: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self._stop_signal = False
        self._tree: JobTree | None = None
        self._tmpdir: str | None = None
        self._cgroup: JobCgroup | None = None
        #: The node's lease (``worker.lease``): the job stops when it runs out.
        self._fence = Fence(None)
        #: The job's limits (memory, CPUs, devices: ``worker.limits``), once set.
        self._limits: JobLimits | None = None

    # --- entry -----------------------------------------------------------------------
    def run(self) -> int:
        lock_fd = self._lock()
        if lock_fd is None:
            log.error("%s: another supervisor holds the lock; exiting", self.dir)
            return 3
        try:
            if (self.dir / jd.STATE).exists():
                log.error("%s: the job was started before; not starting it again", self.dir)
                return 0
            spec = jd.read_json(self.dir / jd.SPEC)
            if spec is None:
                log.error("%s: no %s", self.dir, jd.SPEC)
                return 2
            self.spec = spec
            self._install_signals()
            if not become_subreaper():
                log.warning("job %s: cannot become a child subreaper; processes that leave "
                            "the job's process group may outlive it", self.label)
            try:
                self._supervise()
            except BaseException:
                log.exception("job %s: supervisor failed", self.label)
                if self._tree is not None:  # never leave a job running unsupervised
                    self._tree.signal(signal.SIGKILL)
                raise
            return 0
        finally:
            if self._limits is not None:
                for left in self._limits.remove():
                    log.warning("job %s: cgroup %s is not empty; leaving it", self.label, left)
            if self._cgroup is not None:
                self._remove_cgroup()
            if self._tmpdir:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
            os.close(lock_fd)

    def _lock(self) -> int | None:
        fd = os.open(self.dir / jd.LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        for _ in range(LOCK_TRIES):  # the daemon may be peeking at the lock for a moment
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                time.sleep(0.05)
        os.close(fd)
        return None

    def _install_signals(self) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wake_r = r
        signal.set_wakeup_fd(w)

        def stop(signum: int, frame: object) -> None:
            self._stop_signal = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        # Handlers, not SIG_IGN: ignored signals would stay ignored in the job after exec.
        signal.signal(signal.SIGHUP, lambda s, f: None)
        signal.signal(signal.SIGCHLD, lambda s, f: None)  # wakes the wait loop

    def _sleep(self, timeout_s: float) -> None:
        """Sleep until a signal arrives (SIGCHLD included) or ``timeout_s`` passes."""
        select.select([self._wake_r], [], [], timeout_s)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    # --- the job -----------------------------------------------------------------------
    def _write(self, **fields: Any) -> None:
        self.state.update(fields)
        jd.write_json_atomic(self.dir / jd.STATE, self.state)

    @property
    def label(self) -> str:
        """``<job id>.<attempt>`` for messages."""
        return f"{self.spec.get('job_id')}.{self.spec.get('attempt', 1)}"

    def _end(self, state: JobState, exit_code: int | None, reason: str) -> None:
        log.info("job %s: %s (%s)", self.label, state, reason)
        self._write(state=state, exit_code=exit_code, reason=reason,
                    ended_at=jd.iso_utc(self.wall()))
        jd.poke(self.dir)  # the daemon reports the end now: the GPU is free

    def _cancel_asked(self) -> bool:
        return self._stop_signal or (self.dir / jd.CANCEL).exists()

    def _fenced_reason(self) -> str:
        return f"fenced: no contact with the scheduler for {self._fence.after_s:g} s"

    def _cancel_grace_s(self, default_s: float) -> float:
        """The grace period the cancel asked for (a preemption gives the job time to
        checkpoint), written in the cancel file; else the worker's."""
        try:
            text = (self.dir / jd.CANCEL).read_text().strip()
            return max(0.0, float(text)) if text else default_s
        except (OSError, ValueError):
            return default_s

    def _supervise(self) -> None:
        spec, launch = self.spec, self.spec["launch"]
        self.state = {"job_id": spec["job_id"], "attempt": spec.get("attempt", 1),
                      "state": None, "pid": None, "pgid": None, "cgroup": None,
                      "exit_code": None, "started_at": None, "ended_at": None, "reason": "",
                      "supervisor_pid": os.getpid(), "boot_id": jd.boot_id()}
        if spec.get("refused"):
            with open_private(self.dir / jd.LOG) as out:
                out.write(f"gpuq: not started: {spec['refused']}\n".encode())
            return self._end(JobState.FAILED, None, str(spec["refused"])[:256])
        if self._cancel_asked():
            return self._end(JobState.CANCELLED, None, "cancelled before it started")
        self._fence = Fence(Path(spec["lease"]) if spec.get("lease") else None)
        if self._fence.due():
            return self._end(JobState.NODE_FAIL, None,
                             f"not started: {self._fenced_reason()}")
        try:
            argv = self._argv(launch)
            proc = self._start(argv, launch["workdir"])
        except (OSError, subprocess.SubprocessError, ValueError, LimitError) as e:
            code, reason = start_error(e, launch)
            with open_private(self.dir / jd.LOG) as out:
                out.write(f"gpuq: {reason}\n".encode())
            return self._end(JobState.FAILED, code, reason)
        self._tree = JobTree(proc.pid, self._cgroup, label=self.label, clock=self.clock,
                             sleep=self._sleep)
        start_s = self.clock()
        self._write(state=JobState.RUNNING, pid=proc.pid, pgid=proc.pid,
                    cgroup=str(self._cgroup.path) if self._cgroup else None,
                    limit_cgroups=[str(d) for d in self._limits.v1_dirs.values()]
                    if self._limits else [],
                    started_at=jd.iso_utc(self.wall()))
        jd.poke(self.dir)
        ending, code = self._wait(self._tree, start_s + float(launch["time_limit_s"]))
        proc.returncode = code  # reaped here, not by Popen
        # Any process of the job killed for memory makes it OUT_OF_MEMORY, whatever its
        # exit code (as Slurm does: a script may carry on after its program was killed).
        oom = self._limits.oom_kills(code) if self._limits is not None else 0
        if ending == JobState.TIMEOUT:
            self._end(JobState.TIMEOUT, code,
                      f"time limit of {launch['time_limit_s']} s reached")
        elif ending == JobState.NODE_FAIL:
            self._end(JobState.NODE_FAIL, code, self._fenced_reason())
        elif ending == JobState.CANCELLED:
            self._end(JobState.CANCELLED, code, "cancelled")
        elif oom and self._limits is not None:
            reason = (f"out of memory: the job's cgroup hit its {self._limits.memory_mib} MiB "
                      f"limit (--mem); the kernel killed {oom} "
                      f"process{'' if oom == 1 else 'es'}")
            with open_private(self.dir / jd.LOG) as out:
                out.write(f"gpuq: {reason}\n".encode())
            self._end(JobState.OUT_OF_MEMORY, code, reason)
        elif code == 0:
            self._end(JobState.COMPLETED, 0, "exit code 0")
        elif code > 128:
            self._end(JobState.FAILED, code, f"killed by {signal_name(code - 128)}")
        else:
            self._end(JobState.FAILED, code, f"exit code {code}")

    # --- starting it -------------------------------------------------------------------
    def _argv(self, launch: dict[str, Any]) -> list[str]:
        if launch.get("command"):
            return [str(a) for a in launch["command"]]
        path = self.dir / jd.SCRIPT
        run_as = self.spec.get("run_as")
        if run_as and run_as["uid"] != os.geteuid():
            # The job's user may not reach the state directory: give it its own copy.
            self._tmpdir = tempfile.mkdtemp(prefix=f"gpuq-job-{self.label}-")
            os.chown(self._tmpdir, run_as["uid"], run_as["gid"])
            copy = Path(self._tmpdir) / "script"
            shutil.copyfile(path, copy)
            os.chown(copy, run_as["uid"], run_as["gid"])
            os.chmod(copy, 0o700)
            path = copy
        with open(path, "rb") as f:
            shebang = f.read(2) == b"#!"
        return [str(path)] if shebang else ["/bin/bash", str(path)]

    def _start(self, argv: list[str], workdir: str) -> subprocess.Popen[bytes] | Spawned:
        """Start the job's leader: inside its cgroup with ``clone3`` where it has one and
        that can be done, else with ``Popen`` (joining the cgroup before exec)."""
        run_as = self.spec.get("run_as")
        if not (run_as and run_as["uid"] != os.geteuid()):
            run_as = None
        if run_as is not None:
            check_workdir_as(run_as, workdir)  # to fail saying why
        self._cgroup = self._make_cgroup()
        self._limits = self._set_limits()
        if self._cgroup is not None:
            spawned = self._spawn_into_cgroup(argv, workdir, run_as)
            if spawned is not None:
                return spawned
        kwargs: dict[str, Any] = {"cwd": None if run_as else workdir}
        report_r, report_w = os.pipe()
        if run_as is not None or self._cgroup is not None or self._limits is not None:
            kwargs["preexec_fn"] = functools.partial(child_setup, report_w, self._cgroup,
                                                     run_as, workdir, self._limits)
        try:
            with open_private(self.dir / jd.LOG) as out:
                proc = subprocess.Popen(argv, env=self.spec["env"], stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, close_fds=True, **kwargs)
        except BaseException:
            self._child_report(report_r, report_w)  # raises its OSError, if it said one
            raise
        self._child_report(report_r, report_w)
        return proc

    def _spawn_into_cgroup(self, argv: list[str], workdir: str,
                           run_as: dict[str, Any] | None) -> Spawned | None:
        """Start the job inside its cgroup with ``clone3`` (``worker/spawn.py``: no
        migration, which costs an RCU grace period); ``None`` where that cannot be done
        (the caller starts it with ``Popen`` and joins the cgroup before exec)."""
        assert self._cgroup is not None
        report_r, report_w = os.pipe()
        join = self._limits is not None and self._limits.needs_join
        setup = (functools.partial(child_setup, report_w, None, run_as, workdir, self._limits)
                 if run_as is not None or join else None)
        try:
            spawned = spawn_into_cgroup(argv, env=self.spec["env"],
                                        cgroup_dir=str(self._cgroup.path),
                                        stdout_path=str(self.dir / jd.LOG),
                                        report_w=report_w, child_setup=setup,
                                        cwd=None if run_as else workdir)
        except CloneUnavailable as e:
            log.info("job %s: %s; starting it with fork and exec", self.label, e)
            os.close(report_r)
            os.close(report_w)
            return None
        except BaseException:
            os.close(report_r)
            os.close(report_w)
            raise
        try:
            self._child_report(report_r, report_w)  # raises its OSError, if it said one
        except BaseException:
            os.waitpid(spawned.pid, 0)  # it exited 127 after saying why
            raise
        return spawned

    def _child_report(self, report_r: int, report_w: int) -> None:
        """Act on what ``child_setup`` said (``jobstart.read_report``): drop the cgroup it
        could not join; raise the ``OSError`` it failed with, if any."""
        for what, rest in read_report(report_r, report_w):
            if what == "cgroup" and self._cgroup is not None:
                log.info("job %s: could not join %s (%s); killing by process group and "
                         "descendants only", self.label, self._cgroup.path, rest)
                self._remove_cgroup()
                self._cgroup = None
            elif what == "limits":
                raise LimitError(rest)
            elif what == "error":
                raise report_error(rest)

    def _make_cgroup(self) -> JobCgroup | None:
        """The job's cgroup, or ``None`` (with one log line) where there can be none."""
        setting = str(self.spec.get("cgroup_root") or "")
        if not setting:
            return None
        try:
            cgroup = JobCgroup.create(setting, str(self.spec.get("node") or "node"),
                                      int(self.spec["job_id"]), int(self.spec.get("attempt", 1)))
        except CgroupUnavailable as e:
            log.info("job %s: no cgroup (%s); killing by process group and descendants only",
                     self.label, e)
            return None
        log.info("job %s: in cgroup %s", self.label, cgroup.path)
        return cgroup

    def _set_limits(self) -> JobLimits | None:
        """Set the job's limits on its cgroups (``spec.json``'s ``limits``, from
        ``limits.plan``); raises ``LimitError`` when one the node enforces cannot be set
        (the job does not start)."""
        found = JobLimits.set_up(self.spec.get("limits"),
                                 self._cgroup.path if self._cgroup is not None else None,
                                 node=str(self.spec.get("node") or "node"),
                                 job_id=int(self.spec["job_id"]),
                                 attempt=int(self.spec.get("attempt", 1)))
        if found is not None:
            log.info("job %s: limits set (memory %s MiB, cpus %s, %d device(s) denied; "
                     "cgroup v1: %s)", self.label, found.memory_mib or "-",
                     (self.spec.get("limits") or {}).get("cpus") or "-", len(found.denied),
                     ", ".join(map(str, found.v1_dirs.values())) or "-")
        return found

    def _remove_cgroup(self, wait_s: float = 1.0) -> None:
        """Remove the job's cgroup once it is empty (waiting up to ``wait_s``)."""
        assert self._cgroup is not None
        give_up_at = time.monotonic() + wait_s
        while not self._cgroup.remove():
            if time.monotonic() >= give_up_at:
                log.warning("job %s: cgroup %s is not empty (pids %s); leaving it",
                            self.label, self._cgroup.path, self._cgroup.pids())
                return
            time.sleep(0.02)

    # --- waiting -----------------------------------------------------------------------
    def _wait(self, tree: JobTree, deadline_s: float) -> tuple[JobState | None, int]:
        """Wait for the job; returns (``TIMEOUT``/``CANCELLED``/``None``, exit code)."""
        grace_s = default_grace_s = float(self.spec.get("kill_grace_s", 10.0))
        ending: JobState | None = None
        kill_at = 0.0
        while True:
            tree.reap()
            now = self.clock()
            if ending is None:
                if self._cancel_asked():
                    ending = JobState.CANCELLED
                    grace_s = self._cancel_grace_s(default_grace_s)
                elif now >= deadline_s:
                    ending = JobState.TIMEOUT
                elif self._fence.due():
                    # Cut off from the scheduler for the fencing time: it will run the job
                    # elsewhere (node_down_after_s); this run must be gone by then.
                    ending = JobState.NODE_FAIL
                    fence_grace = self._fence.grace_s
                    grace_s = default_grace_s if fence_grace is None else fence_grace
                if ending is not None:
                    log.info("job %s: %s: SIGTERM to all of the job's processes",
                             self.label, ending)
                    tree.signal(signal.SIGTERM)
                    kill_at = now + grace_s
            if tree.leader_code is not None and (ending is None or not tree.alive()):
                break
            if ending is not None and now >= kill_at:
                log.info("job %s: still there after %.1f s: SIGKILL", self.label, grace_s)
                break
            if ending is None:
                wake_at = min(deadline_s, now + MAX_WAIT_S)
            else:
                wake_at = min(kill_at, now + poll_s(now - (kill_at - grace_s)))
            self._sleep(max(0.0, wake_at - now))
        # Whatever the job left behind goes with it.
        tree.kill_rest()
        assert tree.leader_code is not None
        return ending, tree.leader_code


def supervise(jobdir: str) -> int:
    """Supervise the run in ``jobdir`` to its end, logging to stderr; the exit status."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s supervisor[%(process)d] %(message)s")
    return Supervisor(Path(jobdir)).run()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--serve"]:
        return forkserver.serve(supervise)
    if len(args) != 1:
        print("usage: python -m gpuq.worker.supervisor JOBDIR | --serve", file=sys.stderr)
        return 2
    return supervise(args[0])


if __name__ == "__main__":
    sys.exit(main())
