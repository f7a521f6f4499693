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
from collections.abc import Iterable, Mapping, Sequence

from gpuq.scheduler.policy.snapshot import AccountView, AssocView
from gpuq.scheduler.policy.tree import (
    FairShareTable,
    Node,
    Tree,
    account_usage,
    assoc_usage,
    build_tree,
    level_shares,
    tree_shape,
)


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


def fair_tree_factors(accounts: Iterable[AccountView], assocs: Iterable[AssocView],
                      usage: Mapping[tuple[str, str], float],
                      wanted: Iterable[tuple[str, str]] | None = None,
                      ) -> dict[tuple[str, str], float]:
    """``fair_tree(...).factors`` without the display rows, on the cached tree shape: what
    scheduling needs. Equal to ``fair_tree``'s factors, bit for bit (tests/policy).

    ``wanted``: only these associations' factors (those of them in the tree), the same
    values. The walk then skips every group of accounts with none of them below: the users
    there take ranks in a row, so the count of its users moves the next rank, and the first
    user placed after such a group is never tied with anything in it (the group ends where
    LevelFS changes: equal LevelFS puts users before accounts, and merges accounts).
    """
    shape = tree_shape(accounts, assocs)
    raw = assoc_usage(shape, usage)
    acc_raw = account_usage(shape, raw)
    inf = math.inf
    levels = shape.levels
    level_of = shape.level_of

    def entries(li: int) -> Sequence[tuple[float, int, bool, int]]:
        """Level ``li``'s members as sort entries (-LevelFS, static rank, is_user, index),
        sorted; the static rank orders as _sort_key's tail does (users first, then account,
        then name)."""
        level = levels[li]
        total = acc_raw[level.head]
        if total == 0:  # every U is 0: LevelFS depends on the shares only
            return level.zero_usage
        # -level_fs(S, U), inlined: -inf when S is None (FairShare=parent), -0.0 when S is
        # 0, else -inf when U is 0, else -(S / U).
        out = [(-inf if S is None else -0.0 if S == 0 else
                -inf if (U := (raw[idx] if is_user else acc_raw[idx]) / total) == 0
                else -(S / U), rank, is_user, idx)
               for is_user, idx, S, _shares, rank in level.members]
        out.sort()
        return out

    n = len(raw)
    fs: list[float | None] = [None] * n
    #: Per account: whether a wanted association is below it (None: every one is wanted).
    below_wanted: list[bool] | None = None
    picked: list[int] = []
    if wanted is not None:
        position = shape.assoc_position
        picked = sorted({i for key in wanted if (i := position.get(key)) is not None})
        below_wanted = [False] * len(shape.below)
        for i in picked:
            for a in shape.assoc_accounts[i]:
                below_wanted[a] = True
    below = shape.below
    rank = nxt = n  # the rank of the last user placed, and the next one's if not tied

    def visit_level(li: int, inherited_tie: bool) -> None:
        """Rank the members of level ``li``. A level of one member needs no LevelFS: it
        takes the inherited tie (what visit does with the first member)."""
        nonlocal rank, nxt
        members = levels[li].members
        while len(members) == 1:
            is_user, idx = members[0][0], members[0][1]
            if is_user:
                if not inherited_tie:
                    rank = nxt
                fs[idx] = rank / n
                nxt -= 1
                return
            li = level_of[idx]  # type: ignore[assignment]
            members = levels[li].members
        visit(entries(li), inherited_tie)

    def visit(ordered: Sequence[tuple[float, int, bool, int]], inherited_tie: bool) -> None:
        nonlocal rank, nxt
        i = 0
        size = len(ordered)
        while i < size:
            neg, _, is_user, idx = ordered[i]
            tied = inherited_tie if i == 0 else neg == ordered[i - 1][0]
            if is_user:
                if not tied:
                    rank = nxt
                fs[idx] = rank / n
                nxt -= 1
                i += 1
                continue
            # The account and the following sibling accounts with the same LevelFS, merged.
            j = i + 1
            while j < size and not ordered[j][2] and ordered[j][0] == neg:
                j += 1
            if j == i + 1:
                if below_wanted is not None and not below_wanted[idx]:
                    nxt -= len(below[idx])  # skipped: its users' ranks are not wanted
                else:
                    visit_level(level_of[idx], tied)  # type: ignore[arg-type]
            elif below_wanted is not None and not any(
                    below_wanted[e[3]] for e in ordered[i:j]):
                for e in ordered[i:j]:
                    nxt -= len(below[e[3]])
            else:
                merged: list[tuple[float, int, bool, int]] = []
                for e in ordered[i:j]:
                    merged.extend(entries(level_of[e[3]]))  # type: ignore[arg-type]
                merged.sort()
                visit(merged, tied)
            i = j

    if below_wanted is not None:
        if picked and levels:
            visit_level(0, False)
        keys = shape.assoc_keys
        return {keys[i]: fs[i] for i in picked}  # type: ignore[misc]
    if levels:
        visit_level(0, False)
    return dict(zip(shape.assoc_keys, fs, strict=True))  # type: ignore[arg-type]
