"""--export (Slurm's meaning) and --env."""

from __future__ import annotations

import pytest

from gpuq.cli.export import build_environment, parse_env_pair

ENV = {"HOME": "/home/alice", "PATH": "/usr/bin", "GPUQ_TOKEN": "s1", "GPUQ_ADMIN_TOKEN": "s2",
       "GPUQ_NODE_TOKEN": "s3", "BASH_FUNC_f%%": "() { :; }", "LANG": "C.UTF-8"}


def test_all_is_the_environment_without_secrets_or_bad_names() -> None:
    out = build_environment("ALL", [], ENV)
    assert out == {"HOME": "/home/alice", "PATH": "/usr/bin", "LANG": "C.UTF-8"}
    assert build_environment("", [], ENV) == out


def test_all_plus_values() -> None:
    out = build_environment("ALL,FOO=bar,PATH=/opt/bin", [], ENV)
    assert out["FOO"] == "bar" and out["PATH"] == "/opt/bin" and out["HOME"] == "/home/alice"


def test_none_sends_nothing_but_env_entries() -> None:
    assert build_environment("NONE", ["X=1"], ENV) == {"X": "1"}


def test_a_list_sends_only_those() -> None:
    assert build_environment("HOME,VAR2=x,UNSET", [], ENV) == {"HOME": "/home/alice", "VAR2": "x"}


def test_env_entries_win_in_order() -> None:
    out = build_environment("NONE", ["A=1", "A=2=3,4", "B="], ENV)
    assert out == {"A": "2=3,4", "B": ""}


@pytest.mark.parametrize(("export", "pairs", "message"), [
    ("ALL,NONE", [], "contradict"),
    ("GPUQ_TOKEN", [], "secret"),
    ("NONE", ["GPUQ_NODE_TOKEN=x"], "secret"),
    ("1BAD=x", [], "not a valid variable name"),
    ("NONE", ["NOEQUALS"], "NAME=VALUE"),
])
def test_bad_exports(export: str, pairs: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_environment(export, pairs, ENV)


def test_parse_env_pair() -> None:
    assert parse_env_pair("K=a=b") == ("K", "a=b")
