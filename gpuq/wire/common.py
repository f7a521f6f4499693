"""What every wire schema shares: the strictness of input models, names, QOS names, size limits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_RE, description="letters, digits, '.', '_', '-'")]

#: normal; preemptible (runs on any idle GPU, reserved or not, and is preempted first);
#: high (higher priority; only users an admin allowed, see ``UserUpdate.allowed_qos``).
Qos = Literal["normal", "preemptible", "high"]
QOS_NAMES: tuple[str, ...] = ("normal", "preemptible", "high")

# --- input limits ---------------------------------------------------------------------
# Every input is bounded, so that no caller can fill the database's disk or the server's
# memory (issue 16). A field over its limit is a 422 that names it; a request body over
# ``Settings.max_request_bytes`` (default 8 MiB) is a 413 before it is read. Sizes of the
# text a job runs with are UTF-8 bytes, as Linux counts them at exec; the other free text
# is bounded in characters by its column. The limits of argv and the environment follow
# Linux's: MAX_ARG_STRLEN (128 KiB, one argument or one NAME=value) and ARG_MAX (2 MiB at
# the default 8 MiB stack, argv and the environment together, NULs and pointers included).

#: A job's script, UTF-8 bytes (Slurm's default ``max_script_size`` is 4 MB).
MAX_SCRIPT_BYTES = 1024 * 1024
#: Elements of a job's argv (``command``).
MAX_ARGV = 4096
#: One argv element, UTF-8 bytes (Linux's MAX_ARG_STRLEN).
MAX_ARG_BYTES = 128 * 1024
#: All of argv, UTF-8 bytes, counting each element's terminating NUL.
MAX_ARGV_BYTES = 1024 * 1024
#: Variables of a job's environment.
MAX_ENV = 4096
#: A variable's name, characters (letters, digits and ``_``, not starting with a digit).
MAX_ENV_NAME = 256
#: One variable, ``NAME=value``, UTF-8 bytes (Linux's MAX_ARG_STRLEN).
MAX_ENV_VAR_BYTES = 128 * 1024
#: The whole environment, UTF-8 bytes: each ``NAME=value`` and its NUL.
MAX_ENV_BYTES = 1024 * 1024
#: argv and the environment together, counted as above: under Linux's 2 MiB ARG_MAX with
#: 256 KiB left for the pointers (8 bytes a string) and the variables the worker adds
#: (``CUDA_VISIBLE_DEVICES``, ``GPUQ_JOB_ID``, ``HOME`` ...).
MAX_EXEC_BYTES = 1792 * 1024
#: A job's working directory, characters (Linux's PATH_MAX is 4096; the column's 1024).
MAX_WORKDIR = 1024
#: A job's name, characters (an array element's is ``NAME[INDEX]``).
MAX_JOB_NAME = 128
#: An idempotency key, characters.
MAX_IDEMPOTENCY_KEY = 128
#: A GPU model name, characters (``A100-80GB``).
MAX_GPU_MODEL = 64
#: Free text for people (descriptions, reasons), characters.
MAX_TEXT = 256
#: Jobs one node's heartbeat may list (running, or ended and not yet acknowledged).
MAX_NODE_JOBS = 10_000


#: The largest id of a stored row (the database's 32-bit integer keys).
MAX_ID = 2**31 - 1
#: The largest magnitude of a measurement a caller sends (percent, MiB, watts, joules,
#: seconds): sums of larger ones overflowed to infinity, which the database refused (a
#: 500). 1e15 J is 32 years of a megawatt; 1e15 s, 32 million years.
MAX_MEASURE = 1e15


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


def check_time(value: datetime | None) -> datetime | None:
    """Refuse a time with a zone that the database cannot store: one whose UTC time falls
    outside years 1 to 9999 (``0001-01-01T00:00:00+01:00``, ``9999-12-31T23:00:00-02:00``);
    stored in UTC, it failed to convert (a 500)."""
    if value is not None and value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("out of range: a time must fall in the years 1 to 9999 "
                             "in UTC") from None
    return value


class Strict(BaseModel):
    """An input model: unknown fields are refused, and so is text the database cannot
    store (``check_text``) in any field, and a number that is not finite (``NaN``,
    ``Infinity``: Python's JSON reads them; the database's JSON and the answers cannot
    hold them), named in the 422."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        return check_text(value)
