"""What every wire schema shares: the strictness of input models, names, QOS names, size limits."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_RE, description="letters, digits, '.', '_', '-'")]

#: normal; preemptible (runs on any idle GPU, reserved or not, and is preempted first);
#: high (higher priority; only users an admin allowed, see ``UserUpdate.allowed_qos``).
Qos = Literal["normal", "preemptible", "high"]
QOS_NAMES: tuple[str, ...] = ("normal", "preemptible", "high")

MAX_SCRIPT_BYTES = 1024 * 1024
MAX_ARGV = 4096
MAX_ENV = 4096


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
