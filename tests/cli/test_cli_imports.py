"""What a ``gpuq`` process imports: only what its command needs (a process runs one
command, and its imports were most of its time; bench/cli.py times them). Checked without
timing, on the modules each command's process imports (``python -X importtime`` lists
them), against the fake API. And the root group's table of commands (``COMMANDS``), that
``gpuq --help`` reads without importing them, says what the commands say."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import click
import pytest
from cli_fakeapi import USER_TOKEN, FakeApi, make_job

from gpuq.cli.config import write_client_config
from gpuq.cli.main import COMMANDS, cli, load_command

#: Never on the way of the everyday commands: the server's and the worker's code, the
#: database, the web framework, the broker, pydantic (the wire schemas), httpx, rich, and
#: standard modules that cost a millisecond or more and have a cheaper way round (see
#: cli/client.py, cli/config.py).
HEAVY = ("gpuq.scheduler", "gpuq.worker", "sqlalchemy", "alembic", "psycopg", "fastapi",
         "starlette", "uvicorn", "celery", "kombu", "redis", "pydantic", "pydantic_core",
         "gpuq.wire.common", "gpuq.wire.jobs", "httpx", "httpcore", "h11", "anyio", "rich",
         "http.client", "email", "ssl", "socket", "encodings.idna", "stringprep", "tomllib",
         "platformdirs", "dataclasses", "matplotlib", "numpy")

EVERYDAY = [
    ("--help",),
    ("submit", "--", "true"),
    ("submit", "--parsable", "--qos", "normal", "-t", "1h", "--mem", "1G", "--", "true"),
    ("q",),
    ("q", "--all", "--json"),
    ("show", "1"),
    ("cancel", "1"),
    ("logs", "1"),
    ("whoami",),
]


def imported(args: tuple[str, ...], url: str,
             home: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``gpuq ARGS`` as the console script does, in a process of its own, as a user
    whose configuration file (``~/.config/gpuq/config.toml``, as ``gpuq up`` writes it)
    names the server and the token; its result and the modules it imported (all, the
    interpreter's start's too)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUQ_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    write_client_config(home / ".config" / "gpuq" / "config.toml", url, USER_TOKEN)
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "from gpuq.cli.main import main; main()",
         *args], env=env, capture_output=True, text=True, timeout=60)
    names = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    return r, names


def command_modules() -> dict[str, str]:
    return {name: target.partition(":")[0] for name, (target, _) in COMMANDS.items()}


@pytest.mark.parametrize("args", EVERYDAY, ids=" ".join)
def test_everyday_commands_import_only_what_they_need(api: FakeApi, args: tuple[str, ...],
                                                     tmp_path: Path) -> None:
    t0 = "2025-01-01T12:00:00Z"
    api.jobs[1] = make_job(1, events=[{"time": t0, "old_state": None, "new_state": "PENDING",
                                       "reason": "submitted"}])
    api.logs[1] = b"hello\n"
    r, names = imported(args, api.url, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout  # it did its work
    # click's help imports shutil (the terminal's width); a command does not.
    avoid = HEAVY if args[0] == "--help" else (*HEAVY, "shutil")
    heavy = sorted(n for n in names if n in avoid or n.startswith(tuple(f"{m}." for m in avoid)))
    assert not heavy, f"gpuq {' '.join(args)} imported {heavy}"
    own = command_modules().get(args[0])
    others = sorted({m for m in command_modules().values() if m != own} & names)
    assert not others, f"gpuq {' '.join(args)} imported other commands' modules: {others}"


def test_the_table_of_commands_says_what_each_command_says() -> None:
    for name, (_, short_help) in COMMANDS.items():
        command = load_command(name)
        assert isinstance(command, click.Command)
        assert command.get_short_help_str(10**6) == short_help, name
        assert command.name in (name, "q"), name  # gpuq queue is gpuq q


@pytest.mark.parametrize("width", [40, 80, 120, 300])
def test_help_lists_the_commands_as_click_would(width: int) -> None:
    """The Commands section of ``gpuq --help`` is what click's own listing (which imports
    every command) prints, at any terminal width."""
    ctx = click.Context(cli, info_name="gpuq")
    ours, clicks = click.HelpFormatter(width=width), click.HelpFormatter(width=width)
    cli.format_commands(ctx, ours)
    click.Group.format_commands(cli, ctx, clicks)
    assert ours.getvalue() == clicks.getvalue()
    if width >= 80:
        assert "submit  Submit a batch script, or a command given after --." in ours.getvalue()


def test_version() -> None:
    r = click.testing.CliRunner().invoke(cli, ["--version"])
    assert (r.exit_code, r.stdout) == (0, "gpuq, version 0.1.0\n")


def test_unknown_commands_are_refused() -> None:
    r = click.testing.CliRunner().invoke(cli, ["sumbit"])
    assert r.exit_code == 2 and "No such command 'sumbit'" in r.stderr


def test_the_qos_names_are_the_wire_s() -> None:
    from gpuq.cli.vocab import QOS_NAMES

    common = importlib.import_module("gpuq.wire.common")
    assert QOS_NAMES == common.QOS_NAMES == get_args(common.Qos)
