"""The loop's thread: a quiet loop runs at once when woken; under constant wake-ups it
rests as long as its last cycle took (at most half busy)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from gpuq.config import Settings
from gpuq.scheduler.runtime import loop as loop_module
from gpuq.scheduler.runtime.applier import CycleResult
from gpuq.scheduler.runtime.loop import SchedulerLoop

CYCLE_S = 0.1


@pytest.fixture
def cycles(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """(start, end) of every cycle; each takes CYCLE_S."""
    seen: list[tuple[float, float]] = []

    def fake_cycle(ctx: Any, housekeeping: bool = True,
                   listening_since: Any = None, depth: int = 0) -> CycleResult:
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
    # The first cycle is the loop's first full pass, spaced by FULL_PASS_SHARE, not rested
    # after; the quick ones after it rest.
    quick = cycles[1:]
    gaps = [b[0] - a[1] for a, b in zip(quick, quick[1:], strict=False)]
    assert len(quick) >= 4
    assert min(gaps) >= CYCLE_S * 0.9, gaps  # rests at least as long as a cycle took
    busy = sum(e - s for s, e in cycles) / (cycles[-1][1] - cycles[0][0])
    assert busy <= 0.6, busy


def test_woken_cycles_skip_housekeeping_for_a_while_and_timer_cycles_never(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, bool]] = []

    def fake_cycle(ctx: Any, housekeeping: bool = True,
                   listening_since: Any = None, depth: int = 0) -> CycleResult:
        seen.append((time.monotonic(), housekeeping))
        return CycleResult()

    monkeypatch.setattr(loop_module, "cycle", fake_cycle)
    monkeypatch.setattr(SchedulerLoop, "HOUSEKEEPING_S", 0.5)
    ctx = SimpleNamespace(settings=Settings(schedule_interval_s=1.0, schedule_coalesce_s=0.0),
                          clock=lambda: datetime.now(UTC), wake=None)
    loop = SchedulerLoop(ctx)  # type: ignore[arg-type]
    loop.start()
    try:
        started = time.monotonic()
        for _ in range(3):  # events in the first 0.2 s
            ctx.wake()
            time.sleep(0.1)
        while time.monotonic() - started < 0.7:
            time.sleep(0.01)
        ctx.wake()  # an event more than HOUSEKEEPING_S after the first
        time.sleep(1.5)  # then quiet: the timer's cycle
    finally:
        loop.stop()
    flags = [h for _, h in seen]
    assert flags[0] is True, seen  # the first cycle does it
    assert flags[1:3] == [False, False], seen  # events soon after skip it
    assert flags[3] is True, seen  # an event after HOUSEKEEPING_S does it
    assert len(flags) >= 5 and flags[4] is True, seen  # the timer's cycle does it


def test_woken_cycles_look_at_the_queue_s_head_and_a_full_pass_comes_every_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Slurm's main scheduler and its backfill pass: a cycle an event woke reads the first
    ``schedule_queue_depth`` jobs; the timer's, and a woken one ``schedule_interval_s``
    after the last full pass (under constant events the timer never fires), the queue."""
    seen: list[tuple[float, int]] = []

    def fake_cycle(ctx: Any, housekeeping: bool = True, listening_since: Any = None,
                   depth: int = 0) -> CycleResult:
        seen.append((time.monotonic(), depth))
        return CycleResult(whole=depth == 0)

    monkeypatch.setattr(loop_module, "cycle", fake_cycle)
    ctx = SimpleNamespace(settings=Settings(schedule_interval_s=0.6, schedule_coalesce_s=0.0,
                                            schedule_queue_depth=7),
                          clock=lambda: datetime.now(UTC), wake=None)
    loop = SchedulerLoop(ctx)  # type: ignore[arg-type]
    loop.start()
    try:
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # an event every 50 ms
            ctx.wake()
            time.sleep(0.05)
        time.sleep(0.9)  # then quiet: the timer's cycle
    finally:
        loop.stop()
    depths = [d for _, d in seen]
    assert depths[:2] == [0, 7], seen  # the loop's first cycle is a full pass, then quick
    full = [t for t, d in seen if d == 0]
    assert set(depths) == {0, 7}, seen
    # Under constant events a full pass still comes every interval (1.5 s: the first and 2
    # or 3 more), and the
    # timer's cycle after them is one.
    assert 3 <= len([t for t in full if t - started < 1.5]) <= 4, seen
    assert depths[-1] == 0, seen
    assert all(b - a >= 0.55 for a, b in zip(full, full[1:], strict=False)), seen


def test_a_loop_in_a_process_of_its_own_does_not_rest(
        cycles: list[tuple[float, float]]) -> None:
    """``gpuq server --workers N``: the API processes have CPUs of their own (and the loop
    runs at loop_nice): under constant wake-ups the cycles follow each other."""
    ctx = SimpleNamespace(settings=Settings(schedule_interval_s=30, schedule_coalesce_s=0.0),
                          clock=lambda: datetime.now(UTC), wake=None)
    loop = SchedulerLoop(ctx, rest=False)  # type: ignore[arg-type]
    loop.start()
    try:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            ctx.wake()
            time.sleep(0.005)
    finally:
        loop.stop()
    gaps = [b[0] - a[1] for a, b in zip(cycles, cycles[1:], strict=False)]
    assert len(cycles) >= 7, cycles  # about 1 s / CYCLE_S, not half as many
    assert max(gaps) < CYCLE_S / 2, gaps
