"""Decay math: exact 0.5 ** (Δ/HL); running jobs charge as they run."""

from __future__ import annotations

import math

import pytest

from gpuq.scheduler.policy.usage import decay_factor
from gpuq.scheduler.sim.ledger import UsageLedger

HL = 7 * 86_400.0
KEY = ("alice", "lab")


def ran(rate: float, start: float, end: float, now: float, half_life: float) -> float:
    """The closed form: rate * ∫_start^end 0.5 ** ((now - τ) / HL) dτ."""
    if not half_life:
        return rate * (end - start)
    k = half_life / math.log(2)
    return rate * k * (0.5 ** ((now - end) / half_life) - 0.5 ** ((now - start) / half_life))


def test_a_lump_halves_every_half_life() -> None:
    ledger = UsageLedger(HL)
    ledger.charge(KEY, 1000.0, at_s=50.0)
    assert ledger.usage_of(KEY, 50.0) == pytest.approx(1000.0, rel=1e-15)
    assert ledger.usage_of(KEY, 50.0 + HL) == pytest.approx(500.0, rel=1e-14)
    assert ledger.usage_of(KEY, 50.0 + 3 * HL) == pytest.approx(125.0, rel=1e-14)
    for elapsed in (1.0, 12_345.6, 2.5 * HL):
        assert ledger.usage_of(KEY, 50.0 + elapsed) == pytest.approx(
            1000.0 * decay_factor(elapsed, HL), rel=1e-13)


def test_a_running_job_charges_as_it_runs_and_its_charge_decays_after() -> None:
    ledger = UsageLedger(HL)
    ledger.start(KEY, rate=8.0, at_s=100.0)           # 8 billed GPU-seconds per second
    assert ledger.usage_of(KEY, 100.0) == 0.0
    for now in (101.0, 3700.0, 100.0 + HL):
        assert ledger.usage_of(KEY, now) == pytest.approx(ran(8, 100, now, now, HL),
                                                          rel=1e-9)
    # A short run charges almost exactly rate x seconds.
    assert ledger.usage_of(KEY, 3700.0) == pytest.approx(8 * 3600, rel=3e-3)
    ledger.stop(KEY, rate=8.0, started_s=100.0, at_s=3700.0)
    for now in (3700.0, 3700.0 + HL, 3700.0 + 10 * HL):
        assert ledger.usage_of(KEY, now) == pytest.approx(ran(8, 100, 3700, now, HL),
                                                          rel=1e-9)
    # After it ends, the charge decays exactly like a lump.
    assert ledger.usage_of(KEY, 3700.0 + HL) == pytest.approx(
        ledger.usage_of(KEY, 3700.0) / 2, rel=1e-12)


def test_no_decay_is_plain_gpu_seconds() -> None:
    ledger = UsageLedger(0)
    ledger.start(KEY, rate=2.0, at_s=10.0)
    ledger.start(KEY, rate=4.0, at_s=20.0)
    assert ledger.usage_of(KEY, 30.0) == pytest.approx(2 * 20 + 4 * 10)
    ledger.stop(KEY, rate=2.0, started_s=10.0, at_s=30.0)
    ledger.charge(("bob", "lab"), 7.0, at_s=0.0)
    usage = ledger.usage(1e6)
    assert usage[KEY] == pytest.approx(2 * 20 + 4 * (1e6 - 20))
    assert usage[("bob", "lab")] == 7.0


def test_several_jobs_of_one_association_add_up() -> None:
    ledger = UsageLedger(HL)
    ledger.start(KEY, 1.0, 0.0)
    ledger.start(KEY, 3.0, 500.0)
    ledger.stop(KEY, 1.0, 0.0, 1000.0)
    now = 2000.0
    want = ran(1, 0, 1000, now, HL) + ran(3, 500, now, now, HL)
    assert ledger.usage_of(KEY, now) == pytest.approx(want, rel=1e-9)
    ledger.stop(KEY, 3.0, 500.0, now)
    assert ledger.usage_of(KEY, now) == pytest.approx(want, rel=1e-9)


def test_long_runs_move_the_reference_time_without_losing_precision() -> None:
    half_life = 60.0                       # 10,000 half-lives over the run: several rebases
    ledger = UsageLedger(half_life)
    now = 600_000.0
    ledger.charge(("old", "a"), 1e300, at_s=0.0)  # decays to nothing, must not overflow
    ledger.start(KEY, 2.0, now - 90.0)
    ledger.charge(("bob", "a"), 50.0, at_s=now - 30.0)
    usage = ledger.usage(now)
    assert usage[KEY] == pytest.approx(ran(2, now - 90, now, now, half_life), rel=1e-9)
    assert usage[("bob", "a")] == pytest.approx(50.0 * 0.5 ** 0.5, rel=1e-12)
    assert usage[("old", "a")] == 0.0
    ledger.stop(KEY, 2.0, now - 90.0, now + 60.0)
    assert ledger.usage_of(KEY, now + 120.0) == pytest.approx(
        ran(2, now - 90, now + 60, now + 120, half_life), rel=1e-9)
