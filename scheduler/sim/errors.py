"""The one error the simulator raises for bad input: it names the file, line and column."""

from __future__ import annotations


class SimInputError(ValueError):
    """A trace, cluster or shares file (or option) that the simulator cannot use."""


def at(path: object, line: int, column: str | None, message: str) -> SimInputError:
    """``trace.csv:12: column 'gpus': must be a whole number >= 1, got 'x'``."""
    where = f"{path}:{line}"
    if column is not None:
        where += f": column {column!r}"
    return SimInputError(f"{where}: {message}")
