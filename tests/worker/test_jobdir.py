from __future__ import annotations

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
