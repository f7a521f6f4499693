"""Moments people type (``--start 2027-01-01``, ``--since 7d``) and show (local time).

A time without a zone is local time; a date alone is its midnight. Times go to the server
with their zone (UTC)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import click

from gpuq.cli.units import parse_duration_s

EXAMPLES = "2027-01-31, 2027-01-31T09:00, 2027-01-31T09:00Z or 'now'"


def parse_when(text: str, now: datetime, *, ago: bool = False) -> datetime:
    """An aware datetime from an ISO date or time, or 'now'; with ``ago``, a duration
    ("7d", "12h") is that long before ``now``.

    Raises ``ValueError`` with a message that shows what is accepted.
    """
    s = text.strip()
    if s.lower() == "now":
        return now
    if ago:
        try:
            return now - timedelta(seconds=parse_duration_s(s))
        except ValueError:
            pass
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        accepted = EXAMPLES + (", or a duration ago: 7d, 12h" if ago else "")
        raise ValueError(f"{text!r} is not a date or time (examples: {accepted})") from None
    return t if t.tzinfo else t.astimezone()  # no zone: local time


def iso_utc(t: datetime) -> str:
    """For the server: ``2027-01-31T08:00:00Z``."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def local(t: datetime | None, fmt: str = "%Y-%m-%d %H:%M %Z") -> str:
    return t.astimezone().strftime(fmt).rstrip() if t else ""


def short_local(t: datetime | None) -> str:
    """``2027-01-31`` at local midnight, else ``2027-01-31 09:00``."""
    if t is None:
        return ""
    lt = t.astimezone()
    return lt.strftime("%Y-%m-%d") if (lt.hour, lt.minute) == (0, 0) else \
        lt.strftime("%Y-%m-%d %H:%M")


class WhenType(click.ParamType):
    """A ``parse_when`` option; ``clock`` gives 'now' (the seam for tests)."""

    name = "WHEN"

    def __init__(self, *, ago: bool = False,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.ago = ago
        self.clock = clock

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_when(str(value), self.clock(), ago=self.ago)
        except ValueError as e:
            self.fail(str(e), param, ctx)
