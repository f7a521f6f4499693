"""The scheduling path's fair-share factors (``fair_tree_factors``/``classic_factors``: no
display rows, the tree shape cached) equal the full tables' (``fair_tree``/
``classic_fairshare``) bit for bit, on random trees including malformed ones, whether the
shape is built fresh, hit by identity or hit by equality."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuq.scheduler.policy import AccountView, AssocView, classic_fairshare, fair_tree
from gpuq.scheduler.policy import tree as tree_mod
from gpuq.scheduler.policy.classic import classic_factors
from gpuq.scheduler.policy.fairtree import fair_tree_factors

Tree = tuple[tuple[AccountView, ...], tuple[AssocView, ...], dict[tuple[str, str], float]]

NAMES = ["root", "a", "b", "c", "d", "e", "f", "g", "ghost"]


@st.composite
def trees(draw: st.DrawFn) -> Tree:
    """Random trees up to a few levels deep, with ties, zero shares, FairShare=parent, and
    sometimes malformed input: several roots, unknown parents, cycles, duplicate or orphan
    associations, negative or non-finite usage."""
    accounts = [AccountView("root", None)] if draw(st.integers(0, 9)) else []
    for name in draw(st.lists(st.sampled_from(NAMES[1:-1]), max_size=7, unique=True)):
        parent = draw(st.sampled_from([None, *NAMES]) if draw(st.integers(0, 9)) == 0
                      else st.sampled_from([a.name for a in accounts] or NAMES))
        accounts.append(AccountView(name, parent, draw(st.integers(0, 4)),
                                    shares_parent=draw(st.integers(0, 4)) == 0))
    assocs = [AssocView(f"u{draw(st.integers(0, 9))}", draw(st.sampled_from(NAMES)),
                        draw(st.integers(0, 4)), shares_parent=draw(st.integers(0, 6)) == 0)
              for _ in range(draw(st.integers(0, 12)))]
    values = st.sampled_from([0.0, 0.0, 1.0, 2.0, 3.0, 5.0, 1e-300, 1e300, 0.1, 7.25,
                              -1.0, math.nan, math.inf])
    usage = {(a.user, a.account): draw(values) for a in assocs}
    return tuple(accounts), tuple(assocs), usage


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


@settings(max_examples=400, deadline=None)
@given(trees(), st.sampled_from([0.5, 1.0, 3.0]))
def test_cached_factors_equal_the_full_tables(tree: Tree, dampening: float) -> None:
    accounts, assocs, usage = tree
    tree_mod._SHAPES.clear()
    want_ft = fair_tree(accounts, assocs, usage).factors
    want_cl = classic_fairshare(accounts, assocs, usage, dampening).factors
    for _ in range(2):  # a fresh shape, then a hit by identity
        assert _same(fair_tree_factors(accounts, assocs, usage), want_ft)
        assert _same(classic_factors(accounts, assocs, usage, dampening), want_cl)
    # Equal but not identical inputs (and lists) hit by equality and agree too.
    assert _same(fair_tree_factors(list(accounts), list(assocs), dict(usage)), want_ft)
    assert _same(classic_factors(tuple(list(accounts)), tuple(list(assocs)), usage,
                                 dampening), want_cl)


def test_a_different_tree_never_gets_a_cached_shape() -> None:
    tree_mod._SHAPES.clear()
    accounts = (AccountView("root", None), AccountView("a", "root", 1),
                AccountView("b", "root", 3))
    assocs = (AssocView("x", "a"), AssocView("y", "b"))
    usage = {("x", "a"): 5.0, ("y", "b"): 5.0}
    first = fair_tree_factors(accounts, assocs, usage)
    changed = (AccountView("root", None), AccountView("a", "root", 3),
               AccountView("b", "root", 1))
    assert fair_tree_factors(changed, assocs, usage) == fair_tree(changed, assocs,
                                                                  usage).factors
    assert fair_tree_factors(changed, assocs, usage) != first
    for k in range(10):  # the cache stays small
        fair_tree_factors((*accounts, AccountView(f"n{k}", "root")), assocs, usage)
    assert len(tree_mod._SHAPES) <= tree_mod._SHAPES_MAX
    assert fair_tree_factors(accounts, assocs, usage) == first
