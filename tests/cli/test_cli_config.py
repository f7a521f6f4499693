"""Client configuration: file, environment, options; and writing it for `gpuq up`."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuq.cli.client import CliError
from gpuq.cli.config import (
    DEFAULT_SERVER,
    client_config_path,
    load_client_config,
    read_client_config_file,
    simple_toml,
    user_config_dir,
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


@pytest.mark.parametrize("xdg", [None, "", "/xdg/conf", "/xdg/conf/", "relative/conf", " /x"])
@pytest.mark.parametrize("home", [None, "", "/home/al", "/home/al/", "relative", "/"])
def test_the_user_config_dir_is_platformdirs(monkeypatch: pytest.MonkeyPatch,
                                             xdg: str | None, home: str | None) -> None:
    import platformdirs

    for name, value in (("XDG_CONFIG_HOME", xdg), ("HOME", home)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    try:
        expected = platformdirs.user_config_dir("gpuq")
    except RuntimeError:  # no home platformdirs can use
        with pytest.raises(RuntimeError):
            user_config_dir()
        return
    assert user_config_dir() == expected


_TOML_PIECES = st.sampled_from([
    'server = "http://h:1"', 'token="t"', "  admin_token\t=  \"a\\\\b\\\"c\"  # note",
    'x-y_1 = "\\u00e9\\u0001"', "# comment", "", "   ", "[table]", "a.b = \"dotted\"",
    '"quoted" = "key"', "n = 5", "s = 'literal'", 's = "\\n"', 's = "\\ud800"',
    's = "unterminated', 's = "x" y', 'server = "again"', "= \"nokey\"", "\tk = \"tab\"\t",
    "k = \"\"", "\u00e9 = \"x\"", "k = \"caf\u00e9\"", "#\x01", "k = \"\x7f\"", "k = \"a\rb\"",
])


@settings(max_examples=500, deadline=None)
@given(st.lists(_TOML_PIECES, max_size=6), st.sampled_from(["\n", "\r\n"]),
       st.booleans())
def test_the_simple_toml_reader_agrees_with_tomllib(lines: list[str], eol: str,
                                                    last_eol: bool) -> None:
    text = eol.join(lines) + (eol if last_eol else "")
    try:
        expected = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        assert simple_toml(text) is None
        return
    got = simple_toml(text)
    assert got is None or got == expected


def test_what_gpuq_writes_is_read_without_tomllib(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    write_client_config(path, "http://h:1", 'gpuq_"odd\\token\x01\x7f', "gpuq_admin")
    assert simple_toml(path.read_text()) == tomllib.loads(path.read_text())
