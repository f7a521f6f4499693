"""What every wire schema shares: the strictness of input models, names, QOS names, size limits."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_RE, description="letters, digits, '.', '_', '-'")]

#: normal; preemptible (runs on any idle GPU, reserved or not, and is preempted first);
#: high (higher priority; only users an admin allowed, see ``UserUpdate.allowed_qos``).
Qos = Literal["normal", "preemptible", "high"]
QOS_NAMES: tuple[str, ...] = ("normal", "preemptible", "high")

MAX_SCRIPT_BYTES = 1024 * 1024
MAX_ARGV = 4096
MAX_ENV = 4096


#: The largest id of a stored row (the database's 32-bit integer keys).
MAX_ID = 2**31 - 1


def check_text(value: Any) -> Any:
    """Refuse text the database cannot store: a NUL byte, or a lone UTF-16 surrogate (JSON
    allows ``"\\ud800"``; UTF-8 does not). Looks inside lists and dicts."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("contains a NUL byte (\\u0000); remove it")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("contains a lone surrogate, which is not valid UTF-8; "
                             "send valid Unicode text") from None
    elif isinstance(value, list | tuple):
        for item in value:
            check_text(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key)
            check_text(item)
    return value


class Strict(BaseModel):
    """An input model: unknown fields are refused, and so is text the database cannot
    store (``check_text``) in any field, named in the 422."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        return check_text(value)
