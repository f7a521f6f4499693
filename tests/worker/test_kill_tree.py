"""A job's processes that left its process group (``setsid``, double forks) die with it:
found as the supervisor's descendants (it is a subreaper) and, where cgroup v2 is writable
(root), in the job's own cgroup. Real processes throughout."""

from __future__ import annotations

import functools
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuq.config import Settings
from gpuq.worker import cgroups
from gpuq.worker import jobdir as jd
from gpuq.worker.cgroups import CgroupUnavailable, JobCgroup
from gpuq.worker.client import NodeClient
from gpuq.worker.daemon import Daemon
from gpuq.worker.gpus import open_backend
from gpuq.worker.jobenv import daemon_identity
from gpuq.worker.jobs import JobManager
from gpuq.worker.procs import proc_stat
from gpuq.worker.supervisor import Supervisor

from .test_job_manager import launch, poll_until_done
from .test_supervisor import gone, make_jobdir, running, start

#: Forks, lets the child start its own process group, forks again and exits: the
#: grandchild (``sleep``) is orphaned outside the job's process group.
DOUBLE_FORK = textwrap.dedent("""
    import os
    if os.fork() == 0:
        os.setpgid(0, 0)
        if os.fork() == 0:
            with open("forked.tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename("forked.tmp", "forked.pid")
            os.execvp("sleep", ["sleep", "300"])
        os._exit(0)
    os.wait()
""")
#: A job whose processes escape its process group two ways, one of them ignoring SIGTERM,
#: and that then waits.
ESCAPING_JOB = (
    "setsid sh -c 'trap \"\" TERM; echo $$ > setsid.tmp; mv setsid.tmp setsid.pid; "
    "exec sleep 300' &\n"
    f"{sys.executable} -c '{DOUBLE_FORK}'\n"
    "sleep 300 &\n"
    "wait\n")


def pid_file(d: Path, name: str) -> int:
    path = d / name
    return int(path.read_text()) if path.exists() else 0


def escaped_pids(workdir: Path, job_pid: int, wait_for: Any) -> list[int]:
    """The job's two escaped processes, once they are there (checked to be outside the
    job's process group)."""
    pids = [wait_for(functools.partial(pid_file, workdir, name), what=name)
            for name in ("setsid.pid", "forked.pid")]
    for pid in pids:
        st = proc_stat(pid)
        assert st is not None and st.pgid != job_pid, "it should have left the job's group"
    return pids


@pytest.fixture
def cgroup_node() -> Iterator[tuple[str, str]]:
    """(cgroup root, a node name no other test uses); skips without writable cgroup2."""
    node = f"test-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        root = cgroups.prepare_node("auto", node)
    except CgroupUnavailable as e:
        pytest.skip(f"cgroup v2 is not writable here (needs root and a cgroup2 mount): {e}")
    yield str(root), node
    d = cgroups.node_dir(root, node)
    for child in (c for c in d.iterdir() if c.is_dir()):  # what a failed test left
        cg = JobCgroup(child)
        cg.kill()
        deadline = time.monotonic() + 2
        while not cg.remove() and time.monotonic() < deadline:
            time.sleep(0.02)
    d.rmdir()


@pytest.fixture(params=["cgroup", "no-cgroup"])
def mode(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The spec fields for a job with its cgroup, or with cgroups off."""
    if request.param == "no-cgroup":
        return {"cgroup_root": "", "node": "n1"}
    root, node = request.getfixturevalue("cgroup_node")
    return {"cgroup_root": root, "node": node}


def job_cgroup(state: dict[str, Any], spec_extra: dict[str, Any]) -> JobCgroup | None:
    if not spec_extra["cgroup_root"]:
        assert state["cgroup"] is None
        return None
    path = Path(spec_extra["cgroup_root"]) / "gpuq" / spec_extra["node"] / "job-7.1"
    assert state["cgroup"] == str(path)
    return JobCgroup(path)


def final(d: Path, wait_for: Any) -> dict[str, Any]:
    return wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] in jd.FINAL and s,
                    what="the end")


def test_cancel_kills_processes_that_left_the_group(tmp_path: Path, wait_for: Any,
                                                    mode: dict[str, Any]) -> None:
    d = make_jobdir(tmp_path, script=ESCAPING_JOB, kill_grace_s=0.5, extra=mode)
    p = start(d)
    s = running(d, wait_for)
    escaped = escaped_pids(tmp_path, s["pid"], wait_for)
    cg = job_cgroup(s, mode)
    if cg is not None:
        assert {s["pid"], *escaped} <= set(cg.pids())
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    s = final(d, wait_for)
    # Recorded only once they are gone (the one ignoring SIGTERM needed the SIGKILL).
    assert all(gone(pid) for pid in escaped)
    assert (s["state"], s["exit_code"], s["reason"]) == ("CANCELLED", 143, "cancelled")
    assert p.wait(4) == 0
    assert time.monotonic() - t0 < 3
    if cg is not None:
        assert not cg.path.exists()


def test_time_limit_kills_processes_that_left_the_group(tmp_path: Path, wait_for: Any,
                                                        mode: dict[str, Any]) -> None:
    d = make_jobdir(tmp_path, script=ESCAPING_JOB, time_limit_s=1, kill_grace_s=0.3,
                    extra=mode)
    p = start(d)
    s = running(d, wait_for)
    escaped = escaped_pids(tmp_path, s["pid"], wait_for)
    cg = job_cgroup(s, mode)
    s = final(d, wait_for)
    assert all(gone(pid) for pid in escaped)
    assert (s["state"], s["exit_code"]) == ("TIMEOUT", 143)
    assert p.wait(4) == 0
    if cg is not None:
        assert not cg.path.exists()


def test_what_a_finished_job_left_behind_is_killed(tmp_path: Path, wait_for: Any,
                                                   mode: dict[str, Any]) -> None:
    d = make_jobdir(tmp_path, extra=mode, script=(
        "setsid sh -c 'trap \"\" TERM; echo $$ > setsid.tmp; mv setsid.tmp setsid.pid; "
        "exec sleep 300' &\n"
        "while [ ! -s setsid.pid ]; do sleep 0.01; done\n"
        f"{sys.executable} -c '{DOUBLE_FORK}'\n"
        "while [ ! -s forked.pid ]; do sleep 0.01; done\n"))
    p = start(d)
    s = final(d, wait_for)
    escaped = [pid_file(tmp_path, "setsid.pid"), pid_file(tmp_path, "forked.pid")]
    assert all(escaped) and all(gone(pid) for pid in escaped)
    assert (s["state"], s["exit_code"]) == ("COMPLETED", 0)
    assert p.wait(4) == 0
    if mode["cgroup_root"]:
        assert s["cgroup"] and not Path(s["cgroup"]).exists()


def test_job_cgroup_holds_the_jobs_processes_while_it_runs(
        tmp_path: Path, wait_for: Any, cgroup_node: tuple[str, str]) -> None:
    root, node = cgroup_node
    d = make_jobdir(tmp_path, script=ESCAPING_JOB, extra={"cgroup_root": root, "node": node})
    p = start(d)
    s = running(d, wait_for)
    escaped = escaped_pids(tmp_path, s["pid"], wait_for)
    path = Path(root) / "gpuq" / node / "job-7.1"
    assert s["cgroup"] == str(path)
    procs = {int(x) for x in (path / "cgroup.procs").read_text().split()}
    assert {s["pid"], *escaped} <= procs
    assert p.pid not in procs, "the supervisor itself stays out of the job's cgroup"
    for pid in (s["pid"], *escaped):
        with open(f"/proc/{pid}/cgroup") as f:
            assert f"0::/{path.relative_to(root).as_posix()}" in f.read().splitlines()
    p.send_signal(signal.SIGTERM)
    assert p.wait(4) == 0
    assert not path.exists()


#: The supervisor as ``python -m gpuq.worker.supervisor`` runs it, with ``clone3`` unavailable
#: (as under a seccomp profile that hides it): the job joins its cgroup before exec.
WITHOUT_CLONE3 = ("import sys, gpuq.worker.spawn; gpuq.worker.spawn.SYS_CLONE3.clear(); "
                  "from gpuq.worker.supervisor import main; sys.exit(main(sys.argv[1:]))")
NOBODY = {"name": "nobody", "uid": 65534, "gid": 65534, "groups": []}


def supervise(d: Path, how: str) -> subprocess.CompletedProcess[str]:
    """Run the supervisor of ``d`` to its end, with ``clone3`` or without (``join``)."""
    argv = ["-m", "gpuq.worker.supervisor"] if how == "clone3" else ["-c", WITHOUT_CLONE3]
    p = subprocess.run([sys.executable, *argv, str(d)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=4)
    assert p.returncode == 0, p.stderr
    return p


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
@pytest.mark.parametrize("how", ["clone3", "join"])
def test_a_job_run_as_another_account_is_in_its_cgroup_from_the_start(
        tmp_path: Path, cgroup_node: tuple[str, str], how: str) -> None:
    root, node = cgroup_node
    d = make_jobdir(tmp_path, workdir="/", command=["/bin/sh", "-c", "id -u; pwd; "
                                                    "cat /proc/self/cgroup"],
                    extra={"cgroup_root": root, "node": node, "run_as": NOBODY})
    p = supervise(d, how)
    s = jd.read_json(d / jd.STATE)
    assert s is not None and s["state"] == "COMPLETED"
    uid, cwd, *cgroup_lines = (d / jd.LOG).read_text().splitlines()
    assert (uid, cwd) == ("65534", "/")
    assert f"0::/gpuq/{node}/job-7.1" in cgroup_lines
    assert not Path(s["cgroup"]).exists()
    fallback = "clone3 is not available on this platform; starting it with fork and exec"
    assert (fallback in p.stderr) is (how == "join"), p.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
@pytest.mark.parametrize("how", ["clone3", "join"])
def test_a_workdir_the_account_cannot_enter_fails_the_job_saying_so(
        tmp_path: Path, cgroup_node: tuple[str, str], how: str) -> None:
    root, node = cgroup_node
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    d = make_jobdir(tmp_path, workdir=str(private), command=["true"],
                    extra={"cgroup_root": root, "node": node, "run_as": NOBODY})
    supervise(d, how)
    s = jd.read_json(d / jd.STATE)
    assert s is not None and s["state"] == "FAILED", s
    assert s["exit_code"] in (126, 127) and str(private) in s["reason"], s
    assert not Path(s["cgroup"] or "/nonexistent-cgroup").exists()


def test_a_cgroup_that_exists_already_is_not_shared(tmp_path: Path,
                                                    cgroup_node: tuple[str, str]) -> None:
    root, node = cgroup_node
    (Path(root) / "gpuq" / node / "job-7.1").mkdir()  # someone else's
    d = make_jobdir(tmp_path, command=["true"], extra={"cgroup_root": root, "node": node})
    p = subprocess.run([sys.executable, "-m", "gpuq.worker.supervisor", str(d)],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=4)
    assert p.returncode == 0
    s = jd.read_json(d / jd.STATE)
    assert s is not None and (s["state"], s["cgroup"]) == ("COMPLETED", None)
    [line] = [x for x in p.stderr.splitlines() if "cgroup" in x]
    assert "no cgroup" in line and "exists already" in line


# --- through the JobManager (the daemon's side) -------------------------------------------
@pytest.fixture
def api(transport: httpx.MockTransport, token: str) -> Iterator[NodeClient]:
    c = NodeClient("http://sched", "n1", token, transport=transport, retries=0)
    yield c
    c.close()


def manager_for(state: Path, api: NodeClient, root: str, node: str) -> JobManager:
    return JobManager(state_dir=state, node=node, api=api, kill_grace_s=0.5,
                      identity=lambda user: daemon_identity(), cgroup_root=root)


def test_readopted_supervisor_still_kills_by_its_cgroup(
        tmp_path: Path, server: Any, api: NodeClient, make_spec: Any, wait_for: Any,
        cgroup_node: tuple[str, str]) -> None:
    root, node = cgroup_node
    first = manager_for(tmp_path / "s", api, root, node)
    assert first.cgroup_root == root
    d = launch(server, first, make_spec(job_id=7, script=ESCAPING_JOB, workdir=str(tmp_path)))
    s = running(d, wait_for)
    escaped = escaped_pids(tmp_path, s["pid"], wait_for)
    path = Path(s["cgroup"])
    assert path == Path(root) / "gpuq" / node / "job-7.1" and set(escaped) <= {
        int(x) for x in (path / "cgroup.procs").read_text().split()}
    again = manager_for(tmp_path / "s", api, root, node)  # the daemon restarted
    assert again.kill(7, 1)
    poll_until_done(again, 7, wait_for)
    assert server.states(7) == ["RUNNING", "CANCELLED"]
    assert all(gone(pid) for pid in escaped) and not path.exists()


def test_a_dead_supervisors_job_is_killed_by_its_cgroup(
        tmp_path: Path, server: Any, api: NodeClient, make_spec: Any, wait_for: Any,
        cgroup_node: tuple[str, str]) -> None:
    root, node = cgroup_node
    m = manager_for(tmp_path / "s", api, root, node)
    d = launch(server, m, make_spec(job_id=7, script=ESCAPING_JOB, workdir=str(tmp_path)))
    s = running(d, wait_for)
    escaped = escaped_pids(tmp_path, s["pid"], wait_for)
    os.kill(s["supervisor_pid"], signal.SIGKILL)  # nobody is left to kill the job
    wait_for(lambda: not jd.supervisor_alive(d), what="the supervisor gone")
    poll_until_done(m, 7, wait_for)
    assert server.states(7)[-1] == "FAILED"
    wait_for(lambda: all(gone(pid) for pid in escaped), what="the escaped processes gone")
    assert not Path(s["cgroup"]).exists()


def test_cgroups_off_or_unavailable(tmp_path: Path, api: NodeClient) -> None:
    assert manager_for(tmp_path / "a", api, "", "n1").cgroup_root == ""
    assert manager_for(tmp_path / "b", api, str(tmp_path), "n1").cgroup_root == ""


def test_the_daemon_passes_the_setting_on(tmp_path: Path, api: NodeClient,
                                          cgroup_node: tuple[str, str]) -> None:
    root, node = cgroup_node
    assert Settings.model_fields["worker_cgroup_root"].default == "auto"
    conf = Settings(data_dir=tmp_path / "data", node_name=node, simulate_gpus="1xT4-16GB",
                    worker_cgroup_root="auto")
    daemon = Daemon(conf, open_backend(conf), api, identity=lambda user: daemon_identity())
    assert daemon.manager.cgroup_root == root


# --- worker.cgroups ------------------------------------------------------------------------
def test_resolve_root_says_why_not(tmp_path: Path) -> None:
    with pytest.raises(CgroupUnavailable, match="off"):
        cgroups.resolve_root("")
    with pytest.raises(CgroupUnavailable, match="not a cgroup2 directory"):
        cgroups.resolve_root(str(tmp_path))


def test_cgroup2_mounts_and_names(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"
                      "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
                      "cgroup2 /odd\\040place cgroup2 rw 0 0\n")
    assert cgroups.cgroup2_mounts(str(mounts)) == ["/sys/fs/cgroup/unified", "/odd place"]
    assert cgroups.safe_name("gpu-01.lab") == "gpu-01.lab"
    assert cgroups.safe_name("../a/b c") == "_a_b_c"
    assert cgroups.safe_name("cgroup.procs") == "_cgroup.procs"
    assert cgroups.job_name(7, 2) == "job-7.2"


def test_job_cgroup_lifecycle(cgroup_node: tuple[str, str]) -> None:
    root, node = cgroup_node
    cg = JobCgroup.create(root, node, 9, 1)
    assert cg.path == Path(root) / "gpuq" / node / "job-9.1"
    assert cgroups.looks_like_job_cgroup(cg.path)
    with pytest.raises(CgroupUnavailable, match="exists already"):
        JobCgroup.create(root, node, 9, 1)
    assert cg.pids() == [] and not cg.populated() and cg.remove()
    assert not cg.path.exists() and cg.remove()


def test_what_the_jobs_process_says_before_exec(tmp_path: Path) -> None:
    """A cgroup the job could not join is dropped (the job runs without it); a failed
    switch to the job's account comes back as its ``OSError``."""

    class Stub:
        path = tmp_path / "job-7.1"
        removed = False

        def remove(self) -> bool:
            self.removed = True
            return True

    sup = Supervisor(tmp_path)
    sup.spec = {"job_id": 7, "attempt": 1}
    stub = Stub()
    sup._cgroup = stub  # type: ignore[assignment]
    r, w = os.pipe()
    os.write(w, b"cgroup\tPermission denied\n")
    sup._child_report(r, w)
    assert sup._cgroup is None and stub.removed
    r, w = os.pipe()
    os.write(w, b"error\t13\t/home/x\tPermission denied\n")
    with pytest.raises(PermissionError) as e:
        sup._child_report(r, w)
    assert (e.value.filename, e.value.strerror) == ("/home/x", "Permission denied")
    r, w = os.pipe()
    sup._child_report(r, w)  # nothing said: nothing to do
