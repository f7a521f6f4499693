"""Builders for the simulator tests: traces as files, finished jobs as records."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from gpuq.scheduler.sim.engine import JobRecord
from gpuq.scheduler.sim.trace import TraceJob, shipped_traces

HEADER = "submit_time,user,account,gpus,duration,time_limit"
SHIPPED_TRACE = shipped_traces()["lanl-cm5-1994"]


def write_trace(path: Path, rows: Iterable[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def make_record(job_id: int, *, account: str = "a", user: str = "u", gpus: int = 1,
                submit: float = 0.0, start: float = 0.0, end: float = 10.0,
                node: str = "node0001", gpu_indices: Sequence[int] = (0,)) -> JobRecord:
    job = TraceJob(id=job_id, submit_s=submit, user=user, account=account, gpus=gpus,
                   duration_s=end - start)
    return JobRecord(job, start, end, node, tuple(gpu_indices))
