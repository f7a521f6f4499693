"""``spawn_into_cgroup``: a real process created inside a real cgroup2 directory with
``clone3`` (skipped where cgroup v2 is not writable: it needs root)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuq.worker import cgroups
from gpuq.worker.cgroups import CgroupUnavailable

ENV = {"PATH": "/usr/bin:/bin", "FOO": "bar baz"}


@pytest.fixture
def cgroup_dir() -> Iterator[Path]:
    node = f"spawn-{uuid.uuid4().hex[:8]}"
    try:
        root = cgroups.prepare_node("auto", node)
    except CgroupUnavailable as e:
        pytest.skip(f"cgroup v2 is not writable here (needs root and a cgroup2 mount): {e}")
    d = cgroups.node_dir(root, node) / "job-1.1"
    d.mkdir()
    yield d
    for path in (d, d.parent):
        with contextlib.suppress(OSError):
            path.rmdir()


#: ``spawn_into_cgroup`` called in a fresh, single-threaded interpreter, as the supervisor
#: calls it. Not in pytest's own process: its child runs Python between clone3 and exec,
#: and raw clone3 runs no fork handlers, so a lock that another thread of a
#: multi-threaded caller holds (xdist's receiver thread inside malloc, say) stays held in
#: the child for ever (seen once: the report pipe never closed).
DRIVER = """
import json, os, sys, threading
from gpuq.worker.spawn import CloneUnavailable, spawn_into_cgroup
a = json.loads(sys.argv[1])
if a.get("thread"):
    threading.Thread(target=threading.Event().wait, daemon=True).start()
r, w = os.pipe()
try:
    pid = spawn_into_cgroup(a["argv"], env=a["env"], cgroup_dir=a["cgroup"],
                            stdout_path=a["out"], report_w=w, child_setup=None,
                            cwd=a["cwd"]).pid
except CloneUnavailable as e:
    try:
        os.waitpid(-1, os.WNOHANG)
        children = True
    except ChildProcessError:
        children = False
    print(json.dumps({"unavailable": str(e), "children": children}))
    sys.exit(0)
finally:
    os.close(w)
with os.fdopen(r, "rb") as f:
    report = f.read().decode()
_, status = os.waitpid(pid, 0)
print(json.dumps({"pid": pid, "report": report, "code": os.waitstatus_to_exitcode(status)}))
"""


def run_driver(argv: list[str], cgroup: Path, out: Path, *, cwd: str | None = "/",
               env: dict[str, str] | None = None, thread: bool = False) -> dict[str, Any]:
    args = {"argv": argv, "env": ENV if env is None else env, "cgroup": str(cgroup),
            "out": str(out), "cwd": cwd, "thread": thread}
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(args)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def spawn(argv: list[str], cgroup: Path, out: Path, *, cwd: str | None = "/",
          env: dict[str, str] | None = None) -> tuple[int, str, int]:
    """Start ``argv``; returns its pid, what the child reported and its exit status."""
    r = run_driver(argv, cgroup, out, cwd=cwd, env=env)
    return r["pid"], r["report"], r["code"]


def test_the_job_starts_inside_its_cgroup_in_its_own_session(
        cgroup_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.log"
    out.write_text("before\n")
    script = ("cat /proc/self/cgroup; pwd; echo \"$FOO\"; cut -d' ' -f6 /proc/$$/stat; echo $$; "
              "ls /proc/$$/fd; grep SigIgn /proc/$$/status; echo err >&2; read x; "
              "echo \"read:$x:$?\"")
    pid, report, code = spawn(["sh", "-c", script], cgroup_dir, out, cwd=str(tmp_path))
    assert (report, code) == ("", 0)
    lines = out.read_text().splitlines()
    assert lines[0] == "before"  # appended, not truncated
    rel = cgroup_dir.relative_to(cgroups.resolve_root("auto")).as_posix()
    assert f"0::/{rel}" in lines  # from its first instruction: no migration
    i = lines.index(str(tmp_path))
    sid = lines[i + 2].strip()
    assert lines[i + 1] == "bar baz"
    assert sid == lines[i + 3] == str(pid)  # a new session, led by the job
    fds = lines[i + 4:lines.index(next(x for x in lines if x.startswith("SigIgn")))]
    assert set(fds) <= {"0", "1", "2", "255"}  # nothing of the caller's (sh keeps 255)
    sig_ign = int(next(x for x in lines if x.startswith("SigIgn")).split()[1], 16)
    assert sig_ign == 0  # SIGPIPE and SIGXFSZ back to default, as Popen does
    assert "err" in lines and "read::1" in lines  # stderr to the log, stdin /dev/null


def test_a_program_that_is_not_there_is_reported_as_popen_would(
        cgroup_dir: Path, tmp_path: Path) -> None:
    _, report, code = spawn(["no-such-program-gpuq"], cgroup_dir, tmp_path / "out")
    assert code == 127
    assert report == "error\t2\tno-such-program-gpuq\tNo such file or directory\n"


def test_a_workdir_that_is_not_there_is_reported(cgroup_dir: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "gone")
    _, report, code = spawn(["true"], cgroup_dir, tmp_path / "out", cwd=missing)
    assert code == 127
    assert report == f"error\t2\t{missing}\tNo such file or directory\n"


def test_a_program_found_on_the_environments_path(cgroup_dir: Path, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "gpuq-hello"
    tool.write_text("#!/bin/sh\necho hello from $0\n")
    tool.chmod(0o755)
    env = {"PATH": f"{tmp_path / 'nothing'}:{bindir}:/usr/bin:/bin"}
    _, report, code = spawn(["gpuq-hello"], cgroup_dir, tmp_path / "out", env=env)
    assert (report, code) == ("", 0)
    assert (tmp_path / "out").read_text() == f"hello from {tool}\n"


def test_no_cgroup_directory_starts_nothing(tmp_path: Path) -> None:
    r = run_driver(["true"], tmp_path / "none", tmp_path / "out")
    assert "cannot open" in r["unavailable"]
    assert r["children"] is False  # no child was made
    assert not (tmp_path / "out").exists()


def test_a_caller_with_other_threads_is_refused(cgroup_dir: Path, tmp_path: Path) -> None:
    r = run_driver(["true"], cgroup_dir, tmp_path / "out", thread=True)
    assert "other threads" in r["unavailable"] and r["children"] is False
    assert not (tmp_path / "out").exists()
