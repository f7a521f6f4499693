"""What the root group hands its commands: the global options and a way to make a client."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import click

from gpuq.cli.client import ADMIN_TOKEN_HINT, DEFAULT_TIMEOUT_S, USER_TOKEN_HINT, ApiClient
from gpuq.cli.config import ClientConfig, load_client_config


class Env(NamedTuple):
    """The global options (``--server``, ``--token``, ``--timeout``); ``None`` = not given.
    (A NamedTuple, not a dataclass: importing dataclasses and making one cost 2 ms.)"""

    server: str | None = None
    token: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def config(self) -> ClientConfig:
        return load_client_config(server=self.server, token=self.token)

    def client(self, *, admin: bool = False) -> ApiClient:
        """A client for the configured server, with the user (or the admin) token."""
        cfg = self.config()
        return ApiClient(cfg.server, cfg.token_for(admin=admin), timeout_s=self.timeout_s,
                         auth_hint=ADMIN_TOKEN_HINT if admin else USER_TOKEN_HINT)


pass_env = click.make_pass_decorator(Env, ensure=True)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))
