"""The loop's thread: a quiet loop runs at once when woken; under constant wake-ups it
rests as long as its last cycle took (at most half busy)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from scheduler import loop as loop_module
from scheduler.config import Settings
from scheduler.loop import CycleResult, SchedulerLoop

CYCLE_S = 0.1


@pytest.fixture
def cycles(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """(start, end) of every cycle; each takes CYCLE_S."""
    seen: list[tuple[float, float]] = []

    def fake_cycle(ctx: Any) -> CycleResult:
        t0 = time.monotonic()
        time.sleep(CYCLE_S)
        seen.append((t0, time.monotonic()))
        return CycleResult()

    monkeypatch.setattr(loop_module, "cycle", fake_cycle)
    return seen


def test_a_quiet_loop_runs_at_once_and_a_busy_one_rests(
        cycles: list[tuple[float, float]]) -> None:
    ctx = SimpleNamespace(settings=Settings(schedule_interval_s=30, schedule_coalesce_s=0.05),
                          clock=lambda: datetime.now(UTC), wake=None)
    loop = SchedulerLoop(ctx)  # type: ignore[arg-type]
    loop.start()
    try:
        time.sleep(0.3)
        woken = time.monotonic()
        ctx.wake()
        deadline = time.monotonic() + 2.0
        while not cycles and time.monotonic() < deadline:
            time.sleep(0.001)
        assert cycles and cycles[0][0] - woken < 0.05, "a quiet loop waits for nothing"
        # Constant wake-ups for 1.5 s.
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            ctx.wake()
            time.sleep(0.005)
    finally:
        loop.stop()
    gaps = [b[0] - a[1] for a, b in zip(cycles, cycles[1:], strict=False)]
    assert len(cycles) >= 4
    assert min(gaps) >= CYCLE_S * 0.9, gaps  # rests at least as long as a cycle took
    busy = sum(e - s for s, e in cycles) / (cycles[-1][1] - cycles[0][0])
    assert busy <= 0.6, busy
