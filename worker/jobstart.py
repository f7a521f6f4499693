"""What the supervisor's start of a job does besides the fork: the child's setup between
fork and exec (its cgroup, the job's account, its workdir), the check that the account can
enter the workdir, and the reason a start failed.

Standard library only: the supervisor imports it and must start fast.
"""

from __future__ import annotations

import os
from typing import Any

from gpuq.worker.cgroups import JobCgroup
from gpuq.worker.limits import JobLimits


def child_setup(report_fd: int, cgroup: JobCgroup | None, run_as: dict[str, Any] | None,
                workdir: str, limits: JobLimits | None = None) -> None:
    """Runs in the job's process between fork and exec (the supervisor has a single
    thread): joins the job's cgroup and the cgroup v1 directories of its limits while
    still the supervisor's account, then becomes the job's account and enters ``workdir``
    as it. What fails is written to ``report_fd``, a line each, read by ``read_report``;
    a job that cannot join its limits' cgroups does not start."""
    if cgroup is not None:
        try:
            cgroup.join()
        except OSError as e:
            if limits is not None and limits.in_v2:  # its limits are there: no start
                why = e.strerror or e
                os.write(report_fd, f"limits\tcannot join its cgroup {cgroup.path}: {why}\n"
                         .encode())
                raise
            # Else the job runs without it; the supervisor says so.
            os.write(report_fd, f"cgroup\t{e.strerror or e}\n".encode())
    if limits is not None and limits.needs_join:
        try:
            limits.join()
        except OSError as e:
            os.write(report_fd, f"limits\tcannot join its cgroup {e.filename}: "
                     f"{e.strerror or e}\n".encode())
            raise
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


def read_report(report_r: int, report_w: int) -> list[tuple[str, str]]:
    """Close ``report_w`` (the child's end) and read what ``child_setup`` (or the
    ``clone3`` child of ``worker.spawn``) said on ``report_r``: (what, the rest) per line,
    ``what`` being ``cgroup``, ``limits`` or ``error``."""
    os.close(report_w)
    with os.fdopen(report_r, "rb") as f:
        lines = f.read().decode(errors="replace").splitlines()
    return [(what, rest) for what, _, rest in (line.partition("\t") for line in lines)]


def report_error(rest: str) -> OSError:
    """The ``OSError`` an ``error`` line of the report says the child failed with."""
    errno_, filename, strerror = (rest.split("\t", 2) + ["", ""])[:3]
    return OSError(int(errno_ or 0), strerror, filename or None)


def check_workdir_as(run_as: dict[str, Any], workdir: str) -> None:
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


def start_error(e: Exception, launch: dict[str, Any]) -> tuple[int, str]:
    """The exit code (127: not found, else 126, as a shell's) and the reason recorded
    for a job that could not be started because of ``e``."""
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
