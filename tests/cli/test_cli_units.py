"""Durations and sizes as users type and read them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from gpuq.cli.units import (
    format_duration,
    format_energy,
    format_gpu_hours,
    format_mib,
    parse_duration_s,
    parse_gpu_hours,
    parse_memory_mib,
    parse_time_s,
)
from gpuq.cli.when import iso_utc, parse_when, short_local


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30 * 60),                 # MM
    ("90", 90 * 60),
    ("5:30", 5 * 60 + 30),           # MM:SS
    ("1:02:03", 3723),               # HH:MM:SS
    ("2-12", 2 * 86400 + 12 * 3600),  # D-HH
    ("1-02:30", 86400 + 2 * 3600 + 30 * 60),  # D-HH:MM
    ("1-00:00:10", 86410),           # D-HH:MM:SS
    ("90s", 90), ("2h", 7200), ("1d", 86400), ("30m", 1800), ("1h30m", 5400),
    ("1.5h", 5400), (" 2H ", 7200),
])
def test_parse_time_accepts_slurm_and_unit_forms(text: str, seconds: int) -> None:
    assert parse_time_s(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0:00", "abc", "1:2:3:4", "1-2:3:4:5", "2h:30",
                                  "-5", "1x", "h", "1.5", "1-"])
def test_parse_time_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time_s(text)


@pytest.mark.parametrize(("text", "mib"), [
    ("1024", 1024), ("512M", 512), ("16G", 16384), ("16g", 16384), ("16GB", 16384),
    ("16GiB", 16384), ("1.5G", 1536), ("1T", 1024 * 1024), ("2048K", 2), ("1K", 1), ("0", 0),
])
def test_parse_memory(text: str, mib: int) -> None:
    assert parse_memory_mib(text) == mib


@pytest.mark.parametrize("text", ["", "G", "16X", "-1G", "16 GBs", "1e3"])
def test_parse_memory_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_memory_mib(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0:00"), (5, "0:05"), (83, "1:23"), (3600, "1:00:00"), (3723, "1:02:03"),
    (86400 + 3723, "1-01:02:03"), (12 * 86400, "12-00:00:00"), (-3, "0:00"), (None, ""),
])
def test_format_duration_like_squeue(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_mib() -> None:
    assert [format_mib(m) for m in (None, 512, 1024, 1536, 81920, 0)] == \
        ["", "512M", "1G", "1.5G", "80G", "0M"]


@pytest.mark.parametrize(("joules", "text"), [
    (None, ""), (0, "0 J (0.0 Wh)"), (850, "850 J (0.2 Wh)"), (12_300, "12.3 kJ (3.4 Wh)"),
    (999_900, "999.9 kJ (277.8 Wh)"), (25_920_000, "25.9 MJ (7.2 kWh)"),
])
def test_format_energy(joules: float | None, text: str) -> None:
    assert format_energy(joules) == text


@pytest.mark.parametrize(("text", "seconds"), [
    ("90d", 90 * 86400), ("12h", 43200), ("2w", 14 * 86400), ("1d12h", 129600),
    ("30m", 1800), ("45s", 45), (" 1.5d ", 129600), ("1d 12h", 129600),
])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["90", "", "d", "1y", "0d", "-1d", "1:00"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text)


@pytest.mark.parametrize(("text", "hours"), [
    ("5000h", 5000.0), ("5000", 5000.0), ("1.5h", 1.5), ("5000 GPU-hours", 5000.0),
    ("20gpuh", 20.0), ("1 GPU-hour", 1.0),
])
def test_parse_gpu_hours(text: str, hours: float) -> None:
    assert parse_gpu_hours(text) == hours


@pytest.mark.parametrize("text", ["0", "0h", "5000d", "lots", "-3h", ""])
def test_parse_gpu_hours_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a number of GPU-hours above 0"):
        parse_gpu_hours(text)


def test_format_gpu_hours() -> None:
    assert [format_gpu_hours(h) for h in (None, 0, 0.04, 12.34, 99.9, 100, 1234.5)] == \
        ["", "0.0", "0.0", "12.3", "99.9", "100", "1234"]


NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW), (" NOW ", NOW),
    ("2027-01-31", datetime(2027, 1, 31, tzinfo=UTC)),
    ("2027-01-31T09:30", datetime(2027, 1, 31, 9, 30, tzinfo=UTC)),
    ("2027-01-31 09:30", datetime(2027, 1, 31, 9, 30, tzinfo=UTC)),
    ("2027-01-31T09:30Z", datetime(2027, 1, 31, 9, 30, tzinfo=UTC)),
    ("2027-01-31T09:30+02:00", datetime(2027, 1, 31, 7, 30, tzinfo=UTC)),
])
def test_parse_when(text: str, expected: datetime, utc: None) -> None:
    assert parse_when(text, NOW) == expected
    assert iso_utc(parse_when(text, NOW)) == expected.isoformat().replace("+00:00", "Z")


def test_parse_when_without_a_zone_is_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        assert iso_utc(parse_when("2027-01-31", NOW)) == "2027-01-30T23:00:00Z"
        assert short_local(parse_when("2027-01-31", NOW)) == "2027-01-31"
        assert short_local(parse_when("2027-07-01T09:15", NOW)) == "2027-07-01 09:15"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_parse_when_ago() -> None:
    assert parse_when("7d", NOW, ago=True) == NOW - timedelta(days=7)
    assert parse_when("2027-01-01T00:00Z", NOW, ago=True) == datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="is not a date or time"):
        parse_when("7d", NOW)
    with pytest.raises(ValueError, match="or a duration ago: 7d, 12h"):
        parse_when("yesterday", NOW, ago=True)
