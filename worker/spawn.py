"""Start a job's process directly inside its cgroup (``clone3`` with ``CLONE_INTO_CGROUP``).

Moving a process into a cgroup (writing its pid to ``cgroup.procs``, what ``JobCgroup.join``
does between fork and exec) waits for an RCU grace period on most kernels: 7-20 ms per
launch on the benchmark's VM, a fifth of a job's dispatch latency (bench/dispatch.py).
``clone3`` (Linux 5.7+) can create the process inside the cgroup instead, with no
migration at all, and the job is in its cgroup from its first instruction.

Python has no ``clone3``, so ``spawn_into_cgroup`` calls it through ``ctypes`` without
releasing the GIL. The child is then a copy of the (single-threaded) supervisor that runs
a few ``os`` calls and execs: what ``subprocess.Popen`` does in C, in the same order
(signals blocked across the clone; the job's signal dispositions reset; a new session;
stdin, stdout and stderr; the account switch and workdir of ``jobstart.child_setup``;
exec along the environment's ``PATH``). A failure in the child is written to the report
pipe in ``child_setup``'s format and the child exits 127; the caller raises it as
``OSError``.

The caller must be single-threaded: raw ``clone3`` runs no fork handlers, so a lock that
another thread holds at that moment (malloc's, say) would stay held in the child, which
would hang before its exec. With other threads running, ``spawn_into_cgroup`` refuses.

``CloneUnavailable`` (no ``clone3``, as under seccomp profiles that hide it, an old kernel,
no cgroup2 directory, other threads in the caller...) means nothing was started: the
caller falls back to ``Popen`` and ``JobCgroup.join``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import threading
from collections.abc import Callable, Sequence

SYS_CLONE3 = {"x86_64": 435, "aarch64": 435, "ppc64le": 435, "s390x": 435}
CLONE_INTO_CGROUP = 0x200000000
#: ``struct clone_args`` up to ``cgroup`` (CLONE_ARGS_SIZE_VER2).
_FIELDS = ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
           "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in _FIELDS]


class CloneUnavailable(Exception):
    """``clone3`` into the cgroup is not possible here; nothing was started."""


def _syscall() -> Callable[..., int] | None:
    number = SYS_CLONE3.get(os.uname().machine)
    if number is None:
        return None
    try:
        # PyDLL: the GIL stays held across the call, so the child wakes up holding it.
        fn = ctypes.PyDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    return lambda *args: fn(ctypes.c_long(number), *args)


class Spawned:
    """What the supervisor keeps of a started job (the part of ``Popen`` it uses)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None


def spawn_into_cgroup(argv: Sequence[str], *, env: dict[str, str], cgroup_dir: str,
                      stdout_path: str, report_w: int,
                      child_setup: Callable[[], None] | None, cwd: str | None) -> Spawned:
    """Start ``argv`` in a new session inside ``cgroup_dir``; returns its pid.

    stdin is ``/dev/null``, stdout and stderr append to ``stdout_path``; ``child_setup``
    (the account switch) runs in the child before ``cwd`` is entered and ``argv`` is
    executed; failures there go to ``report_w`` (close-on-exec) as
    ``jobstart.child_setup``'s lines. Raises ``CloneUnavailable`` if it could not clone
    (nothing started)."""
    call = _syscall()
    if call is None:
        raise CloneUnavailable("clone3 is not available on this platform")
    if threading.active_count() > 1:
        raise CloneUnavailable("the caller runs other threads (clone3 is only safe from a "
                               "single-threaded process)")
    argv = [os.fsencode(a) for a in argv]
    programs = _candidates(argv[0], env)
    envb = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    try:
        cgroup_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise CloneUnavailable(f"cannot open {cgroup_dir}: {e.strerror or e}") from None
    try:
        out = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                      0o600)
    except BaseException:
        os.close(cgroup_fd)
        raise
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD,
                      cgroup=cgroup_fd)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = call(ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
        if pid == 0:  # pragma: no cover - the child (its coverage is not collected)
            _child(argv, programs, envb, null, out, report_w, child_setup, cwd, blocked)
        err = ctypes.get_errno() if pid < 0 else 0
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for fd in (cgroup_fd, out, null):
            os.close(fd)
    if pid < 0:
        raise CloneUnavailable(f"clone3: {os.strerror(err)}")
    return Spawned(pid)


def _candidates(program: bytes, env: dict[str, str]) -> list[bytes]:
    """Where ``Popen`` would look for ``program``: itself if it names a path, else each
    directory of the environment's ``PATH``."""
    if b"/" in program:
        return [program]
    return [os.path.join(os.fsencode(d), program) for d in os.get_exec_path(env)]


def _child(argv: list[bytes], programs: list[bytes], envb: dict[bytes, bytes], null: int,
           out: int, report_w: int, child_setup: Callable[[], None] | None,
           cwd: str | None, blocked: set[signal.Signals]) -> None:  # pragma: no cover
    """The cloned child: never returns."""
    try:
        # The supervisor's handlers must not run here: default dispositions (and the
        # ones Python ignores, SIGPIPE and SIGXFSZ, back to default as Popen does).
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD,
                    signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.setsid()
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        # Nothing of the supervisor's but the report pipe (closed by the exec).
        os.closerange(3, report_w)
        os.closerange(report_w + 1, 1 << 20)
        if child_setup is not None:
            child_setup()
        if cwd is not None:
            try:
                os.chdir(cwd)
            except OSError as e:
                _fail(report_w, e.errno, cwd, e.strerror)
        first: OSError | None = None
        for program in programs:
            try:
                os.execve(program, argv, envb)  # noqa: S606 - argv, never a shell
            except OSError as e:
                if first is None or (first.errno in (errno.ENOENT, errno.ENOTDIR)
                                     and e.errno not in (errno.ENOENT, errno.ENOTDIR)):
                    first = e
        assert first is not None
        _fail(report_w, first.errno, os.fsdecode(argv[0]), first.strerror)
    finally:
        os._exit(127)


def _fail(report_w: int, code: int | None, filename: str, strerror: str | None
          ) -> None:  # pragma: no cover - the child
    os.write(report_w, f"error\t{code or 0}\t{filename}\t{strerror or ''}\n".encode())
    os._exit(127)
