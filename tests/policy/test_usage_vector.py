"""Usage handed over as a ``UsageVector`` (the simulator's way) gives the fair-share factors
a plain dict gives, bit for bit, whether its keys are the tree's own tuple, start with the
tree's associations or are in another order, and whatever the values (negative, NaN and
infinite ones take the general path); ``usage_sums`` equals ``assoc_usage`` and
``account_usage``; and Fair Tree's walks for wanted associations (``visit_users``,
``visit_sparse``) give the full table's factors on wide trees, where they take over."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuq.scheduler.policy import AccountView, AssocView, classic_fairshare, fair_tree
from gpuq.scheduler.policy import fairtree as fairtree_mod
from gpuq.scheduler.policy import tree as tree_mod
from gpuq.scheduler.policy.classic import classic_factors
from gpuq.scheduler.policy.fairtree import fair_tree_factors
from gpuq.scheduler.policy.tree import account_usage, assoc_usage, tree_shape, usage_sums
from gpuq.scheduler.policy.usage import UsageVector
from tests.policy.test_fairshare_cache import Tree, _same, trees


def test_a_vector_is_a_read_only_mapping() -> None:
    v = UsageVector((("x", "a"), ("y", "a")), [1.5, 0.0])
    assert v[("x", "a")] == 1.5 and v.get(("z", "a"), 7.0) == 7.0
    assert ("y", "a") in v and ("z", "a") not in v
    assert list(v) == [("x", "a"), ("y", "a")] and len(v) == 2
    assert v == {("x", "a"): 1.5, ("y", "a"): 0.0}
    assert dict(v.items()) == {("x", "a"): 1.5, ("y", "a"): 0.0}
    assert "1.5" in repr(v)
    with pytest.raises(KeyError):
        v[("z", "a")]
    with pytest.raises(ValueError):
        UsageVector((("x", "a"),), [1.0, 2.0])


def _vectors(accounts: tuple[AccountView, ...], assocs: tuple[AssocView, ...],
             usage: dict[tuple[str, str], float]) -> list[UsageVector]:
    """The usage as vectors: on the shape's own keys tuple, on equal keys plus an extra
    one, and in reverse order (no alignment: read key by key)."""
    keys = tree_shape(accounts, assocs).assoc_keys
    values = [usage.get(k, 0.0) for k in keys]
    extra = [("ghost-user", "ghost")]
    rest = [k for k in usage if k not in set(keys)]
    return [UsageVector(keys, values),
            UsageVector((*tuple(list(keys)), *rest, *extra),
                        [*values, *(usage[k] for k in rest), 5.0]),
            UsageVector(tuple(reversed(keys)), list(reversed(values)))]


@settings(max_examples=300, deadline=None)
@given(trees(), st.sampled_from([0.5, 1.0, 3.0]))
def test_vectors_give_the_factors_of_a_dict(tree: Tree, dampening: float) -> None:
    accounts, assocs, usage = tree
    tree_mod._SHAPES.clear()
    want_ft = fair_tree(accounts, assocs, usage).factors
    want_cl = classic_fairshare(accounts, assocs, usage, dampening).factors
    shape = tree_shape(accounts, assocs)
    # A dict of exactly the tree's associations: the vectors' mapping, for usage_sums.
    as_read = {k: usage.get(k, 0.0) for k in shape.assoc_keys}
    raw = assoc_usage(shape, as_read)
    acc = account_usage(shape, raw)
    for vector in _vectors(accounts, assocs, usage):
        assert _same(fair_tree_factors(accounts, assocs, vector), dict(want_ft))
        assert _same(classic_factors(accounts, assocs, vector, dampening), dict(want_cl))
        got_raw, got_acc = usage_sums(shape, vector)
        assert got_raw == raw or all(a == b or (a != a and b != b)
                                     for a, b in zip(got_raw, raw, strict=True))
        assert got_acc == acc


@settings(max_examples=300, deadline=None)
@given(trees())
def test_usage_sums_are_assoc_and_account_usage(tree: Tree) -> None:
    accounts, assocs, usage = tree
    shape = tree_shape(accounts, assocs)
    raw = assoc_usage(shape, usage)
    assert usage_sums(shape, usage) == (raw, account_usage(shape, raw))


def test_an_overflowing_sum_raises_as_before() -> None:
    accounts = (AccountView("root", None), AccountView("a", "root"))
    assocs = (AssocView("x", "a"), AssocView("y", "a"))
    usage = {("x", "a"): 1e308, ("y", "a"): 1e308}
    with pytest.raises(OverflowError):
        fair_tree(accounts, assocs, usage)
    shape = tree_shape(accounts, assocs)
    for given_usage in (usage, UsageVector(shape.assoc_keys, [1e308, 1e308])):
        with pytest.raises(OverflowError):
            fair_tree_factors(accounts, assocs, given_usage)


@st.composite
def wide_trees(draw: st.DrawFn) -> Tree:
    """The simulator's kind of tree, wide: root -> many accounts (sometimes a
    FairShare=parent one, or one more level) -> users, with ties (equal usage, zero usage,
    zero shares) at every level."""
    accounts = [AccountView("root", None)]
    assocs: list[AssocView] = []
    n = draw(st.integers(1, 40))
    for k in range(n):
        parent = "root"
        if k and draw(st.integers(0, 7)) == 0:
            parent = f"a{draw(st.integers(0, k - 1))}"
        accounts.append(AccountView(f"a{k}", parent, draw(st.sampled_from([0, 1, 1, 2, 5])),
                                    shares_parent=draw(st.integers(0, 12)) == 0))
        for u in range(draw(st.integers(0, 20 if k % 5 == 0 else 4))):
            assocs.append(AssocView(f"u{u}", f"a{k}", draw(st.sampled_from([0, 1, 1, 3])),
                                    shares_parent=draw(st.integers(0, 15)) == 0))
    values = st.sampled_from([0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 10.0, 0.1, 7.25, 1e-300])
    usage = {(a.user, a.account): draw(values) for a in assocs}
    return tuple(accounts), tuple(assocs), usage


@pytest.mark.parametrize("force", [False, True])
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=wide_trees(), data=st.data())
def test_wanted_factors_on_wide_trees(force: bool, tree: Tree, data: st.DataObject,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``force``: every level of several members walked sparsely, however many marks (the
    patch is the same for every example)."""
    if force:
        monkeypatch.setattr(fairtree_mod, "SPARSE_FROM", 2)
        monkeypatch.setattr(fairtree_mod, "SPARSE_RATIO", 1)
    accounts, assocs, usage = tree
    tree_mod._SHAPES.clear()
    full = fair_tree(accounts, assocs, usage).factors
    keys = sorted(full)
    wanted = data.draw(st.sets(st.sampled_from(keys), max_size=8) if keys else st.just(set()))
    want = {k: v for k, v in full.items() if k in wanted}
    shape = tree_shape(accounts, assocs)
    vector = UsageVector(shape.assoc_keys, [usage.get(k, 0.0) for k in shape.assoc_keys])
    for given_usage in (usage, vector):
        assert _same(fair_tree_factors(accounts, assocs, given_usage, wanted), want)
        assert _same(fair_tree_factors(accounts, assocs, given_usage), dict(full))


def test_a_wide_level_with_ties_around_a_wanted_account() -> None:
    """Accounts of equal LevelFS merge; skipped runs of them count their users."""
    accounts = (AccountView("root", None),
                *(AccountView(f"a{k}", "root", 1) for k in range(30)))
    assocs = tuple(AssocView(f"u{u}", f"a{k}") for k in range(30) for u in range(k % 3 + 1))
    usage = {(a.user, a.account): float(int(a.account[1:]) % 4) for a in assocs}
    full = fair_tree(accounts, assocs, usage).factors
    for wanted in ({("u0", "a4")}, {("u1", "a5"), ("u0", "a29")}, {("u2", "a8")}):
        got = fair_tree_factors(accounts, assocs, usage, wanted)
        assert got == {k: full[k] for k in wanted}
    assert math.isclose(sum(1 for _ in full), len(assocs))
