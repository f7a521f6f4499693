"""An in-process API (FastAPI TestClient) on a real database, with builders."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gpuq.config import Settings
from gpuq.scheduler.api.app import create_app
from gpuq.scheduler.clock import ManualClock
from gpuq.scheduler.entry.bootstrap import build_context
from gpuq.scheduler.runtime.context import Context
from gpuq.scheduler.runtime.loop import cycle


@dataclass
class RecordingDispatcher:
    """The dispatch seam: records what would go to the broker (e2e tests use real Celery)."""

    calls: list[tuple[str, str, int]] = field(default_factory=list)

    def launch(self, node: str, job_id: int) -> None:
        self.calls.append(("launch", node, job_id))

    def kill(self, node: str, job_id: int) -> None:
        self.calls.append(("kill", node, job_id))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Api:
    client: TestClient
    ctx: Context
    clock: ManualClock
    dispatcher: RecordingDispatcher
    admin: dict[str, str]

    def ok(self, method: str, url: str, headers: dict[str, str], status: int = 200,
           **kw: Any) -> Any:
        r = self.client.request(method, url, headers=headers, **kw)
        assert r.status_code == status, (r.status_code, r.text)
        return r.json()

    def account(self, name: str, parent: str = "root", shares: int = 1) -> None:
        self.ok("POST", "/v1/admin/accounts", self.admin, 201,
                json={"name": name, "parent": parent, "shares": shares})

    def user(self, name: str, account: str = "lab1", *, admin: bool = False) -> dict[str, str]:
        """Create the account if needed, the user, and a token; returns its headers."""
        r = self.client.get("/v1/admin/accounts", headers=self.admin).json()
        if account not in {a["name"] for a in r}:
            self.account(account)
        self.ok("POST", "/v1/admin/users", self.admin, 201,
                json={"name": name, "account": account, "admin": admin})
        tok = self.ok("POST", "/v1/admin/tokens", self.admin, 201,
                      json={"role": "admin" if admin else "user", "user": name})
        return bearer(tok["token"])

    def node(self, name: str = "gpu01", gpus: int = 4, model: str = "A100-80GB",
             cpus: int = 32, memory_mib: int = 256_000) -> dict[str, str]:
        """A registered node with ``gpus`` GPUs; returns its token headers."""
        tok = self.ok("POST", "/v1/admin/tokens", self.admin, 201,
                      json={"role": "node", "node": name})
        h = bearer(tok["token"])
        self.ok("POST", f"/v1/nodes/{name}/register", h, json={
            "cpus": cpus, "memory_mib": memory_mib, "gpu_backend": "simulated",
            "gpus": [{"index": i, "uuid": f"GPU-{name}-{i}", "model": model,
                      "memory_mib": 81920} for i in range(gpus)]})
        return h

    def submit(self, headers: dict[str, str], status: int = 201, **spec: Any) -> Any:
        body = {"command": ["true"], "workdir": "/tmp", **spec}
        return self.ok("POST", "/v1/jobs", headers, status, json=body)

    def job(self, job_id: int) -> Any:
        return self.ok("GET", f"/v1/jobs/{job_id}", self.admin)

    def cycle(self) -> Any:
        return cycle(self.ctx)


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    clock = ManualClock()
    dispatcher = RecordingDispatcher()
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url)
    ctx = build_context(settings, clock=clock, dispatcher=dispatcher)
    token = settings.effective_admin_token_file.read_text().strip()
    with TestClient(create_app(ctx)) as client:
        yield Api(client, ctx, clock, dispatcher, bearer(token))
    ctx.sessions.kw["bind"].dispose()


def audit_entries(api: Api, **filters: Any) -> list[dict[str, Any]]:
    """The audit log, newest first, with query filters (``action="grant"`` ...)."""
    return api.ok("GET", "/v1/admin/audit", api.admin, params=filters)


def last_audit(api: Api, action: str) -> dict[str, Any]:
    """The newest audit entry of ``action`` (there must be one)."""
    entries = audit_entries(api, action=action, limit=1)
    assert entries, f"no audit entry for {action}"
    return entries[0]
