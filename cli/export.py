"""The job's environment: ``--export`` with Slurm's meaning, then ``--env K=V``.

- ``ALL`` (the default): the submitting environment, plus any ``NAME=value`` listed after
  it (``ALL,FOO=bar``).
- ``NONE``: nothing from the submitting environment.
- ``VAR1,VAR2=x``: only ``VAR1`` (taken from the submitting environment, skipped when
  unset) and ``VAR2=x``.

gpuq's own secrets (``GPUQ_TOKEN``, ``GPUQ_ADMIN_TOKEN``, ``GPUQ_NODE_TOKEN``) are never
sent; variables whose names the server would refuse (``BASH_FUNC_f%%``, ...) are left out
of ``ALL``. ``--env`` entries are applied last, in order, so they win.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

SECRETS = frozenset({"GPUQ_TOKEN", "GPUQ_ADMIN_TOKEN", "GPUQ_NODE_TOKEN"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_name(name: str, where: str) -> None:
    if not _NAME.fullmatch(name):
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
    """The ``environment`` to send. Raises ``ValueError`` with a message for the user."""
    items = [i.strip() for i in export.split(",") if i.strip()]
    modes = {i.upper() for i in items if i.upper() in ("ALL", "NONE")}
    if modes == {"ALL", "NONE"}:
        raise ValueError("--export: ALL and NONE contradict each other")
    out: dict[str, str] = {}
    if "ALL" in modes or not items:
        out = {k: v for k, v in environ.items()
               if _NAME.fullmatch(k) and k not in SECRETS and "\x00" not in v}
    for item in items:
        if item.upper() in ("ALL", "NONE"):
            continue
        name, sep, value = item.partition("=")
        _check_name(name, "--export")
        if sep:
            out[name] = value
        elif name in environ:
            out[name] = environ[name]
    for pair in env_pairs:
        name, value = parse_env_pair(pair)
        out[name] = value
    return out
