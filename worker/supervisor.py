"""One supervisor process per job: ``python -m worker.supervisor <jobdir>``.

Started detached by the daemon (its own session, stdin from /dev/null), so it outlives a
daemon restart. It starts the job in its own session (process group) in ``workdir`` with
the environment from ``spec.json``, sends stdout and stderr to ``output.log``, enforces the
time limit, and treats SIGTERM/SIGINT to itself as a cancel: SIGTERM to the job's whole
process group, SIGKILL after the grace period. It is the only writer of ``state.json``
(which records the job's pid = pgid = sid, and the supervisor's own pid).

When the job runs as another account (a root daemon), the job gets what it needs as that
account: its script is copied to a directory the account owns, its output goes to a file
descriptor the supervisor opened (the state directory stays private), and it enters its
``workdir`` as that account (a job cannot start in a directory its user cannot reach,
the whole path included: it fails with exit code 126 or 127, saying so).

It is also a child subreaper, so the job's orphaned grandchildren are reaped here and
"is anything of the job left?" has an exact answer. Standard library only.
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

from worker import jobdir as jd

log = logging.getLogger("gpuq.supervisor")
PR_SET_CHILD_SUBREAPER = 36
#: Upper bound on a wait, in seconds: how often the ``cancel`` file is looked at.
MAX_WAIT_S = 0.5
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


def _become_subreaper() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


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
            _become_subreaper()
            try:
                self._supervise()
            except BaseException:
                log.exception("job %s: supervisor failed", self.label)
                if self._leader:  # never leave a job running unsupervised
                    self._signal_group(signal.SIGKILL)
                raise
            return 0
        finally:
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

    def _supervise(self) -> None:
        spec, launch = self.spec, self.spec["launch"]
        self.state = {"job_id": spec["job_id"], "attempt": spec.get("attempt", 1),
                      "state": None, "pid": None, "pgid": None,
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

    def _start(self, argv: list[str], workdir: str) -> subprocess.Popen[bytes]:
        kwargs: dict[str, Any] = {"cwd": workdir}
        run_as = self.spec.get("run_as")
        if run_as and run_as["uid"] != os.geteuid():
            _check_workdir_as(run_as, workdir)  # to fail saying why
            # Enter the workdir as the job's user, after the switch (Popen's cwd would be
            # entered as root: a way into directories the user cannot reach, and no way
            # into root-squashed NFS homes). The supervisor has a single thread.
            kwargs = {"user": run_as["uid"], "group": run_as["gid"],
                      "extra_groups": list(run_as.get("groups") or []),
                      "preexec_fn": functools.partial(os.chdir, workdir)}
        with open(self.dir / jd.LOG, "ab") as out:
            return subprocess.Popen(argv, env=self.spec["env"], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, **kwargs)

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
        grace_s = float(self.spec.get("kill_grace_s", 10.0))
        ending: str | None = None
        kill_at: float | None = None
        killed = False
        while True:
            self._reap()
            now = self.clock()
            if ending is None:
                if self._cancel_asked():
                    ending = "CANCELLED"
                elif now >= deadline_s:
                    ending = "TIMEOUT"
                if ending is not None:
                    log.info("job %s: %s: SIGTERM to the process group", self.label, ending)
                    self._signal_group(signal.SIGTERM)
                    kill_at = now + grace_s
            if kill_at is not None and not killed and now >= kill_at:
                log.info("job %s: still there after %.1f s: SIGKILL", self.label, grace_s)
                self._signal_group(signal.SIGKILL)
                killed = True
            done = ending is None or killed or not self._group_alive()
            if self._leader_code is not None and done:
                break
            wake_at = min(t for t in (deadline_s if ending is None else None,
                                      None if killed else kill_at, now + MAX_WAIT_S)
                          if t is not None)
            self._sleep(max(0.0, wake_at - now))
        # Whatever the job left behind in its group goes with it.
        self._signal_group(signal.SIGKILL)
        self._reap()
        assert self._leader_code is not None
        return ending, self._leader_code

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

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._leader, sig)

    def _group_alive(self) -> bool:
        self._reap()
        try:
            os.killpg(self._leader, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m worker.supervisor JOBDIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s supervisor[%(process)d] %(message)s")
    return Supervisor(Path(args[0])).run()


if __name__ == "__main__":
    sys.exit(main())
