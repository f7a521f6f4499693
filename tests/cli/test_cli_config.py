"""Client configuration: file, environment, options; and writing it for `gpuq up`."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gpuq.cli.client import CliError
from gpuq.cli.config import (
    DEFAULT_SERVER,
    client_config_path,
    load_client_config,
    read_client_config_file,
    write_client_config,
)


def test_path_follows_the_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUQ_CLIENT_CONFIG", str(tmp_path / "c.toml"))
    assert client_config_path() == tmp_path / "c.toml"
    monkeypatch.delenv("GPUQ_CLIENT_CONFIG")
    assert client_config_path().parts[-2:] == ("gpuq", "config.toml")


def test_write_is_0600_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.toml"
    token = 'gpuq_"odd\\token\x01'
    assert write_client_config(path, "http://h:1", token, "gpuq_admin") == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_client_config_file(path) == {"server": "http://h:1", "token": token,
                                             "admin_token": "gpuq_admin"}
    write_client_config(path, "http://h:2", "t2")  # replaces the old file
    assert read_client_config_file(path) == {"server": "http://h:2", "token": "t2"}
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]


def test_precedence_option_env_file_default(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert load_client_config(environ={}, path=path).server == DEFAULT_SERVER
    write_client_config(path, "file:1", "file-token", "file-admin")
    cfg = load_client_config(environ={}, path=path)
    assert (cfg.server, cfg.token, cfg.admin_token) == ("http://file:1", "file-token",
                                                        "file-admin")
    env = {"GPUQ_SERVER": "http://env:2/", "GPUQ_TOKEN": "env-token",
           "GPUQ_ADMIN_TOKEN": "env-admin"}
    cfg = load_client_config(environ=env, path=path)
    assert (cfg.server, cfg.token, cfg.admin_token) == ("http://env:2", "env-token",
                                                        "env-admin")
    cfg = load_client_config(server="https://opt:3", token="opt-token", environ=env, path=path)
    assert (cfg.server, cfg.token_for(admin=False), cfg.token_for(admin=True)) == \
        ("https://opt:3", "opt-token", "opt-token")


def test_admin_falls_back_to_the_user_token(tmp_path: Path) -> None:
    cfg = load_client_config(environ={"GPUQ_TOKEN": "t"}, path=tmp_path / "none.toml")
    assert cfg.token_for(admin=True) == "t"


def test_a_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("server = [oops")
    with pytest.raises(CliError, match="cannot read the configuration file"):
        read_client_config_file(path)
    path.write_text("token = 5\n")
    with pytest.raises(CliError, match="token must be a string"):
        read_client_config_file(path)
