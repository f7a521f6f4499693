"""Billed GPU-seconds and their decay (fairshare.md A3)."""

from __future__ import annotations

import pytest

from gpuq.scheduler.policy.usage import (
    DEFAULT_HALF_LIFE_S,
    accrue,
    billed_seconds,
    billing_weight,
    decay_factor,
    decayed,
)

WEEK = 7 * 86400.0


class TestDecay:
    def test_default_half_life_is_a_week(self) -> None:
        assert DEFAULT_HALF_LIFE_S == WEEK

    def test_halves_every_half_life(self) -> None:
        assert decay_factor(WEEK, WEEK) == 0.5
        assert decay_factor(2 * WEEK, WEEK) == 0.25
        assert decay_factor(3 * WEEK, WEEK) == 0.125

    def test_exact_power_between(self) -> None:
        assert decay_factor(WEEK / 2, WEEK) == 0.5 ** 0.5
        assert decay_factor(86400, WEEK) == 0.5 ** (1 / 7)

    def test_no_time_no_decay(self) -> None:
        assert decay_factor(0, WEEK) == 1.0

    def test_half_life_zero_means_no_decay(self) -> None:
        assert decay_factor(10 * WEEK, 0) == 1.0

    def test_a_clock_stepped_back_does_not_grow_usage(self) -> None:
        assert decay_factor(-100, WEEK) == 1.0

    def test_decay_composes(self) -> None:
        once = decayed(1000.0, 3 * 86400, WEEK)
        twice = decayed(decayed(1000.0, 86400, WEEK), 2 * 86400, WEEK)
        assert twice == pytest.approx(once, rel=1e-15)

    def test_accrue_decays_then_adds(self) -> None:
        assert accrue(800.0, WEEK, WEEK, 100.0) == 500.0


class TestBilling:
    def test_gpus_times_seconds_times_weight(self) -> None:
        assert billed_seconds(2, 3600, 4.8) == 2 * 3600 * 4.8

    def test_negative_time_bills_nothing(self) -> None:
        assert billed_seconds(2, -5, 1.0) == 0.0

    def test_weights_follow_the_reference_gpu_units(self) -> None:
        assert billing_weight("A100-40GB") == 4.0
        assert billing_weight("a100-80gb") == 4.8
        assert billing_weight("H100-80GB") == 12.2

    def test_unknown_model_gets_the_default(self) -> None:
        assert billing_weight("MI300X") == 1.0
        assert billing_weight(None, default=2.0) == 2.0

    def test_a_configured_table(self) -> None:
        assert billing_weight("L40S", {"l40s": 3.0}) == 3.0
