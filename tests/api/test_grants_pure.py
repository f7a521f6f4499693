"""scheduler/domain/grants.py: a grant's state over time, and the exact overcommit check (pure:
no database, no clock but the one handed in)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from gpuq.scheduler.clock import ManualClock
from gpuq.scheduler.domain.grants import Reservation, eligible_gpus, find_overcommit, state_at

T0 = datetime(2027, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def day(n: float) -> datetime:
    return T0 + n * DAY


@dataclass
class G:
    start_at: datetime
    end_at: datetime
    revoked_at: datetime | None = None
    exhausted_at: datetime | None = None
    gpu_hours: float | None = None
    state_reason: str = ""


def test_state_over_time() -> None:
    clock = ManualClock(day(0))
    g = G(start_at=day(1), end_at=day(3))
    assert state_at(g, clock()) == ("scheduled", "starts at 2027-01-02T00:00Z")
    clock.advance(DAY.total_seconds() - 1)
    assert state_at(g, clock())[0] == "scheduled"
    clock.advance(1)  # the start is inside the window
    assert state_at(g, clock()) == ("active", "in its window until 2027-01-04T00:00Z")
    clock.advance(2 * DAY.total_seconds() - 1)
    assert state_at(g, clock())[0] == "active"
    clock.advance(1)  # the end is not
    assert state_at(g, clock()) == ("expired", "end reached")


def test_budget_and_revocation() -> None:
    g = G(start_at=day(0), end_at=day(3), gpu_hours=1.5, exhausted_at=day(1))
    assert state_at(g, day(2)) == ("expired", "budget of 1.5 billed GPU-hours used up")
    assert state_at(g, day(4)) == ("expired", "end reached")
    g = G(start_at=day(0), end_at=day(3), revoked_at=day(1),
          state_reason="revoked by bob: project cancelled")
    assert state_at(g, day(0.5)) == ("revoked", "revoked by bob: project cancelled")
    assert state_at(g, day(5))[0] == "revoked"  # revoked wins over expired


#: gpu01: 4 A100; gpu02: 4 H100; gpu03: 2 A100.
SUPPLY = {("gpu01", "A100"): 4, ("gpu02", "H100"): 4, ("gpu03", "A100"): 2}


def res(id_: int | None, gpus: int, start: float = 0, end: float = 10,
        model: str | None = None, nodes: tuple[str, ...] = ()) -> Reservation:
    return Reservation(id=id_, gpus=gpus, start=day(start), end=day(end), model=model,
                       nodes=nodes)


def test_fits_and_eligible() -> None:
    assert find_overcommit(res(None, 10), [], SUPPLY) is None
    assert find_overcommit(res(None, 11), [], SUPPLY) is not None
    assert eligible_gpus(SUPPLY, model="A100", nodes=()) == 6
    assert eligible_gpus(SUPPLY, model=None, nodes=("gpu02", "gpu03")) == 6
    assert eligible_gpus(SUPPLY, model="H100", nodes=("gpu03",)) == 0


def test_model_constrained() -> None:
    others = [res(3, 5, model="A100")]
    assert find_overcommit(res(None, 1, model="A100"), others, SUPPLY) is None
    found = find_overcommit(res(None, 2, model="A100"), others, SUPPLY)
    assert found is not None and found.conflicts == (3,)
    assert (found.needed, found.available, found.models) == (7, 6, ("A100",))
    # H100s are untouched by it.
    assert find_overcommit(res(None, 4, model="H100"), others, SUPPLY) is None


def test_node_constrained() -> None:
    others = [res(5, 4, nodes=("gpu01",))]
    found = find_overcommit(res(None, 1, nodes=("gpu01",)), others, SUPPLY)
    assert found is not None and found.conflicts == (5,) and found.nodes == ("gpu01",)
    # Any node: the other 6 GPUs are free.
    assert find_overcommit(res(None, 6), others, SUPPLY) is None
    assert find_overcommit(res(None, 7), others, SUPPLY).conflicts == (5,)  # type: ignore[union-attr]


def test_touching_windows_do_not_conflict() -> None:
    others = [res(3, 6, start=0, end=2, model="A100")]
    assert find_overcommit(res(None, 6, start=2, end=4, model="A100"), others, SUPPLY) is None
    assert find_overcommit(res(None, 6, start=-2, end=0, model="A100"), others, SUPPLY) is None
    found = find_overcommit(res(None, 1, start=1.99, end=4, model="A100"), others, SUPPLY)
    assert found is not None and found.moment == day(1.99)


def test_the_first_moment_of_conflict_is_named() -> None:
    others = [res(3, 5, start=2, end=9, model="A100")]
    found = find_overcommit(res(None, 2, start=0, end=4, model="A100"), others, SUPPLY)
    assert found is not None and found.moment == day(2)
    msg = found.message(res(None, 2, model="A100"))
    assert "2027-01-03T00:00Z" in msg and "conflicts with grants 3" in msg


def test_total_counting_would_wrongly_accept() -> None:
    """8 of 10 GPUs reserved in total, but the model the new grant needs is taken."""
    others = [res(3, 5, model="A100")]
    new = res(None, 3, model="A100")
    assert sum(o.gpus for o in others) + new.gpus <= sum(SUPPLY.values())  # a total says yes
    found = find_overcommit(new, others, SUPPLY)
    assert found is not None and found.conflicts == (3,)


def test_per_model_counting_would_wrongly_refuse() -> None:
    """A reservation of any model can give way: the exact check moves it to the H100s."""
    others = [res(3, 4), res(4, 2, nodes=("gpu03",))]
    new = res(None, 4, model="A100")
    eligible_for_new = eligible_gpus(SUPPLY, model="A100", nodes=())
    assert sum(o.gpus for o in others) + new.gpus > eligible_for_new  # per-model says no
    assert find_overcommit(new, others, SUPPLY) is None


def test_per_window_counting_would_wrongly_refuse() -> None:
    """Two grants that follow each other never overlap: each moment has room for one
    more, though all three together would not fit."""
    others = [res(3, 5, start=0, end=3, model="A100"), res(4, 5, start=3, end=6, model="A100")]
    new = res(None, 1, start=2, end=4, model="A100")
    assert sum(o.gpus for o in others) + new.gpus > 6
    assert find_overcommit(new, others, SUPPLY) is None
    found = find_overcommit(res(None, 2, start=2, end=4, model="A100"), others, SUPPLY)
    assert found is not None and found.moment == day(2) and found.conflicts == (3,)


def test_conflicts_are_the_grants_sharing_the_gpus() -> None:
    """Grant 4 overlaps in time but can live on the A100s: only grant 3 competes for the
    H100s the new one needs."""
    others = [res(3, 2, nodes=("gpu02",)), res(4, 3), res(6, 1, start=20, end=30)]
    found = find_overcommit(res(None, 3, model="H100"), others, SUPPLY)
    assert found is not None and found.conflicts == (3,)
    assert (found.needed, found.available) == (5, 4)
    assert find_overcommit(res(None, 2, model="H100"), others, SUPPLY) is None


@pytest.mark.parametrize("n", [1, 2, 3])
def test_rerouting_through_a_chain(n: int) -> None:
    """Fitting the new grant needs moving one grant, which needs moving another."""
    supply = {("a", "X"): 1, ("b", "X"): 1, ("c", "X"): 1}
    others = [res(1, 1, nodes=("a", "b")), res(2, 1, nodes=("b", "c"))]
    new = res(None, n, nodes=("a",))
    found = find_overcommit(new, others, supply)
    assert (found is None) == (n == 1)
