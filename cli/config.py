"""Client configuration: where the server is and which tokens to send.

Precedence, highest first: the global options ``--server`` / ``--token``, the environment
(``GPUQ_SERVER``, ``GPUQ_TOKEN``, ``GPUQ_ADMIN_TOKEN``), then the file
``~/.config/gpuq/config.toml`` (keys ``server``, ``token``, ``admin_token``), then the
default server ``http://127.0.0.1:8642``. ``GPUQ_CLIENT_CONFIG`` names another file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from gpuq.cli.client import EXIT_USAGE, CliError

DEFAULT_SERVER = "http://127.0.0.1:8642"
CONFIG_PATH_ENV = "GPUQ_CLIENT_CONFIG"
_KEYS = ("server", "token", "admin_token")


@dataclass(frozen=True)
class ClientConfig:
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
    return Path(platformdirs.user_config_dir("gpuq")) / "config.toml"


def read_client_config_file(path: Path) -> dict[str, str]:
    """The known keys of the file, or ``{}`` when there is no file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise CliError(f"cannot read the configuration file {path}: {e}", EXIT_USAGE) from e
    out: dict[str, str] = {}
    for key in _KEYS:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise CliError(f"{path}: {key} must be a string", EXIT_USAGE)
        out[key] = value
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
