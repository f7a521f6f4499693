"""#GPUQ lines, their precedence, and script arguments."""

from __future__ import annotations

import subprocess

import pytest

from gpuq.cli.client import CliError
from gpuq.cli.script import directive_lines, interpreter, script_with_args
from gpuq.cli.submit import apply_directives, directive_options, submit

SCRIPT = """#!/bin/bash
# a comment
#GPUQ --gpus 2 -t 2h   # trailing comment
#GPUQ --name "my job" --env A=1
#GPUQX --gpus 7

#GPUQ --mem 16G --env B=2
echo hello
#GPUQ --gpus 5
"""


def test_directive_lines_stop_at_the_first_command() -> None:
    assert directive_lines(SCRIPT) == [
        (3, ["--gpus", "2", "-t", "2h"]),
        (4, ["--name", "my job", "--env", "A=1"]),
        (7, ["--mem", "16G", "--env", "B=2"]),
    ]


def test_directive_lines_report_bad_quoting() -> None:
    with pytest.raises(ValueError, match="line 2"):
        directive_lines("#!/bin/sh\n#GPUQ --name 'oops\n")


def test_directive_options_are_parsed_by_the_submit_command() -> None:
    assert directive_options(submit, SCRIPT) == [
        ("gpus", 2), ("time_limit_s", 7200), ("name", "my job"), ("env_pairs", ("A=1",)),
        ("memory_mib", 16384), ("env_pairs", ("B=2",)),
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("#GPUQ --gpus two\necho", "#GPUQ line 1: Invalid value for '-G' / '--gpus'"),
    ("#!/bin/sh\n#GPUQ --bogus\necho", "#GPUQ line 2: No such option '--bogus'"),
    ("#GPUQ --time 0\n", "#GPUQ line 1: Invalid value for '-t' / '--time'"),
    ("#GPUQ script.sh\n", "#GPUQ line 1: unexpected argument 'script.sh'"),
])
def test_directive_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(CliError) as e:
        directive_options(submit, text)
    assert message in e.value.message
    assert e.value.exit_code == 2


def test_command_line_wins_over_directives_and_later_lines_win() -> None:
    params = {"gpus": 4, "name": None, "memory_mib": None, "env_pairs": ("A=cli",)}
    directives = [("gpus", 2), ("name", "first"), ("name", "second"), ("env_pairs", ("A=1",)),
                  ("memory_mib", 100), ("env_pairs", ("B=2",))]
    out = apply_directives(params, {"gpus", "env_pairs"}, directives)
    assert out["gpus"] == 4
    assert out["name"] == "second"
    assert out["memory_mib"] == 100
    # --env adds up; the command line's entries come last, so they win per variable.
    assert out["env_pairs"] == ("A=1", "B=2", "A=cli")


@pytest.mark.parametrize(("first_line", "prog"), [
    ("#!/bin/bash", "bash"), ("#!/usr/bin/env python3", "python3"),
    ("#!/usr/bin/env -S bash -e", "bash"), ("#! /bin/sh -eu", "sh"), ("echo hi", None),
])
def test_interpreter(first_line: str, prog: str | None) -> None:
    assert interpreter(first_line + "\necho\n") == prog


def test_script_args_reach_the_shell_as_positional_parameters(tmp_path) -> None:
    text = "#!/bin/sh\n#GPUQ --gpus 1\n\nprintf '%s|' \"$@\"\necho \"$#\"\n"
    wrapped = script_with_args(text, ["a b", "it's", "", "$HOME"])
    # The #GPUQ header is untouched, so the options still parse the same.
    assert directive_lines(wrapped) == directive_lines(text)
    path = tmp_path / "job.sh"
    path.write_text(wrapped)
    out = subprocess.run(["sh", str(path)], capture_output=True, text=True, check=True).stdout
    assert out == "a b|it's||$HOME|4\n"


def test_script_without_args_is_sent_as_it_is() -> None:
    assert script_with_args(SCRIPT, []) == SCRIPT


def test_script_args_for_a_script_without_trailing_newline_or_commands() -> None:
    assert script_with_args("#!/bin/sh\n# only comments", ["x"]) == \
        "#!/bin/sh\n# only comments\nset -- x  # gpuq: script arguments\n"


def test_script_args_refused_for_other_interpreters() -> None:
    with pytest.raises(ValueError, match="gpuq submit \\[options\\] -- python3"):
        script_with_args("#!/usr/bin/env python3\nprint(1)\n", ["x"])
