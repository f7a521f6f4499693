"""What every ``gpuq admin`` module shares: the admin call, and option types."""

from __future__ import annotations

from typing import Any

import click

from gpuq.cli.context import Env

ADMIN = "/v1/admin"


def drop_none(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def call(env: Env, method: str, path: str, **kw: Any) -> Any:
    """One request to /v1/admin with the admin token."""
    with env.client(admin=True) as api:
        return api.json(method, ADMIN + path, **kw)


class SharesType(click.ParamType):
    """Raw shares: a whole number >= 0, or ``parent`` (no level of its own)."""

    name = "N|parent"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or value == "parent":
            return value  # type: ignore[return-value]
        text = str(value).strip()
        if text.lower() == "parent":
            return "parent"
        if text.isdigit():
            return int(text)
        self.fail(f"{value!r} is not a number of shares (a whole number >= 0, or 'parent')",
                  param, ctx)


SHARES = SharesType()
