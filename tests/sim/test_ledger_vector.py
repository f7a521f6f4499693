"""The ledger's usage vector (what the simulator hands the policy every cycle) equals the
usage map that the ledger rebuilt every cycle before (kept below as ``Rebuilt``), bit for
bit, on random sequences of starts, stops and lump charges, with and without decay and
across moves of the reference time; and ``usage()`` still is that map."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuq.scheduler.policy.usage import UsageVector
from gpuq.scheduler.sim.ledger import UsageLedger

Key = tuple[str, str]


class Rebuilt:
    """The ledger as it was: dicts by key, a new dict per read. (Reading the stored value
    after moving the reference time, in ``charge`` and ``start``, as ``stop`` always did:
    before, a move there mixed units; the simulator never moved it there, since it reads
    the usage at a time before it starts jobs then.)"""

    def __init__(self, half_life_s: float, rebase_after: float) -> None:
        self.half_life_s = max(float(half_life_s), 0.0)
        self.rebase_after = rebase_after
        self._base = 0.0
        self._stored: dict[Key, float] = {}
        self._rate: dict[Key, float] = {}
        self._offset: dict[Key, float] = {}
        self._running: dict[Key, int] = {}

    def _growth(self, t: float) -> float:
        if not self.half_life_s:
            return 1.0
        exponent = (t - self._base) / self.half_life_s
        if exponent > self.rebase_after:
            factor = 0.5 ** ((t - self._base) / self.half_life_s)
            self._stored = {k: v * factor for k, v in self._stored.items()}
            self._offset = {k: v * factor for k, v in self._offset.items()}
            self._base = t
            exponent = 0.0
        return 2.0 ** exponent

    def _integral(self, t: float) -> float:
        if not self.half_life_s:
            return t
        return self._growth(t) * self.half_life_s / math.log(2)

    def charge(self, key: Key, billed_s: float, at_s: float) -> None:
        growth = self._growth(at_s)
        self._stored[key] = self._stored.get(key, 0.0) + billed_s * growth

    def start(self, key: Key, rate: float, at_s: float) -> None:
        begin = self._integral(at_s)
        self._stored.setdefault(key, 0.0)
        self._rate[key] = self._rate.get(key, 0.0) + rate
        self._offset[key] = self._offset.get(key, 0.0) + rate * begin
        self._running[key] = self._running.get(key, 0) + 1

    def stop(self, key: Key, rate: float, started_s: float, at_s: float) -> None:
        end = self._integral(at_s)
        begin = self._integral(started_s)
        self._stored[key] += rate * (end - begin)
        left = self._running[key] - 1
        if left:
            self._running[key] = left
            self._rate[key] -= rate
            self._offset[key] -= rate * begin
        else:
            del self._running[key], self._rate[key], self._offset[key]

    def usage(self, now_s: float) -> dict[Key, float]:
        scale = 1.0 / self._growth(now_s)
        out = {k: v * scale for k, v in self._stored.items()}
        if self._rate:
            g = self._integral(now_s)
            for key, rate in self._rate.items():
                out[key] += (rate * g - self._offset[key]) * scale
        return out


KEYS = [(u, a) for a in ("a", "b", "c") for u in ("x", "y", "z")]
# (kind, key, amount, time step): starts, stops of a running job, lump charges, reads.
EVENTS = st.lists(st.tuples(st.sampled_from(["start", "stop", "charge", "read", "read"]),
                            st.sampled_from(KEYS),
                            st.sampled_from([0.5, 1.0, 2.2, 4.8, 8.0, 1e-3, 1234.5]),
                            st.sampled_from([0.0, 0.0, 1.0, 37.5, 3600.0, 86_400.0,
                                             700_000.0, 5e6])),
                  max_size=60)


def _same_bits(a: float, b: float) -> bool:
    return math.copysign(1.0, a) == math.copysign(1.0, b) and (a == b or a != a and b != b)


@settings(max_examples=300, deadline=None)
@given(EVENTS, st.sampled_from([0.0, 60.0, 7 * 86_400.0]),
       st.sampled_from([None, 2.0, 30.0]), st.integers(0, len(KEYS)))
def test_the_vector_is_the_rebuilt_usage_map(events: list[tuple[str, Key, float, float]],
                                             half_life: float, rebase_after: float | None,
                                             known: int) -> None:
    import gpuq.scheduler.sim.ledger as ledger_mod

    saved = ledger_mod._REBASE_AFTER_HALF_LIVES
    if rebase_after is not None:  # small: the reference time moves often
        ledger_mod._REBASE_AFTER_HALF_LIVES = rebase_after
    try:
        keys = tuple(KEYS[:known])  # the tree's associations, numbered first
        ledger = UsageLedger(half_life, keys)
        old = Rebuilt(half_life, ledger_mod._REBASE_AFTER_HALF_LIVES)
        running: list[tuple[Key, float, float]] = []
        now = 0.0
        for kind, key, amount, step in events:
            now += step
            if kind == "start":
                ledger.start(key, amount, now)
                old.start(key, amount, now)
                running.append((key, amount, now))
            elif kind == "stop" and running:
                k, rate, began = running.pop(int(amount * 7) % len(running))
                ledger.stop(k, rate, began, now)
                old.stop(k, rate, began, now)
            elif kind == "charge":
                ledger.charge(key, amount * 100, now)
                old.charge(key, amount * 100, now)
            want = old.usage(now) if kind == "read" else None
            if want is None:
                continue
            vector = ledger.vector(now)
            assert isinstance(vector, UsageVector)
            assert vector.keys_[:known] == keys
            got = dict(zip(vector.keys_, vector.values_, strict=True))
            assert set(want) <= set(got)
            for k, v in got.items():
                assert _same_bits(v, want.get(k, 0.0)), (k, v, want.get(k))
            rebuilt = ledger.usage(now)
            assert list(rebuilt) == list(want)  # the same keys, in the same order
            assert all(_same_bits(rebuilt[k], want[k]) for k in want)
    finally:
        ledger_mod._REBASE_AFTER_HALF_LIVES = saved


def test_the_vector_keeps_its_keys_tuple_until_a_new_association_is_charged() -> None:
    keys = (("x", "a"), ("y", "a"))
    ledger = UsageLedger(60.0, keys)
    first = ledger.vector(10.0)
    assert first.keys_ is keys  # the policy finds its tree's order by identity
    ledger.start(("y", "a"), 2.0, 10.0)
    assert ledger.vector(20.0).keys_ is keys
    ledger.start(("new", "b"), 1.0, 20.0)
    later = ledger.vector(30.0)
    assert later.keys_ == (*keys, ("new", "b"))
    assert ledger.vector(40.0).keys_ is later.keys_
    assert later[("x", "a")] == 0.0 and later[("new", "b")] > 0.0
    assert ("x", "a") not in ledger.usage(30.0)  # never charged: not listed there
