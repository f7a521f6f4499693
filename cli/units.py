"""Durations and sizes: parsing what users type, formatting what they read."""

from __future__ import annotations

import math
import re

import click

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Patterns, compiled (by re, which keeps them) when first used: compiling each costs about
# half a millisecond, and most commands parse none of these.
_SUFFIXED = r"(?i)(\d+(?:\.\d+)?)([smhd])"
_MEMORY = r"(?i)(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?"
_MIB_PER = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}


def _ints(parts: list[str], text: str) -> list[int]:
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a time")
    return [int(p) for p in parts]


def parse_time_s(text: str) -> int:
    """A time limit in seconds, from Slurm's formats ("MM", "MM:SS", "HH:MM:SS", "D-HH",
    "D-HH:MM", "D-HH:MM:SS") or with units ("90s", "30m", "2h", "1d", "1h30m")."""
    s = text.strip()
    if not s:
        raise ValueError("empty time")
    if re.match(_SUFFIXED, s):
        pieces = re.findall(_SUFFIXED, s)
        if "".join(n + u for n, u in pieces) != s:
            raise ValueError(f"{text!r} is not a time (examples: 90s, 30m, 2h, 1d, 1h30m)")
        seconds = math.ceil(sum(float(n) * _UNIT_S[u.lower()] for n, u in pieces))
    elif "-" in s:
        days_text, _, rest = s.partition("-")
        days = _ints([days_text], text)[0]
        hms = _ints(rest.split(":"), text)
        if len(hms) > 3:
            raise ValueError(f"{text!r} is not a time (D-HH, D-HH:MM or D-HH:MM:SS)")
        hms += [0] * (3 - len(hms))
        seconds = days * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
    else:
        parts = _ints(s.split(":"), text)
        if len(parts) == 1:
            seconds = parts[0] * 60
        elif len(parts) == 2:
            seconds = parts[0] * 60 + parts[1]
        elif len(parts) == 3:
            seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
        else:
            raise ValueError(f"{text!r} is not a time (MM, MM:SS or HH:MM:SS)")
    if seconds <= 0:
        raise ValueError("the time limit must be more than 0")
    return seconds


def parse_memory_mib(text: str) -> int:
    """Memory in MiB: "16G", "512M", "1.5G", "1T", "2048K"; a bare number is MiB."""
    m = re.fullmatch(_MEMORY, text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 16G, 512M, 1024 = MiB)")
    return math.ceil(float(m.group(1)) * _MIB_PER[m.group(2).lower()])


def format_duration(seconds: float | None) -> str:
    """Like squeue's TIME: "M:SS", "H:MM:SS", "D-HH:MM:SS"."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{s:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{s:02d}"
    return f"{minutes}:{s:02d}"


def format_mib(mib: float | None) -> str:
    """"512M", "16G", "1.5G"; "" for unknown."""
    if mib is None:
        return ""
    if mib >= 1024:
        g = mib / 1024
        return f"{g:.0f}G" if g == int(g) or g >= 100 else f"{g:.1f}G"
    return f"{mib:.0f}M"


def format_energy(joules: float | None) -> str:
    """"850 J (0.2 Wh)", "12.3 kJ (3.4 Wh)", "25.9 MJ (7.2 kWh)"; "" for unknown."""
    if joules is None:
        return ""
    j = max(0.0, float(joules))
    if j < 1000:
        si = f"{j:.0f} J"
    elif j < 1_000_000:
        si = f"{j / 1000:.1f} kJ"
    else:
        si = f"{j / 1_000_000:.1f} MJ"
    wh = j / 3600
    return f"{si} ({wh:.1f} Wh)" if wh < 1000 else f"{si} ({wh / 1000:.1f} kWh)"


class TimeType(click.ParamType):
    name = "TIME"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_time_s(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


class MemoryType(click.ParamType):
    name = "SIZE"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_memory_mib(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


_DURATION_UNIT_S = {**_UNIT_S, "w": 7 * 86400}
_DURATION = r"(?i)(\d+(?:\.\d+)?)([smhdw])"
_GPU_HOURS = r"(?i)(\d+(?:\.\d+)?)\s*(?:h|gpu-?h|gpu-?hours?)?"


def parse_duration_s(text: str) -> int:
    """A span of time with units, in seconds: "90d", "12h", "2w", "1d12h", "30m", "45s".
    A bare number is refused (minutes? days?): the unit is part of the value."""
    s = text.strip().replace(" ", "")
    pieces = re.findall(_DURATION, s)
    if not pieces or "".join(n + u for n, u in pieces) != s:
        raise ValueError(f"{text!r} is not a duration (examples: 90d, 12h, 2w, 1d12h, 30m)")
    seconds = math.ceil(sum(float(n) * _DURATION_UNIT_S[u.lower()] for n, u in pieces))
    if seconds <= 0:
        raise ValueError("the duration must be more than 0")
    return seconds


def parse_gpu_hours(text: str) -> float:
    """GPU-hours: "5000h", "5000", "5000 GPU-hours", "1.5h"."""
    m = re.fullmatch(_GPU_HOURS, text.strip())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a number of GPU-hours above 0 (examples: 5000h, "
                         "5000, 1.5h)")
    return float(m.group(1))


def format_gpu_hours(hours: float | None) -> str:
    """"0.5", "12.3", "1234" (GPU-hours; one decimal below 100); "" for unknown."""
    if hours is None:
        return ""
    h = float(hours)
    return f"{h:.1f}" if abs(h) < 100 else f"{h:.0f}"


class DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration_s(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


class GpuHoursType(click.ParamType):
    name = "GPU-HOURS"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_gpu_hours(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)
