"""Wire schemas of job arrays (Slurm's ``--array``): one request, many jobs alike but for
their index."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

from gpuq.wire.jobs import JobCreate

#: The most jobs one array may make (Slurm's MaxArraySize is a site setting too).
MAX_ARRAY_TASKS = 10_000
#: The largest index an array may use.
MAX_ARRAY_INDEX = 1_000_000
#: An array's idempotency key leaves room for the ``#<position>`` of its other elements.
MAX_ARRAY_KEY = 100

_RANGE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


def parse_array(spec: str) -> list[int]:
    """``0-9999``, ``1,3,5-7`` or ``0-15:4`` (every 4th) -> the sorted, distinct indices;
    ``ValueError`` saying what is wrong."""
    out: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        m = _RANGE.match(part)
        if not m:
            raise ValueError(f"{part!r} is not an index, a range (0-99) or a stepped range "
                             f"(0-99:5); e.g. 0-99 or 1,3,5-7")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        if hi < lo:
            raise ValueError(f"the range {part!r} ends before it starts")
        if step < 1:
            raise ValueError(f"the step of {part!r} must be at least 1")
        if hi > MAX_ARRAY_INDEX:
            raise ValueError(f"indices go up to {MAX_ARRAY_INDEX}")
        if (hi - lo) // step + 1 + len(out) > MAX_ARRAY_TASKS:
            raise ValueError(f"at most {MAX_ARRAY_TASKS} jobs in one array")
        out.update(range(lo, hi + 1, step))
    return sorted(out)


class JobArrayCreate(JobCreate):
    """A job array: the job of ``JobCreate`` once per index of ``array``. Each element
    finds its index in ``GPUQ_ARRAY_TASK_ID`` (and ``SLURM_ARRAY_TASK_ID``)."""

    array: str = Field(..., min_length=1, max_length=4096,
                       description="indices: 0-99, 1,3,5-7 or 0-99:5 (every 5th)",
                       examples=["0-99"])
    idempotency_key: str | None = Field(None, min_length=1, max_length=MAX_ARRAY_KEY)

    @field_validator("array")
    @classmethod
    def _indices(cls, v: str) -> str:
        parse_array(v)
        return v

    @property
    def indices(self) -> list[int]:
        return parse_array(self.array)


class JobArrayRead(BaseModel):
    """The jobs an array made: ``ids[i]`` runs index ``indices[i]``."""

    array_job_id: int = Field(..., description="the first element's job id")
    name: str
    indices: list[int]
    ids: list[int]
