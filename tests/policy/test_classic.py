"""Classic fair share (fairshare.md A2): F = 2^(-UE / S / d), worked out by hand."""

from __future__ import annotations

import pytest

from gpuq.scheduler.policy import classic_fairshare
from gpuq.scheduler.policy.classic import classic_factor
from tests.policy.builders import make_tree

# root -> A (1) {a1}, B (3) {b1, b2}; usage a1 50, b1 50, b2 0 (root 100).
# S (global): a1 = 1/4 x 1 = 0.25, b1 = b2 = 3/4 x 1/2 = 0.375.
# Un: A = B = a1 = b1 = 0.5, b2 = 0. UE: A = B = 0.5 (children of root);
# a1 = 0.5 + (0.5 - 0.5) x 1 = 0.5; b1 = 0.5 + (0.5 - 0.5)/2 = 0.5; b2 = 0 + (0.5 - 0)/2 = 0.25.
SPEC: dict[str, tuple[str | None, int]] = {"root": (None, 1), "A": ("root", 1),
                                            "B": ("root", 3)}
USERS = {("a1", "A"): 1, ("b1", "B"): 1, ("b2", "B"): 1}
USAGE = {("a1", "A"): 50.0, ("b1", "B"): 50.0}


def run(dampening: float = 1.0, users: dict[tuple[str, str], int] = USERS,
        usage: dict[tuple[str, str], float] = USAGE):  # noqa: ANN201
    accounts, assocs = make_tree(SPEC, users)
    return classic_fairshare(accounts, assocs, usage, dampening)


def test_factor_formula() -> None:
    assert classic_factor(0.5, 0.5) == 0.5  # exactly on target
    assert classic_factor(0.0, 0.3) == 1.0
    assert classic_factor(0.5, 0.25, 2.0) == 0.5
    assert classic_factor(0.1, 0.0) == 0.0  # no shares


def test_norm_shares_are_global_and_effective_usage_top_down() -> None:
    t = run()
    by = {r.name: r for r in t.rows}
    assert {n: by[n].norm_shares for n in ("A", "B", "a1", "b1", "b2")} == {
        "A": 0.25, "B": 0.75, "a1": 0.25, "b1": 0.375, "b2": 0.375}
    assert {n: by[n].effective_usage for n in ("A", "B", "a1", "b1", "b2")} == {
        "A": 0.5, "B": 0.5, "a1": 0.5, "b1": 0.5, "b2": 0.25}
    assert by["a1"].level_fs is None


def test_factors() -> None:
    t = run()
    assert t.factor("a1", "A") == 2 ** -2
    assert t.factor("b1", "B") == pytest.approx(2 ** (-4 / 3))
    assert t.factor("b2", "B") == pytest.approx(2 ** (-2 / 3))


def test_dampening_softens_the_factor() -> None:
    assert run(2.0).factor("a1", "A") == 0.5


def test_zero_shares_give_zero() -> None:
    t = run(users={**USERS, ("z", "A"): 0})
    assert t.factor("z", "A") == 0.0


def test_no_usage_gives_one() -> None:
    assert run(usage={}).factors == {("a1", "A"): 1.0, ("b1", "B"): 1.0, ("b2", "B"): 1.0}


def test_a_parent_user_takes_its_accounts_factor() -> None:
    # p (FairShare=parent) in B gets B's factor 2^(-0.5/0.75).
    t = run(users={**USERS, ("p", "B"): -1})
    assert t.factor("p", "B") == pytest.approx(2 ** (-0.5 / 0.75))


def test_bad_dampening_is_refused() -> None:
    with pytest.raises(ValueError, match="dampening"):
        run(0.0)
