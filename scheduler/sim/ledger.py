"""Decayed usage per (user, account), kept lazily.

Usage is billed GPU-seconds that decay with a half-life HL: a charge ``c`` made at time
``e`` is worth ``c * 0.5 ** ((t - e) / HL)`` at time ``t`` (HL 0: no decay). A running job
charges continuously from its start ``s``: at ``t`` it has added
``rate * ∫_s^t 0.5 ** ((t - τ) / HL) dτ = rate * HL/ln 2 * (1 - 0.5 ** ((t - s) / HL))``.

Nothing is touched on the clock's tick: every value is stored in the units of a reference
time ``base`` (multiplied by ``2 ** ((t - base) / HL)``), so decaying everything is one
common factor when usage is read. When that factor grows large the reference is moved
(``_rebase``), the only step that visits every association.

Associations are numbered (``keys``, given first, then in the order they are first charged)
and the ended charges kept in a list, so that a cycle's usage is one list of products
(``vector``: the policy's ``UsageVector``, on the same keys tuple every cycle while no new
association is charged) rather than a dict rebuilt and then looked up key by key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from gpuq.scheduler.policy.usage import UsageVector

Key = tuple[str, str]  # (user, account)

#: Move the reference time once stored values have grown by 2**this.
_REBASE_AFTER_HALF_LIVES = 512.0


class UsageLedger:
    def __init__(self, half_life_s: float, keys: Iterable[Key] = ()) -> None:
        self.half_life_s = max(float(half_life_s), 0.0)
        self._base = 0.0
        self._keys: list[Key] = []
        self._index: dict[Key, int] = {}
        for key in keys:
            self._number(key)
        self._keys_tuple: tuple[Key, ...] = tuple(self._keys)
        if isinstance(keys, tuple) and keys == self._keys_tuple:
            self._keys_tuple = keys  # the caller's own tuple: the policy knows it
        self._stored: list[float] = [0.0] * len(self._keys)  # ended charges, in base units
        #: The associations charged so far (what ``usage`` lists), in the order charged.
        self._charged: dict[int, None] = {}
        # Running jobs, by association number:
        self._rate: dict[int, float] = {}      # billed GPU-seconds per second
        self._offset: dict[int, float] = {}    # Σ rate * G(start)
        self._running: dict[int, int] = {}     # how many running jobs charge it

    def _number(self, key: Key) -> int:
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self._keys)
            self._keys.append(key)
        return i

    def _charge_index(self, key: Key) -> int:
        """The association's number, counted as charged from now on."""
        i = self._index.get(key)
        if i is None:
            i = self._number(key)
            self._stored.append(0.0)
            self._keys_tuple = tuple(self._keys)
        self._charged[i] = None
        return i

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
        self._stored = [v * factor for v in self._stored]
        self._offset = {k: v * factor for k, v in self._offset.items()}
        self._base = t

    def charge(self, key: Key, billed_s: float, at_s: float) -> None:
        """A lump of usage (e.g. imported history) charged at ``at_s``."""
        i = self._charge_index(key)
        growth = self._growth(at_s)  # first: it may move the reference time
        self._stored[i] += billed_s * growth

    def start(self, key: Key, rate: float, at_s: float) -> None:
        """A job starts charging ``rate`` billed GPU-seconds per second at ``at_s``."""
        i = self._charge_index(key)
        begin = self._integral(at_s)  # first: it may move the reference time
        self._rate[i] = self._rate.get(i, 0.0) + rate
        self._offset[i] = self._offset.get(i, 0.0) + rate * begin
        self._running[i] = self._running.get(i, 0) + 1

    def stop(self, key: Key, rate: float, started_s: float, at_s: float) -> None:
        """The job that started at ``started_s`` with ``rate`` ends at ``at_s``."""
        end = self._integral(at_s)  # first: it may move the reference time
        begin = self._integral(started_s)
        i = self._index[key]
        self._stored[i] += rate * (end - begin)
        left = self._running[i] - 1
        if left:
            self._running[i] = left
            self._rate[i] -= rate
            self._offset[i] -= rate * begin
        else:  # forget rounding residue exactly
            del self._running[i], self._rate[i], self._offset[i]

    def vector(self, now_s: float) -> UsageVector:
        """Every association's decayed usage at ``now_s``, running jobs included (0.0 for one
        never charged): ``usage``'s values, bit for bit, on the ledger's keys."""
        scale = 1.0 / self._growth(now_s)
        values = [v * scale for v in self._stored]
        if self._rate:
            g = self._integral(now_s)
            offset = self._offset
            for i, rate in self._rate.items():
                values[i] += (rate * g - offset[i]) * scale
        return UsageVector(self._keys_tuple, values)

    def usage(self, now_s: float) -> dict[Key, float]:
        """Every charged association's decayed usage at ``now_s``, running jobs included."""
        growth = self._growth(now_s)
        scale = 1.0 / growth
        keys, stored = self._keys, self._stored
        out = {keys[i]: stored[i] * scale for i in self._charged}
        if self._rate:
            g = self._integral(now_s)
            for i, rate in self._rate.items():
                out[keys[i]] += (rate * g - self._offset[i]) * scale
        return out

    def usage_of(self, key: Key, now_s: float) -> float:
        return self.usage(now_s).get(key, 0.0)
