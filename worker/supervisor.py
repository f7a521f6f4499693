"""One supervisor process per job: ``python -m gpuq.worker.supervisor <jobdir>``.

Started detached by the daemon (its own session, stdin from /dev/null), so it outlives a
daemon restart. It starts the job in its own session (process group) in ``workdir`` with
the environment from ``spec.json``, sends stdout and stderr to ``output.log``, enforces the
time limit, and treats SIGTERM/SIGINT to itself as a cancel. It is the only writer of
``state.json`` (which records the job's pid = pgid = sid, its cgroup, and the supervisor's
own pid).

Every process of the job goes when the job ends, including those that left its process
group (``setsid``, double forks): the supervisor is a child subreaper, so the job's orphans
become its children, and where it can it puts the job in a cgroup of its own (see
``worker.cgroups``; the leader is created in it with ``clone3`` (``worker.spawn``), or
joins it before it execs where that cannot be done, so nothing forks out of it). A
cancel or the time limit sends SIGTERM to the job's process group, to every process in its
cgroup and to every live descendant of the supervisor (found in ``/proc``), and SIGKILL
(``cgroup.kill``) to what is left after the grace period; when the job's leader exits by
itself, what it left behind is killed at once. The end is recorded only once none of them
is left (or ``KILL_WAIT_S`` after the SIGKILL, for a process that does not die).

When the job runs as another account (a root daemon), the job gets what it needs as that
account: its script is copied to a directory the account owns, its output goes to a file
descriptor the supervisor opened (the state directory stays private), and it enters its
``workdir`` as that account (a job cannot start in a directory its user cannot reach,
the whole path included: it fails with exit code 126 or 127, saying so).

Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
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

from gpuq.worker import jobdir as jd
from gpuq.worker.cgroups import CgroupUnavailable, JobCgroup
from gpuq.worker.spawn import CloneUnavailable, Spawned, spawn_into_cgroup

log = logging.getLogger("gpuq.supervisor")
PR_SET_CHILD_SUBREAPER = 36
#: Upper bound on a wait, in seconds: how often the ``cancel`` file is looked at.
MAX_WAIT_S = 0.5
#: How often, in seconds, the job's processes are looked for while they are being killed
#: (descendants that are not the supervisor's children send it no SIGCHLD): at first, then
#: less and less often (up to ``MAX_WAIT_S``), as each look reads all of ``/proc``.
KILL_POLL_S = 0.05
#: After SIGKILL, how long the job's processes (other than its leader, always waited for)
#: may take to go before the end is recorded anyway, with a warning.
KILL_WAIT_S = 5.0
LOCK_TRIES = 40


def exit_code_of(status: int) -> int:
    """Shell convention: the exit status, or 128+N for a process killed by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _become_subreaper() -> bool:
    """Make orphaned descendants reparent to this process (Linux); whether it worked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _poll_s(elapsed_s: float) -> float:
    """How long to wait before looking for the job's processes again, ``elapsed_s``
    after the kill began."""
    return min(MAX_WAIT_S, KILL_POLL_S + 0.1 * max(0.0, elapsed_s))


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgid) of every live process visible in ``/proc`` (zombies left out)."""
    table: dict[int, tuple[int, int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[0] not in (b"Z", b"X"):
            table[int(name)] = (int(fields[1]), int(fields[2]))
    return table


def _descendants(table: dict[int, tuple[int, int]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return out


def _child_setup(report_fd: int, cgroup: JobCgroup | None, run_as: dict[str, Any] | None,
                 workdir: str) -> None:
    """Runs in the job's process between fork and exec (the supervisor has a single
    thread): joins the job's cgroup while still the supervisor's account, then becomes the
    job's account and enters ``workdir`` as it. What fails is written to ``report_fd``."""
    if cgroup is not None:
        try:
            cgroup.join()
        except OSError as e:  # the job runs without it; the supervisor says so
            os.write(report_fd, f"cgroup\t{e.strerror or e}\n".encode())
    if run_as is None:
        return
    try:
        os.setgroups(list(run_as.get("groups") or []))
        os.setregid(run_as["gid"], run_as["gid"])
        os.setreuid(run_as["uid"], run_as["uid"])
        # Enter the workdir as the job's user, after the switch (Popen's cwd would be
        # entered as root: a way into directories the user cannot reach, and no way
        # into root-squashed NFS homes).
        os.chdir(workdir)
    except OSError as e:
        os.write(report_fd, "error\t{}\t{}\t{}\n".format(
            e.errno or 0, e.filename or "", e.strerror or e).encode())
        raise


class Supervisor:
    def __init__(self, jobdir: Path, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.dir = jobdir
        self.clock, self.wall = clock, wall
        self.spec: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self._stop_signal = False
        self._leader = 0
        self._leader_code: int | None = None
        self._tmpdir: str | None = None
        self._cgroup: JobCgroup | None = None

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
            if not _become_subreaper():
                log.warning("job %s: cannot become a child subreaper; processes that leave "
                            "the job's process group may outlive it", self.label)
            try:
                self._supervise()
            except BaseException:
                log.exception("job %s: supervisor failed", self.label)
                if self._leader:  # never leave a job running unsupervised
                    self._signal_job(signal.SIGKILL)
                raise
            return 0
        finally:
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

    # --- the job -----------------------------------------------------------------------
    def _write(self, **fields: Any) -> None:
        self.state.update(fields)
        jd.write_json_atomic(self.dir / jd.STATE, self.state, mode=0o644)

    @property
    def label(self) -> str:
        """``<job id>.<attempt>`` for messages."""
        return f"{self.spec.get('job_id')}.{self.spec.get('attempt', 1)}"

    def _end(self, state: str, exit_code: int | None, reason: str) -> None:
        log.info("job %s: %s (%s)", self.label, state, reason)
        self._write(state=state, exit_code=exit_code, reason=reason,
                    ended_at=jd.iso_utc(self.wall()))

    def _cancel_asked(self) -> bool:
        return self._stop_signal or (self.dir / jd.CANCEL).exists()

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
            with open(self.dir / jd.LOG, "ab") as out:
                out.write(f"gpuq: not started: {spec['refused']}\n".encode())
            return self._end("FAILED", None, str(spec["refused"])[:256])
        if self._cancel_asked():
            return self._end("CANCELLED", None, "cancelled before it started")
        try:
            argv = self._argv(launch)
            proc = self._start(argv, launch["workdir"])
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            code, reason = self._start_error(e, launch)
            with open(self.dir / jd.LOG, "ab") as out:
                out.write(f"gpuq: {reason}\n".encode())
            return self._end("FAILED", code, reason)
        self._leader = proc.pid
        start_s = self.clock()
        self._write(state=jd.RUNNING, pid=proc.pid, pgid=proc.pid,
                    cgroup=str(self._cgroup.path) if self._cgroup else None,
                    started_at=jd.iso_utc(self.wall()))
        ending, code = self._wait(start_s + float(launch["time_limit_s"]))
        proc.returncode = code  # reaped here, not by Popen
        if ending == "TIMEOUT":
            self._end("TIMEOUT", code, f"time limit of {launch['time_limit_s']} s reached")
        elif ending == "CANCELLED":
            self._end("CANCELLED", code, "cancelled")
        elif code == 0:
            self._end("COMPLETED", 0, "exit code 0")
        elif code > 128:
            self._end("FAILED", code, f"killed by {_signal_name(code - 128)}")
        else:
            self._end("FAILED", code, f"exit code {code}")

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
        run_as = self.spec.get("run_as")
        if not (run_as and run_as["uid"] != os.geteuid()):
            run_as = None
        if run_as is not None:
            _check_workdir_as(run_as, workdir)  # to fail saying why
        self._cgroup = self._make_cgroup()
        if self._cgroup is not None:
            spawned = self._spawn_into_cgroup(argv, workdir, run_as)
            if spawned is not None:
                return spawned
        kwargs: dict[str, Any] = {"cwd": None if run_as else workdir}
        report_r, report_w = os.pipe()
        if run_as is not None or self._cgroup is not None:
            kwargs["preexec_fn"] = functools.partial(_child_setup, report_w, self._cgroup,
                                                     run_as, workdir)
        try:
            with open(self.dir / jd.LOG, "ab") as out:
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
        setup = (functools.partial(_child_setup, report_w, None, run_as, workdir)
                 if run_as is not None else None)
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
        """Read what ``_child_setup`` said; raise the ``OSError`` it failed with, if any."""
        os.close(report_w)
        with os.fdopen(report_r, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
        for line in lines:
            what, _, rest = line.partition("\t")
            if what == "cgroup" and self._cgroup is not None:
                log.info("job %s: could not join %s (%s); killing by process group and "
                         "descendants only", self.label, self._cgroup.path, rest)
                self._remove_cgroup()
                self._cgroup = None
            elif what == "error":
                errno_, filename, strerror = (rest.split("\t", 2) + ["", ""])[:3]
                raise OSError(int(errno_ or 0), strerror, filename or None)

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

    @staticmethod
    def _start_error(e: Exception, launch: dict[str, Any]) -> tuple[int, str]:
        code = 127 if isinstance(e, FileNotFoundError) else 126
        if not isinstance(e, OSError):
            return code, f"cannot start the job: {e}"[:256]
        if e.filename == launch["workdir"]:
            what = f"workdir {launch['workdir']}"
        elif e.filename:
            what = f"program {e.filename}"
        else:
            what = "the job"
        return code, f"cannot start {what}: {e.strerror or e}"[:256]

    # --- waiting -----------------------------------------------------------------------
    def _wait(self, deadline_s: float) -> tuple[str | None, int]:
        """Wait for the job; returns (``TIMEOUT``/``CANCELLED``/``None``, exit code)."""
        grace_s = default_grace_s = float(self.spec.get("kill_grace_s", 10.0))
        ending: str | None = None
        kill_at = 0.0
        while True:
            self._reap()
            now = self.clock()
            if ending is None:
                if self._cancel_asked():
                    ending = "CANCELLED"
                    grace_s = self._cancel_grace_s(default_grace_s)
                elif now >= deadline_s:
                    ending = "TIMEOUT"
                if ending is not None:
                    log.info("job %s: %s: SIGTERM to all of the job's processes",
                             self.label, ending)
                    self._signal_job(signal.SIGTERM)
                    kill_at = now + grace_s
            if self._leader_code is not None and (ending is None or not self._job_alive()):
                break
            if ending is not None and now >= kill_at:
                log.info("job %s: still there after %.1f s: SIGKILL", self.label, grace_s)
                break
            if ending is None:
                wake_at = min(deadline_s, now + MAX_WAIT_S)
            else:
                wake_at = min(kill_at, now + _poll_s(now - (kill_at - grace_s)))
            self._sleep(max(0.0, wake_at - now))
        # Whatever the job left behind goes with it.
        self._kill_rest()
        assert self._leader_code is not None
        return ending, self._leader_code

    def _kill_rest(self) -> None:
        """SIGKILL what is left of the job and wait until it is gone: its leader always
        (its exit status is the job's), the other processes up to ``KILL_WAIT_S``."""
        since = self.clock()
        give_up_at = since + KILL_WAIT_S
        warned = False
        while True:
            self._reap()
            left = self._job_pids()
            if (self._leader_code is not None and not left
                    and not (self._cgroup is not None and self._cgroup.populated())):
                return
            self._signal_job(signal.SIGKILL, left)
            if self.clock() >= give_up_at:
                if self._leader_code is not None:
                    log.warning("job %s: pid(s) %s still there %.0f s after SIGKILL; "
                                "recording the end anyway", self.label,
                                ", ".join(map(str, sorted(left))) or "?", KILL_WAIT_S)
                    return
                if not warned:
                    warned = True
                    log.warning("job %s: its leader (pid %d) is still there %.0f s after "
                                "SIGKILL; waiting for it", self.label, self._leader,
                                KILL_WAIT_S)
            self._sleep(_poll_s(self.clock() - since))

    def _sleep(self, timeout_s: float) -> None:
        """Sleep until a signal arrives (SIGCHLD included) or ``timeout_s`` passes."""
        select.select([self._wake_r], [], [], timeout_s)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self._leader:
                self._leader_code = exit_code_of(status)

    def _job_pids(self) -> set[int]:
        """The job's live processes: its process group, its cgroup, and every descendant
        of the supervisor (orphans reparent to it: it is a subreaper)."""
        table = _process_table()
        me = os.getpid()
        pids = _descendants(table, me)
        if self._leader:
            pids.update(pid for pid, (_, pgid) in table.items() if pgid == self._leader)
        if self._cgroup is not None:
            pids.update(pid for pid in self._cgroup.pids() if pid in table)
        pids.discard(me)
        return pids

    def _job_alive(self) -> bool:
        self._reap()
        return bool(self._job_pids()) or (self._cgroup is not None
                                          and self._cgroup.populated())

    def _signal_job(self, sig: int, pids: set[int] | None = None) -> None:
        """Send ``sig`` to the job's process group, cgroup and descendants (``pids``,
        when just looked up)."""
        if self._cgroup is not None:
            if sig == signal.SIGKILL:
                self._cgroup.kill()
            else:
                self._cgroup.signal(sig)
        if self._leader:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._leader, sig)
        for pid in self._job_pids() if pids is None else pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _check_workdir_as(run_as: dict[str, Any], workdir: str) -> None:
    """Raise the ``OSError`` that the job's account gets entering ``workdir`` (a child
    switches to the account and tries), so that a job that cannot start there fails with
    the reason rather than Popen's "Exception occurred in preexec_fn"."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.setgroups(list(run_as.get("groups") or []))
            os.setgid(run_as["gid"])
            os.setuid(run_as["uid"])
            os.chdir(workdir)
        except OSError as e:
            code = e.errno or 255
        except BaseException:
            code = 255
        os._exit(min(code, 255))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 255 or code < 0:
        raise OSError(f"could not check the workdir as {run_as.get('name')}")
    if code:
        raise OSError(code, os.strerror(code), workdir)


def _forked_supervisor(jobdir: str) -> int:
    """In a child of ``serve``: become what ``python -m gpuq.worker.supervisor JOBDIR`` is (its
    own session, stdin from /dev/null, stdout and stderr to ``supervisor.log``, no other
    descriptor of the server's) and run the supervisor."""
    code = 1
    try:
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                    signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(os.path.join(jobdir, jd.SUPERVISOR_LOG),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        _close_fds_from(3)
        code = main([jobdir])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        with contextlib.suppress(Exception):
            log.exception("supervisor for %s failed", jobdir)
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return code  # pragma: no cover - not reached


def serve() -> int:
    """``python -m gpuq.worker.supervisor --serve``: a fork server for the daemon, which
    starts one per node once, so that a launch forks this small, single-threaded,
    already-imported process (about a millisecond) instead of starting a new Python
    (tens of milliseconds). Reads one job directory per line on stdin, answers each with
    the new supervisor's pid (or ``error <why>``) on stdout; exits at EOF (when the
    daemon goes; the supervisors it started keep running, as before)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, _reap_all)  # no zombies between launches
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        _reap_all()
        if not line:
            return 0
        jobdir = line.decode(errors="replace").rstrip("\n")
        try:
            pid = os.fork()
        except OSError as e:
            os.write(1, f"error {e}\n".encode())
            continue
        if pid == 0:  # pragma: no cover - the child
            _forked_supervisor(jobdir)
        os.write(1, f"{pid}\n".encode())


def _close_fds_from(low: int) -> None:
    try:
        fds = [int(f) for f in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(low, 1024))
    for fd in fds:
        if fd >= low:
            with contextlib.suppress(OSError):
                os.close(fd)


def _reap_all(*_: object) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--serve"]:
        return serve()
    if len(args) != 1:
        print("usage: python -m gpuq.worker.supervisor JOBDIR | --serve", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s supervisor[%(process)d] %(message)s")
    return Supervisor(Path(args[0])).run()


if __name__ == "__main__":
    sys.exit(main())
