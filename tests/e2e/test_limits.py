"""Job limits, end to end: a job over its memory ends OUT_OF_MEMORY, a job gets a CPU quota
of its CPUs, a job cannot open the GPUs it was not given, and a node without cgroups says
so in `gpuq nodes`. Real processes throughout: PostgreSQL, Redis, `gpuq server`,
`gpuq worker`s with simulated GPUs (device nodes made here), the CLI."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuq.worker import cgroups, limits
from tests.e2e.conftest import Cluster, parse_env_dump

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

#: Prints the CPU quota of the cgroup it runs in (cgroup v1 ``cpu`` or cgroup2 ``cpu.max``).
CPU_QUOTA = textwrap.dedent("""
    import os
    mounts = [line.split() for line in open("/proc/self/mounts")]
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.rstrip("\\n").split(":", 2)
        for _, where, kind, options, *_ in mounts:
            if kind == "cgroup" and "cpu" in controllers.split(",") \\
                    and "cpu" in options.split(","):
                d = where + path
                quota = open(d + "/cpu.cfs_quota_us").read().strip()
                period = open(d + "/cpu.cfs_period_us").read().strip()
                print("QUOTA=%s %s" % (quota, period))
            elif kind == "cgroup2" and controllers == "" \\
                    and os.path.exists(where + path + "/cpu.max"):
                print("QUOTA=" + open(where + path + "/cpu.max").read().strip())
""")
#: Unsets CUDA_VISIBLE_DEVICES (as a job may) and opens each simulated GPU's node.
OPEN_GPUS = textwrap.dedent("""
    import errno, os, sys
    given = os.environ.pop("CUDA_VISIBLE_DEVICES")
    print("GIVEN=" + given)
    for i in range(2):
        try:
            os.close(os.open(os.path.join(sys.argv[1], "nvidia%d" % i), os.O_RDWR))
            print("GPU%d=ok" % i)
        except OSError as e:
            print("GPU%d=%s" % (i, errno.errorcode.get(e.errno, e.errno)))
""")
ALLOCATE = ("print('allocating', flush=True)\n"
            "b = bytearray(100 * 1024 * 1024)\n"
            "print('allocated')\n")


def remove_node_dirs(node: str) -> None:
    """The empty ``gpuq/<node>`` directories a worker (or a probe) left in each cgroup
    hierarchy (its jobs' directories go with them)."""
    tops = [*set(limits.v1_mounts().values()), *cgroups.AUTO_CANDIDATES]
    for top in tops:
        d = Path(top, cgroups.TOP, node)
        if d.is_dir():
            for probe in d.glob("probe-*"):
                limits.remove_dir(probe)
            limits.remove_dir(d)


@pytest.fixture
def node_names() -> Iterator[list[str]]:
    """Node names whose cgroup directories go once the test's cluster has stopped (set
    up before ``redis_cluster``, so torn down after it)."""
    names: list[str] = []
    yield names
    for name in names:
        remove_node_dirs(name)


@pytest.fixture
def enforcing(node_names: list[str], redis_cluster: Cluster) -> limits.Enforcement:
    """What this machine enforces; skips where it is nothing (not root, no cgroups)."""
    probe = f"e2e-probe-{uuid.uuid4().hex[:6]}"
    found = limits.probe("auto", probe)
    remove_node_dirs(probe)
    if not found.how:
        pytest.skip(f"this machine cannot enforce job limits: {found.summary()}")
    redis_cluster.add_user("alice")
    return found


def _submit(c: Cluster, *args: str) -> int:
    return int(c.gpuq("submit", "--parsable", *args).stdout)


def _device_nodes(tmp: Path) -> Path | None:
    """``nvidia0``, ``nvidia1`` (char 195:0, 195:1) for the simulated GPUs; None where
    device nodes cannot be made (not root)."""
    d = tmp / "dev"
    d.mkdir()
    try:
        for i in range(2):
            os.mknod(d / f"nvidia{i}", 0o666 | stat.S_IFCHR, os.makedev(195, i))
    except PermissionError:
        return None
    return d


def test_limits_hold_jobs_and_nodes_say_what_they_enforce(
        node_names: list[str], redis_cluster: Cluster, enforcing: limits.Enforcement) -> None:
    c = redis_cluster
    dev = _device_nodes(c.tmp)
    name = f"lim-{uuid.uuid4().hex[:6]}"
    node_names.append(name)
    c.add_worker(name, "2xV100-32GB", GPUQ_SIMULATE_GPU_DEVICES=str(dev or ""))
    if dev is None and limits.DEVICES in enforcing.how:  # no nodes to fence
        enforcing = enforcing.without(limits.DEVICES, "no device node for GPU(s) 0,1 "
                                      "(simulated GPUs: see the setting simulate_gpu_devices)")
    off = f"off-{uuid.uuid4().hex[:6]}"
    c.add_worker(off, "1xT4-16GB", GPUQ_WORKER_CGROUP_ROOT="")

    # gpuq nodes: what each node's worker enforces, and why not.
    nodes = {n["name"]: n for n in json.loads(c.gpuq("nodes", "--json").stdout)}
    assert nodes[name]["enforcement"] == enforcing.summary()
    assert nodes[off]["enforcement"] == \
        "none: job cgroups are off (worker_cgroup_root is empty)"
    text = c.gpuq("nodes").stdout
    row = next(line for line in text.splitlines() if line.startswith(off))
    assert row.split()[-1] == "none"
    assert "limits: none: job cgroups are off (worker_cgroup_root is empty)" in text
    row = next(line for line in text.splitlines() if line.startswith(name))
    assert row.split()[-1] == ",".join(enforcing.enforced)

    script = c.tmp / "allocate.py"
    script.write_text(ALLOCATE)
    quota = c.tmp / "quota.py"
    quota.write_text(CPU_QUOTA)
    fence = c.tmp / "fence.py"
    fence.write_text(OPEN_GPUS)
    on = ("--gpus", "1", "--gpu-model", "V100-32GB")  # the node with limits

    if limits.MEMORY in enforcing.how:
        # --mem 10M, 100 MB allocated: the kernel kills it, and the job says why.
        job = _submit(c, *on, "--mem", "10M", "--", sys.executable, str(script))
        j = c.wait_state(job, {"OUT_OF_MEMORY", "COMPLETED", "FAILED"}, 60)
        assert j["state"] == "OUT_OF_MEMORY", (j, c.log(job))
        assert j["reason"] == ("out of memory: the job's cgroup hit its 10 MiB limit (--mem); "
                               "the kernel killed 1 process")
        assert j["exit_code"] == 137
        log = c.log(job)
        assert "allocating" in log and "allocated" not in log
        assert "gpuq: out of memory" in log
        assert "OUT_OF_MEMORY" in c.gpuq("show", str(job)).stdout
        assert str(job) in c.gpuq("q", "--state", "OUT_OF_MEMORY").stdout
        # The same job with room for it completes.
        job = _submit(c, *on, "--mem", "300M", "--", sys.executable, str(script))
        assert c.wait_state(job, {"OUT_OF_MEMORY", "COMPLETED", "FAILED"}, 60)["state"] \
            == "COMPLETED"

    if limits.CPU in enforcing.how:
        job = _submit(c, *on, "--cpus", "1", "--", sys.executable, str(quota))
        assert c.wait_state(job, {"COMPLETED", "FAILED"}, 60)["state"] == "COMPLETED"
        assert parse_env_dump(c.log(job))["QUOTA"].split() == ["100000", "100000"], c.log(job)

    if limits.DEVICES in enforcing.how and dev is not None:
        job = _submit(c, *on, "--", sys.executable, str(fence), str(dev))
        j = c.wait_state(job, {"COMPLETED", "FAILED"}, 60)
        env = parse_env_dump(c.log(job))
        assert j["state"] == "COMPLETED" and j["node"] == name, (j, env)
        given = int(env["GIVEN"])
        assert [given] == j["gpu_indices"]
        # Its own GPU opens as far as the (absent) driver lets it; the other is refused by
        # the kernel, though the job unset CUDA_VISIBLE_DEVICES.
        assert env[f"GPU{given}"] in ("ENXIO", "ok"), env
        assert env[f"GPU{1 - given}"] == "EPERM", env

    # The node without cgroups still runs jobs, unlimited.
    job = _submit(c, "--gpus", "1", "--gpu-model", "T4-16GB", "--mem", "10M", "--",
                  sys.executable, str(script))
    j = c.wait_state(job, {"OUT_OF_MEMORY", "COMPLETED", "FAILED"}, 60)
    assert j["state"] == "COMPLETED" and j["node"] == off, (j, c.log(job))


def test_nodes_listing_of_a_worker_without_cgroups(redis_cluster: Cluster) -> None:
    """On any machine: a worker with job cgroups off says it enforces nothing."""
    c = redis_cluster
    c.add_user("alice")
    name = f"none-{uuid.uuid4().hex[:6]}"
    c.add_worker(name, "1xT4-16GB", GPUQ_WORKER_CGROUP_ROOT="")
    text = c.gpuq("nodes").stdout
    header = text.splitlines()[0]
    assert header.split()[-1] == "LIMITS"
    row = next(line for line in text.splitlines() if line.startswith(name))
    assert row[header.index("LIMITS"):].strip() == "none"
    assert "limits: none: job cgroups are off (worker_cgroup_root is empty)" in text
