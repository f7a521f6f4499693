"""Job limits (``worker.limits``, ``worker.bpf``): memory, CPUs and the GPU fence, set on
the job's cgroups by its supervisor and enforced by the kernel. Real supervisors, real
cgroups and real device nodes where this machine has them (root, cgroup v2 and/or v1);
each test says what it lacks when it skips."""

from __future__ import annotations

import os
import secrets
import stat
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuq.worker import bpf, cgroups, limits
from gpuq.worker import jobdir as jd
from gpuq.worker.cgroups import CgroupUnavailable, JobCgroup
from gpuq.worker.client import NodeClient
from gpuq.worker.gpus.sim import SimulatedBackend
from gpuq.worker.jobenv import daemon_identity
from gpuq.worker.jobs import JobManager
from gpuq.worker.jobstart import child_setup, read_report
from gpuq.worker.limits import BPF, CPU, DEVICES, MEMORY, V2, Enforcement, JobLimits, LimitError

from .test_supervisor import make_jobdir, run, running, start

#: The NVIDIA driver's character major: the simulated GPUs' device nodes use it too.
NVIDIA_MAJOR = 195


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def api(transport: httpx.MockTransport, token: str) -> Iterator[NodeClient]:
    c = NodeClient("http://sched", "n1", token, transport=transport, retries=0)
    yield c
    c.close()


def v1_mount(what: str) -> str | None:
    return limits.v1_mounts().get(what)


@pytest.fixture
def node() -> Iterator[str]:
    """A node name no other test uses; its cgroup directories (v2 and v1) go after."""
    name = f"lim-{os.getpid()}-{secrets.token_hex(4)}"
    yield name
    dirs = [Path(m) / cgroups.TOP / name for m in set(limits.v1_mounts().values())]
    for candidate in cgroups.AUTO_CANDIDATES:
        dirs.append(Path(candidate) / cgroups.TOP / name)
    for d in dirs:
        if not d.is_dir():
            continue
        for child in (c for c in d.iterdir() if c.is_dir()):  # what a failed test left
            JobCgroup(child).kill()
            deadline = time.monotonic() + 2
            while not limits.remove_dir(child) and time.monotonic() < deadline:
                time.sleep(0.02)
        limits.remove_dir(d)


def v2_root(node: str) -> Path:
    try:
        return cgroups.prepare_node("auto", node)
    except CgroupUnavailable as e:
        pytest.skip(f"no writable cgroup2 here (needs root and a cgroup2 mount): {e}")


def enforcement_by(node: str, what: str, how: str) -> Enforcement:
    """An Enforcement that enforces ``what`` ``how`` (``v2``, ``bpf`` or ``v1``) only;
    skips where this machine cannot."""
    if how == "v1":
        mount = v1_mount(what)
        if mount is None:
            pytest.skip(f"no cgroup v1 {what} hierarchy mounted here")
        problem = limits.prepare_v1(mount, node, what)
        if problem is not None:
            pytest.skip(f"cgroup v1 {what} is not usable here: {problem}")
        return Enforcement({what: mount})
    root = v2_root(node)
    if how == BPF:
        problem = bpf.probe(str(cgroups.node_dir(root, node)))
    else:
        problem = limits.enable_v2(root, node, what)
    if problem is not None:
        pytest.skip(f"cgroup v2 {what} ({how}) is not available here: {problem}")
    return Enforcement({what: how})


def spec_extra(node: str, enforcement: Enforcement, *, memory_mib: int = 0, cpus: int = 0,
               deny: list[limits.DenyEntry] | None = None) -> dict[str, Any]:
    """The spec.json fields of a job with these limits (what ``JobManager.launch`` writes)."""
    root = ""
    with_v2 = any(h in (V2, BPF) for h in enforcement.how.values())
    if with_v2:
        root = str(v2_root(node))
    return {"node": node, "cgroup_root": root,
            "limits": limits.plan(enforcement, memory_mib=memory_mib, cpus=cpus,
                                  deny=deny or [])}


@pytest.fixture
def gpu_nodes(tmp_path: Path) -> Path:
    """``nvidia0`` and ``nvidia1``: character devices 195:0 and 195:1 (no driver behind
    them here: opening one that the fence allows fails with ENXIO)."""
    if os.geteuid() != 0:
        pytest.skip("making device nodes (mknod) needs root")
    d = tmp_path / "dev"
    d.mkdir()
    for i in range(2):
        try:
            os.mknod(d / f"nvidia{i}", 0o666 | stat.S_IFCHR, os.makedev(NVIDIA_MAJOR, i))
        except PermissionError as e:
            pytest.skip(f"cannot make device nodes here: {e}")
    return d


#: Unsets CUDA_VISIBLE_DEVICES, then tries to open each device node given in argv:
#: prints ``<path> ok|<errno name>``.
OPEN_DEVICES = textwrap.dedent("""
    import errno, os, sys
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    for path in sys.argv[1:]:
        try:
            os.close(os.open(path, os.O_RDWR))
            print(path, "ok")
        except OSError as e:
            print(path, errno.errorcode.get(e.errno, e.errno))
""")


def opened(d: Path) -> dict[str, str]:
    out = {}
    for line in (d / jd.LOG).read_text().splitlines():
        path, _, result = line.rpartition(" ")
        out[Path(path).name] = result
    return out


# --- what the node can enforce -----------------------------------------------------------


def test_summary_says_what_is_enforced_how_and_what_not_and_why() -> None:
    everything = Enforcement({MEMORY: "/sys/fs/cgroup/memory", CPU: "/sys/fs/cgroup/cpu",
                              DEVICES: BPF})
    assert everything.summary() == \
        "memory,cpu,devices (cgroup v1 memory,cpu; cgroup v2 BPF devices)"
    assert Enforcement({MEMORY: V2, CPU: V2, DEVICES: BPF}).summary() == \
        "memory,cpu,devices (cgroup v2 memory,cpu; cgroup v2 BPF devices)"
    partial = everything.without(DEVICES, "no device node for GPU(s) 0,1")
    assert partial.summary() == ("memory,cpu (cgroup v1 memory,cpu); not devices: no device "
                                 "node for GPU(s) 0,1")
    off = limits.probe("", "n1")
    assert off.how == {} and off.summary() == \
        "none: job cgroups are off (worker_cgroup_root is empty)"
    mixed = Enforcement({}, {MEMORY: "a", CPU: "a", DEVICES: "b"})
    assert mixed.summary() == "none: memory,cpu: a; devices: b"
    assert len(Enforcement({}, {MEMORY: "x" * 400}).summary()) == limits.SUMMARY_CHARS


def test_not_writable_cgroups_enforce_nothing_and_say_why(tmp_path: Path) -> None:
    # A cgroup2 root that is not one, and no cgroup v1 hierarchy.
    found = limits.probe(str(tmp_path), "n1", v1={})
    assert found.how == {}
    assert found.summary() == f"none: worker_cgroup_root {tmp_path} is not a cgroup2 directory"
    # A v1 hierarchy that cannot be used is said too.
    found = limits.probe(str(tmp_path), "n1", v1={MEMORY: str(tmp_path / "nope" / "memory")})
    assert MEMORY not in found.how
    assert "has no memory.limit_in_bytes" in found.why_not[MEMORY]


def test_probe_on_this_machine(node: str) -> None:
    """Whatever this kernel offers is found, and each limit not enforced says why."""
    found = limits.probe("auto", node)
    assert set(found.how) | set(found.why_not) == {MEMORY, CPU, DEVICES}
    assert not set(found.how) & set(found.why_not)
    for how in found.how.values():
        assert how in (V2, BPF) or Path(how, cgroups.TOP, node).is_dir()
    print(found.summary())


def test_deny_list_is_the_device_nodes_of_the_gpus_not_given(gpu_nodes: Path,
                                                             tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    devices = {0: (str(gpu_nodes / "nvidia0"),), 1: (str(gpu_nodes / "nvidia1"),),
               2: (str(tmp_path / "plain"), str(tmp_path / "missing"))}
    assert limits.deny_list(devices, [1]) == [("c", NVIDIA_MAJOR, 0, str(gpu_nodes / "nvidia0"))]
    assert [d[2] for d in limits.deny_list(devices, [])] == [0, 1]
    assert limits.deny_list(devices, [0, 1, 2]) == []
    plan = limits.plan(Enforcement({MEMORY: V2}), memory_mib=10, cpus=2,
                       deny=limits.deny_list(devices, [1]))
    assert plan == {"memory_mib": 10, "cpus": 0, "deny": [], "how": {MEMORY: V2}}


# --- cgroup v2 files (a made-up directory: the files as the kernel has them) ---------------


def test_v2_limits_written_and_oom_kills_read(tmp_path: Path) -> None:
    cg = tmp_path / "job-7.1"
    cg.mkdir()
    for name in ("memory.max", "memory.swap.max", "cpu.max"):
        (cg / name).write_text("max\n")
    (cg / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n"
                                      "oom_group_kill 0\n")
    lim = JobLimits.set_up({"memory_mib": 10, "cpus": 2, "deny": [],
                            "how": {MEMORY: V2, CPU: V2}}, cg, node="n", job_id=7, attempt=1)
    assert lim is not None and not lim.needs_join
    assert (cg / "memory.max").read_text() == str(10 * 1024 * 1024)
    assert (cg / "memory.swap.max").read_text() == "0"
    assert (cg / "cpu.max").read_text() == "200000 100000"
    assert lim.oom_kills(0) == 2


def test_v1_oom_without_a_counter_is_a_sigkill_after_the_limit_was_hit(tmp_path: Path) -> None:
    lim = JobLimits(10, None)
    lim.memory_at = tmp_path
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    (tmp_path / "memory.failcnt").write_text("5\n")
    assert lim.oom_kills(137) == 1
    assert lim.oom_kills(1) == 0
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    assert lim.oom_kills(137) == 0


def test_nothing_to_set_is_no_limits(tmp_path: Path) -> None:
    assert JobLimits.set_up(None, None, node="n", job_id=1, attempt=1) is None
    assert JobLimits.set_up({"memory_mib": 0, "cpus": 0, "deny": [], "how": {MEMORY: V2}},
                            tmp_path, node="n", job_id=1, attempt=1) is None
    # Asked for, but not enforced on this node: none either.
    assert JobLimits.set_up({"memory_mib": 10, "cpus": 1, "deny": [], "how": {}},
                            tmp_path, node="n", job_id=1, attempt=1) is None


def test_a_limit_that_cannot_be_set_says_which_and_why(tmp_path: Path) -> None:
    with pytest.raises(LimitError, match="cannot set its memory limit: the job has no cgroup"):
        JobLimits.set_up({"memory_mib": 10, "how": {MEMORY: V2}}, None, node="n", job_id=1,
                         attempt=1)
    with pytest.raises(LimitError, match="cannot set its cpu limit: No such file"):
        JobLimits.set_up({"cpus": 1, "how": {CPU: str(tmp_path / "gone")}}, None, node="n",
                         job_id=1, attempt=1)


def test_a_job_that_cannot_join_its_limits_cgroups_does_not_start(tmp_path: Path) -> None:
    """Between fork and exec (``jobstart.child_setup``): the failure is reported and the
    child goes no further (it would run unlimited)."""
    lim = JobLimits(10, None)
    lim.v1_dirs["/x"] = tmp_path / "gone"
    r, w = os.pipe()
    with pytest.raises(OSError):
        child_setup(w, None, None, str(tmp_path), lim)
    ((what, rest),) = read_report(r, w)
    assert what == "limits" and rest.startswith(f"cannot join its cgroup {tmp_path}/gone: ")
    # Its cgroup2 directory too, where a limit is set in it.
    lim = JobLimits(10, tmp_path)
    lim.in_v2 = True
    r, w = os.pipe()
    with pytest.raises(OSError):
        child_setup(w, JobCgroup(tmp_path / "gone"), None, str(tmp_path), lim)
    assert [what for what, _ in read_report(r, w)] == ["limits"]


# --- real supervisors, real cgroups ---------------------------------------------------------

#: Allocates about 100 MB and touches it (python's bytearray is zeroed).
ALLOCATE = [sys.executable, "-c",
            "print('allocating', flush=True); b = bytearray(100 * 1024 * 1024); print('done')"]


@pytest.mark.parametrize("how", ["v1", V2])
def test_a_job_over_its_memory_limit_ends_out_of_memory(tmp_path: Path, node: str,
                                                        how: str) -> None:
    extra = spec_extra(node, enforcement_by(node, MEMORY, how), memory_mib=10)
    d = make_jobdir(tmp_path, command=ALLOCATE, extra=extra)
    s = run(d, timeout_s=15)
    reason = ("out of memory: the job's cgroup hit its 10 MiB limit (--mem); the kernel "
              "killed 1 process")
    assert (s["state"], s["exit_code"], s["reason"]) == ("OUT_OF_MEMORY", 137, reason), s
    out = (d / jd.LOG).read_text()
    assert "allocating" in out and "done" not in out
    assert f"gpuq: {reason}" in out
    # Its cgroups went with it.
    assert not any(Path(p).exists() for p in s["limit_cgroups"])


@pytest.mark.parametrize("how", ["v1", V2])
def test_a_job_under_its_memory_limit_completes(tmp_path: Path, node: str, how: str) -> None:
    extra = spec_extra(node, enforcement_by(node, MEMORY, how), memory_mib=200)
    s = run(make_jobdir(tmp_path, command=ALLOCATE, extra=extra), timeout_s=15)
    assert (s["state"], s["exit_code"]) == ("COMPLETED", 0), s


def test_oom_kill_of_a_child_makes_the_job_out_of_memory(tmp_path: Path, node: str) -> None:
    """As in Slurm: a script that carries on after its program was killed for memory
    still ended OUT_OF_MEMORY (exit code as it was)."""
    how = "v1" if v1_mount(MEMORY) else V2
    extra = spec_extra(node, enforcement_by(node, MEMORY, how), memory_mib=10)
    script = f"{ALLOCATE[0]} -c 'b = bytearray(100 * 1024 * 1024)'\necho carried on\n"
    s = run(make_jobdir(tmp_path, script=script, extra=extra), timeout_s=15)
    assert (s["state"], s["exit_code"]) == ("OUT_OF_MEMORY", 0), s


#: Two processes spinning for 1.5 s each; prints the CPU time they used.
BUSY = textwrap.dedent("""
    import os, time
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                pass
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    t = os.times()
    print("CPU", t.children_user + t.children_system)
""")


@pytest.mark.parametrize("how", ["v1", V2])
def test_a_job_gets_a_quota_of_its_cpus(tmp_path: Path, node: str, how: str,
                                        wait_for: Any) -> None:
    extra = spec_extra(node, enforcement_by(node, CPU, how), cpus=1)
    d = make_jobdir(tmp_path, command=[sys.executable, "-c", BUSY], extra=extra)
    p = start(d)
    s = running(d, wait_for)
    if how == V2:
        assert Path(s["cgroup"], "cpu.max").read_text().split() == ["100000", "100000"]
    else:
        (cpu_dir,) = s["limit_cgroups"]
        assert Path(cpu_dir, "cpu.cfs_quota_us").read_text().strip() == "100000"
        assert Path(cpu_dir, "cpu.cfs_period_us").read_text().strip() == "100000"
    assert p.wait(15) == 0
    s = jd.read_json(d / jd.STATE)
    assert s is not None and s["state"] == "COMPLETED", s
    used = float((d / jd.LOG).read_text().split()[-1])
    # 3 s of spinning in 1.5 s of wall time, held to one CPU: at most ~1.5 s (some slack
    # for the quota's periods and the start).
    assert used < 2.1, used


@pytest.mark.parametrize("how", [BPF, "v1"])
def test_gpu_fence_denies_the_gpus_not_given(tmp_path: Path, node: str, gpu_nodes: Path,
                                             how: str) -> None:
    """GPU 1 of 2 given: its node opens (ENXIO: no driver behind it here, or ok on a host
    with one); GPU 0's is refused (EPERM), CUDA_VISIBLE_DEVICES unset or not."""
    devices = {i: (str(gpu_nodes / f"nvidia{i}"),) for i in range(2)}
    extra = spec_extra(node, enforcement_by(node, DEVICES, how),
                       deny=limits.deny_list(devices, [1]))
    d = make_jobdir(tmp_path, command=[sys.executable, "-c", OPEN_DEVICES,
                                       *(p for (p,) in devices.values())], extra=extra)
    s = run(d, timeout_s=15)
    assert s["state"] == "COMPLETED", s
    result = opened(d)
    assert result["nvidia0"] == "EPERM", result
    assert result["nvidia1"] in ("ENXIO", "ok"), result
    # Unfenced (no limits), both open as far as the (absent) driver lets them.
    d2 = make_jobdir(tmp_path / "unfenced", command=[sys.executable, "-c", OPEN_DEVICES,
                                                     *(p for (p,) in devices.values())])
    assert run(d2)["state"] == "COMPLETED"
    assert set(opened(d2).values()) <= {"ENXIO", "ok"}


def test_a_limit_that_cannot_be_set_fails_the_start(tmp_path: Path, node: str) -> None:
    extra = {"node": node, "cgroup_root": "",
             "limits": {"memory_mib": 10, "cpus": 0, "deny": [], "how": {MEMORY: V2}}}
    s = run(make_jobdir(tmp_path, command=["true"], extra=extra))
    assert s["state"] == "FAILED" and s["pid"] is None, s
    assert s["reason"] == "cannot start the job: cannot set its memory limit: the job has no cgroup"


def test_limits_off_the_job_runs_as_before(tmp_path: Path) -> None:
    extra = {"node": "n1", "cgroup_root": "",
             "limits": limits.plan(limits.probe("", "n1"), memory_mib=10, cpus=1, deny=[])}
    s = run(make_jobdir(tmp_path, command=ALLOCATE, extra=extra))
    assert (s["state"], s["exit_code"]) == ("COMPLETED", 0), s


# --- the JobManager: what it finds, and what each launch hands the supervisor ---------------


def test_manager_plans_each_jobs_limits(tmp_path: Path, node: str, gpu_nodes: Path,
                                        make_spec: Any, server: Any, api: NodeClient,
                                        wait_for: Any) -> None:
    found = limits.probe("auto", node)
    if not found.how:
        pytest.skip(f"this machine enforces no limit: {found.summary()}")
    gpus = SimulatedBackend("2xT4-16GB", node=node, device_dir=gpu_nodes)
    manager = JobManager(state_dir=tmp_path / "state", node=node, api=api, kill_grace_s=0.5,
                         identity=lambda user: daemon_identity(), gpus=gpus,
                         cgroup_root="auto")
    assert manager.enforcement.how == found.how
    spec = make_spec(7, command=["true"], gpu_indices=[1], gpu_uuids=["GPU-b"], cpus=2,
                     memory_mib=64)
    server.specs[7] = spec
    assert manager.launch(spec)
    plan = jd.read_json(manager.jobs_dir / "7.1" / jd.SPEC)["limits"]
    assert plan["how"] == found.how
    assert plan["memory_mib"] == (64 if MEMORY in found.how else 0)
    assert plan["cpus"] == (2 if CPU in found.how else 0)
    if DEVICES in found.how:
        assert plan["deny"] == [["c", NVIDIA_MAJOR, 0, str(gpu_nodes / "nvidia0")]]
    wait_for(lambda: (jd.read_json(manager.jobs_dir / "7.1" / jd.STATE) or {}).get("state")
             in jd.FINAL, what="the job's end")
    wait_for(lambda: not jd.supervisor_alive(manager.jobs_dir / "7.1"), what="its supervisor")
    manager.close()


def test_manager_says_devices_are_not_fenced_without_device_nodes(
        tmp_path: Path, node: str, api: NodeClient) -> None:
    found = limits.probe("auto", node)
    if DEVICES not in found.how:
        pytest.skip(f"no device fence on this machine: {found.summary()}")
    manager = JobManager(state_dir=tmp_path / "state", node=node, api=api, kill_grace_s=0.5,
                         gpus=SimulatedBackend("2xT4-16GB", node=node), cgroup_root="auto")
    assert DEVICES not in manager.enforcement.how
    assert manager.enforcement.why_not[DEVICES] == (
        "no device node for GPU(s) 0,1 (simulated GPUs: see the setting simulate_gpu_devices)")


def test_manager_with_cgroups_off_enforces_nothing(tmp_path: Path, api: NodeClient) -> None:
    manager = JobManager(state_dir=tmp_path / "state", node="n1", api=api, kill_grace_s=0.5,
                         gpus=SimulatedBackend("1xT4-16GB", node="n1"), cgroup_root="")
    assert manager.enforcement.summary() == \
        "none: job cgroups are off (worker_cgroup_root is empty)"



def test_favordynmods_is_read_from_the_mount_table(tmp_path: Path) -> None:
    """Whether a cgroup hierarchy favours dynamic changes (a v1 join then costs no RCU
    grace period): the worker says how to get it where its jobs join v1 cgroups."""
    table = tmp_path / "mounts"
    table.write_text("cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
                     "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n")
    assert limits.dynmods_favored(str(table)) is False
    table.write_text("cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime,favordynmods 0 0\n")
    assert limits.dynmods_favored(str(table)) is True
    table.write_text("tmpfs /favordynmods tmpfs rw,favordynmods 0 0\n")  # not a cgroup
    assert limits.dynmods_favored(str(table)) is False
    assert limits.dynmods_favored(str(tmp_path / "absent")) is False
    assert "cgroup_favordynmods=true" in limits.SLOW_JOIN_HINT
