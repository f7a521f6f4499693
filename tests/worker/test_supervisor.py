"""The job supervisor, run for real: ``python -m gpuq.worker.supervisor <jobdir>``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from gpuq.worker import jobdir as jd
from gpuq.worker.jobtree import exit_code_of

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "0,1",
       "GPUQ_JOB_ID": "7"}


def make_jobdir(tmp_path: Path, *, command: list[str] | None = None, script: str | None = None,
                workdir: str | None = None, env: dict[str, str] | None = None,
                time_limit_s: int = 30, kill_grace_s: float = 0.5,
                refused: str | None = None, attempt: int = 1,
                extra: dict[str, Any] | None = None) -> Path:
    d = tmp_path / "jobs" / f"7.{attempt}"
    d.mkdir(parents=True)
    if script is not None:
        (d / jd.SCRIPT).write_text(script)
        (d / jd.SCRIPT).chmod(0o700)
    launch = {"job_id": 7, "command": command, "script": script,
              "workdir": workdir or str(tmp_path), "time_limit_s": time_limit_s,
              "gpu_indices": [0, 1]}
    jd.write_json_atomic(d / jd.SPEC, {"job_id": 7, "attempt": attempt, "launch": launch,
                                       "env": ENV if env is None else env,
                                       "kill_grace_s": kill_grace_s, "run_as": None,
                                       "refused": refused, **(extra or {})})
    return d


def start(d: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gpuq.worker.supervisor", str(d)],
                            start_new_session=True, stdin=subprocess.DEVNULL, env=env)


def run(d: Path, timeout_s: float = 4.0) -> dict[str, Any]:
    p = start(d)
    assert p.wait(timeout_s) == 0
    state = jd.read_json(d / jd.STATE)
    assert state is not None
    return state


def output(d: Path) -> str:
    return (d / jd.LOG).read_text()


def running(d: Path, wait_for: Any) -> dict[str, Any]:
    return wait_for(lambda: (s := jd.read_json(d / jd.STATE)) and s["state"] == "RUNNING" and s,
                    what="RUNNING")


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_exit_code_of_signal_is_128_plus_n() -> None:
    assert exit_code_of(0) == 0
    assert exit_code_of(3 << 8) == 3
    assert exit_code_of(signal.SIGKILL) == 137


def test_completed_with_output_in_workdir(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    d = make_jobdir(tmp_path, workdir=str(work),
                    command=["/bin/sh", "-c", "echo out; echo err >&2; pwd"])
    s = run(d)
    assert (s["state"], s["exit_code"], s["reason"]) == ("COMPLETED", 0, "exit code 0")
    assert s["started_at"] and s["ended_at"] and s["pid"] == s["pgid"]
    assert output(d).splitlines() == ["out", "err", str(work)]


def test_state_names_the_run(tmp_path: Path) -> None:
    s = run(make_jobdir(tmp_path, command=["true"], attempt=3))
    assert (s["job_id"], s["attempt"], s["state"]) == (7, 3, "COMPLETED")


def test_nonzero_exit_fails(tmp_path: Path) -> None:
    s = run(make_jobdir(tmp_path, command=["/bin/sh", "-c", "exit 3"]))
    assert (s["state"], s["exit_code"], s["reason"]) == ("FAILED", 3, "exit code 3")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV])
def test_killed_by_signal_is_128_plus_n(tmp_path: Path, sig: signal.Signals) -> None:
    s = run(make_jobdir(tmp_path, command=["/bin/sh", "-c", f"kill -{int(sig)} $$"]))
    assert (s["state"], s["exit_code"]) == ("FAILED", 128 + sig)
    assert sig.name in s["reason"]


def test_job_gets_exactly_the_spec_environment(tmp_path: Path) -> None:
    d = make_jobdir(tmp_path, command=["/usr/bin/env"])
    p = start(d, env={**os.environ, "GPUQ_NODE_TOKEN": "s3cret", "DAEMON_ONLY": "1"})
    assert p.wait(4) == 0
    seen = dict(line.split("=", 1) for line in output(d).splitlines())
    assert seen == ENV


def test_job_runs_in_its_own_session(tmp_path: Path, wait_for: Any) -> None:
    d = make_jobdir(tmp_path, command=["sleep", "30"])
    p = start(d)
    s = running(d, wait_for)
    assert os.getpgid(s["pid"]) == s["pid"] == os.getsid(s["pid"]) != os.getpgid(p.pid)
    assert s["supervisor_pid"] == p.pid
    p.send_signal(signal.SIGTERM)
    assert p.wait(4) == 0


def test_timeout_sigterms_the_group(tmp_path: Path) -> None:
    d = make_jobdir(tmp_path, command=["sleep", "30"], time_limit_s=1, kill_grace_s=2)
    t0 = time.monotonic()
    s = run(d)
    assert (s["state"], s["exit_code"]) == ("TIMEOUT", 128 + signal.SIGTERM)
    assert "time limit of 1 s" in s["reason"]
    assert 0.9 < time.monotonic() - t0 < 3


def test_timeout_sigkills_a_job_that_ignores_sigterm(tmp_path: Path) -> None:
    d = make_jobdir(tmp_path, command=["/bin/sh", "-c", "trap '' TERM; echo ready; "
                                       "while :; do sleep 0.05; done"],
                    time_limit_s=1, kill_grace_s=0.3)
    s = run(d)
    assert (s["state"], s["exit_code"]) == ("TIMEOUT", 128 + signal.SIGKILL)


GRANDPARENT = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", '''
    import subprocess, time
    gc = subprocess.Popen(["sleep", "60"])
    open("grandchild.pid", "w").write(str(gc.pid))
    time.sleep(60)
    '''])
    open("child.pid", "w").write(str(child.pid))
    time.sleep(60)
""")


def test_cancel_kills_the_whole_process_group(tmp_path: Path, wait_for: Any) -> None:
    d = make_jobdir(tmp_path, command=[sys.executable, "-c", GRANDPARENT], kill_grace_s=2)
    p = start(d)
    s = running(d, wait_for)

    def pid(name: str) -> int:
        path = tmp_path / name
        return int(path.read_text() or 0) if path.exists() else 0

    pids = [s["pid"], wait_for(lambda: pid("child.pid"), what="child"),
            wait_for(lambda: pid("grandchild.pid"), what="grandchild")]
    assert not any(gone(pid) for pid in pids)
    p.send_signal(signal.SIGTERM)
    assert p.wait(4) == 0
    s = jd.read_json(d / jd.STATE)
    assert s is not None
    assert (s["state"], s["exit_code"], s["reason"]) == ("CANCELLED", 143, "cancelled")
    assert all(gone(pid) for pid in pids)


def test_cancel_leaves_no_process_that_ignored_sigterm(tmp_path: Path, wait_for: Any) -> None:
    d = make_jobdir(tmp_path, kill_grace_s=0.3, command=[
        "/bin/sh", "-c", "(trap '' TERM; echo $$ > /dev/null; exec sleep 60) & "
                         "echo $! > bg.pid; wait"])
    p = start(d)
    running(d, wait_for)
    bg = int(wait_for(lambda: (tmp_path / "bg.pid").exists()
                      and (tmp_path / "bg.pid").read_text().strip(), what="bg.pid"))
    p.send_signal(signal.SIGTERM)
    assert p.wait(4) == 0
    assert jd.read_json(d / jd.STATE)["state"] == "CANCELLED"  # type: ignore[index]
    assert gone(bg)


def test_cancel_file_before_start_runs_nothing(tmp_path: Path) -> None:
    d = make_jobdir(tmp_path, command=["/bin/sh", "-c", "touch ran"])
    (d / jd.CANCEL).touch()
    s = run(d)
    assert (s["state"], s["pid"]) == ("CANCELLED", None)
    assert not (tmp_path / "ran").exists()


def test_missing_program_fails_like_a_shell(tmp_path: Path) -> None:
    d = make_jobdir(tmp_path, command=["/no/such/program", "x"])
    s = run(d)
    assert (s["state"], s["exit_code"], s["pid"]) == ("FAILED", 127, None)
    assert "/no/such/program" in s["reason"]
    assert output(d).startswith("gpuq: cannot start program /no/such/program")


def test_missing_workdir_fails_naming_it(tmp_path: Path) -> None:
    s = run(make_jobdir(tmp_path, command=["true"], workdir="/no/such/dir"))
    assert (s["state"], s["exit_code"]) == ("FAILED", 127)
    assert "workdir /no/such/dir" in s["reason"]


def test_program_without_permission_is_126(tmp_path: Path) -> None:
    prog = tmp_path / "prog"
    prog.write_text("echo hi\n")
    prog.chmod(0o600)
    s = run(make_jobdir(tmp_path, command=[str(prog)]))
    assert (s["state"], s["exit_code"]) == ("FAILED", 126)


def test_argv_is_not_interpreted_by_a_shell(tmp_path: Path) -> None:
    d = make_jobdir(tmp_path, command=["echo", "$HOME", "; touch pwned", "`id`"])
    assert run(d)["state"] == "COMPLETED"
    assert output(d) == "$HOME ; touch pwned `id`\n"
    assert not (tmp_path / "pwned").exists()


def test_script_without_shebang_runs_with_bash(tmp_path: Path) -> None:
    d = make_jobdir(tmp_path, script="[[ 1 == 1 ]] && echo bash-ok\necho $CUDA_VISIBLE_DEVICES\n")
    assert run(d)["state"] == "COMPLETED"
    assert output(d) == "bash-ok\n0,1\n"


def test_script_with_shebang_is_executed_directly(tmp_path: Path) -> None:
    script = "#!/bin/cat\nthis is not shell\n"
    d = make_jobdir(tmp_path, script=script)
    assert run(d)["state"] == "COMPLETED"
    assert output(d) == script


def test_refused_job_fails_with_the_reason(tmp_path: Path) -> None:
    d = make_jobdir(tmp_path, refused="no local account 'bob' on this node")
    s = run(d)
    assert (s["state"], s["reason"]) == ("FAILED", "no local account 'bob' on this node")
    assert "no local account" in output(d)


def test_a_job_is_never_started_twice(tmp_path: Path) -> None:
    d = make_jobdir(tmp_path, command=["/bin/sh", "-c", "echo once"])
    run(d)
    before = (d / jd.STATE).read_bytes()
    p = start(d)
    assert p.wait(4) == 0
    assert output(d) == "once\n"
    assert (d / jd.STATE).read_bytes() == before
    assert json.loads(before)["state"] == "COMPLETED"
