from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from gpuq.worker import jobdir as jd
from gpuq.worker.jobdir import RunKey


@pytest.mark.parametrize("name, key", [
    ("12.3", RunKey(12, 3)), ("12", RunKey(12, 1)), ("7.1", RunKey(7, 1)),
    ("12.0", None), ("12.x", None), ("x", None), ("", None), (".tmp", None), ("1.2.3", None),
    ("١٢", None),
])
def test_run_names(name: str, key: RunKey | None) -> None:
    assert jd.parse_run_name(name) == key
    if key is not None and "." in name:
        assert jd.run_name(key) == name and str(key) == name


def test_list_and_find_runs_of_both_layouts(tmp_path: Path) -> None:
    for name in ("3", "3.2", "10.1", "notes", "5.0"):
        (tmp_path / name).mkdir()
    assert list(jd.list_runs(tmp_path)) == [(3, 1), (3, 2), (10, 1)]
    assert jd.find_run(tmp_path, RunKey(3, 1)) == tmp_path / "3"
    assert jd.find_run(tmp_path, RunKey(10, 1)) == tmp_path / "10.1"
    assert jd.find_run(tmp_path, RunKey(10, 2)) is None
    assert jd.list_runs(tmp_path / "missing") == {}


def test_a_poke_wakes_the_reader_and_costs_nothing_without_one(tmp_path: Path) -> None:
    run = tmp_path / "jobs" / "7.1"
    run.mkdir(parents=True)
    jd.poke(run)  # no FIFO yet (no daemon): nothing happens, nothing raises
    assert not (tmp_path / jd.POKE).exists()
    fd = jd.open_poke(tmp_path)
    try:
        assert select.select([fd], [], [], 0)[0] == []
        # From another process, as a supervisor does.
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                        "from gpuq.worker import jobdir as jd; jd.poke(Path(sys.argv[1]))",
                        str(run)], check=True, timeout=30)
        assert select.select([fd], [], [], 5)[0] == [fd]
        jd.drain_poke(fd)
        assert select.select([fd], [], [], 0)[0] == []
        for _ in range(100_000):  # a full FIFO (nobody reading) does not block the writer
            jd.poke(run)
        jd.drain_poke(fd)
    finally:
        os.close(fd)
    os.close(jd.open_poke(tmp_path))  # made once, opened again (a restarted daemon)
