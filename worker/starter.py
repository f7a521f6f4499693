"""Start job supervisors for the daemon: forked by the fork server (``python -m
gpuq.worker.supervisor --serve``, ``worker.forkserver``; started once, then kept), else as
a new Python process (``python -m gpuq.worker.supervisor JOBDIR``). Either way the
supervisor gets its own session, stdin from /dev/null, ``supervisor.log`` for its output,
``/`` for its directory and only ``SUPERVISOR_ENV`` of the daemon's environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import gpuq
from gpuq.files import open_private
from gpuq.worker import jobdir as jd

log = logging.getLogger(__name__)
#: Of the daemon's environment, only these reach the supervisor (never the node token).
SUPERVISOR_ENV = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LANG", "LC_ALL", "TZ")


def supervisor_env() -> dict[str, str]:
    """The supervisor's environment: ``SUPERVISOR_ENV`` of the daemon's, with gpuq's
    source first on ``PYTHONPATH``."""
    env = {k: os.environ[k] for k in SUPERVISOR_ENV if k in os.environ}
    src = str(Path(gpuq.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


class SupervisorStarter:
    """Starts supervisors with ``python`` (the daemon's interpreter by default)."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._lock = threading.Lock()
        #: The fork server, while it runs.
        self.fork_server: subprocess.Popen[bytes] | None = None
        self._fork_server_done: weakref.finalize | None = None

    def start(self, d: Path) -> subprocess.Popen[bytes] | Forked:
        """Start the supervisor of the run in ``d``: forked by the fork server, else as a
        new Python process. Returns what tells whether it is still there (``poll()``)."""
        proc = self._fork(d)
        if proc is not None:
            return proc
        with open_private(d / jd.SUPERVISOR_LOG) as out:
            return subprocess.Popen([self.python, "-m", "gpuq.worker.supervisor", str(d)],
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    close_fds=True, cwd="/", env=supervisor_env())

    def _fork(self, d: Path) -> Forked | None:
        """Ask the fork server for a supervisor of ``d`` (starting the server first if it
        is not running); ``None`` if it cannot (the caller starts one itself)."""
        if "\n" in str(d):
            return None
        with self._lock:
            try:
                if self.fork_server is None or self.fork_server.poll() is not None:
                    self.fork_server = subprocess.Popen(
                        [self.python, "-m", "gpuq.worker.supervisor", "--serve"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
                        close_fds=True, cwd="/", env=supervisor_env())
                    self._fork_server_done = weakref.finalize(self, _stop_fork_server,
                                                              self.fork_server)
                server = self.fork_server
                assert server.stdin is not None and server.stdout is not None
                server.stdin.write(f"{d}\n".encode())
                server.stdin.flush()
                answer = server.stdout.readline().decode().strip()
                return Forked(int(answer))
            except (OSError, ValueError) as e:
                log.warning("the supervisor fork server failed (%s); starting the "
                            "supervisor as a new process", e or type(e).__name__)
                if self.fork_server is not None:
                    _stop_fork_server(self.fork_server)
                    self.fork_server = None
                return None

    def close(self) -> None:
        """Stop the fork server (the supervisors it started keep running)."""
        with self._lock:
            if self.fork_server is not None:
                _stop_fork_server(self.fork_server)
                self.fork_server = None


class Forked:
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


def _stop_fork_server(proc: subprocess.Popen[bytes]) -> None:
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
