"""Wire schemas of the usage report (``GET /v1/usage``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

UsageKey = Literal["account", "user", "gpu-model", "day"]


class UsageRow(BaseModel):
    """Usage of one group (the keys it is grouped by are set, the others null)."""

    account: str | None = None
    user: str | None = None
    gpu_model: str | None = None
    #: UTC date of the charge intervals (``YYYY-MM-DD``).
    day: str | None = None
    gpu_hours: float
    billed_gpu_hours: float
    energy_kwh: float
    carbon_kg: float
    #: Jobs with usage in the group (a job in two groups counts in each).
    jobs: int
    #: Busy GPU-seconds / sampled GPU-seconds (null: no samples).
    utilization_mean_pct: float | None
    #: GPU-hours spent under the idle threshold.
    idle_gpu_hours: float


class UsageReport(BaseModel):
    since: datetime | None
    until: datetime
    by: list[UsageKey]
    rows: list[UsageRow]
    total: UsageRow
