"""What the policy decides: plain data that the loop applies in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Start:
    job_id: int
    node: str
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Decisions:
    starts: tuple[Start, ...] = ()
    #: A reason for every pending job that does not start this cycle.
    pending_reasons: dict[int, str] = field(default_factory=dict)
