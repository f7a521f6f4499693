"""Names the CLI offers as choices, as the server knows them.

A copy of ``gpuq.wire.common.QOS_NAMES``: that module imports pydantic (over 100 ms), and
``gpuq submit --qos`` needs only the names. tests/cli/test_cli_imports.py holds the copy
equal to the original.
"""

from __future__ import annotations

#: The QOS a job may ask for (``gpuq.wire.common.Qos``).
QOS_NAMES: tuple[str, ...] = ("normal", "preemptible", "high")
