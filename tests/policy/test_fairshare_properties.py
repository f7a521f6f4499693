"""Properties of the fair-share factors over random account trees (hypothesis): more usage
never raises an association's factor, more shares never lower it, the input order does not
matter, Fair Tree factors are ranks over N."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuq.scheduler.policy import AccountView, AssocView, classic_fairshare, fair_tree
from gpuq.scheduler.policy.tree import FairShareTable

fast = settings(max_examples=200, deadline=None)

Tree = tuple[list[AccountView], list[AssocView], dict[tuple[str, str], float]]


@st.composite
def trees(draw: st.DrawFn) -> Tree:
    """Up to 3 levels of accounts below the root, 1-8 associations, small integer shares
    and usage (ties are likely), some FairShare=parent."""
    accounts = [AccountView("root", None)]
    for k in range(draw(st.integers(0, 6))):
        parent = draw(st.sampled_from([a.name for a in accounts if a.name.count(".") < 2]))
        accounts.append(AccountView(f"{parent}.{k}" if parent != "root" else f"a{k}", parent,
                                    draw(st.integers(0, 4)),
                                    shares_parent=draw(st.integers(0, 5)) == 0))
    assocs = []
    for k in range(draw(st.integers(1, 8))):
        assocs.append(AssocView(f"u{k}", draw(st.sampled_from([a.name for a in accounts])),
                                draw(st.integers(0, 4)),
                                shares_parent=draw(st.integers(0, 7)) == 0))
    usage = {(a.user, a.account): float(draw(st.sampled_from([0, 0, 1, 2, 3, 5, 10, 100])))
             for a in assocs}
    return accounts, assocs, usage


ALGORITHMS = {
    "fair_tree": fair_tree,
    "classic": lambda a, s, u: classic_fairshare(a, s, u, 1.0),
}


def factor(algorithm: str, tree: Tree, assoc: AssocView) -> float:
    table: FairShareTable = ALGORITHMS[algorithm](*tree)
    return table.factor(assoc.user, assoc.account)


def slack(algorithm: str, value: float) -> float:
    """Fair Tree is monotone exactly (ranks of correctly rounded quotients); classic's factor
    goes through several roundings, so an ulp or two of wobble is allowed."""
    return 0.0 if algorithm == "fair_tree" else 1e-12 * value


@fast
@given(trees(), st.data(), st.sampled_from(sorted(ALGORITHMS)))
def test_more_usage_never_raises_the_factor(tree: Tree, data: st.DataObject,
                                            algorithm: str) -> None:
    accounts, assocs, usage = tree
    a = data.draw(st.sampled_from(assocs))
    more = dict(usage)
    more[(a.user, a.account)] += data.draw(st.sampled_from([1.0, 2.0, 7.0, 1000.0]))
    before = factor(algorithm, tree, a)
    after = factor(algorithm, (accounts, assocs, more), a)
    assert after <= before + slack(algorithm, before), f"{a}: {before} -> {after}"


@fast
@given(trees(), st.data(), st.sampled_from(sorted(ALGORITHMS)))
def test_more_shares_never_lower_the_factor(tree: Tree, data: st.DataObject,
                                            algorithm: str) -> None:
    accounts, assocs, usage = tree
    k = data.draw(st.integers(0, len(assocs) - 1))
    a = assocs[k]
    more = list(assocs)
    more[k] = dataclasses.replace(a, shares=a.shares + data.draw(st.integers(1, 5)))
    before = factor(algorithm, tree, a)
    after = factor(algorithm, (accounts, more, usage), a)
    assert after >= before - slack(algorithm, before), f"{a}: {before} -> {after}"


@fast
@given(trees(), st.randoms(use_true_random=False))
def test_the_input_order_does_not_matter(tree: Tree, rnd: random.Random) -> None:
    accounts, assocs, usage = tree
    expected = [fair_tree(*tree), classic_fairshare(*tree)]
    accounts, assocs = list(accounts), list(assocs)
    rnd.shuffle(accounts)
    rnd.shuffle(assocs)
    items = list(usage.items())
    rnd.shuffle(items)
    assert [fair_tree(accounts, assocs, dict(items)),
            classic_fairshare(accounts, assocs, dict(items))] == expected


@fast
@given(trees())
def test_fair_tree_factors_are_ranks_over_n(tree: Tree) -> None:
    table = fair_tree(*tree)
    n = len(table.factors)
    assert max(table.factors.values()) == 1.0
    for f in table.factors.values():
        assert 1 / n <= f <= 1.0
        assert round(f * n) == f * n or abs(round(f * n) - f * n) < 1e-9


@fast
@given(trees())
def test_account_usage_is_the_sum_of_its_associations(tree: Tree) -> None:
    table = fair_tree(*tree)
    users = [r for r in table.rows if r.user is not None]
    root = table.rows[0]
    assert root.raw_usage == sum(r.raw_usage for r in users)
