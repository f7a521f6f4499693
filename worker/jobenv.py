"""Who a job runs as, and the environment it gets (built from the spec, never inherited
from the daemon, so the node token and the daemon's settings cannot leak into a job)."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass

from gpuq.wire.nodes import LaunchSpec

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Never handed to a job, whatever the spec says.
FORBIDDEN = frozenset({"GPUQ_TOKEN", "GPUQ_NODE_TOKEN"})


class LaunchRefused(Exception):
    """The job cannot be started on this node; the message says why."""


@dataclass(frozen=True)
class Identity:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    #: Supplementary groups; ``None`` keeps the daemon's (only when not switching user).
    groups: tuple[int, ...] | None = None

    @property
    def switches_user(self) -> bool:
        return self.uid != os.geteuid()


def _from_pwd(pw: pwd.struct_passwd, groups: tuple[int, ...] | None) -> Identity:
    return Identity(name=pw.pw_name, uid=pw.pw_uid, gid=pw.pw_gid, home=pw.pw_dir,
                    shell=pw.pw_shell or "/bin/sh", groups=groups)


def daemon_identity() -> Identity:
    """The account the daemon runs as (jobs of a non-root daemon run as it)."""
    return _from_pwd(pwd.getpwuid(os.geteuid()), None)


def identity_for(user: str) -> Identity:
    """Who runs a job of gpuq user ``user`` on this host.

    A daemon running as root runs each job as the local account of the same name, and
    refuses when there is none (the gpuq admin decides user names, so a job runs as root
    only for a gpuq user named ``root``, as ``gpuq up`` run by root makes). A daemon
    running as an ordinary account can only run jobs as itself.
    """
    if os.geteuid() != 0:
        return daemon_identity()
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise LaunchRefused(f"no local account {user!r} on this node (a worker running as "
                            "root runs each job as the submitting user's account)") from None
    groups = tuple(sorted(set(os.getgrouplist(pw.pw_name, pw.pw_gid))))
    return _from_pwd(pw, groups)


#: ``user``: a root daemon runs each job as the user's local account (the default);
#: ``daemon``: every job runs as the daemon's own account (one-person and test setups).
RUN_AS_MODES = ("user", "daemon")


def identity_policy(mode: str, *, allow_root: bool = False) -> Callable[[str], Identity]:
    """The account a job runs as, by ``worker_run_as`` mode (see ``RUN_AS_MODES``).

    Whatever the mode, a job that would run as root is refused unless the admin set
    ``worker_allow_root_jobs``: jobs never run as root by accident.
    """
    if mode == "user":
        pick = identity_for
    elif mode == "daemon":
        def pick(user: str) -> Identity:
            return daemon_identity()
    else:
        raise ValueError(f"worker_run_as must be one of {', '.join(RUN_AS_MODES)}, "
                         f"not {mode!r}")

    def resolve(user: str) -> Identity:
        who = pick(user)
        if who.uid == 0 and not allow_root:
            raise LaunchRefused(
                f"refusing to run a job of {user!r} as root; an admin can allow it on this "
                "node with worker_allow_root_jobs = true (GPUQ_WORKER_ALLOW_ROOT_JOBS=1)")
        return who

    return resolve


def build_env(spec: LaunchSpec, *, node: str, who: Identity) -> dict[str, str]:
    """The job's environment, exactly as the contract says: the spec's variables, account
    defaults for those not given, then gpuq's own variables overriding anything."""
    env = {k: v for k, v in spec.environment.items() if k not in FORBIDDEN}
    env.setdefault("HOME", who.home)
    env.setdefault("USER", who.name)
    env.setdefault("LOGNAME", who.name)
    env.setdefault("SHELL", who.shell)
    env.setdefault("PATH", DEFAULT_PATH)
    env.update({
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in spec.gpu_indices),
        # NVML numbers GPUs in PCI bus order; CUDA's default order is "fastest first".
        # This makes CUDA_VISIBLE_DEVICES indices mean the GPUs the scheduler allocated.
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "GPUQ_JOB_ID": str(spec.job_id),
        "GPUQ_JOB_NAME": spec.name,
        "GPUQ_NODE": node,
        "GPUQ_GPUS": str(len(spec.gpu_indices)),
        "GPUQ_GPU_UUIDS": ",".join(spec.gpu_uuids),
        "GPUQ_ACCOUNT": spec.account,
        "GPUQ_USER": spec.user,
        "GPUQ_SUBMIT_DIR": spec.workdir,
    })
    return env
