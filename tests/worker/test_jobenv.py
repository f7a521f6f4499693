from __future__ import annotations

import os
import pwd
from collections.abc import Callable

import pytest

from gpuq.wire.nodes import LaunchSpec
from gpuq.worker.jobenv import (
    DEFAULT_PATH,
    Identity,
    LaunchRefused,
    build_env,
    daemon_identity,
    identity_for,
    identity_policy,
)

WHO = Identity(name="alice", uid=1000, gid=1000, home="/home/alice", shell="/bin/zsh")


def test_defaults_and_gpuq_variables(make_spec: Callable[..., LaunchSpec]) -> None:
    spec = make_spec(job_id=12, name="train", gpu_indices=[0, 2], gpu_uuids=["GPU-x", "GPU-y"],
                     workdir="/home/alice/proj", environment={"FOO": "bar"})
    assert build_env(spec, node="gpu01", who=WHO) == {
        "FOO": "bar", "HOME": "/home/alice", "USER": "alice", "LOGNAME": "alice",
        "SHELL": "/bin/zsh", "PATH": DEFAULT_PATH,
        "CUDA_VISIBLE_DEVICES": "0,2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "GPUQ_JOB_ID": "12", "GPUQ_JOB_NAME": "train", "GPUQ_NODE": "gpu01",
        "GPUQ_GPUS": "2", "GPUQ_GPU_UUIDS": "GPU-x,GPU-y", "GPUQ_ACCOUNT": "lab1",
        "GPUQ_USER": "alice", "GPUQ_SUBMIT_DIR": "/home/alice/proj"}


def test_spec_values_win_over_defaults_but_not_over_gpuq(
        make_spec: Callable[..., LaunchSpec]) -> None:
    spec = make_spec(environment={"PATH": "/opt/bin", "HOME": "/scratch",
                                  "CUDA_VISIBLE_DEVICES": "0,1,2,3", "GPUQ_JOB_ID": "999",
                                  "GPUQ_NODE_TOKEN": "stolen", "GPUQ_TOKEN": "stolen"})
    env = build_env(spec, node="n", who=WHO)
    assert (env["PATH"], env["HOME"]) == ("/opt/bin", "/scratch")
    assert (env["CUDA_VISIBLE_DEVICES"], env["GPUQ_JOB_ID"]) == ("0,1", "1")
    assert "GPUQ_NODE_TOKEN" not in env and "GPUQ_TOKEN" not in env


def test_no_gpus_means_no_visible_devices(make_spec: Callable[..., LaunchSpec]) -> None:
    env = build_env(make_spec(gpu_indices=[], gpu_uuids=[]), node="n", who=WHO)
    assert (env["CUDA_VISIBLE_DEVICES"], env["GPUQ_GPUS"], env["GPUQ_GPU_UUIDS"]) == ("", "0", "")


def test_daemon_environment_does_not_leak(make_spec: Callable[..., LaunchSpec],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUQ_NODE_TOKEN", "s3cret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    env = build_env(make_spec(), node="n", who=WHO)
    assert "s3cret" not in env.values()


@pytest.mark.skipif(os.geteuid() != 0, reason="a non-root daemon runs jobs as itself")
def test_root_daemon_runs_jobs_as_the_local_account() -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' account")
    who = identity_for("nobody")
    assert (who.uid, who.gid, who.switches_user) == (nobody.pw_uid, nobody.pw_gid, True)
    with pytest.raises(LaunchRefused, match="no local account 'no-such-user-x'"):
        identity_for("no-such-user-x")
    # A gpuq user named root (``gpuq up`` run by root) runs as root, without switching.
    assert (identity_for("root").uid, identity_for("root").switches_user) == (0, False)


@pytest.mark.skipif(os.geteuid() == 0, reason="only for a daemon not running as root")
def test_non_root_daemon_runs_jobs_as_itself() -> None:
    who = identity_for("someone-else")
    assert (who.uid, who.switches_user) == (os.geteuid(), False)


def test_identity_policy() -> None:
    allowed = identity_policy("daemon", allow_root=True)
    assert allowed("anyone") == daemon_identity()
    with pytest.raises(ValueError, match="worker_run_as must be one of user, daemon"):
        identity_policy("root")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a daemon running as root")
def test_root_jobs_are_refused_unless_allowed() -> None:
    for mode in ("user", "daemon"):
        with pytest.raises(LaunchRefused, match="refusing to run a job of 'root' as root"):
            identity_policy(mode)("root")
        assert identity_policy(mode, allow_root=True)("root").uid == 0
    with pytest.raises(LaunchRefused, match="as root"):
        identity_policy("daemon")("alice")  # the daemon is root: so would the job be


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a daemon running as root")
def test_a_root_daemon_may_still_run_jobs_as_other_users() -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' account")
    assert identity_policy("user")("nobody").uid == nobody.pw_uid
