"""Job cgroups (cgroup v2): every process of a job, wherever it went, in one place.

A job run gets ``<root>/gpuq/<node>/job-<id>.<attempt>``, where ``<root>`` is a writable
cgroup2 directory: the setting ``worker_cgroup_root`` (``auto``: ``/sys/fs/cgroup`` when it
is cgroup2 itself, else ``/sys/fs/cgroup/unified`` on hybrid hosts; empty: no cgroups). The
job's leader joins it before it execs, so all it forks is in it too, sessions and double
forks included: the supervisor reads the job's pids from ``cgroup.procs``, kills them all
at once with ``cgroup.kill`` (Linux 5.14; before that, SIGKILL to each), and removes the
directory once it is empty. Creating one needs root (or a delegated subtree); where it
cannot be made the supervisor kills by process group and descendants only.

Standard library only: the supervisor imports it and must start fast.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path

#: ``auto`` looks here, in this order.
AUTO_CANDIDATES = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
TOP = "gpuq"
PREFIX = "job-"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class CgroupUnavailable(Exception):
    """No job cgroup here; the message says why (for one log line)."""


def cgroup2_mounts(mounts: str = "/proc/self/mounts") -> list[str]:
    """Mount points of cgroup2 filesystems, as this process sees them."""
    out = []
    try:
        with open(mounts) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    # /proc/self/mounts escapes blanks and backslashes as \ooo.
                    out.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1]))
    except OSError:
        pass
    return out


def is_cgroup2_dir(path: Path) -> bool:
    """``cgroup.controllers`` exists in every cgroup2 directory and in no cgroup1 one."""
    return (path / "cgroup.controllers").is_file() and (path / "cgroup.procs").is_file()


def resolve_root(setting: str) -> Path:
    """The cgroup2 directory that ``worker_cgroup_root`` names (``auto``: detected);
    raises ``CgroupUnavailable`` when there is none that this process may write."""
    setting = setting.strip()
    if not setting:
        raise CgroupUnavailable("job cgroups are off (worker_cgroup_root is empty)")
    if setting == "auto":
        mounts = set(cgroup2_mounts())
        found = [c for c in AUTO_CANDIDATES if c in mounts]
        if not found:
            raise CgroupUnavailable(f"no cgroup2 mount at {' or '.join(AUTO_CANDIDATES)}")
        writable = [c for c in found if os.access(c, os.W_OK)]
        if not writable:
            raise CgroupUnavailable(f"the cgroup2 mount {found[0]} is not writable here "
                                    f"(uid {os.geteuid()})")
        return Path(writable[0])
    root = Path(setting)
    if not is_cgroup2_dir(root):
        raise CgroupUnavailable(f"worker_cgroup_root {setting} is not a cgroup2 directory")
    if not os.access(root, os.W_OK):
        raise CgroupUnavailable(f"worker_cgroup_root {setting} is not writable here "
                                f"(uid {os.geteuid()})")
    return root


def safe_name(text: str) -> str:
    """``text`` usable as one cgroup directory name."""
    name = _UNSAFE.sub("_", text).lstrip(".") or "_"
    return "_" + name if name.startswith("cgroup.") else name[:200]


def node_dir(root: Path, node: str) -> Path:
    return root / TOP / safe_name(node)


def job_name(job_id: int, attempt: int) -> str:
    return f"{PREFIX}{int(job_id)}.{int(attempt)}"


def prepare_node(setting: str, node: str) -> Path:
    """Resolve ``setting`` and make ``<root>/gpuq/<node>``; returns the root. Raises
    ``CgroupUnavailable`` saying why not."""
    root = resolve_root(setting)
    try:
        node_dir(root, node).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CgroupUnavailable(f"cannot create {node_dir(root, node)}: "
                                f"{e.strerror or e}") from None
    return root


def looks_like_job_cgroup(path: Path) -> bool:
    """Whether ``path`` is shaped like a job cgroup this module makes (so a path read back
    from a state file is never some other cgroup)."""
    return (path.is_absolute() and ".." not in path.parts and path.name.startswith(PREFIX)
            and path.parent.parent.name == TOP and is_cgroup2_dir(path))


class JobCgroup:
    """One job run's cgroup."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"JobCgroup({str(self.path)!r})"

    @classmethod
    def create(cls, setting: str, node: str, job_id: int, attempt: int) -> JobCgroup:
        """Make the run's cgroup (never one that exists already: that one is someone
        else's). Raises ``CgroupUnavailable`` saying why not."""
        root = prepare_node(setting, node)
        path = node_dir(root, node) / job_name(job_id, attempt)
        try:
            path.mkdir()
        except FileExistsError:
            raise CgroupUnavailable(f"{path} exists already (another worker with node name "
                                    f"{node!r} on this host?)") from None
        except OSError as e:
            raise CgroupUnavailable(f"cannot create {path}: {e.strerror or e}") from None
        if not (path / "cgroup.procs").is_file():
            with contextlib.suppress(OSError):
                path.rmdir()
            raise CgroupUnavailable(f"{path} is not a cgroup2 directory")
        return cls(path)

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    def join(self, pid: int = 0) -> None:
        """Move ``pid`` (0: the caller) into this cgroup; raises ``OSError``."""
        with open(self.procs_file, "w") as f:
            f.write(str(pid or os.getpid()))

    def pids(self) -> list[int]:
        """The processes in it (none once it is gone)."""
        try:
            with open(self.procs_file) as f:
                return [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            return []

    def populated(self) -> bool:
        """Whether a live process is in it (zombies do not count)."""
        try:
            with open(self.path / "cgroup.events") as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "populated":
                        return value.strip() != "0"
        except FileNotFoundError:
            return False
        except OSError:
            pass
        return bool(self.pids())

    def signal(self, sig: int) -> None:
        """Send ``sig`` to every process in it."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill(self) -> None:
        """SIGKILL everything in it, forks racing the kill included (``cgroup.kill``);
        without ``cgroup.kill``, SIGKILL to each process in it (call it until it is empty)."""
        try:
            with open(self.path / "cgroup.kill", "w") as f:
                f.write("1")
            return
        except FileNotFoundError:
            if not self.path.exists():
                return
        except OSError:
            pass
        self.signal(signal.SIGKILL)

    def remove(self) -> bool:
        """Remove the directory if it is empty; whether it is gone."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:  # EBUSY: a process is still in it
            return False
        return True
