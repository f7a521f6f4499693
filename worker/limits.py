"""Job limits: the kernel holds a job to its memory, its CPUs and its GPUs (its cgroups).

What a job asked for becomes limits on its cgroups, set by its supervisor before the job
starts (and joined by the job's first process before it execs, so all it forks is held):

* memory (``--mem``, ``memory_mib``; 0: none): cgroup v2 ``memory.max`` (and
  ``memory.swap.max`` = 0), else cgroup v1 ``memory.limit_in_bytes`` (and
  ``memory.memsw.limit_in_bytes``, swap included, where swap accounting is on). Past it
  the kernel's OOM killer kills a process of the job; the supervisor reads the cgroup's
  ``oom_kill`` count (v2 ``memory.events``, v1 ``memory.oom_control``) when the job ends
  and records ``OUT_OF_MEMORY``.
* CPUs (``--cpus``): a CFS quota of that many CPUs per 100 ms period: cgroup v2
  ``cpu.max``, else cgroup v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``. (Not pinned to
  cores: the scheduler counts CPUs, it does not place them.)
* devices: the job cannot open the device nodes of the node's GPUs it was not given (the
  kernel's device check, whatever ``CUDA_VISIBLE_DEVICES`` says or the path it opens):
  a BPF device program on its cgroup v2 directory (``worker.bpf``), else cgroup v1
  ``devices.deny`` (``c MAJOR:MINOR rwm``) per device node.

Where: the job's cgroup v2 directory (``worker.cgroups``: ``<root>/gpuq/<node>/job-<id>.<attempt>``)
for what cgroup2 offers there; for the rest, on hybrid hosts (cgroup2 without the
controller, cgroup v1 hierarchies mounted, RHEL 7/8 era) or cgroup v1 only hosts, a
directory of the same name in each v1 hierarchy used: ``<mount>/gpuq/<node>/job-...``.

The worker finds out once, at its start, what it can enforce (``probe``: an
``Enforcement``), logs it, and sends it with its registration (``gpuq nodes`` shows it);
each launch hands its job's share (``plan``) to the supervisor in ``spec.json``. A limit
the node enforces that cannot be set on a job fails that job's start (it never runs
unlimited on a node that says it limits). With job cgroups off (``worker_cgroup_root``
empty) or not writable, nothing is enforced, and the worker says so.

Standard library only: the supervisor imports it and must start fast.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuq.worker import bpf
from gpuq.worker.cgroups import TOP, CgroupUnavailable, job_name, node_dir, prepare_node, safe_name

MEMORY, CPU, DEVICES = "memory", "cpu", "devices"
WHAT = (MEMORY, CPU, DEVICES)
#: How a limit is enforced: in the job's cgroup2 directory, by a BPF program on it
#: (devices), or else the mount point of the cgroup v1 hierarchy holding the controller.
V2, BPF = "v2", "bpf"
CPU_PERIOD_US = 100_000
MIB = 1024 * 1024
#: The file that shows a cgroup v1 hierarchy offers the limit (in its ``gpuq/<node>``).
V1_FILES = {MEMORY: "memory.limit_in_bytes", CPU: "cpu.cfs_quota_us", DEVICES: "devices.deny"}
#: What ``Enforcement.summary`` says at most (the registration's field).
SUMMARY_CHARS = 256
OFF = "job cgroups are off (worker_cgroup_root is empty)"
#: (type "c" or "b", major, minor, path)
DenyEntry = tuple[str, int, int, str]


class LimitError(Exception):
    """A job's limits could not be set; the message says which and why."""


# --- what the node can enforce ------------------------------------------------------------


@dataclass(frozen=True)
class Enforcement:
    """What this node enforces, found once at the worker's start (``probe``)."""

    #: limit -> how (``V2``, ``BPF`` or a cgroup v1 mount point)
    how: Mapping[str, str] = field(default_factory=dict)
    #: limit -> why it is not enforced
    why_not: Mapping[str, str] = field(default_factory=dict)

    @property
    def enforced(self) -> list[str]:
        return [w for w in WHAT if w in self.how]

    def without(self, what: str, why: str) -> Enforcement:
        """The same, ``what`` not enforced (``why``)."""
        return Enforcement({k: v for k, v in self.how.items() if k != what},
                           {**self.why_not, what: why})

    def summary(self) -> str:
        """One line for logs, the registration and ``gpuq nodes``: ``memory,cpu,devices
        (cgroup v1 memory,cpu; cgroup v2 BPF devices)``; ``none: <why>``; or the enforced
        ones then ``; not <what>: <why>`` for each reason."""
        groups: dict[str, list[str]] = {}
        for what in self.enforced:
            how = self.how[what]
            label = ("cgroup v2" if how == V2 else "cgroup v2 BPF" if how == BPF
                     else "cgroup v1")
            groups.setdefault(label, []).append(what)
        reasons: dict[str, list[str]] = {}
        for what in WHAT:
            if what not in self.how:
                reasons.setdefault(self.why_not.get(what) or "unknown", []).append(what)
        if not self.enforced:
            text = "none: " + "; ".join(why if len(reasons) == 1 else f"{','.join(w)}: {why}"
                                         for why, w in reasons.items())
        else:
            text = ",".join(self.enforced) + " (" + "; ".join(
                f"{label} {','.join(w)}" for label, w in groups.items()) + ")"
            text += "".join(f"; not {','.join(w)}: {why}" for why, w in reasons.items())
        return text[:SUMMARY_CHARS]

    def to_json(self) -> dict[str, Any]:
        return {"how": dict(self.how), "why_not": dict(self.why_not)}


def v1_mounts(mounts: str = "/proc/self/mounts") -> dict[str, str]:
    """controller -> mount point of the cgroup v1 hierarchy that holds it."""
    out: dict[str, str] = {}
    try:
        with open(mounts) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 4 and fields[2] == "cgroup":
                    where = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])
                    for option in fields[3].split(","):
                        out.setdefault(option, where)
    except OSError:
        pass
    return out


def dynmods_favored(mounts: str = "/proc/self/mounts") -> bool:
    """Whether a cgroup hierarchy is mounted with ``favordynmods`` (Linux 6.0+: moving a
    process between cgroups no longer waits for an RCU grace period)."""
    try:
        with open(mounts) as f:
            return any(len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2")
                       and "favordynmods" in fields[3].split(",")
                       for fields in (line.split() for line in f))
    except OSError:
        return False


#: Said at the worker's start where jobs join cgroup v1 directories without
#: ``favordynmods``: each join waits for an RCU grace period, on the path of every start.
SLOW_JOIN_HINT = (
    "each job joins its cgroup v1 directories before it execs, and on this kernel a join "
    "waits for an RCU grace period (5-20 ms of every job start on a 2-core VM). Boot "
    "with cgroup_favordynmods=true or mount a cgroup hierarchy with -o favordynmods "
    "(Linux 6.0+) to make it about 0.3 ms; a cgroup v2 host needs neither")


def _read_words(path: Path) -> list[str]:
    with open(path) as f:
        return f.read().split()


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def enable_v2(root: Path, node: str, controller: str) -> str | None:
    """Enable ``controller`` for the job cgroups under ``<root>/gpuq/<node>`` (each
    ``cgroup.subtree_control`` from ``root`` down); ``None``, or why it cannot be."""
    try:
        if controller not in _read_words(root / "cgroup.controllers"):
            return f"cgroup2 {root} has no {controller} controller"
    except OSError as e:
        return f"cannot read {root}/cgroup.controllers: {e.strerror}"
    for d in (root, root / TOP, node_dir(root, node)):
        control = d / "cgroup.subtree_control"
        try:
            if controller not in _read_words(control):
                _write(control, f"+{controller}")
        except OSError as e:
            return f"cannot enable {controller} in {control}: {e.strerror}"
    return None


def prepare_v1(mount: str, node: str, what: str) -> str | None:
    """Make ``<mount>/gpuq/<node>`` for the job cgroups of the v1 hierarchy at ``mount``;
    ``None``, or why it cannot be used."""
    d = Path(mount) / TOP / safe_name(node)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"cgroup v1 hierarchies are not writable here (uid {os.geteuid()})"
        return f"cannot create {d}: {e.strerror}"
    if not (d / V1_FILES[what]).is_file():
        return f"{d} has no {V1_FILES[what]}"
    if not os.access(d, os.W_OK):
        return f"{d} is not writable here (uid {os.geteuid()})"
    return None


def probe(setting: str, node: str, *,
          v1: Mapping[str, str] | None = None) -> Enforcement:
    """What this node can enforce, with job cgroups as ``worker_cgroup_root`` says
    (``v1``: controller -> cgroup v1 mount, default read from ``/proc/self/mounts``).
    cgroup2 first; cgroup v1 for what cgroup2 lacks here (hybrid hosts)."""
    if not setting.strip():
        return Enforcement({}, {w: OFF for w in WHAT})
    how: dict[str, str] = {}
    why: dict[str, str] = {}
    try:
        root: Path | None = prepare_node(setting, node)
    except CgroupUnavailable as e:
        root = None
        why = {w: str(e) for w in WHAT}
    if root is not None:
        for what in (MEMORY, CPU):
            problem = enable_v2(root, node, what)
            if problem is None:
                how[what] = V2
            else:
                why[what] = problem
        problem = bpf.probe(str(node_dir(root, node)))
        if problem is None:
            how[DEVICES] = BPF
        else:
            why[DEVICES] = problem
    mounts = v1_mounts() if v1 is None else v1
    for what in WHAT:
        if what in how or what not in mounts:
            continue
        problem = prepare_v1(mounts[what], node, what)
        if problem is None:
            how[what] = mounts[what]
            why.pop(what, None)
        else:
            why[what] = f"{why[what]}; {problem}" if why.get(what) else problem
    return Enforcement(how, {w: r for w, r in why.items() if w not in how})


# --- one job's share -------------------------------------------------------------------


def deny_list(gpu_devices: Mapping[int, Sequence[str]], given: Iterable[int]) -> list[DenyEntry]:
    """The device nodes of the GPUs not ``given`` (GPU index -> its device paths), as
    (type, major, minor, path); paths that are not device nodes are left out."""
    keep = set(given)
    out: list[DenyEntry] = []
    for index, paths in sorted(gpu_devices.items()):
        if index in keep:
            continue
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
                out.append((kind, os.major(st.st_rdev), os.minor(st.st_rdev), path))
    return out


def plan(enforcement: Enforcement, *, memory_mib: int, cpus: int,
         deny: Sequence[DenyEntry]) -> dict[str, Any]:
    """A job's limits for its supervisor (``spec.json``'s ``limits``): what it asked for,
    of what this node enforces, and how."""
    how = dict(enforcement.how)
    return {"memory_mib": int(memory_mib) if MEMORY in how else 0,
            "cpus": int(cpus) if CPU in how else 0,
            "deny": [list(d) for d in deny] if DEVICES in how else [],
            "how": how}


class JobLimits:
    """One job run's limits, set (``set_up``) by its supervisor."""

    def __init__(self, memory_mib: int, v2_dir: Path | None) -> None:
        self.memory_mib = memory_mib
        self.v2_dir = v2_dir
        #: The run's cgroup v1 directories (each joined by the job), by mount point.
        self.v1_dirs: dict[str, Path] = {}
        #: Where its memory limit is: V2 or the v1 directory (None: no memory limit).
        self.memory_at: Path | None = None
        self.memory_v2 = False
        self.denied: list[DenyEntry] = []
        #: Some limit is in its cgroup2 directory (a job that could not join that one
        #: must not start).
        self.in_v2 = False

    @classmethod
    def set_up(cls, limits: Mapping[str, Any] | None, v2_dir: Path | None, *, node: str,
               job_id: int, attempt: int) -> JobLimits | None:
        """Set the limits ``limits`` (a ``plan``) says on the run's cgroups (``v2_dir``:
        its cgroup2 directory, or None); ``None`` when there are none to set. Raises
        ``LimitError``, saying which and why, when one cannot be set (nothing is left)."""
        limits = limits or {}
        how: Mapping[str, str] = limits.get("how") or {}
        memory_mib, cpus = int(limits.get("memory_mib") or 0), int(limits.get("cpus") or 0)
        deny = [(str(d[0]), int(d[1]), int(d[2]), str(d[3]) if len(d) > 3 else "")
                for d in limits.get("deny") or []]
        wanted = [w for w, on in ((MEMORY, memory_mib > 0), (CPU, cpus > 0),
                                  (DEVICES, bool(deny))) if on and how.get(w)]
        if not wanted:
            return None
        out = cls(memory_mib, v2_dir)
        what = wanted[0]
        try:
            for what in wanted:
                out._set(what, how[what], memory_mib=memory_mib, cpus=cpus, deny=deny,
                         name=job_name(job_id, attempt), node=node)
        except (OSError, bpf.BpfUnavailable, LimitError) as e:
            out.remove(0.0)
            text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
            raise LimitError(f"cannot set its {what} limit: {text}{where}") from None
        return out

    def _set(self, what: str, how: str, *, memory_mib: int, cpus: int,
             deny: list[DenyEntry], name: str, node: str) -> None:
        if how in (V2, BPF):
            if self.v2_dir is None:
                raise LimitError("the job has no cgroup")
            d = self.v2_dir
            self.in_v2 = True
        else:
            d = self._v1_dir(how, node, name)
        if what == MEMORY:
            limit = str(memory_mib * MIB)
            if how == V2:
                _write(d / "memory.max", limit)
                if (d / "memory.swap.max").exists():
                    _write(d / "memory.swap.max", "0")
            else:
                _write(d / "memory.limit_in_bytes", limit)
                if (d / "memory.memsw.limit_in_bytes").exists():  # swap accounting on
                    _write(d / "memory.memsw.limit_in_bytes", limit)
            self.memory_at, self.memory_v2 = d, how == V2
        elif what == CPU:
            quota = cpus * CPU_PERIOD_US
            if how == V2:
                _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                _write(d / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(d / "cpu.cfs_quota_us", str(quota))
        elif how == BPF:
            bpf.fence(str(d), [(t, major, minor) for t, major, minor, _ in deny])
            self.denied = list(deny)
        else:
            for kind, major, minor, _ in deny:  # one exception a write
                _write(d / "devices.deny", f"{kind} {major}:{minor} rwm")
            self.denied = list(deny)

    def _v1_dir(self, mount: str, node: str, name: str) -> Path:
        """The run's directory in the v1 hierarchy at ``mount`` (made once)."""
        d = self.v1_dirs.get(mount)
        if d is None:
            d = Path(mount) / TOP / safe_name(node) / name
            with contextlib.suppress(OSError):
                d.rmdir()  # an empty one left by an earlier try of this run
            d.mkdir()
            self.v1_dirs[mount] = d
        return d

    def join(self) -> None:
        """Move the caller into the run's cgroup v1 directories (the job's first process,
        between fork and exec; its cgroup2 one is ``JobCgroup``'s). Raises ``OSError``."""
        pid = str(os.getpid())
        for d in self.v1_dirs.values():
            try:
                _write(d / "cgroup.procs", pid)
            except OSError as e:
                raise OSError(e.errno, e.strerror, str(d)) from None

    @property
    def needs_join(self) -> bool:
        return bool(self.v1_dirs)

    def oom_kills(self, exit_code: int | None = None) -> int:
        """How many of the job's processes the OOM killer killed in its memory cgroup
        (read before the cgroup goes). Kernels before 4.13 (v1) do not count them: there,
        a job whose leader died of SIGKILL after its cgroup hit the limit counts one."""
        if self.memory_at is None:
            return 0
        name = "memory.events" if self.memory_v2 else "memory.oom_control"
        try:
            counts = dict(_pairs(self.memory_at / name))
        except OSError:
            return 0
        if "oom_kill" in counts:
            return counts["oom_kill"]
        try:
            hit = int(Path(self.memory_at / "memory.failcnt").read_text().strip() or 0)
        except (OSError, ValueError):
            hit = 0
        return 1 if hit and exit_code == 137 else 0

    def remove(self, wait_s: float = 1.0) -> list[Path]:
        """Remove the run's cgroup v1 directories once empty (waiting up to ``wait_s``);
        those left (a process that does not die)."""
        give_up_at = time.monotonic() + wait_s
        left = list(self.v1_dirs.values())
        while left:
            left = [d for d in left if not remove_dir(d)]
            if not left or time.monotonic() >= give_up_at:
                break
            time.sleep(0.02)
        return left


def _pairs(path: Path) -> Iterable[tuple[str, int]]:
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                yield key, int(value)


def remove_dir(d: Path) -> bool:
    """Remove an empty cgroup directory; whether it is gone."""
    try:
        d.rmdir()
    except FileNotFoundError:
        return True
    except OSError:  # EBUSY: a process is still in it
        return False
    return True


def looks_like_v1_job_dir(path: Path) -> bool:
    """Whether ``path`` is shaped like a run's cgroup v1 directory this module makes (so a
    path read back from a state file is never some other directory)."""
    return (path.is_absolute() and ".." not in path.parts and path.name.startswith("job-")
            and path.parent.parent.name == TOP and (path / "cgroup.procs").is_file()
            and not (path / "cgroup.controllers").exists())


def remove_leftovers(paths: Iterable[str] | None) -> list[Path]:
    """Remove the cgroup v1 directories a run's ``state.json`` names (its supervisor
    removes them, or tried); those that are still there."""
    left = []
    for text in paths or []:
        d = Path(str(text))
        if looks_like_v1_job_dir(d) and not remove_dir(d):
            left.append(d)
    return left
