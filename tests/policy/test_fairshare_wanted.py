"""Fair Tree factors for some associations only (``fair_tree_factors(..., wanted)``: the walk
skips account groups with none of them below) equal the full table's, bit for bit, on random
trees with ties, zero shares, FairShare=parent and malformed input; and a fair-share cycle
asks for its pending jobs' associations only and decides exactly as with every factor."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuq.scheduler.policy import (
    AccountView,
    AssocView,
    JobView,
    PolicyConfig,
    Snapshot,
    fair_tree,
    schedule,
)
from gpuq.scheduler.policy import tree as tree_mod
from gpuq.scheduler.policy.fairtree import fair_tree_factors
from gpuq.scheduler.policy.priority import fairshare_factors, pending_associations
from tests.policy.builders import make_node
from tests.policy.test_fairshare_cache import Tree, _same, trees


@settings(max_examples=400, deadline=None)
@given(trees(), st.data())
def test_wanted_factors_are_the_full_tables(tree: Tree, data: st.DataObject) -> None:
    accounts, assocs, usage = tree
    tree_mod._SHAPES.clear()
    full = fair_tree(accounts, assocs, usage).factors
    keys = sorted({(a.user, a.account) for a in assocs} | {("nobody", "a")})
    wanted = data.draw(st.sets(st.sampled_from(keys)) if keys else st.just(set()))
    got = fair_tree_factors(accounts, assocs, usage, wanted)
    assert _same(got, {k: v for k, v in full.items() if k in wanted})
    # Every association wanted: the whole table.
    assert _same(fair_tree_factors(accounts, assocs, usage, set(full)), dict(full))


@settings(max_examples=150, deadline=None)
@given(trees(), st.data())
def test_a_cycle_decides_as_with_every_factor(tree: Tree, data: st.DataObject) -> None:
    accounts, assocs, usage = tree
    if not assocs:
        return
    tree_mod._SHAPES.clear()
    pending = tuple(
        JobView(id=i + 1, gpus=data.draw(st.integers(1, 4)), submitted_at=float(
            data.draw(st.integers(0, 5))), user=a.user, account=a.account)
        for i, a in enumerate(data.draw(st.lists(st.sampled_from(assocs), max_size=6))))
    for policy in ("fairshare", "fairshare+backfill"):
        snap = Snapshot(now=10.0, nodes=(make_node("n1", gpus=2), make_node("n2", gpus=4)),
                        pending=pending, accounts=accounts, assocs=assocs, usage=usage,
                        config=PolicyConfig(policy=policy))
        wanted = pending_associations(snap)
        full = fairshare_factors(snap)
        assert _same(fairshare_factors(snap, wanted),
                     {k: v for k, v in full.items() if wanted is None or k in wanted})
        d = schedule(snap)
        assert {j: p.fairshare for j, p in d.priorities.items()} == \
            {j.id: full.get((j.user, j.account), 0.0) for j in pending}


def test_a_skipped_group_of_tied_accounts_moves_the_ranks_after_it() -> None:
    # a and b have no usage: equal LevelFS (+inf), merged into one group of three users,
    # ranked before c's and d's users; d ties with nothing. Only d's user is wanted.
    accounts = (AccountView("root", None), AccountView("a", "root"), AccountView("b", "root"),
                AccountView("c", "root"), AccountView("d", "root"))
    assocs = (AssocView("u1", "a"), AssocView("u2", "b"), AssocView("u3", "b"),
              AssocView("u4", "c"), AssocView("u5", "d"), AssocView("u6", "d"))
    usage = {("u4", "c"): 1.0, ("u5", "d"): 3.0, ("u6", "d"): 3.0}
    tree_mod._SHAPES.clear()
    full = fair_tree(accounts, assocs, usage).factors
    for wanted in ({("u5", "d")}, {("u6", "d"), ("u4", "c")}, {("u2", "b")}):
        assert fair_tree_factors(accounts, assocs, usage, wanted) == \
            {k: full[k] for k in wanted}
