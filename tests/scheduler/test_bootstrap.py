"""First start: root account, admin user and token (file 0600); later starts change nothing.
Also `gpuq up`'s provisioning of the local user and node."""

from __future__ import annotations

import stat
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from gpuq.config import Settings
from gpuq.scheduler.api.app import create_app
from gpuq.scheduler.clock import ManualClock
from gpuq.scheduler.db.models import Account, ApiToken, User
from gpuq.scheduler.entry.bootstrap import build_context
from gpuq.scheduler.entry.local import provision
from tests.api.conftest import RecordingDispatcher


def _ctx(tmp_path: Path, db_url: str):  # noqa: ANN202
    s = Settings(data_dir=tmp_path / "data", database_url=db_url)
    return s, build_context(s, clock=ManualClock(), dispatcher=RecordingDispatcher())


def test_first_start_writes_a_private_admin_token(tmp_path: Path, db_url: str) -> None:
    settings, ctx = _ctx(tmp_path, db_url)
    path = settings.effective_admin_token_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    with TestClient(create_app(ctx)) as client:
        me = client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"}).json()
        assert me["role"] == "admin" and me["user"] == "admin"
        # The API's own description is served.
        assert client.get("/openapi.json").json()["info"]["title"] == "gpuq"
        assert client.get("/docs").status_code == 200
    # A second start finds the admin token and writes no new one.
    _, again = _ctx(tmp_path, db_url)
    assert path.read_text().strip() == token
    with again.transaction() as s:
        assert s.scalar(select(func.count()).select_from(ApiToken)) == 1
        assert s.scalar(select(Account.name).where(Account.parent_id.is_(None))) == "root"


def test_up_provisioning_is_reused(tmp_path: Path, db_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, node_name="box")
    clock = ManualClock()
    first = provision(settings, unix_user="carol", now=clock())
    second = provision(settings, unix_user="carol", now=clock())
    assert first == second
    assert stat.S_IMODE(first.node_token_file.stat().st_mode) == 0o600
    _, ctx = _ctx(tmp_path, db_url)
    with TestClient(create_app(ctx)) as client:
        me = client.get("/v1/whoami",
                        headers={"Authorization": f"Bearer {first.user_token}"}).json()
        assert me == {"role": "user", "user": "carol", "node": None, "admin": False,
                      "accounts": ["local"], "default_account": "local"}
        node_token = first.node_token_file.read_text().strip()
        r = client.get("/v1/whoami", headers={"Authorization": f"Bearer {node_token}"})
        assert r.json()["node"] == "box"
    with ctx.transaction() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 2  # admin, carol
