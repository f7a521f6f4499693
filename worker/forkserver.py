"""The supervisors' fork server: ``python -m gpuq.worker.supervisor --serve``.

The daemon starts one per node, once, so that a launch forks this small, single-threaded,
already-imported process (about a millisecond) instead of starting a new Python (tens of
milliseconds). It reads one job directory per line on stdin and answers each with the new
supervisor's pid (or ``error <why>``) on stdout; it exits at EOF (when the daemon goes;
the supervisors it started keep running). The daemon's side is ``worker.starter``.

Standard library only: it runs in the supervisor's process, which must start fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

from gpuq.worker import jobdir as jd

log = logging.getLogger("gpuq.supervisor")


def serve(supervise: Callable[[str], int]) -> int:
    """Serve until EOF on stdin: fork a child per job directory read, which runs
    ``supervise(jobdir)`` as ``python -m gpuq.worker.supervisor JOBDIR`` would."""
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
            _forked_supervisor(jobdir, supervise)
        os.write(1, f"{pid}\n".encode())


def _forked_supervisor(jobdir: str, supervise: Callable[[str], int]) -> int:
    """In a child of ``serve``: become what ``python -m gpuq.worker.supervisor JOBDIR`` is (its
    own session, stdin from /dev/null, stdout and stderr to ``supervisor.log``, no other
    descriptor of the server's) and run ``supervise(jobdir)``; never returns."""
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
        code = supervise(jobdir)
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
