"""Client configuration: where the server is and which tokens to send.

Precedence, highest first: the global options ``--server`` / ``--token``, the environment
(``GPUQ_SERVER``, ``GPUQ_TOKEN``, ``GPUQ_ADMIN_TOKEN``), then the file
``~/.config/gpuq/config.toml`` (keys ``server``, ``token``, ``admin_token``), then the
default server ``http://127.0.0.1:8642``. ``GPUQ_CLIENT_CONFIG`` names another file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from gpuq.cli.client import EXIT_USAGE, CliError

DEFAULT_SERVER = "http://127.0.0.1:8642"
CONFIG_PATH_ENV = "GPUQ_CLIENT_CONFIG"
_KEYS = ("server", "token", "admin_token")


class ClientConfig(NamedTuple):
    server: str = DEFAULT_SERVER
    #: The user's token (``None``: send none; the server answers 401).
    token: str | None = None
    #: The admin token, used by ``gpuq admin``; falls back to ``token``.
    admin_token: str | None = None

    def token_for(self, *, admin: bool) -> str | None:
        return (self.admin_token or self.token) if admin else self.token


def client_config_path() -> Path:
    """The client configuration file: ``$GPUQ_CLIENT_CONFIG`` or
    ``<user config dir>/gpuq/config.toml``."""
    named = os.environ.get(CONFIG_PATH_ENV, "")
    if named:
        return Path(named).expanduser()
    return Path(user_config_dir()) / "config.toml"


def user_config_dir() -> str:
    """``platformdirs.user_config_dir("gpuq")``: on Linux ``$XDG_CONFIG_HOME/gpuq``, else
    ``$HOME/.config/gpuq``, found here; elsewhere, and for a home platformdirs has more
    rules for (none, or relative), platformdirs says. Importing platformdirs took 5 ms of
    every command's 60 (tests/cli/test_cli_config.py holds the two equal)."""
    if sys.platform == "linux" and not hasattr(sys, "getandroidapilevel") \
            and "ANDROID_DATA" not in os.environ:
        xdg = os.environ.get("XDG_CONFIG_HOME", "")
        if xdg.startswith("/"):
            return os.path.join(xdg, "gpuq")
        if os.environ.get("HOME", "").startswith("/"):
            return os.path.join(os.path.expanduser("~/.config"), "gpuq")
    import platformdirs

    return platformdirs.user_config_dir("gpuq")


def read_client_config_file(path: Path) -> dict[str, str]:
    """The known keys of the file, or ``{}`` when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read the configuration file {path}: {e}", EXIT_USAGE) from e
    data = simple_toml(text)
    if data is None:
        import tomllib  # the whole of TOML: 5 ms (it compiles its regular expressions)

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise CliError(f"cannot read the configuration file {path}: {e}",
                           EXIT_USAGE) from e
    out: dict[str, str] = {}
    for key in _KEYS:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise CliError(f"{path}: {key} must be a string", EXIT_USAGE)
        out[key] = value
    return out


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {'"': '"', "\\": "\\"}


def simple_toml(text: str) -> dict[str, str] | None:
    """``text`` read as TOML when it is only what ``write_client_config`` writes: comment
    and blank lines, and ``key = "string"`` lines (bare keys; escapes ``\\"``, ``\\\\``,
    ``\\uXXXX``), in ASCII. ``None`` for anything else: ``tomllib`` reads it then, and says
    what is wrong. tests/cli/test_cli_config.py holds the two equal."""
    if not text.isascii():
        return None
    out: dict[str, str] = {}
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if any(c < " " and c != "\t" or c == "\x7f" for c in line):
            return None
        line = line.strip(" \t")
        if not line or line.startswith("#"):
            continue
        key, eq, rest = line.partition("=")
        key, rest = key.strip(" \t"), rest.lstrip(" \t")
        if not eq or not key or not set(key) <= _BARE_KEY or key in out \
                or not rest.startswith('"'):
            return None
        value: list[str] = []
        i = 1
        while i < len(rest) and rest[i] != '"':
            c = rest[i]
            if c != "\\":
                value.append(c)
                i += 1
            elif rest[i + 1:i + 2] in _ESCAPES:
                value.append(_ESCAPES[rest[i + 1]])
                i += 2
            elif rest[i + 1:i + 2] == "u" and len(h := rest[i + 2:i + 6]) == 4 \
                    and all(d in "0123456789abcdefABCDEF" for d in h) \
                    and not 0xD800 <= int(h, 16) <= 0xDFFF:
                value.append(chr(int(h, 16)))
                i += 6
            else:
                return None
        after = rest[i + 1:].strip(" \t")
        if i >= len(rest) or after and not after.startswith("#"):
            return None
        out[key] = "".join(value)
    return out


def normalize_server(url: str) -> str:
    """``host:port`` becomes ``http://host:port``; a trailing ``/`` goes."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def load_client_config(
    *,
    server: str | None = None,
    token: str | None = None,
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> ClientConfig:
    """Merge the options, the environment and the file (see the module docstring).

    An explicit ``token`` (``--token``) is used for admin commands too.
    """
    env = os.environ if environ is None else environ
    file = read_client_config_file(path or client_config_path())

    def pick(option: str | None, env_name: str, key: str) -> str | None:
        for value in (option, env.get(env_name), file.get(key)):
            if value:
                return value
        return None

    return ClientConfig(
        server=normalize_server(pick(server, "GPUQ_SERVER", "server") or DEFAULT_SERVER),
        token=pick(token, "GPUQ_TOKEN", "token"),
        admin_token=pick(token, "GPUQ_ADMIN_TOKEN", "admin_token"),
    )


def _toml_string(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def write_client_config(
    path: str | Path | None, server: str, token: str, admin_token: str | None = None
) -> Path:
    """Write the client configuration file (mode 0600, replacing any old one atomically).

    ``path`` ``None`` means ``client_config_path()``. Returns the path written.
    """
    target = Path(path) if path is not None else client_config_path()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lines = ["# gpuq client configuration (contains secrets: keep it mode 0600)",
             f"server = {_toml_string(server)}", f"token = {_toml_string(token)}"]
    if admin_token:
        lines.append(f"admin_token = {_toml_string(admin_token)}")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
