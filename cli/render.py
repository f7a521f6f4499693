"""Human output: tables of jobs (like squeue) and one job in detail. Pure functions of the
API's JSON (``JobRead`` dicts; the jobs table also takes ``JobBrief`` ones, what ``gpuq q``
reads) and ``now``, so tests call them directly.

Tables (``plain_table``, ``render``) are plain text: no colour, no borders, columns two
spaces apart. A table that fits the width is laid out here; rich (30 ms to import) is
imported only for one that does not (its cells folded to fit a narrow terminal) or whose
cells are not one line of printable ASCII (rich knows how wide a character is on a
terminal). Either way the text is the same as rich's (tests/cli/test_cli_tables.py).
"""

from __future__ import annotations

import io
import shlex
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import click

from gpuq.cli.accounting_render import accounting_rows
from gpuq.cli.units import format_duration, format_energy, format_mib
from gpuq.wire.states import ACTIVE, TERMINAL, JobState

ACTIVE_STATES = tuple(s.value for s in JobState if s in ACTIVE)
PENDING_STATES = (JobState.PENDING.value,)
TERMINAL_STATES = tuple(s.value for s in JobState if s in TERMINAL)
#: The states a job can be listed in (REQUEUED shows only in a job's events).
ALL_STATES = (*PENDING_STATES, *ACTIVE_STATES, *TERMINAL_STATES)
JOB_COLUMNS = ("JOBID", "NAME", "USER", "ACCOUNT", "STATE", "TIME", "GPUS", "NODE(GPUS)/REASON")
#: After the node of a job borrowing reserved GPUs in ``gpuq q``; ``BORROW_NOTE`` says why.
BORROW_MARK = "*"
BORROW_NOTE = "* borrowing GPUs reserved for another account's grant: may be preempted"
#: After the node of a running job flagged idle in ``gpuq q``; ``IDLE_NOTE`` says why.
IDLE_MARK = "!"
IDLE_NOTE = "! GPUs idle (under the idle threshold for the idle window): `gpuq eff JOB`"
QOS_TEXT = {"preemptible": "preemptible (may use idle reserved GPUs; preempted first)"}
SCRIPT_LINES_SHOWN = 20

Job = Mapping[str, Any]


def parse_time(value: str | None) -> datetime | None:
    """An API timestamp; one without a zone is UTC."""
    if not value:
        return None
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def elapsed_s(job: Job, now: datetime) -> float | None:
    """Seconds the job has run (squeue's TIME): 0 before it starts."""
    started = parse_time(job.get("started_at"))
    if started is None:
        return 0
    ended = parse_time(job.get("ended_at")) or now
    return (ended - started).total_seconds()


def local_time(value: str | None, fmt: str = "%Y-%m-%d %H:%M:%S %Z") -> str:
    """An API timestamp in the local zone; "" for none."""
    t = parse_time(value)
    return t.astimezone().strftime(fmt) if t else ""


def factors_text(factors: Mapping[str, Any]) -> str:
    """A ``PriorityFactors`` dict: ``5123.4 (fair share 0.5000, age 0.1234, job size
    0.0500, QOS 0.0000, nice 0)``. The weights are the server's; each factor is in [0, 1]."""
    parts = [f"{label} {float(factors.get(key) or 0):.4f}" for label, key in
             (("fair share", "fairshare"), ("age", "age"), ("job size", "jobsize"),
              ("QOS", "qos"))]
    parts.append(f"nice {int(factors.get('nice') or 0)}")
    if factors.get("site"):
        parts.append(f"site {int(factors['site'])}")
    return f"{float(factors.get('total') or 0):.1f} ({', '.join(parts)})"


def estimate_text(value: str | None, now: datetime) -> str:
    """An estimated start: ``2026-11-26 14:00 CET (in 2:13:00)``; "no estimate yet"."""
    t = parse_time(value)
    if t is None:
        return "no estimate yet"
    wait = (t - now).total_seconds()
    when = f"in {format_duration(wait)}" if wait >= 0 else f"{format_duration(-wait)} ago"
    return f"{t.astimezone().strftime('%Y-%m-%d %H:%M %Z').rstrip()} ({when})"


def state_label(job: Job) -> str:
    """The state, or CANCELLING / PREEMPTING for an active job being stopped."""
    if job.get("cancel_requested") and job["state"] in ACTIVE_STATES:
        return "CANCELLING"
    if job.get("preempt_requested") and job["state"] in ACTIVE_STATES:
        return "PREEMPTING"
    return str(job["state"])


def where(job: Job) -> str:
    """``gpu01(0,1)`` for a job on a node, ``(reason)`` for one waiting."""
    node = job.get("node")
    if node and job["state"] in ACTIVE_STATES:
        return f"{node}({','.join(str(i) for i in job.get('gpu_indices') or [])})"
    reason = job.get("reason") or ""
    if job["state"] in PENDING_STATES:
        return f"({reason})" if reason else ""
    if reason:
        return f"({reason})"
    return node or ""


def gpus_label(job: Job) -> str:
    model = job.get("gpu_model")
    return f"{job['gpus']}:{model}" if model else str(job["gpus"])


def sort_jobs(jobs: Iterable[Job]) -> list[Job]:
    """Running jobs, then pending ones in the order they would start, then ended ones."""
    def key(j: Job) -> tuple[int, int, int]:
        group = 0 if j["state"] in ACTIVE_STATES else 1 if j["state"] in PENDING_STATES else 2
        return (group, -int(j.get("priority") or 0) if group == 1 else 0, int(j["id"]))

    return sorted(jobs, key=key)


def borrowing(job: Job) -> bool:
    return bool(job.get("borrowed_grant") is not None and job["state"] in ACTIVE_STATES)


def idle(job: Job) -> bool:
    """Flagged idle: ``idle`` of a ``JobBrief``, ``accounting.idle`` of a ``JobRead``."""
    flagged = job["idle"] if "idle" in job else (job.get("accounting") or {}).get("idle")
    return bool(flagged and job["state"] in ACTIVE_STATES)


def jobs_table(jobs: Iterable[Job], now: datetime) -> Table:
    """Like squeue; a QOS column when some job's QOS is not normal (blank for normal);
    ``BORROW_MARK`` after the node of a job borrowing reserved GPUs."""
    rows = sort_jobs(jobs)
    show_qos = any((j.get("qos") or "normal") != "normal" for j in rows)
    columns = list(JOB_COLUMNS)
    if show_qos:
        columns.insert(columns.index("STATE"), "QOS")
    table = plain_table(*columns)
    for j in rows:
        qos = [] if not show_qos else [j["qos"] if j.get("qos") not in (None, "normal") else ""]
        table.add_row(job_label(j), j.get("name") or "", j.get("user") or "",
                      j.get("account") or "", *qos, state_label(j),
                      format_duration(elapsed_s(j, now)), gpus_label(j),
                      where(j) + (BORROW_MARK if borrowing(j) else "")
                      + (IDLE_MARK if idle(j) else ""))
    return table


def job_label(job: Job) -> str:
    """The job's id as squeue shows it: ``123`` for a job, ``123_7`` for index 7 of array
    123, ``123_[8-99]`` for the array's elements that wait without rows (one line)."""
    if job.get("array_id") is not None and job.get("array_task"):
        return f"{job['array_id']}_{job['array_task']}"
    return str(job["id"])


def _jobs(ids: Iterable[object]) -> str:
    ids = [str(i) for i in ids]
    return ("job " if len(ids) == 1 else "jobs ") + ", ".join(ids)


def claim_text(claim: Mapping[str, Any]) -> str:
    """``waiting for jobs 5, 6 to stop (preemption) to free GPUs 0,1 on gpu01 for grant 3``."""
    text = f"waiting for {_jobs(claim.get('victims') or [])} to stop (preemption)"
    gpus = ",".join(str(g) for g in claim.get("gpus") or [])
    if gpus or claim.get("node"):
        text += f" to free GPUs {gpus or '?'} on {claim.get('node') or '?'}"
    if claim.get("grant") is not None:
        text += f" for grant {claim['grant']}"
    return text


def requeue_text(job: Job) -> str:
    """``2 (requeued after 1 preemption)``: why the job ran again, from its events."""
    causes = Counter(e.get("old_state") for e in job.get("events") or []
                     if e.get("new_state") == "REQUEUED")
    parts = [f"{n} {label}{'' if n == 1 else 's'}" for state, label in
             (("PREEMPTED", "preemption"), ("NODE_FAIL", "node failure")) if (n := causes[state])]
    return f"{job['attempt']} (requeued" + (f" after {', '.join(parts)})" if parts else ")")


def preemption_rows(job: Job) -> list[tuple[str, str]]:
    """Borrowing, a preemption under way, a claim, and how often the job was preempted."""
    rows = []
    if borrowing(job):
        n = int(job.get("borrowed_gpus") or 0)
        rows.append(("Borrowing", f"borrowing {n} reserved GPU{'' if n == 1 else 's'} of grant "
                                  f"{job['borrowed_grant']}: may be preempted"))
    if job.get("preempt_requested") and job["state"] in ACTIVE_STATES:
        then = "requeued" if job.get("requeue", True) else "not requeued (--no-requeue)"
        rows.append(("Preemption", f"being preempted: {job.get('preempt_reason') or '?'} "
                                   f"(SIGTERM, SIGKILL after the grace period; then {then})"))
    if job.get("claim") and job["state"] in PENDING_STATES:
        rows.append(("Preemption", claim_text(job["claim"])))
    if int(job.get("preemptions") or 0):
        rows.append(("Preemptions", str(job["preemptions"])))
    return rows


def job_detail(job: Job, now: datetime) -> str:
    """``gpuq show``: fields, then the events."""
    rows: list[tuple[str, str]] = [
        ("Job", f"{job['id']} ({job.get('name') or ''})"),
    ]
    if job.get("array_id") is not None:
        rows.append(("Array", f"{job_label(job)}  (array job {job['array_id']}, index "
                              f"{job.get('array_task')})"))
    rows += [
        ("User", f"{job.get('user')}  account {job.get('account')}"),
        ("State", state_label(job) + (f"  ({job['reason']})" if job.get("reason") else "")),
    ]
    if job.get("exit_code") is not None:
        rows.append(("Exit code", str(job["exit_code"])))
    if int(job.get("attempt") or 0) > 1:
        rows.append(("Attempt", requeue_text(job)))
    gpus = f"{job['gpus']} x {job['gpu_model']}" if job.get("gpu_model") else str(job["gpus"])
    rows.append(("Resources", f"gpus {gpus}, cpus {job.get('cpus')}, memory "
                              f"{format_mib(job.get('memory_mib')) or 'no limit'}"))
    if job.get("requeue") is not None:
        rows.append(("Requeue", "yes" if job["requeue"] else "no"))
    if job.get("node"):
        idx = ",".join(str(i) for i in job.get("gpu_indices") or [])
        rows.append(("Node", f"{job['node']}" + (f" GPUs {idx}" if idx else "")))
    rows.append(("Time", f"{format_duration(elapsed_s(job, now))} of "
                         f"{format_duration(job.get('time_limit_s'))}"))
    if job.get("gpu_energy_j") is not None:
        rows.append(("GPU energy", format_energy(job["gpu_energy_j"])))
    if job.get("max_gpu_memory_mib") is not None:
        rows.append(("GPU memory", f"{format_mib(job['max_gpu_memory_mib'])} peak"))
    rows += accounting_rows(job)
    if job.get("priority_factors"):
        rows.append(("Priority", factors_text(job["priority_factors"])))
    else:
        nice = int(job.get("nice") or 0)
        rows.append(("Priority", str(job.get("priority")) + (f" (nice {nice})" if nice else "")))
    if job.get("estimated_start") and job.get("state") == "PENDING":
        rows.append(("Est. start", estimate_text(job["estimated_start"], now)))
    if job.get("qos") and job["qos"] != "normal":  # normal: no line
        rows.append(("QOS", QOS_TEXT.get(job["qos"], str(job["qos"]))))
    rows += preemption_rows(job)
    for label, key in (("Submitted", "submitted_at"), ("Dispatched", "dispatched_at"),
                       ("Started", "started_at"), ("Ended", "ended_at")):
        if job.get(key):
            rows.append((label, local_time(job[key])))
    if job.get("workdir"):
        rows.append(("Workdir", job["workdir"]))
    if job.get("environment") is not None:
        rows.append(("Environment", f"{len(job['environment'])} variables (--json shows them)"))
    if job.get("command"):
        rows.append(("Command", shlex.join(job["command"])))
    lines = [f"{label + ':':<12} {value}" for label, value in rows]
    if job.get("script"):
        script = job["script"].splitlines()
        lines.append("Script:")
        lines += [f"    {s}" for s in script[:SCRIPT_LINES_SHOWN]]
        if len(script) > SCRIPT_LINES_SHOWN:
            lines.append(f"    ... ({len(script) - SCRIPT_LINES_SHOWN} more lines; --json)")
    events = job.get("events") or []
    if events:
        table = plain_table("TIME", "FROM", "TO", "REASON")
        for e in events:
            t = parse_time(e["time"])
            table.add_row(t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "",
                          e.get("old_state") or "-", e["new_state"], e.get("reason") or "")
        lines += ["", "Events:", render(table, indent=2)]
    return "\n".join(lines)


class Column:
    """A column of a ``Table``: its header and how its cells are aligned."""

    def __init__(self, header: str, justify: str = "left") -> None:
        self.header = header
        #: "left" or "right".
        self.justify = justify


class Table:
    """Rows of text cells under headers, rendered by ``render``."""

    def __init__(self, *headers: str) -> None:
        self.columns = [Column(h) for h in headers]
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: str | None) -> None:
        self.rows.append(tuple("" if c is None else str(c) for c in cells))

    def plain_lines(self, width: int) -> list[str] | None:
        """The table's lines when it fits ``width`` and every cell is one line of printable
        ASCII (one character, one column); ``None`` otherwise."""
        rows = [tuple(c.header for c in self.columns), *self.rows]
        n = len(self.columns)
        widths = [0] * n
        for row in rows:
            for i, cell in enumerate(row[:n]):
                if not (cell.isascii() and cell.isprintable()):
                    return None
                widths[i] = max(widths[i], len(cell))
        if sum(widths) + 2 * (n - 1) > width:
            return None
        right = [c.justify == "right" for c in self.columns]
        out = []
        for row in rows:
            cells = (*row[:n], *[""] * (n - len(row)))
            out.append("  ".join(cell.rstrip().rjust(w) if r else cell.ljust(w)
                                 for cell, w, r in zip(cells, widths, right, strict=True)))
        return out

    def rich_lines(self, width: int) -> list[str]:
        """The table's lines as rich lays it out in ``width`` columns."""
        from rich.console import Console
        from rich.table import Table as RichTable

        table = RichTable(box=None, pad_edge=False, show_edge=False, show_header=True,
                          header_style="", padding=(0, 2, 0, 0))
        for c in self.columns:
            table.add_column(c.header, no_wrap=True, overflow="fold",
                             justify=c.justify)  # type: ignore[arg-type]
        for row in self.rows:
            table.add_row(*row)
        buf = io.StringIO()
        Console(file=buf, width=width, highlight=False, no_color=True, soft_wrap=False,
                emoji=False, markup=False).print(table)
        return buf.getvalue().splitlines()


def plain_table(*columns: str) -> Table:
    return Table(*columns)


def render(table: Table, *, width: int | None = None, indent: int = 0) -> str:
    """The table as plain text, trailing spaces stripped. ``width`` ``None``: the
    terminal's width when stdout is one, else unlimited (no wrapping in pipes)."""
    if width is None:
        width = terminal_width() if sys.stdout.isatty() else 100_000
    width = max(20, width - indent)
    lines = table.plain_lines(width)
    if lines is None:
        lines = table.rich_lines(width)
    pad = " " * indent
    return "\n".join(pad + line.rstrip() for line in lines)


def terminal_width() -> int:
    """$COLUMNS, else the terminal's width (80 when there is none)."""
    import shutil  # 3 ms (it imports bz2, lzma...): only on a terminal

    return shutil.get_terminal_size().columns


def echo_table(table: Table) -> None:
    click.echo(render(table))
