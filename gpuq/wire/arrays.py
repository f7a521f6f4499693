"""Wire schemas of job arrays (Slurm's ``--array``): one request, many jobs alike but for
their index. An array's indices travel and are stored as runs (``Ranges``), never as one
number per element: an array may have up to ``MAX_ARRAY_TASKS`` of them."""

from __future__ import annotations

import re
from bisect import bisect_right

from pydantic import BaseModel, Field, field_validator

from gpuq.wire.jobs import JobCreate

#: The most jobs one array may make (Slurm's MaxArraySize is a site setting too).
MAX_ARRAY_TASKS = 1_000_000
#: The largest index an array may use.
MAX_ARRAY_INDEX = 4_000_000
#: An answer lists its elements' ids and indices one by one up to this many elements
#: (``JobArrayRead``); a larger array is told by its first id, count and ranges.
MAX_LISTED = 10_000
#: An array's idempotency key leaves room for the ``#<position>`` of its other elements.
MAX_ARRAY_KEY = 100

_RANGE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


class Ranges:
    """Sorted distinct indices as runs ``(first, last, step)``: position ``p`` (0-based,
    in ascending index order) <-> index, in O(log runs), without a list of them all."""

    __slots__ = ("runs", "_starts", "count")

    def __init__(self, runs: list[tuple[int, int, int]]) -> None:
        self.runs = runs
        starts, n = [], 0
        for lo, hi, step in runs:
            starts.append(n)
            n += (hi - lo) // step + 1
        self._starts, self.count = starts, n

    @classmethod
    def of(cls, stored: list[list[int]] | list[tuple[int, int, int]]) -> Ranges:
        return cls([(int(a), int(b), int(c)) for a, b, c in stored])

    @classmethod
    def from_indices(cls, indices: list[int]) -> Ranges:
        """Sorted distinct indices as runs."""
        return cls(_as_runs(indices))

    def stored(self) -> list[list[int]]:
        return [list(r) for r in self.runs]

    def index_at(self, pos: int) -> int:
        if not 0 <= pos < self.count:
            raise IndexError(pos)
        r = bisect_right(self._starts, pos) - 1
        lo, _, step = self.runs[r]
        return lo + (pos - self._starts[r]) * step

    def position(self, index: int) -> int | None:
        """The position of ``index``, or None if the array has no such index."""
        r = bisect_right([lo for lo, _, _ in self.runs], index) - 1
        if r < 0:
            return None
        lo, hi, step = self.runs[r]
        if index > hi or (index - lo) % step:
            return None
        return self._starts[r] + (index - lo) // step

    @property
    def first(self) -> int:
        return self.runs[0][0]

    @property
    def last(self) -> int:
        return self.runs[-1][1]

    def indices(self) -> list[int]:
        return [i for lo, hi, step in self.runs for i in range(lo, hi + 1, step)]

    def text(self, start: int = 0) -> str:
        """Slurm's notation of the indices from position ``start`` on: ``0-99``,
        ``1,3,5-7``, ``0-15:4``."""
        parts = []
        for (lo, hi, step), s in zip(self.runs, self._starts, strict=True):
            n = (hi - lo) // step + 1
            if start >= s + n:
                continue
            if start > s:
                lo += (start - s) * step
            if lo == hi:
                parts.append(str(lo))
            elif step == 1:
                parts.append(f"{lo}-{hi}")
            elif lo + step == hi:
                parts.append(f"{lo},{hi}")
            else:
                parts.append(f"{lo}-{hi}:{step}")
        return ",".join(parts)


def parse_ranges(spec: str) -> Ranges:
    """``0-9999``, ``1,3,5-7`` or ``0-15:4`` (every 4th) -> the sorted, distinct indices
    as runs; ``ValueError`` saying what is wrong. Runs that overlap are merged through a
    set of their indices; runs that do not (as written almost always) are not expanded."""
    runs: list[tuple[int, int, int]] = []
    total = 0
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
        hi = lo + (hi - lo) // step * step  # the last index the run really has
        total += (hi - lo) // step + 1
        if total > MAX_ARRAY_TASKS:
            raise ValueError(f"at most {MAX_ARRAY_TASKS} jobs in one array")
        runs.append((lo, hi, step if hi > lo else 1))
    runs.sort()
    if all(a[1] < b[0] for a, b in zip(runs, runs[1:], strict=False)):
        return Ranges(_joined(runs))
    return Ranges(_as_runs(sorted({i for lo, hi, st in runs for i in range(lo, hi + 1, st)})))


def _joined(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Adjacent runs of step 1 that continue each other (``0-4,5-9``) as one."""
    out: list[tuple[int, int, int]] = []
    for lo, hi, step in runs:
        if out and step == 1 and out[-1][2] == 1 and out[-1][1] + 1 == lo:
            out[-1] = (out[-1][0], hi, 1)
        else:
            out.append((lo, hi, step))
    return out


def _as_runs(indices: list[int]) -> list[tuple[int, int, int]]:
    """Sorted distinct indices as the fewest greedy runs of one step."""
    runs: list[tuple[int, int, int]] = []
    i, n = 0, len(indices)
    while i < n:
        lo = indices[i]
        if i + 1 == n:
            runs.append((lo, lo, 1))
            break
        step = indices[i + 1] - lo
        j = i + 1
        while j + 1 < n and indices[j + 1] - indices[j] == step:
            j += 1
        if step != 1 and j + 1 < n and indices[j + 1] - indices[j] == 1:
            j -= 1  # its last index begins a run of consecutive ones: leave it to that
        if step != 1 and j < i + 2:  # a stepped run of two reads better as two indices
            runs.append((lo, lo, 1))
            i += 1
            continue
        runs.append((lo, indices[j], step))
        i = j + 1
    return _joined(runs)


def parse_array(spec: str) -> list[int]:
    """The sorted, distinct indices of ``spec`` (``parse_ranges``) as a list."""
    return parse_ranges(spec).indices()


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
        parse_ranges(v)
        return v

    @property
    def ranges(self) -> Ranges:
        return parse_ranges(self.array)

    @property
    def indices(self) -> list[int]:
        return parse_array(self.array)


class JobArrayRead(BaseModel):
    """The jobs an array made: ``ids[i]`` runs index ``indices[i]`` (job ``array_job_id +
    i``). Both lists are empty for an array of more than ``MAX_LISTED`` elements."""

    array_job_id: int = Field(..., description="the first element's job id (the array's)")
    name: str
    count: int = Field(0, description="how many elements (jobs) the array has")
    array: str = Field("", description="its indices in Slurm's notation (0-99, 1,3,5-7)")
    indices: list[int]
    ids: list[int]


class ArrayCancelRead(BaseModel):
    """What cancelling a whole array did."""

    array_job_id: int
    cancelled: int = Field(..., description="elements cancelled that had not started")
    cancel_requested: list[int] = Field(
        ..., description="running elements whose nodes were told to stop them")
