"""Fair Tree (fairshare.md A1) on trees whose answers were worked out by hand.

Notation in the comments: S = level-local norm shares, U = level-local effective usage,
LF = LevelFS = S / U, N = number of user associations; a user's factor is rank / N.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

from gpuq.scheduler.policy import AccountView, AssocView, fair_tree
from gpuq.scheduler.policy.fairtree import level_fs
from gpuq.scheduler.policy.tree import FairShareTable
from tests.policy.builders import make_tree

Usage = dict[tuple[str, str], float]


def table(spec: dict[str, tuple[str | None, int]], users: dict[tuple[str, str], int],
          usage: Usage) -> FairShareTable:
    accounts, assocs = make_tree(spec, users)
    return fair_tree(accounts, assocs, usage)


def factors(t: FairShareTable) -> dict[str, float]:
    return {r.name: r.fairshare for r in t.rows if r.user is not None}  # type: ignore[misc]


def row(t: FairShareTable, name: str):  # noqa: ANN201
    (found,) = [r for r in t.rows if r.name == name]
    return found


class TestLevelFs:
    def test_shares_over_usage(self) -> None:
        assert level_fs(0.5, 0.25) == 2.0

    def test_zero_shares_is_zero_even_without_usage(self) -> None:
        assert level_fs(0.0, 0.0) == 0.0
        assert level_fs(0.0, 0.5) == 0.0

    def test_zero_usage_is_infinite(self) -> None:
        assert level_fs(0.5, 0.0) == math.inf

    def test_fairshare_parent_user_is_infinite(self) -> None:
        assert level_fs(None, 0.7) == math.inf


class TestTwoAccounts:
    """root -> A{a1, a2}, B{b1, b2}, all shares 1; usage a1 10, a2 30, b1 20, b2 0.

    Root level: U(A) = 40/60, LF(A) = 0.75; U(B) = 20/60, LF(B) = 1.5 -> B first.
    B: b2 has no usage (LF inf), b1 LF 0.5. A: a1 U 0.25 -> LF 2, a2 U 0.75 -> LF 2/3.
    Ranks 4, 3, 2, 1 of N = 4: b2 1.0, b1 0.75, a1 0.5, a2 0.25: every user of the
    under-served account B outranks every user of A, even a1 whose own LF is 2.
    """

    t = table({"root": (None, 1), "A": ("root", 1), "B": ("root", 1)},
              {("a1", "A"): 1, ("a2", "A"): 1, ("b1", "B"): 1, ("b2", "B"): 1},
              {("a1", "A"): 10, ("a2", "A"): 30, ("b1", "B"): 20})

    def test_factors(self) -> None:
        assert factors(self.t) == {"b2": 1.0, "b1": 0.75, "a1": 0.5, "a2": 0.25}

    def test_sshare_columns(self) -> None:
        a, a1 = row(self.t, "A"), row(self.t, "a1")
        assert (a.raw_shares, a.norm_shares, a.raw_usage) == (1, 0.5, 40.0)
        assert a.effective_usage == 40 / 60 and a.level_fs == 0.5 / (40 / 60)
        assert a.norm_usage == 40 / 60
        assert a.fairshare is None and a.user is None and a.parent == "root"
        assert (a1.account, a1.parent, a1.user) == ("A", "A", "a1")
        assert (a1.norm_shares, a1.effective_usage, a1.level_fs) == (0.5, 0.25, 2.0)
        assert a1.norm_usage == 10 / 60

    def test_root_row(self) -> None:
        root = row(self.t, "root")
        assert root.parent is None and root.raw_usage == 60.0 and root.effective_usage == 1.0

    def test_rows_are_the_tree_depth_first(self) -> None:
        assert [r.name for r in self.t.rows] == ["root", "A", "a1", "a2", "B", "b1", "b2"]

    def test_factor_lookup(self) -> None:
        assert self.t.factor("b1", "B") == 0.75
        assert self.t.factor("b1", "A") == 0.0  # not an association


class TestTies:
    """root -> users u1, u2, u3 and account X{x1, x2}; all shares 1.
    Usage u1 10, u2 10, u3 20, x1 10 (root 50).

    Root level: u1, u2, X all U = 10/50 -> LF 1.25 (the same double); u3 LF 0.625.
    Sorted: u1, u2 (users first on equal LF), X, u3.
    u1 rank 5; u2 tied -> 5; X tied with u2 -> its best user x2 (LF inf) inherits the
    tie -> 5; x1 (LF 0.5) not tied -> rank = next = 2; u3 -> 1. N = 5.
    """

    def test_users_tied_with_each_other_and_with_an_account_share_the_rank(self) -> None:
        t = table({"root": (None, 1), "X": ("root", 1)},
                  {("u1", "root"): 1, ("u2", "root"): 1, ("u3", "root"): 1,
                   ("x1", "X"): 1, ("x2", "X"): 1},
                  {("u1", "root"): 10, ("u2", "root"): 10, ("u3", "root"): 20,
                   ("x1", "X"): 10})
        assert factors(t) == {"u1": 1.0, "u2": 1.0, "x2": 1.0, "x1": 0.4, "u3": 0.2}

    def test_ranks_skip_after_a_tie(self) -> None:
        # a, b tied at the top (rank 3 of 3), c next gets rank 1 ("1,1,3" counted down).
        t = table({"root": (None, 1)},
                  {("a", "root"): 1, ("b", "root"): 1, ("c", "root"): 1},
                  {("a", "root"): 1, ("b", "root"): 1, ("c", "root"): 2})
        assert factors(t) == {"a": 1.0, "b": 1.0, "c": 1 / 3}

    def test_no_usage_anywhere_ties_everyone_at_one(self) -> None:
        t = table({"root": (None, 1), "A": ("root", 3), "B": ("root", 1)},
                  {("a1", "A"): 1, ("a2", "A"): 5, ("b1", "B"): 1}, {})
        assert factors(t) == {"a1": 1.0, "a2": 1.0, "b1": 1.0}
        assert row(t, "a1").level_fs == math.inf

    def test_ties_are_exact_ieee_equality_not_mathematical(self) -> None:
        # x: S 1/4, U 5/23; y: S 3/4, U 15/23 -> both LF 1.15 in exact arithmetic, but the
        # doubles differ by an ulp, so they do not tie (Slurm's own regression test).
        t = table({"root": (None, 1), "A": ("root", 1)},
                  {("x", "A"): 1, ("y", "A"): 3, ("z", "A"): 0},
                  {("x", "A"): 5, ("y", "A"): 15, ("z", "A"): 3})
        x, y = row(t, "x"), row(t, "y")
        assert Fraction(1, 4) / Fraction(5, 23) == Fraction(3, 4) / Fraction(15, 23)
        assert x.level_fs == 0.25 / (5 / 23) and y.level_fs == 0.75 / (15 / 23)
        assert x.level_fs != y.level_fs
        assert factors(t) == {"x": 1.0, "y": 2 / 3, "z": 1 / 3}


class TestZeroShares:
    def test_zero_shares_sort_last_even_with_no_usage(self) -> None:
        # A has 0 shares: LF(A) = 0 though it has no usage. B's users are tied (LF 1).
        t = table({"root": (None, 1), "A": ("root", 0), "B": ("root", 1)},
                  {("a1", "A"): 1, ("b1", "B"): 1, ("b2", "B"): 1},
                  {("b1", "B"): 100, ("b2", "B"): 100})
        assert row(t, "A").level_fs == 0.0 and row(t, "a1").level_fs == math.inf
        assert factors(t) == {"b1": 1.0, "b2": 1.0, "a1": 1 / 3}

    def test_a_zero_share_user_is_last_in_its_account(self) -> None:
        t = table({"root": (None, 1)}, {("a", "root"): 0, ("b", "root"): 1},
                  {("b", "root"): 5})
        assert factors(t) == {"b": 1.0, "a": 0.5}

    def test_a_level_whose_shares_sum_to_zero(self) -> None:
        t = table({"root": (None, 1)}, {("a", "root"): 0, ("b", "root"): 0}, {})
        assert row(t, "a").norm_shares == 0.0
        assert factors(t) == {"a": 1.0, "b": 1.0}  # both LF 0: tied


class TestMergedAccounts:
    """root -> D{d1}, P{p1, p2}, shares 1; usage d1 30, p1 10, p2 20 (root 60).

    D and P both have U 0.5 -> LF 1.0: tied sibling accounts are merged and their users
    ranked together by their own LF: p1 1.5 (S .5, U 1/3), d1 1.0, p2 0.75.
    (Slurm's code does not merge; it would put all of one account first.)
    """

    def test_tied_accounts_rank_their_users_together(self) -> None:
        t = table({"root": (None, 1), "D": ("root", 1), "P": ("root", 1)},
                  {("d1", "D"): 1, ("p1", "P"): 1, ("p2", "P"): 1},
                  {("d1", "D"): 30, ("p1", "P"): 10, ("p2", "P"): 20})
        assert row(t, "D").level_fs == row(t, "P").level_fs == 1.0
        assert factors(t) == {"p1": 1.0, "d1": 2 / 3, "p2": 1 / 3}

    def test_three_tied_accounts_merge_and_users_tie_across_them(self) -> None:
        t = table({"root": (None, 1), "A": ("root", 1), "B": ("root", 1), "C": ("root", 1)},
                  {("a", "A"): 1, ("b", "B"): 1, ("c", "C"): 1},
                  {("a", "A"): 1, ("b", "B"): 1, ("c", "C"): 1})
        assert factors(t) == {"a": 1.0, "b": 1.0, "c": 1.0}


class TestFairShareParent:
    def test_a_parent_account_is_not_a_level(self) -> None:
        # Same usage as TestMergedAccounts, but P has FairShare=parent: p1, p2 are at the
        # root level beside D, each S 1/3. LF: p1 (1/3)/(1/6) = 2, p2 1, D 2/3.
        t = table({"root": (None, 1), "D": ("root", 1), "P": ("root", -1)},
                  {("d1", "D"): 1, ("p1", "P"): 1, ("p2", "P"): 1},
                  {("d1", "D"): 30, ("p1", "P"): 10, ("p2", "P"): 20})
        assert row(t, "p1").norm_shares == 1 / 3 and row(t, "p1").effective_usage == 10 / 60
        assert row(t, "P").shares_parent and row(t, "P").level_fs is None
        assert factors(t) == {"p1": 1.0, "p2": 2 / 3, "d1": 1 / 3}

    def test_nested_parent_accounts_flatten_into_the_first_real_level(self) -> None:
        t = table({"root": (None, 1), "P": ("root", -1), "Q": ("P", -1), "A": ("root", 1)},
                  {("q", "Q"): 1, ("a", "A"): 1}, {("q", "Q"): 1, ("a", "A"): 3})
        assert row(t, "q").norm_shares == 0.5 and row(t, "q").effective_usage == 0.25
        assert factors(t) == {"q": 1.0, "a": 0.5}

    def test_a_parent_user_tops_its_account_and_is_out_of_the_share_sum(self) -> None:
        # a1 (parent) LF inf ties with a3 (no usage, LF inf); a2 has S 1/2 (not 1/3).
        t = table({"root": (None, 1), "A": ("root", 1)},
                  {("a1", "A"): -1, ("a2", "A"): 1, ("a3", "A"): 1},
                  {("a1", "A"): 1000, ("a2", "A"): 10})
        assert row(t, "a1").norm_shares is None and row(t, "a2").norm_shares == 0.5
        assert factors(t) == {"a1": 1.0, "a3": 1.0, "a2": 1 / 3}


class TestDeeperTree:
    """root -> dept1 (2) {labA{u1, u2}, labB{u3}}, dept2 (1) {user u4, labC{u5}}.
    Usage u1 10, u3 40, u4 20, u5 30 (dept1 50, dept2 50, root 100).

    Root: dept1 LF (2/3)/0.5 = 4/3, dept2 (1/3)/0.5 = 2/3. dept1: labA LF .5/.2 = 2.5,
    labB .5/.8 = 0.625. labA: u2 inf, u1 0.5. dept2: u4 .5/.4 = 1.25, labC .5/.6.
    Order u2, u1, u3, u4, u5 -> 1.0, 0.8, 0.6, 0.4, 0.2.
    """

    spec: dict[str, tuple[str | None, int]] = {
        "root": (None, 1), "dept1": ("root", 2), "dept2": ("root", 1),
        "labA": ("dept1", 1), "labB": ("dept1", 1), "labC": ("dept2", 1)}
    users = {("u1", "labA"): 1, ("u2", "labA"): 1, ("u3", "labB"): 1, ("u4", "dept2"): 1,
             ("u5", "labC"): 1}
    usage: Usage = {("u1", "labA"): 10, ("u3", "labB"): 40, ("u4", "dept2"): 20,
                    ("u5", "labC"): 30}

    def test_factors(self) -> None:
        t = table(self.spec, self.users, self.usage)
        assert factors(t) == {"u2": 1.0, "u1": 0.8, "u3": 0.6, "u4": 0.4, "u5": 0.2}

    def test_usage_rolls_up_to_every_ancestor(self) -> None:
        t = table(self.spec, self.users, self.usage)
        assert {r.name: r.raw_usage for r in t.rows if r.user is None} == {
            "root": 100.0, "dept1": 50.0, "labA": 10.0, "labB": 40.0, "dept2": 50.0,
            "labC": 30.0}

    def test_input_order_does_not_matter(self) -> None:
        accounts, assocs = make_tree(self.spec, self.users)
        expected = fair_tree(accounts, assocs, self.usage)
        rng = random.Random(7)
        for _ in range(10):
            rng.shuffle(accounts)
            rng.shuffle(assocs)
            assert fair_tree(accounts, assocs, dict(reversed(self.usage.items()))) == expected

    def test_a_user_in_two_accounts_is_two_associations(self) -> None:
        users = {**self.users, ("u1", "labC"): 1}
        t = table(self.spec, users, {**self.usage, ("u1", "labC"): 30})
        assert t.factor("u1", "labA") == 5 / 6 and t.factor("u1", "labC") < 0.5


class TestMalformedInput:
    def test_an_unknown_parent_hangs_under_the_root(self) -> None:
        t = fair_tree([AccountView("root", None), AccountView("A", "nowhere")],
                      [AssocView("a", "A")], {})
        assert row(t, "A").parent == "root" and t.factor("a", "A") == 1.0

    def test_an_association_of_an_unknown_account_is_left_out(self) -> None:
        t = fair_tree([AccountView("root", None)],
                      [AssocView("a", "root"), AssocView("b", "ghost")], {("b", "ghost"): 5})
        assert t.factor("b", "ghost") == 0.0 and [r.name for r in t.rows] == ["root", "a"]

    def test_several_parentless_accounts_get_an_implicit_root(self) -> None:
        t = fair_tree([AccountView("A", None), AccountView("B", None)],
                      [AssocView("a", "A"), AssocView("b", "B")], {("a", "A"): 1})
        assert row(t, "A").parent == "root"
        assert (t.factor("b", "B"), t.factor("a", "A")) == (1.0, 0.5)

    def test_negative_or_nan_usage_counts_as_none(self) -> None:
        t = fair_tree([AccountView("root", None)],
                      [AssocView("a", "root"), AssocView("b", "root")],
                      {("a", "root"): -5.0, ("b", "root"): float("nan")})
        assert {r.raw_usage for r in t.rows} == {0.0}

    def test_an_empty_tree(self) -> None:
        t = fair_tree([], [], {})
        assert t.factors == {} and [r.name for r in t.rows] == ["root"]
