"""Grants on the wire: creating, changing, revoking and reading a grant (an allocation award)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from gpuq.wire.common import (
    Name,
    Strict,
    check_time,
)

GrantKind = Literal["share", "reservation"]
GrantState = Literal["scheduled", "active", "expired", "revoked"]


class GrantCreate(Strict):
    """An allocation award to ``account`` for the window [``start``, ``end``).

    ``share``: ``shares`` raw shares are added to the account's while the grant is active
    (fair share then works toward the larger target), until the account has used
    ``gpu_hours`` billed GPU-hours in the window (if a budget is given).
    ``reservation``: ``gpus`` GPUs (of ``gpu_model``, on ``nodes`` if given) are kept for
    the account's jobs; other jobs borrow them while idle and are preempted (SIGTERM,
    grace period, SIGKILL, requeued) when the account's jobs need them back.
    """

    account: Name
    kind: GrantKind
    #: Default: now.
    start: datetime | None = None
    end: datetime
    note: str = Field("", max_length=512)
    shares: int | None = Field(None, ge=1, le=1_000_000)
    gpu_hours: float | None = Field(None, gt=0)
    gpus: int | None = Field(None, ge=1, le=100_000)
    gpu_model: str | None = Field(None, min_length=1, max_length=64)
    nodes: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]] = \
        Field(default_factory=list, max_length=1000)

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2027-01-31T00:00:00Z")
        return check_time(v)

    @model_validator(mode="after")
    def _kind_fields(self) -> GrantCreate:
        if self.start is not None and self.end <= self.start:
            raise ValueError("'end' must be after 'start'")
        if self.kind == "share":
            if self.shares is None:
                raise ValueError("a share grant needs 'shares' (raw shares to add)")
            extra = [f for f in ("gpus", "gpu_model") if getattr(self, f) is not None]
            if self.nodes:
                extra.append("nodes")
            if extra:
                raise ValueError(f"a share grant takes no {', '.join(extra)}: those are "
                                 f"for reservation grants")
        else:
            if self.gpus is None:
                raise ValueError("a reservation grant needs 'gpus' (how many to reserve)")
            extra = [f for f in ("shares", "gpu_hours") if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"a reservation grant takes no {', '.join(extra)}: those "
                                 f"are for share grants")
        return self


class GrantUpdate(Strict):
    """Change a grant that has not ended: only the fields given change."""

    end: datetime | None = None
    note: str | None = Field(None, max_length=512)
    gpu_hours: float | None = Field(None, gt=0)

    @field_validator("end")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2027-01-31T00:00:00Z")
        return check_time(v)


class GrantRevoke(Strict):
    reason: str = Field(..., min_length=1, max_length=256)


class GrantUsage(BaseModel):
    """What the grant's account used in the window so far (up to now or the end)."""

    #: GPU-hours the account's jobs (and those of accounts below it) ran in the window.
    gpu_hours: float
    #: The same, billed (GPU-hours x the model's billing weight): what a budget counts.
    billed_gpu_hours: float
    #: Share grants: the budget, and what is left of it (null: no budget).
    budget_gpu_hours: float | None = None
    budget_left_gpu_hours: float | None = None
    #: Reservation grants: GPUs x hours of the window so far (what was reserved).
    reserved_gpu_hours: float | None = None
    #: Reservation grants: GPU-hours other accounts' jobs borrowed of it.
    borrowed_gpu_hours: float = 0.0
    #: Preemptions of borrowers it caused.
    preemptions: int = 0
    #: Energy of the account's jobs in the window, kWh (where the GPUs report it).
    energy_kwh: float | None = None


class GrantRead(BaseModel):
    id: int
    account: str
    kind: GrantKind
    start: datetime
    end: datetime
    note: str
    shares: int | None
    gpu_hours: float | None
    gpus: int | None
    gpu_model: str | None
    nodes: list[str]
    state: GrantState
    #: Why it is in its state: "budget used up", "revoked by bob: ...", "end reached".
    state_reason: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    usage: GrantUsage
