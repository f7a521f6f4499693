"""Batch scripts: ``#GPUQ`` option lines, and passing script arguments.

Like ``#SBATCH``: a line ``#GPUQ --gpus 2`` sets options, as long as it comes before the
first line that is neither blank nor a comment; later ``#GPUQ`` lines are ignored (they
are comments to the shell). The rest of the line is split like a shell would (quotes work;
a ``# comment`` after the options is ignored).

Script arguments (``gpuq submit job.sh a b``): the job is still sent as ``script`` (so
``gpuq show`` shows the script) with the line ``set -- 'a' 'b'`` inserted just before the
first command, which gives the script ``$1``, ``$2``... when it runs. That only means
something to a shell, so arguments are refused for scripts whose ``#!`` names another
interpreter (python, ...): submit those as ``gpuq submit -- python job.py a b``.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

DIRECTIVE = "#GPUQ"
#: Interpreters that understand ``set -- args``. A script without ``#!`` counts as sh.
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox"})


def _first_command_index(lines: list[str]) -> int:
    for i, line in enumerate(lines):
        s = line.strip()
        if s and not s.startswith("#"):
            return i
    return len(lines)


def directive_lines(text: str) -> list[tuple[int, list[str]]]:
    """``(line number, tokens)`` of each ``#GPUQ`` line in the header of ``text``.

    Raises ``ValueError`` (naming the line) for a line that cannot be split.
    """
    lines = text.splitlines()
    out = []
    for number, line in enumerate(lines[: _first_command_index(lines)], start=1):
        s = line.strip()
        if not s.startswith(DIRECTIVE):
            continue
        rest = s[len(DIRECTIVE):]
        if rest and not rest[0].isspace():
            continue  # "#GPUQX" is just a comment
        try:
            tokens = shlex.split(rest, comments=True)
        except ValueError as e:
            raise ValueError(f"line {number}: {e}") from e
        if tokens:
            out.append((number, tokens))
    return out


def interpreter(text: str) -> str | None:
    """The program named by the ``#!`` line (``/usr/bin/env python3`` gives
    ``python3``), or ``None`` without one."""
    first = text.split("\n", 1)[0]
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    if not words:
        return None
    prog = PurePosixPath(words[0]).name
    if prog == "env":
        rest = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        prog = PurePosixPath(rest[0]).name if rest else "env"
    return prog


def script_with_args(text: str, args: list[str] | tuple[str, ...]) -> str:
    """``text`` with ``set -- args`` before its first command (see the module docstring).

    Raises ``ValueError`` for a script that is not a shell script.
    """
    if not args:
        return text
    prog = interpreter(text)
    if prog is not None and prog not in SHELLS:
        raise ValueError(
            f"arguments can be given only to shell scripts; this one runs with {prog}. "
            f"Submit it as a command instead: gpuq submit [options] -- {prog} SCRIPT ARGS..."
        )
    lines = text.splitlines(keepends=True)
    at = _first_command_index(lines)
    if at > 0 and not lines[at - 1].endswith(("\n", "\r")):
        lines[at - 1] += "\n"
    setter = "set -- " + " ".join(shlex.quote(a) for a in args) + "  # gpuq: script arguments\n"
    lines.insert(at, setter)
    return "".join(lines)
