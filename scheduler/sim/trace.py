"""Workload traces: one CSV row per job, read into frozen ``TraceJob`` records.

Columns (header required, any order): ``submit_time`` (seconds), ``user``, ``account``,
``gpus``, ``duration`` (seconds), and the optional ``time_limit`` (seconds; empty = none),
``gpu_model`` (empty = any) and ``name``. A job's id is its row number (1 for the first
job); jobs are replayed in submit order (stable, so equal submit times keep file order).
A file whose name ends in ``.gz`` is read through gzip. gpuq comes with one real trace,
``lanl-cm5-1994`` (``traces/``, with its note).
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gpuq.scheduler.sim.errors import SimInputError, at

REQUIRED = ("submit_time", "user", "account", "gpus", "duration")
OPTIONAL = ("time_limit", "gpu_model", "name")


@dataclass(frozen=True, slots=True)
class TraceJob:
    id: int
    submit_s: float
    user: str
    account: str
    gpus: int
    duration_s: float
    time_limit_s: float | None = None
    gpu_model: str | None = None
    name: str = ""
    #: The line of the trace file it came from (for error messages).
    line: int = 0

    @property
    def estimate_s(self) -> float:
        """What the policy is told as the time limit: the trace's limit, capped at
        ``max(time_limit, duration)`` so that no job runs past it (jobs are never killed);
        the duration itself when the trace gives no limit."""
        if self.time_limit_s is None:
            return self.duration_s
        return max(self.time_limit_s, self.duration_s)


def _number(path: Path, line: int, column: str, text: str, *, minimum: float,
            strict: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise at(path, line, column, f"must be a number of seconds, got {text!r}") from None
    bad = value <= minimum if strict else value < minimum
    if not math.isfinite(value) or bad:
        rel = ">" if strict else ">="
        raise at(path, line, column, f"must be a finite number {rel} {minimum:g}, got {text!r}")
    return value


def _gpus(path: Path, line: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise at(path, line, "gpus", f"must be a whole number >= 1, got {text!r}")
    return value


def _name(path: Path, line: int, column: str, text: str) -> str:
    if not text:
        raise at(path, line, column, "must not be empty")
    return text


#: Where the traces that come with gpuq lie (each with a note on its source and conversion).
SHIPPED_DIR = Path(__file__).resolve().parent / "traces"


def shipped_traces() -> dict[str, Path]:
    """The traces that come with gpuq, by name (``lanl-cm5-1994``)."""
    return {p.name.removesuffix(".csv.gz"): p for p in sorted(SHIPPED_DIR.glob("*.csv.gz"))}


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return path.open(newline="", encoding="utf-8")


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    with _open(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise SimInputError(f"{path}: empty file (expected a header: "
                                f"{','.join(REQUIRED)}[,{','.join(OPTIONAL)}])")
        header = [h.strip() for h in header]
        unknown = [h for h in header if h not in REQUIRED + OPTIONAL]
        if unknown:
            raise at(path, 1, unknown[0], "unknown column (expected "
                     f"{', '.join(REQUIRED)}; optional {', '.join(OPTIONAL)})")
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise at(path, 1, None, f"missing column(s): {', '.join(missing)}")
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise at(path, line, None,
                         f"has {len(row)} fields, the header has {len(header)}")
            yield line, {h: cell.strip() for h, cell in zip(header, row, strict=True)}


def load_trace(path: str | Path, limit: int | None = None) -> list[TraceJob]:
    """Read a trace (CSV, or gzipped CSV when its name ends in ``.gz``); the first
    ``limit`` jobs only when given. Raises ``SimInputError`` naming the line and column
    of the first bad cell."""
    path = Path(path)
    jobs: list[TraceJob] = []
    try:
        for line, cells in _rows(path):
            if limit is not None and len(jobs) >= limit:
                break
            limit_text = cells.get("time_limit", "")
            jobs.append(TraceJob(
                id=len(jobs) + 1,
                submit_s=_number(path, line, "submit_time", cells["submit_time"], minimum=0),
                user=_name(path, line, "user", cells["user"]),
                account=_name(path, line, "account", cells["account"]),
                gpus=_gpus(path, line, cells["gpus"]),
                duration_s=_number(path, line, "duration", cells["duration"], minimum=0),
                time_limit_s=_number(path, line, "time_limit", limit_text, minimum=0,
                                     strict=True) if limit_text else None,
                gpu_model=cells.get("gpu_model") or None,
                name=cells.get("name", ""),
                line=line,
            ))
    except (OSError, UnicodeDecodeError) as e:
        raise SimInputError(f"{path}: cannot read the trace: {e}") from None
    except csv.Error as e:
        raise SimInputError(f"{path}: not a valid CSV file: {e}") from None
    if not jobs:
        raise SimInputError(f"{path}: no jobs in the trace")
    jobs.sort(key=lambda j: j.submit_s)
    return jobs
