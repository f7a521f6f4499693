"""What the server keeps is its own: the data directory, the job logs and the SQLite
database (with its -wal and -shm files) are created 0700 / 0600, and a data directory
left open by an older version is made 0700 at start (logged)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from gpuq.config import Settings
from gpuq.files import open_private, private_dir, tighten
from gpuq.scheduler.clock import ManualClock
from gpuq.scheduler.entry.bootstrap import build_context
from gpuq.scheduler.entry.local import provision
from gpuq.scheduler.runtime.logstore import LogStore
from tests.api.conftest import RecordingDispatcher


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual umask (022): what is private must not owe it to the umask."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_servers_data_is_private(tmp_path: Path, loose_umask: None) -> None:
    data = tmp_path / "a" / "data"  # its parent is missing too
    settings = Settings(data_dir=data)  # SQLite in the data directory
    ctx = build_context(settings, clock=ManualClock(), dispatcher=RecordingDispatcher())
    try:
        with ctx.transaction() as session:  # a write: the WAL files exist
            session.execute(text("CREATE TABLE IF NOT EXISTS probe (x INTEGER)"))
            session.execute(text("INSERT INTO probe VALUES (1)"))
        ctx.logs.append(7, 0, b"secret output\n")
        ctx.logs.append(7, 0, b"run 2\n", attempt=2)
        db = data / "gpuq.db"
        assert mode(data) == 0o700 and mode(tmp_path / "a") == 0o700
        assert mode(settings.log_dir) == 0o700
        assert mode(ctx.logs.path(7)) == 0o600 and mode(ctx.logs.path(7, 2)) == 0o600
        assert mode(settings.effective_admin_token_file) == 0o600
        for f in (db, db.with_name("gpuq.db-wal"), db.with_name("gpuq.db-shm")):
            assert f.exists() and mode(f) == 0o600, f
        for f in data.rglob("*"):
            assert not mode(f) & 0o077, f"{f} is open to others ({mode(f):o})"
    finally:
        ctx.sessions.kw["bind"].dispose()


def test_a_truncated_logs_marker_is_private(tmp_path: Path, loose_umask: None) -> None:
    logs = LogStore(tmp_path / "logs", max_bytes=4)
    logs.append(1, 0, b"0123456789")
    logs.append(1, 10, b"more")
    marker = logs.path(1).with_suffix(".truncated")
    assert marker.exists() and mode(marker) == 0o600 and mode(logs.path(1)) == 0o600


def test_an_open_data_directory_is_made_private_at_start(
        tmp_path: Path, loose_umask: None, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True, mode=0o755)
    data.chmod(0o755)
    (data / "logs").chmod(0o755)
    db = data / "gpuq.db"
    db.touch()
    db.chmod(0o644)
    settings = Settings(data_dir=data)
    with caplog.at_level(logging.WARNING, logger="gpuq.files"):
        ctx = build_context(settings, clock=ManualClock(), dispatcher=RecordingDispatcher())
    ctx.sessions.kw["bind"].dispose()
    assert mode(data) == 0o700 and mode(data / "logs") == 0o700 and mode(db) == 0o600
    said = caplog.text
    assert f"{data} was open to other users (mode 0755); made it 0700" in said
    assert f"{db} was open to other users (mode 0644); made it 0600" in said


def test_gpuq_ups_provisioning_is_private(tmp_path: Path, loose_umask: None) -> None:
    settings = Settings(data_dir=tmp_path / "data", node_name="box")
    creds = provision(settings, unix_user="carol", now=ManualClock()())
    assert mode(settings.data_dir) == 0o700
    for f in settings.data_dir.iterdir():
        assert not mode(f) & 0o077, f"{f} is open to others ({mode(f):o})"
    assert mode(creds.node_token_file) == 0o600


def test_a_directory_of_another_account_is_left_alone(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another account")
    d = tmp_path / "shared"
    d.mkdir()
    os.chown(d, 65534, 65534)
    d.chmod(0o755)
    assert private_dir(d) == d and mode(d) == 0o755
    assert not tighten(d, 0o700)


def test_open_private_ignores_the_umask(tmp_path: Path, loose_umask: None) -> None:
    with open_private(tmp_path / "f") as f:
        f.write(b"x")
    assert mode(tmp_path / "f") == 0o600
    explicit = private_dir(tmp_path / "x" / "y", fix=False)
    assert mode(explicit) == 0o700 and mode(tmp_path / "x") == 0o700


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # FastAPI on_event
def test_the_server_process_creates_private_files(tmp_path: Path, loose_umask: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``gpuq server`` runs with umask 077 (what any library of it creates is its own)."""
    import uvicorn

    from gpuq.scheduler.entry import server

    seen: list[int] = []

    def fake_run(app: object, **kw: object) -> None:
        umask = os.umask(0)
        os.umask(umask)
        seen.append(umask)
        (tmp_path / "made-by-the-server").write_text("x")

    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert server.run(Settings(data_dir=tmp_path / "data")) == 0
    assert seen == [0o077]
    assert mode(tmp_path / "made-by-the-server") == 0o600
