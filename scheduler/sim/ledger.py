"""Decayed usage per (user, account), kept lazily.

Usage is billed GPU-seconds that decay with a half-life HL: a charge ``c`` made at time
``e`` is worth ``c * 0.5 ** ((t - e) / HL)`` at time ``t`` (HL 0: no decay). A running job
charges continuously from its start ``s``: at ``t`` it has added
``rate * ∫_s^t 0.5 ** ((t - τ) / HL) dτ = rate * HL/ln 2 * (1 - 0.5 ** ((t - s) / HL))``.

Nothing is touched on the clock's tick: every value is stored in the units of a reference
time ``base`` (multiplied by ``2 ** ((t - base) / HL)``), so decaying everything is one
common factor when usage is read. When that factor grows large the reference is moved
(``_rebase``), the only step that visits every association.
"""

from __future__ import annotations

import math

Key = tuple[str, str]  # (user, account)

#: Move the reference time once stored values have grown by 2**this.
_REBASE_AFTER_HALF_LIVES = 512.0


class UsageLedger:
    def __init__(self, half_life_s: float) -> None:
        self.half_life_s = max(float(half_life_s), 0.0)
        self._base = 0.0
        self._stored: dict[Key, float] = {}    # ended charges, in base units
        self._rate: dict[Key, float] = {}      # billed GPU-seconds per second, running jobs
        self._offset: dict[Key, float] = {}    # Σ rate * G(start) of the running jobs
        self._running: dict[Key, int] = {}     # how many running jobs charge the key

    # The integral of the growth factor: G(t) = HL/ln2 * 2**((t-base)/HL), or t without decay.
    def _growth(self, t: float) -> float:
        if not self.half_life_s:
            return 1.0
        exponent = (t - self._base) / self.half_life_s
        if exponent > _REBASE_AFTER_HALF_LIVES:
            self._rebase(t)
            exponent = 0.0
        return 2.0 ** exponent

    def _integral(self, t: float) -> float:
        if not self.half_life_s:
            return t
        return self._growth(t) * self.half_life_s / math.log(2)

    def _rebase(self, t: float) -> None:
        factor = 0.5 ** ((t - self._base) / self.half_life_s)
        self._stored = {k: v * factor for k, v in self._stored.items()}
        self._offset = {k: v * factor for k, v in self._offset.items()}
        self._base = t

    def charge(self, key: Key, billed_s: float, at_s: float) -> None:
        """A lump of usage (e.g. imported history) charged at ``at_s``."""
        self._stored[key] = self._stored.get(key, 0.0) + billed_s * self._growth(at_s)

    def start(self, key: Key, rate: float, at_s: float) -> None:
        """A job starts charging ``rate`` billed GPU-seconds per second at ``at_s``."""
        self._stored.setdefault(key, 0.0)
        self._rate[key] = self._rate.get(key, 0.0) + rate
        self._offset[key] = self._offset.get(key, 0.0) + rate * self._integral(at_s)
        self._running[key] = self._running.get(key, 0) + 1

    def stop(self, key: Key, rate: float, started_s: float, at_s: float) -> None:
        """The job that started at ``started_s`` with ``rate`` ends at ``at_s``."""
        end = self._integral(at_s)  # first: it may move the reference time
        begin = self._integral(started_s)
        self._stored[key] += rate * (end - begin)
        left = self._running[key] - 1
        if left:
            self._running[key] = left
            self._rate[key] -= rate
            self._offset[key] -= rate * begin
        else:  # forget rounding residue exactly
            del self._running[key], self._rate[key], self._offset[key]

    def usage(self, now_s: float) -> dict[Key, float]:
        """Every charged association's decayed usage at ``now_s``, running jobs included."""
        growth = self._growth(now_s)
        scale = 1.0 / growth
        out = {k: v * scale for k, v in self._stored.items()}
        if self._rate:
            g = self._integral(now_s)
            for key, rate in self._rate.items():
                out[key] += (rate * g - self._offset[key]) * scale
        return out

    def usage_of(self, key: Key, now_s: float) -> float:
        return self.usage(now_s).get(key, 0.0)
