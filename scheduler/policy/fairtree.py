"""Slurm's Fair Tree fair-share factor (fairshare.md A1), exactly.

Per association ``a`` at a level headed by account ``p``: ``S = shares / Σ shares of the
level``, ``U = raw usage / raw usage of p`` (0 when p has none), ``LevelFS = 0`` when S is 0,
else ``+inf`` when U is 0, else ``S / U``. One depth-first pass ranks every user association:
siblings sorted by LevelFS (users before accounts on equal LevelFS), accounts with equal
LevelFS merged, ties by exact ``==`` on IEEE doubles. The factor is ``rank / N``.

FairShare=parent: such an account is not a level of its own (its members count at its
parent's level); such a user gets LevelFS +inf and is left out of the share sum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from scheduler.policy.snapshot import AccountView, AssocView
from scheduler.policy.tree import FairShareTable, Node, Tree, build_tree, level_shares


def fair_tree(accounts: Iterable[AccountView], assocs: Iterable[AssocView],
              usage: Mapping[tuple[str, str], float]) -> FairShareTable:
    tree = build_tree(accounts, assocs, usage)
    _level_values(tree)
    tree.root.S, tree.root.U = 1.0, 1.0
    _rank(tree)
    factors = {(u.user, u.account): u.fs for u in tree.assocs if u.user is not None}
    return FairShareTable(rows=tree.rows(), factors=factors)  # type: ignore[arg-type]


def level_fs(S: float | None, U: float) -> float:
    """LevelFS from the level-local shares and usage; None shares mean FairShare=parent."""
    if S is None:
        return math.inf
    if S == 0:
        return 0.0
    if U == 0:
        return math.inf
    return S / U


def _level_values(tree: Tree) -> None:
    for head in tree.accounts:
        if head.transparent:
            continue
        members = head.level
        for m, S in zip(members, level_shares(members), strict=True):
            m.S = S
            m.U = m.raw_usage / head.raw_usage if head.raw_usage != 0 else 0.0
            m.LF = level_fs(S, m.U)
    for a in tree.accounts:  # display: a transparent account's usage against its level
        if a.transparent:
            head = tree.level_parent(a)
            a.U = a.raw_usage / head.raw_usage if head.raw_usage != 0 else 0.0


def _sort_key(n: Node) -> tuple[float, bool, str, str]:
    # LevelFS descending, users before accounts; names only make the order reproducible.
    return (-(n.LF or 0.0), not n.is_user, n.account, n.name)


def _rank(tree: Tree) -> None:
    total = len(tree.assocs)
    counters = [total, total]  # [rank, next]

    def visit(members: list[Node], inherited_tie: bool) -> None:
        ordered = sorted(members, key=_sort_key)
        i = 0
        while i < len(ordered):
            n = ordered[i]
            tied = inherited_tie if i == 0 else n.LF == ordered[i - 1].LF
            if n.is_user:
                if not tied:
                    counters[0] = counters[1]
                n.fs = counters[0] / total
                counters[1] -= 1
                i += 1
                continue
            # The account and the following sibling accounts with the same LevelFS, merged.
            j = i + 1
            while j < len(ordered) and not ordered[j].is_user and ordered[j].LF == n.LF:
                j += 1
            merged: list[Node] = []
            for account in ordered[i:j]:
                merged.extend(account.level)
            visit(merged, tied)
            i = j

    visit(tree.root.level, False)
