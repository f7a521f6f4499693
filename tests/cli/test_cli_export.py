"""--export (Slurm's meaning) and --env."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_fakeapi import FakeApi

from gpuq.cli.export import build_environment, export_environment, looks_secret, parse_env_pair

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


# --- what ALL withholds ---------------------------------------------------------------------

SECRETS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "AWS_SESSION_TOKEN": "aws-session", "GITHUB_TOKEN": "ghp_x", "HF_TOKEN": "hf_x",
    "OPENAI_API_KEY": "sk-x", "ANTHROPIC_API_KEY": "sk-ant-x", "WANDB_API_KEY": "wb",
    "AZURE_CLIENT_SECRET": "az", "TWINE_PASSWORD": "pw", "PGPASSWORD": "pg",
    "SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1", "db_password": "lower",
}
PLAIN = {"HOME": "/home/alice", "PATH": "/usr/bin", "TOKENIZERS_PARALLELISM": "false",
         "GOOGLE_APPLICATION_CREDENTIALS": "/home/alice/gcp.json", "CUDA_HOME": "/opt/cuda"}


def test_all_withholds_names_that_look_like_secrets() -> None:
    out = export_environment("ALL", [], {**SECRETS_ENV, **PLAIN, "GPUQ_TOKEN": "t"})
    assert out.environment == PLAIN
    assert out.withheld == tuple(sorted(SECRETS_ENV))
    assert build_environment("", [], {**SECRETS_ENV, **PLAIN}) == PLAIN  # ALL by default


@pytest.mark.parametrize("name", sorted(SECRETS_ENV))
def test_looks_secret(name: str) -> None:
    assert looks_secret(name)


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_does_not_look_secret(name: str) -> None:
    assert not looks_secret(name)


def test_a_name_given_is_passed_even_if_it_looks_secret() -> None:
    env = {**SECRETS_ENV, **PLAIN}
    out = export_environment("ALL,HF_TOKEN,WANDB_API_KEY=other", ["PGPASSWORD=mine"], env)
    assert out.environment["HF_TOKEN"] == "hf_x" and out.environment["WANDB_API_KEY"] == "other"
    assert out.environment["PGPASSWORD"] == "mine"
    assert "HF_TOKEN" not in out.withheld and "PGPASSWORD" not in out.withheld
    assert "OPENAI_API_KEY" in out.withheld and "OPENAI_API_KEY" not in out.environment
    only = export_environment("HF_TOKEN,HOME", [], env)
    assert only.environment == {"HF_TOKEN": "hf_x", "HOME": "/home/alice"}
    assert only.withheld == ()  # not ALL: nothing else was going to be sent


def test_none_and_nil_send_nothing_and_withhold_nothing() -> None:
    for mode in ("NONE", "NIL", "nil"):
        out = export_environment(mode, [], {**SECRETS_ENV, **PLAIN})
        assert out.environment == {} and out.withheld == ()
    with pytest.raises(ValueError, match="contradict"):
        export_environment("ALL,NIL", [], PLAIN)


def test_gpuq_tokens_stay_refused_even_when_named() -> None:
    with pytest.raises(ValueError, match="secret"):
        export_environment("ALL,GPUQ_ADMIN_TOKEN", [], {"GPUQ_ADMIN_TOKEN": "x"})


def test_submit_says_which_names_it_withheld_never_their_values(
        api: FakeApi, gpuq, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k, v in {**SECRETS_ENV, "MY_VAR": "1"}.items():
        monkeypatch.setenv(k, v)
    r = gpuq("submit", "--", "true")
    assert r.exit_code == 0, r.output
    env = api.posts[-1]["environment"]
    assert env["MY_VAR"] == "1" and not set(SECRETS_ENV) & set(env)
    assert r.stdout == "Submitted job 1\n"
    for name, value in SECRETS_ENV.items():
        assert name in r.stderr and value not in r.stderr
    # Named on the command line, or in a #GPUQ line: passed, and not said to be withheld.
    r = gpuq("submit", "--export", "ALL,HF_TOKEN", "--", "true")
    assert api.posts[-1]["environment"]["HF_TOKEN"] == "hf_x" and "HF_TOKEN" not in r.stderr
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n#GPUQ --export=ALL,OPENAI_API_KEY\necho\n")
    r = gpuq("submit", str(script))
    assert r.exit_code == 0, r.output
    assert api.posts[-1]["environment"]["OPENAI_API_KEY"] == "sk-x"
    assert "OPENAI_API_KEY" not in r.stderr and "HF_TOKEN" in r.stderr
    # Nothing withheld: nothing said.
    assert gpuq("submit", "--export", "NONE", "--", "true").stderr == ""


def test_the_secret_patterns_match_as_fnmatch_does() -> None:
    """``looks_secret`` matches ``SECRET_PATTERNS`` without fnmatch (which compiles a
    regular expression per pattern in every ``gpuq submit``): patterns with ``*`` at their
    ends only, each name as fnmatch would."""
    import fnmatch

    from gpuq.cli.export import SECRET_PATTERNS, glob_match

    assert all("?" not in p and "[" not in p and "*" not in p.strip("*")
               for p in SECRET_PATTERNS)
    names = ["HF_TOKEN", "TOKEN", "TOKENS", "MY_SECRET_X", "SECRET", "PASSWORD", "X_PASSWD",
             "API_KEY", "APIKEY_X", "", "*", "A*B", "DB_CONNECTION_STRING", "PATH"]
    for pattern in (*SECRET_PATTERNS, "*", "**", "TOKEN", "TOK*", "*OK*", "***"):
        for name in names:
            assert glob_match(name, pattern) == fnmatch.fnmatchcase(name, pattern), (name,
                                                                                  pattern)


def test_valid_names_are_the_shell_s() -> None:
    import re

    from gpuq.cli.export import valid_name

    for name in ("A", "_", "a_1", "1A", "", "A-B", "\u00e9", "A B", "_9", "ZZ9", "A\u0661"):
        assert valid_name(name) == bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)), name
