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
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate
from operator import itemgetter

from gpuq.scheduler.policy.snapshot import AccountView, AssocView
from gpuq.scheduler.policy.tree import (
    FairShareTable,
    Node,
    Tree,
    build_tree,
    level_shares,
    tree_shape,
    usage_sums,
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
    LevelFS changes: equal LevelFS puts users before accounts, and merges accounts). A level
    of users only places just the wanted ones (``visit_users``), and a wide level with few
    members that lead to them walks only those (``visit_sparse``): the skipped members' user
    counts are summed in order, and each wanted one is found by bisection.
    """
    shape = tree_shape(accounts, assocs)
    raw, acc_raw = usage_sums(shape, usage)
    inf = math.inf
    levels = shape.levels
    level_of = shape.level_of
    both = raw + acc_raw  # a member's raw usage, by Level.src
    get = both.__getitem__

    def level_negs(li: int) -> list[float]:
        """-LevelFS of level ``li``'s members, in member order (its head's usage is not 0).
        level_fs, inlined: -inf when S is None (FairShare=parent), -0.0 when S is 0 (both:
        the member's const, its weight 0.0), else -inf when U is 0, else -(S / U)."""
        level = levels[li]
        total = acc_raw[level.head]
        return [c if not S else -inf if (U := u / total) == 0 else -(S / U)
                for u, S, c in zip(map(get, level.src), level.weights, level.consts,
                                   strict=True)]

    def entries(li: int) -> Sequence[Entry]:
        """Level ``li``'s members as sort entries (-LevelFS, static rank, is_user, index,
        size), sorted; the static rank orders as _sort_key's tail does (users first, then
        account, then name)."""
        level = levels[li]
        if acc_raw[level.head] == 0:  # every U is 0: LevelFS depends on the shares only
            return level.zero_usage
        out = list(zip(level_negs(li), level.ranks, level.is_user, level.idx, level.sizes,
                       strict=True))
        out.sort()
        return out

    n = len(raw)
    fs: list[float | None] = [None] * n
    #: Per account: whether a wanted association is below it (None: every one is wanted).
    below_wanted: list[bool] | None = None
    #: Level -> positions of its members with a wanted association at or below them.
    marked: dict[int, set[int]] = {}
    picked: list[int] = []
    if wanted is not None:
        position = shape.assoc_position
        picked = sorted({i for key in wanted if (i := position.get(key)) is not None})
        below_wanted = [False] * len(shape.below)
        for i in picked:
            for a in shape.assoc_accounts[i]:
                below_wanted[a] = True
            for li, p in shape.assoc_path[i]:
                marks = marked.get(li)
                if marks is None:
                    marked[li] = {p}
                else:
                    marks.add(p)
    rank = nxt = n  # the rank of the last user placed, and the next one's if not tied

    def visit_level(li: int, inherited_tie: bool) -> None:
        """Rank the members of level ``li``. A level of one member needs no LevelFS: it
        takes the inherited tie (what visit does with the first member)."""
        nonlocal rank, nxt
        level = levels[li]
        members = level.members
        while len(members) == 1:
            is_user, idx = members[0][0], members[0][1]
            if is_user:
                if not inherited_tie:
                    rank = nxt
                fs[idx] = rank / n
                nxt -= 1
                return
            li = level_of[idx]  # type: ignore[assignment]
            level = levels[li]
            members = level.members
        if below_wanted is not None and len(level.user_pos) == len(members):
            visit_users(li, marked.get(li, ()), inherited_tie)
            return
        if below_wanted is not None and len(members) >= SPARSE_FROM:
            marks = marked.get(li, set())
            if level.user_pos:
                marks = marks.union(level.user_pos)
            if len(marks) * SPARSE_RATIO <= len(members):
                visit_sparse(li, marks, inherited_tie)
                return
        visit(entries(li), inherited_tie)

    def visit_users(li: int, marks: Iterable[int], inherited_tie: bool) -> None:
        """``visit(entries(li), inherited_tie)`` for a level of users only, placing only the
        users at ``marks``: the users take ranks in sorted order, each run of equal LevelFS
        the rank of its first, so a user's rank follows from how many have a lower -LevelFS
        (a bisection in the sorted values)."""
        nonlocal rank, nxt
        level = levels[li]
        if acc_raw[level.head] == 0:
            negs: Sequence[float] = level.zero_negs
            ordered: Sequence[float] = level.zero_sorted
        else:
            negs = level_negs(li)
            ordered = sorted(negs)
        start, before = nxt, rank
        idx = level.idx
        for p in marks:
            q = bisect_left(ordered, negs[p])
            fs[idx[p]] = (before if q == 0 and inherited_tie else start - q) / n
        if ordered:  # as visit leaves them: the last user's rank, the next rank
            q = bisect_left(ordered, ordered[-1])
            rank = before if q == 0 and inherited_tie else start - q
            nxt = start - len(ordered)

    def visit_sparse(li: int, marks: set[int], inherited_tie: bool) -> None:
        """``visit(entries(li), inherited_tie)`` when only the members at ``marks`` (the
        level's users, and its accounts with a wanted association below) need a walk: the
        others are skipped as ``visit`` skips them, their sizes summed at once (the running
        sums of the sizes in order), and each marked member is found by bisection."""
        nonlocal rank, nxt
        level = levels[li]
        if acc_raw[level.head] == 0:
            ordered: Sequence[Entry] = level.zero_usage
            prefix: Sequence[int] = level.zero_prefix
            keys = [(level.zero_negs[p], level.ranks[p]) for p in marks]
        else:
            negs = level_negs(li)
            ordered = list(zip(negs, level.ranks, level.is_user, level.idx, level.sizes,
                               strict=True))
            ordered.sort()
            prefix = list(accumulate(map(_size_of, ordered)))
            keys = [(negs[p], level.ranks[p]) for p in marks]
        start = nxt
        size = len(ordered)
        done = 0  # the first position not walked yet
        for q in sorted(bisect_left(ordered, k) for k in keys):
            if q < done:
                continue
            neg, _, is_user, idx, _ = ordered[q]
            if is_user:
                nxt = start - prefix[q - 1] if q else start
                tied = inherited_tie if q == 0 else neg == ordered[q - 1][0]
                if not tied:
                    rank = nxt
                fs[idx] = rank / n
                nxt -= 1
                done = q + 1
                continue
            # The run of sibling accounts with its LevelFS (users come before them).
            i = q
            while i > 0 and not ordered[i - 1][2] and ordered[i - 1][0] == neg:
                i -= 1
            j = q + 1
            while j < size and not ordered[j][2] and ordered[j][0] == neg:
                j += 1
            nxt = start - prefix[i - 1] if i else start
            tied = inherited_tie if i == 0 else neg == ordered[i - 1][0]
            if j == i + 1:
                visit_level(level_of[idx], tied)  # type: ignore[arg-type]
            else:
                visit_merged(ordered[i:j], tied)
            done = j
        nxt = start - prefix[-1] if size else start

    def visit(ordered: Sequence[Entry], inherited_tie: bool) -> None:
        nonlocal rank, nxt
        i = 0
        size = len(ordered)
        while i < size:
            neg, _, is_user, idx, _ = ordered[i]
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
                    nxt -= ordered[i][4]  # skipped: its users' ranks are not wanted
                else:
                    visit_level(level_of[idx], tied)  # type: ignore[arg-type]
            elif below_wanted is not None and not any(
                    below_wanted[e[3]] for e in ordered[i:j]):
                for e in ordered[i:j]:
                    nxt -= e[4]
            else:
                visit_merged(ordered[i:j], tied)
            i = j

    def visit_merged(tied_accounts: Sequence[Entry], tied: bool) -> None:
        """Sibling accounts of one LevelFS: their members ranked together, as one level."""
        merged: list[Entry] = []
        for e in tied_accounts:
            merged.extend(entries(level_of[e[3]]))  # type: ignore[arg-type]
        merged.sort()
        visit(merged, tied)

    if below_wanted is not None:
        if picked and levels:
            visit_level(0, False)
        keys = shape.assoc_keys
        return {keys[i]: fs[i] for i in picked}  # type: ignore[misc]
    if levels:
        visit_level(0, False)
    return dict(zip(shape.assoc_keys, fs, strict=True))  # type: ignore[arg-type]


#: A sort entry of Fair Tree's walk: (-LevelFS, static rank, is_user, index, size).
Entry = tuple[float, int, bool, int, int]
_size_of = itemgetter(4)
#: visit_sparse walks a level of at least SPARSE_FROM members when at most one in
#: SPARSE_RATIO of them is marked (else visit's walk over every member costs less).
SPARSE_FROM = 16
SPARSE_RATIO = 4
