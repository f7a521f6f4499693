"""Every ``gpuq`` command that README.md shows (in its shell blocks and its inline code)
names commands and options that exist: the README is what a new user types first."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from gpuq.cli.main import cli

README = Path(__file__).resolve().parents[2] / "README.md"
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _shell_lines(text: str) -> list[str]:
    """The README's shell lines (continuations joined) and its inline code spans."""
    lines: list[str] = []
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S):
        lines += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += re.findall(r"`(gpuq [^`]+)`", prose)
    return lines


def _commands(line: str) -> list[list[str]]:
    """The argv of each ``gpuq`` call in a shell line (after ``VAR=value`` prefixes, inside
    ``$(...)``, between ``&&``, ``;`` and ``|``)."""
    out = []
    for part in re.split(r"&&|\|\||;|\||\$\(|\)", line.split(" #")[0]):
        try:
            words = shlex.split(part, comments=True)
        except ValueError:  # an unbalanced quote: a fragment of prose, not a command
            continue
        while words and _ENV.match(words[0]):
            words.pop(0)
        if len(words) > 1 and words[0] == "gpuq":
            out.append(words[1:])
    return out


def _check(argv: list[str]) -> None:
    """Walk the click tree as click would; unknown commands and options raise."""
    command: click.Command = cli
    name = "gpuq"
    while True:
        try:  # parses only: no command runs
            ctx = command.make_context(name, list(argv))
        except (click.NoSuchOption, click.UsageError) as e:
            if isinstance(e, click.NoSuchOption) or "No such command" in str(e):
                raise
            return  # a placeholder value (N, NAME) that the type refuses: not our concern
        if not isinstance(command, click.Group):
            return
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            return
        sub_name, sub, argv = command.resolve_command(ctx, rest)
        assert sub is not None, f"no command {rest[0]!r} under {name}"
        command, name = sub, f"{name} {sub_name}"


def _readme_commands() -> list[list[str]]:
    found = [argv for line in _shell_lines(README.read_text()) for argv in _commands(line)]
    return [argv for argv in found if argv[0] not in ("--version",)]


def test_the_readme_shows_many_commands() -> None:
    argvs = _readme_commands()
    assert len(argvs) > 40, argvs
    names = {argv[0] for argv in argvs}
    assert {"submit", "q", "admin", "server", "worker", "up"} <= names


@pytest.mark.parametrize("argv", _readme_commands(), ids=" ".join)
def test_each_readme_command_exists(argv: list[str]) -> None:
    _check(argv)


@pytest.mark.parametrize("argv", [
    ["admin", "--server", "http://x", "token", "create"],  # the README's old mistake
    ["submt", "--", "true"],
    ["submit", "--gpu", "1", "--", "true"],
    ["--server", "http://x", "admin", "token", "create", "--rol", "node"],
    ["admin", "user", "creat", "alice"],
])
def test_a_wrong_command_is_caught(argv: list[str]) -> None:
    with pytest.raises((click.NoSuchOption, click.UsageError, AssertionError)):
        _check(argv)
