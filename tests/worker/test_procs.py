"""Telling gpuq's processes from foreign ones, with real processes."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from gpuq.worker.gpus.base import GpuProcess
from gpuq.worker.procs import (
    JobProcesses,
    belongs_to_jobs,
    foreign_processes,
    proc_command,
    proc_stat,
    proc_user,
)

#: Above the largest pid_max Linux allows (2**22): never a pid here.
INVISIBLE = 4_194_305


@pytest.fixture
def job(wait_for: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A process leading its own session, as a job does, with a child."""
    p = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & wait"], start_new_session=True)
    wait_for(lambda: proc_command(p.pid) == "/bin/sh -c sleep 30 & wait", what="exec")
    yield p
    os.killpg(p.pid, 9)
    p.wait()


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def test_stat_user_and_command(job: subprocess.Popen[bytes]) -> None:
    st = proc_stat(job.pid)
    assert st is not None and (st.ppid, st.pgid, st.sid) == (os.getpid(), job.pid, job.pid)
    assert proc_user(job.pid) == pwd.getpwuid(os.getuid()).pw_name
    assert proc_command(job.pid) == "/bin/sh -c sleep 30 & wait"
    assert proc_command(job.pid, limit=10) == "/bin/sh..."
    assert proc_stat(INVISIBLE) is None and proc_user(INVISIBLE) is None
    assert proc_command(INVISIBLE) is None


def test_processes_in_a_jobs_session_are_the_jobs(job: subprocess.Popen[bytes],
                                                  wait_for: Any) -> None:
    [child] = wait_for(lambda: children(job.pid), what="the job's child")
    jobs = JobProcesses(sessions=frozenset({job.pid}))
    assert belongs_to_jobs(job.pid, jobs) and belongs_to_jobs(child, jobs)
    assert belongs_to_jobs(child, JobProcesses()) is False
    assert belongs_to_jobs(os.getpid(), JobProcesses()), "the daemon itself is not foreign"
    assert belongs_to_jobs(INVISIBLE, jobs) is None


def test_a_job_child_that_left_the_session_is_found_through_its_supervisor(
        wait_for: Any) -> None:
    # This test process plays the supervisor; its child calls setsid (a new session).
    escaped = subprocess.Popen([sys.executable, "-c",
                                "import os, time; os.setsid(); time.sleep(30)"])
    try:
        wait_for(lambda: (st := proc_stat(escaped.pid)) and st.sid == escaped.pid,
                 what="setsid")
        assert belongs_to_jobs(escaped.pid, JobProcesses(sessions=frozenset({1234})),
                               me=-1) is False
        assert belongs_to_jobs(escaped.pid, JobProcesses(supervisors=frozenset({os.getpid()})),
                               me=-1)
    finally:
        escaped.kill()
        escaped.wait()


def test_foreign_processes(job: subprocess.Popen[bytes], wait_for: Any) -> None:
    hand_run = subprocess.Popen(["sleep", "31"])
    try:
        wait_for(lambda: proc_command(hand_run.pid) == "sleep 31", what="exec")
        on_gpu = [GpuProcess(job.pid, 100.0), GpuProcess(hand_run.pid, 2048.0),
                  GpuProcess(INVISIBLE, None)]
        jobs = JobProcesses(sessions=frozenset({job.pid}), gpus={0: [job.pid]})
        free = foreign_processes(on_gpu, jobs, held=False)
        assert [(p.pid, p.command, p.used_memory_mib) for p in free] == [
            (hand_run.pid, "sleep 31", 2048.0), (INVISIBLE, None, None)]
        assert free[0].user == pwd.getpwuid(os.getuid()).pw_name and free[1].user is None
        # On a GPU a job holds, a pid this host cannot see is taken for the job's.
        held = foreign_processes(on_gpu, jobs, held=True)
        assert [p.pid for p in held] == [hand_run.pid]
    finally:
        hand_run.kill()
        hand_run.wait()
