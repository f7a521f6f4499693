"""The job's environment: ``--export`` with Slurm's meaning, then ``--env K=V``.

- ``ALL`` (the default): the submitting environment, less the variables that look like
  secrets (``looks_secret``), plus any ``NAME`` or ``NAME=value`` listed after it
  (``ALL,HF_TOKEN,FOO=bar``: a name listed is passed even if it looks like a secret).
- ``NONE`` (or Slurm's ``NIL``): nothing from the submitting environment.
- ``VAR1,VAR2=x``: only ``VAR1`` (taken from the submitting environment, skipped when
  unset) and ``VAR2=x``.

gpuq's own secrets (``GPUQ_TOKEN``, ``GPUQ_ADMIN_TOKEN``, ``GPUQ_NODE_TOKEN``) are never
sent, even when named; variables whose names the server would refuse (``BASH_FUNC_f%%``,
...) are left out of ``ALL``. ``--env`` entries are applied last, in order, so they win.
What ``ALL`` left out is said by name (never by value): ``Exported.withheld``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

SECRETS = frozenset({"GPUQ_TOKEN", "GPUQ_ADMIN_TOKEN", "GPUQ_NODE_TOKEN"})

#: Names ``ALL`` leaves out unless they are named: cloud and service credentials, and the
#: SSH agent's socket (keys of the submitting host). Matched without regard to case.
SECRET_NAMES = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "PGPASSWORD", "MYSQL_PWD", "SSH_AUTH_SOCK",
})
#: Name patterns (``fnmatch``, upper case) ``ALL`` leaves out unless named: HF_TOKEN,
#: GITHUB_TOKEN, OPENAI_API_KEY, ANTHROPIC_API_KEY, WANDB_API_KEY, AZURE_CLIENT_SECRET,
#: TWINE_PASSWORD, AZURE_STORAGE_CONNECTION_STRING...
SECRET_PATTERNS = ("*TOKEN", "*SECRET*", "*PASSWORD", "*PASSWD", "*PASSPHRASE", "*API_KEY",
                   "*APIKEY", "*ACCESS_KEY", "*PRIVATE_KEY", "*CONNECTION_STRING")
_MODES = ("ALL", "NONE", "NIL")


def looks_secret(name: str) -> bool:
    """Whether ``ALL`` leaves the variable ``name`` out (``SECRET_NAMES``,
    ``SECRET_PATTERNS``)."""
    upper = name.upper()
    return upper in SECRET_NAMES or any(glob_match(upper, p) for p in SECRET_PATTERNS)


def glob_match(name: str, pattern: str) -> bool:
    """``fnmatch.fnmatchcase`` for a pattern whose one special character is ``*``, at its
    start, its end or both (fnmatch compiles each pattern into a regular expression: 5 ms
    of every ``gpuq submit``)."""
    core = pattern.strip("*")
    starts, ends = pattern.startswith("*"), pattern.endswith("*") and pattern != "*"
    if starts and ends:
        return core in name
    if starts:
        return name.endswith(core)
    if ends:
        return name.startswith(core)
    return name == core


def valid_name(name: str) -> bool:
    """A variable name a shell takes: ``[A-Za-z_][A-Za-z0-9_]*``."""
    return name.isascii() and name.replace("_", "a").isalnum() and not name[0].isdigit()


class Exported(NamedTuple):
    """The environment to send, and the names ``ALL`` left out because they look like
    secrets (sorted; the values are never kept)."""

    environment: dict[str, str]
    withheld: tuple[str, ...] = ()


def _check_name(name: str, where: str) -> None:
    if not valid_name(name):
        raise ValueError(f"{where}: {name!r} is not a valid variable name")
    if name in SECRETS:
        raise ValueError(f"{where}: {name} is a gpuq secret and is never given to jobs")


def parse_env_pair(text: str) -> tuple[str, str]:
    """``K=V`` (the value may contain ``=`` and ``,``)."""
    name, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--env: expected NAME=VALUE, got {text!r}")
    _check_name(name, "--env")
    return name, value


def build_environment(export: str, env_pairs: Iterable[str],
                      environ: Mapping[str, str]) -> dict[str, str]:
    """The ``environment`` to send (``export_environment``'s)."""
    return export_environment(export, env_pairs, environ).environment


def export_environment(export: str, env_pairs: Iterable[str],
                       environ: Mapping[str, str]) -> Exported:
    """The ``environment`` to send and what ``ALL`` withheld. Raises ``ValueError`` with a
    message for the user."""
    items = [i.strip() for i in export.split(",") if i.strip()]
    modes = {"NONE" if i.upper() == "NIL" else i.upper()
             for i in items if i.upper() in _MODES}
    if modes == {"ALL", "NONE"}:
        raise ValueError("--export: ALL and NONE contradict each other")
    out: dict[str, str] = {}
    withheld: set[str] = set()
    if "ALL" in modes or not items:
        for k, v in environ.items():
            if not valid_name(k) or k in SECRETS or "\x00" in v:
                continue
            if looks_secret(k):
                withheld.add(k)
            else:
                out[k] = v
    for item in items:
        if item.upper() in _MODES:
            continue
        name, sep, value = item.partition("=")
        _check_name(name, "--export")
        withheld.discard(name)  # named: the user asked for it
        if sep:
            out[name] = value
        elif name in environ:
            out[name] = environ[name]
    for pair in env_pairs:
        name, value = parse_env_pair(pair)
        withheld.discard(name)
        out[name] = value
    return Exported(out, tuple(sorted(withheld)))
