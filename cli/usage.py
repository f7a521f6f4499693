"""Reading a usage-history file for ``gpuq admin usage import``, and rendering the server's
422 about it one line per problem, naming the record (and, in a CSV file, its line).

The server parses and validates the records (``UsageImport``); the client checks only
what it can say better: the file is UTF-8, JSON parses and is a list, a CSV file has the
header ``user,account,billed_seconds[,end_time]``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from gpuq.cli.client import EXIT_USAGE, CliError

FORMATS = ("json", "csv")
CSV_HEADER = ("user", "account", "billed_seconds")
CONTENT_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8"}
#: At most this many problems are listed; the rest are counted.
MAX_ERRORS = 10


@dataclass(frozen=True)
class UsageFile:
    format: str
    body: bytes
    #: CSV: the line each record starts on (record i is ``lines[i]``); JSON: None.
    lines: list[int] | None

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


def guess_format(name: str, text: str) -> str:
    """From the file's extension; for stdin or another extension, from its first
    character (``[`` or ``{``: JSON)."""
    suffix = PurePath(name).suffix.lower()
    if suffix in (".json", ".csv"):
        return suffix[1:]
    return "json" if text.lstrip()[:1] in ("[", "{") else "csv"


def csv_record_lines(text: str) -> list[int]:
    """The line on which each record starts, as ``csv.DictReader`` counts records (the
    first row is the header; blank lines are skipped)."""
    reader = csv.reader(io.StringIO(text))
    out: list[int] = []
    start = 1
    for i, row in enumerate(reader):
        if i > 0 and row:
            out.append(start)
        start = reader.line_num + 1
    return out


def read_usage_file(name: str, data: bytes, fmt: str | None) -> UsageFile:
    """The body to send. Raises ``CliError`` (exit 2) for a file that cannot be right."""
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (Excel's CSV) is dropped
    except UnicodeDecodeError as e:
        raise CliError(f"{name}: not UTF-8 text ({e})", EXIT_USAGE) from e
    if not text.strip():
        raise CliError(f"{name}: the file is empty; nothing to import", EXIT_USAGE)
    fmt = fmt or guess_format(name, text)
    if fmt == "json":
        try:
            records = json.loads(text)
        except ValueError as e:
            raise CliError(f"{name}: not valid JSON: {e}", EXIT_USAGE) from e
        if not isinstance(records, list):
            raise CliError(f'{name}: expected a JSON list of records, like [{{"user": "alice", '
                           f'"account": "lab1", "billed_seconds": 36000}}]', EXIT_USAGE)
        return UsageFile("json", text.encode(), None)
    try:
        header = [h.strip() for h in next(csv.reader(io.StringIO(text)), [])]
    except csv.Error as e:
        raise CliError(f"{name}: not valid CSV: {e}", EXIT_USAGE) from e
    missing = [c for c in CSV_HEADER if c not in header]
    if missing:
        raise CliError(f"{name}: the first line must be the header "
                       f"user,account,billed_seconds[,end_time] (missing: {', '.join(missing)})",
                       EXIT_USAGE)
    try:
        lines = csv_record_lines(text)
    except csv.Error as e:
        raise CliError(f"{name}: not valid CSV: {e}", EXIT_USAGE) from e
    return UsageFile("csv", text.encode(), lines)


def _index(part: Any) -> int | None:
    if isinstance(part, int):
        return part
    if isinstance(part, str) and part.isdigit():
        return int(part)
    return None


def _got(item: Mapping[str, Any]) -> str:
    value = item.get("input")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return ""
    shown = repr(value)
    return f" (got {shown if len(shown) <= 40 else shown[:37] + '...'})"


def import_error_text(detail: Any, lines: list[int] | None = None) -> str:
    """The server's 422 detail, one line per problem: ``record 3 (line 4): billed_seconds:
    Input should be greater than or equal to 0 (got '-5')``."""
    if not isinstance(detail, list):
        return str(detail)
    out = []
    for item in detail:
        if not isinstance(item, Mapping):
            out.append(str(item))
            continue
        loc = list(item.get("loc") or [])
        if loc and loc[0] == "body":
            loc = loc[1:]
        msg = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        index = _index(loc[0]) if loc else None
        if index is None:
            where = ".".join(str(p) for p in loc)
            out.append(f"{where}: {msg}" if where else msg)
            continue
        record = f"record {index + 1}"
        if lines is not None and index < len(lines):
            record += f" (line {lines[index]})"
        msg = msg.removeprefix(f"record {index + 1}: ")
        field = ".".join(str(p) for p in loc[1:])
        out.append(f"{record}: {field + ': ' if field else ''}{msg}"
                   + (_got(item) if field else ""))
    if len(out) > MAX_ERRORS:
        out = [*out[:MAX_ERRORS], f"... and {len(out) - MAX_ERRORS} more problems"]
    return "\n".join(out) or "the server refused the records (422)"
