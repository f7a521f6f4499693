"""Settings: defaults, the TOML file, GPUQ_* variables, in that order of strength."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuq.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("GPUQ_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("GPUQ_CONFIG", str(tmp_path / "absent.toml"))


def test_defaults_need_no_service(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.effective_database_url == f"sqlite:///{tmp_path / 'gpuq.db'}"
    assert s.effective_broker_url == "filesystem://"
    assert s.effective_admin_token_file == tmp_path / "admin.token"
    assert s.billing_weight("A100-80GB") == 4.8 and s.billing_weight("unknown") == 1.0


def test_the_example_server_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUQ_CONFIG", str(DEPLOY / "server.toml"))
    s = Settings()
    assert s.database_url.startswith("postgresql+psycopg://")
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.listen_host == "0.0.0.0" and s.max_time_limit_s == 14 * 86400
    assert s.gpu_billing_weights["H100-80GB"] == 12.2


def test_the_example_worker_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUQ_CONFIG", str(DEPLOY / "worker.toml"))
    s = Settings()
    assert s.node_token_file == "/etc/gpuq/node.token"
    assert s.server_url == "https://gpuq.example.edu"


def test_environment_beats_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUQ_CONFIG", str(DEPLOY / "server.toml"))
    monkeypatch.setenv("GPUQ_LISTEN_PORT", "9000")
    monkeypatch.setenv("GPUQ_GPU_BILLING_WEIGHTS", '{"T4-16GB": 2.0}')
    s = Settings()
    assert s.listen_port == 9000
    # Tables merge key by key: the variable's T4 weight wins, the file's others stay.
    assert s.gpu_billing_weights["T4-16GB"] == 2.0
    assert s.gpu_billing_weights["H100-80GB"] == 12.2
    assert s.listen_host == "0.0.0.0"  # still from the file


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUQ_LISTEN_PORT", "not-a-port")
    with pytest.raises(ValueError, match="listen_port"):
        Settings()


def test_the_node_timeout_leaves_room_for_the_fence(tmp_path: Path) -> None:
    """node_down_after_s >= fence_after_s + fence_grace_s + fence_margin_s (issue 16, item
    3): a node cut off from the scheduler has stopped its jobs before they run elsewhere."""
    s = Settings(data_dir=tmp_path)
    assert (s.node_down_after_s, s.effective_fence_after_s) == (60.0, 45.0)  # derived
    s = Settings(data_dir=tmp_path, node_down_after_s=120)
    assert s.effective_fence_after_s == 105.0
    s = Settings(data_dir=tmp_path, node_down_after_s=6, fence_after_s=3, fence_grace_s=1,
                 fence_margin_s=1.5, heartbeat_interval_s=0.5)
    assert s.effective_fence_after_s == 3.0
    with pytest.raises(ValueError, match=r"at least fence_after_s \+ fence_grace_s \+ "
                                         r"fence_margin_s \(50 \+ 10 \+ 5 = 65\)"):
        Settings(data_dir=tmp_path, fence_after_s=50)
    with pytest.raises(ValueError, match="leaves no time to fence"):
        Settings(data_dir=tmp_path, node_down_after_s=15)
    with pytest.raises(ValueError, match="at least two heartbeat intervals"):
        Settings(data_dir=tmp_path, heartbeat_interval_s=30)
    with pytest.raises(ValueError):
        Settings(data_dir=tmp_path, fence_margin_s=0.5)
