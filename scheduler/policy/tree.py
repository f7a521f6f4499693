"""The account tree that both fair-share algorithms read, and the ``sshare -l`` table they fill.

Root -> accounts (any depth) -> user associations (leaves). An association's raw usage is its
own; an account's is the sum of its descendant associations' (fairshare.md A1), summed with
``math.fsum`` so that it does not depend on the order of the input.

Malformed input is made whole rather than refused, so one bad row cannot stop scheduling:
the root is the one account without a parent (else an implicit ``root``); an account whose
parent is unknown, or that sits on a cycle, hangs under the root; an association of an
unknown account is left out (its jobs get fair-share factor 0); usage that is negative or
not finite counts as 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gpuq.scheduler.policy.snapshot import AccountView, AssocView

IMPLICIT_ROOT = "root"


@dataclass(frozen=True, slots=True)
class FairShareRow:
    """One line of ``sshare -l``: an account (``user`` None) or a user association."""

    #: The account's name, or the user's.
    name: str
    #: The account itself, or the account the user is in.
    account: str
    #: The parent account (a user's: its account); None for the root.
    parent: str | None
    user: str | None
    raw_shares: int
    #: Slurm's FairShare=parent ("parent" in the RawShares column).
    shares_parent: bool
    #: Fair Tree: level-local; classic: global (the product down the path). None where the
    #: association is not a level of its own (FairShare=parent).
    norm_shares: float | None
    raw_usage: float
    #: Display: raw usage / the root's.
    norm_usage: float
    #: Fair Tree: raw usage / the parent level's; classic: the effective usage UE.
    effective_usage: float | None
    #: Fair Tree only: S / U.
    level_fs: float | None
    #: The fair-share factor in [0, 1]; users only.
    fairshare: float | None


@dataclass(frozen=True, slots=True)
class FairShareTable:
    rows: tuple[FairShareRow, ...]
    #: (user, account) -> fair-share factor.
    factors: Mapping[tuple[str, str], float]

    def factor(self, user: str, account: str) -> float:
        """The association's factor; 0.0 for one that is not in the tree."""
        return self.factors.get((user, account), 0.0)


class Node:
    """A mutable node of the tree while one algorithm runs (accounts and associations)."""

    __slots__ = ("name", "user", "account", "parent", "shares", "shares_parent", "raw_usage",
                 "children", "users", "level", "S", "U", "LF", "fs")

    def __init__(self, name: str, user: str | None, account: str, parent: Node | None,
                 shares: int, shares_parent: bool) -> None:
        self.name = name
        self.user = user
        self.account = account
        self.parent = parent
        self.shares = max(int(shares), 0)
        self.shares_parent = shares_parent
        self.raw_usage = 0.0
        self.children: list[Node] = []  # sub-accounts, by name
        self.users: list[Node] = []  # associations, by user name
        #: The members of the level this (non-transparent) account heads.
        self.level: list[Node] = []
        self.S: float | None = None
        self.U: float | None = None
        self.LF: float | None = None
        self.fs: float | None = None

    @property
    def is_user(self) -> bool:
        return self.user is not None

    @property
    def transparent(self) -> bool:
        """An account with FairShare=parent (never the root)."""
        return self.user is None and self.shares_parent and self.parent is not None


@dataclass(slots=True)
class Tree:
    root: Node
    accounts: list[Node]  # depth-first, the root first
    assocs: list[Node]  # depth-first order

    def level_parent(self, node: Node) -> Node:
        """The account whose level ``node`` belongs to: its nearest non-transparent ancestor."""
        p = node.parent
        assert p is not None
        while p.transparent:
            assert p.parent is not None
            p = p.parent
        return p

    def rows(self) -> tuple[FairShareRow, ...]:
        total = self.root.raw_usage
        out = []
        for a in self.accounts:
            out.append(_row(a, total))
            out.extend(_row(u, total) for u in a.users)
        return tuple(out)


def _row(n: Node, total: float) -> FairShareRow:
    return FairShareRow(
        name=n.name, account=n.account, parent=n.parent.name if n.parent else None,
        user=n.user, raw_shares=n.shares, shares_parent=n.shares_parent, norm_shares=n.S,
        raw_usage=n.raw_usage, norm_usage=n.raw_usage / total if total else 0.0,
        effective_usage=n.U, level_fs=n.LF, fairshare=n.fs)


def _usage(value: float) -> float:
    v = float(value)
    return v if math.isfinite(v) and v > 0 else 0.0


def build_tree(accounts: Iterable[AccountView], assocs: Iterable[AssocView],
               usage: Mapping[tuple[str, str], float]) -> Tree:
    views = {a.name: a for a in sorted(accounts, key=lambda a: (
        a.name, a.parent or "", a.shares, a.shares_parent))}
    parentless = [a for a in views.values() if a.parent is None]
    if len(parentless) == 1:
        top = parentless[0]
        root = Node(top.name, None, top.name, None, top.shares, False)
    else:
        root = Node(IMPLICIT_ROOT, None, IMPLICIT_ROOT, None, 1, False)
        views.pop(IMPLICIT_ROOT, None)

    def parent_of(name: str) -> str:
        """The parent to use: the root when unknown or on a cycle."""
        view = views[name]
        p = view.parent
        seen = {name}
        while p is not None and p != root.name:
            if p not in views or p in seen:
                return root.name
            seen.add(p)
            p = views[p].parent
        return root.name if view.parent is None else view.parent

    nodes = {root.name: root}
    children: dict[str, list[str]] = {}
    for name in views:
        if name != root.name:
            children.setdefault(parent_of(name), []).append(name)

    order: list[Node] = []

    def attach(node: Node) -> None:  # depth-first, children by name
        order.append(node)
        for child in sorted(children.get(node.name, ())):
            v = views[child]
            n = Node(child, None, child, node, v.shares, v.shares_parent)
            nodes[child] = n
            node.children.append(n)
            attach(n)

    attach(root)
    assoc_nodes: list[Node] = []
    seen_assocs: set[tuple[str, str]] = set()
    for s in sorted(assocs, key=lambda s: (s.account, s.user, s.shares, s.shares_parent)):
        parent = nodes.get(s.account)
        key = (s.user, s.account)
        if parent is None or key in seen_assocs:
            continue
        seen_assocs.add(key)
        n = Node(s.user, s.user, s.account, parent, s.shares, s.shares_parent)
        n.raw_usage = _usage(usage.get(key, 0.0))
        parent.users.append(n)
    for a in order:
        assoc_nodes.extend(a.users)

    # Raw usage of an account: the exactly rounded sum of its descendant associations'.
    below: dict[str, list[float]] = {}
    for a in reversed(order):
        values = [u.raw_usage for u in a.users]
        for c in a.children:
            values.extend(below.pop(c.name))
        a.raw_usage = math.fsum(values)
        below[a.name] = values

    for a in order:
        if not a.transparent:
            a.level = _level_members(a)
    return Tree(root, order, assoc_nodes)


def _level_members(account: Node) -> list[Node]:
    """An account's users and sub-accounts, a FairShare=parent sub-account replaced by its own
    members (recursively): they count at this level."""
    out: list[Node] = list(account.users)
    for c in account.children:
        if c.transparent:
            out.extend(_level_members(c))
        else:
            out.append(c)
    return out


def level_shares(members: list[Node]) -> list[float | None]:
    """Each member's share of its level (None for a FairShare=parent user, which is left out
    of the sum); 0 for all when the shares sum to 0."""
    total = sum(m.shares for m in members if not (m.is_user and m.shares_parent))
    return [None if m.is_user and m.shares_parent else (m.shares / total if total else 0.0)
            for m in members]


@dataclass(frozen=True, slots=True)
class Level:
    """One level of the tree, as plain indices: the members of a non-transparent account."""

    #: The account heading the level (an index into ``TreeShape.accounts``).
    head: int
    #: Per member: (is_user, index into the associations or the accounts, level-local share
    #: (None: a FairShare=parent user), share count, static sort rank).
    members: tuple[tuple[bool, int, float | None, int, int], ...]
    #: Fair Tree's sort entries (-LevelFS, static rank, is_user, index) of the members, in
    #: order, for when the head's raw usage is 0 (every U is 0: they depend on shares only).
    zero_usage: tuple[tuple[float, int, bool, int], ...]


@dataclass(frozen=True, slots=True)
class TreeShape:
    """Everything about the tree that does not depend on usage, as indices (read-only).

    Accounts and associations are in the depth-first order of ``build_tree``; a static rank
    orders every node as Fair Tree's tie-break does (users before accounts, then account,
    then name), so a sort key is (-LevelFS, rank).
    """

    #: (user, account) per association.
    assoc_keys: tuple[tuple[str, str], ...]
    #: Per account: the indices of every association below it (for its raw usage).
    below: tuple[tuple[int, ...], ...]
    #: Per account: True where FairShare=parent (not a level of its own).
    transparent: tuple[bool, ...]
    #: Per account: the index of the level it heads (None when transparent).
    level_of: tuple[int | None, ...]
    #: Levels in the depth-first order of their heads (the root's first).
    levels: tuple[Level, ...]
    #: Per association: the account heading its level.
    assoc_level_head: tuple[int, ...]
    #: Per association: FairShare=parent.
    assoc_shares_parent: tuple[bool, ...]
    #: (user, account) -> the association's index (read-only).
    assoc_position: Mapping[tuple[str, str], int]
    #: Per association: every account above it (its own first, the root last).
    assoc_accounts: tuple[tuple[int, ...], ...]


def _shape_of(accounts: tuple[AccountView, ...], assocs: tuple[AssocView, ...]) -> TreeShape:
    tree = build_tree(accounts, assocs, {})
    acc_index = {id(a): i for i, a in enumerate(tree.accounts)}
    assoc_index = {id(u): i for i, u in enumerate(tree.assocs)}
    rank_of = {id(n): r for r, n in enumerate(sorted(
        [*tree.accounts, *tree.assocs], key=lambda n: (not n.is_user, n.account, n.name)))}
    below_lists: dict[int, list[int]] = {}
    for a in reversed(tree.accounts):
        mine = [assoc_index[id(u)] for u in a.users]
        for c in a.children:
            mine.extend(below_lists[acc_index[id(c)]])
        below_lists[acc_index[id(a)]] = mine
    levels: list[Level] = []
    level_of: list[int | None] = []
    for i, head in enumerate(tree.accounts):
        if head.transparent:
            level_of.append(None)
            continue
        level_of.append(len(levels))
        members = head.level
        level = tuple(
            (m.is_user, assoc_index[id(m)] if m.is_user else acc_index[id(m)], s, m.shares,
             rank_of[id(m)])
            for m, s in zip(members, level_shares(members), strict=True))
        # LevelFS with U = 0 (fairtree.level_fs): 0 where S is 0, else +inf.
        zero = tuple(sorted((-(0.0 if s == 0 else math.inf), rank, is_user, idx)
                            for is_user, idx, s, _, rank in level))
        levels.append(Level(i, level, zero))
    return TreeShape(
        assoc_keys=tuple((u.user, u.account) for u in tree.assocs),  # type: ignore[misc]
        below=tuple(tuple(below_lists[i]) for i in range(len(tree.accounts))),
        transparent=tuple(a.transparent for a in tree.accounts),
        level_of=tuple(level_of),
        levels=tuple(levels),
        assoc_level_head=tuple(acc_index[id(tree.level_parent(u))] for u in tree.assocs),
        assoc_shares_parent=tuple(u.shares_parent for u in tree.assocs),
        assoc_position={(u.user, u.account): i for i, u in enumerate(tree.assocs)},
        assoc_accounts=tuple(tuple(acc_index[id(a)] for a in _ancestors(u))
                             for u in tree.assocs))


def _ancestors(node: Node) -> list[Node]:
    out = []
    p = node.parent
    while p is not None:
        out.append(p)
        p = p.parent
    return out


#: The last few shapes built, newest last: (accounts, assocs, shape). The simulator and the
#: scheduler loop hand every cycle the same (immutable) accounts and assocs tuples, so the
#: shape is built once, not once per cycle. The policy stays pure and deterministic: this
#: caches a pure function of immutable inputs (frozen dataclasses in tuples), and a hit is
#: checked by identity, else by equality, so it can never return another input's shape.
_SHAPES: list[tuple[tuple[AccountView, ...], tuple[AssocView, ...], TreeShape]] = []
_SHAPES_MAX = 4


def tree_shape(accounts: Iterable[AccountView], assocs: Iterable[AssocView]) -> TreeShape:
    """The (cached) shape of the tree of ``accounts`` and ``assocs``."""
    accs = accounts if isinstance(accounts, tuple) else tuple(accounts)
    sas = assocs if isinstance(assocs, tuple) else tuple(assocs)
    entries = list(_SHAPES)
    for i in range(len(entries) - 1, -1, -1):
        e = entries[i]
        if e[0] is accs and e[1] is sas:
            return e[2]
    for i in range(len(entries) - 1, -1, -1):
        e = entries[i]
        if e[0] == accs and e[1] == sas:
            return e[2]
    shape = _shape_of(accs, sas)
    _SHAPES[:] = [*entries[-(_SHAPES_MAX - 1):], (accs, sas, shape)]
    return shape


def assoc_usage(shape: TreeShape, usage: Mapping[tuple[str, str], float]) -> list[float]:
    """Each association's raw usage (as ``build_tree`` reads it)."""
    get = usage.get
    inf = math.inf  # _usage, inlined: 0 unless finite and > 0 (NaN fails both tests)
    return [v if 0.0 < (v := float(get(k, 0.0))) < inf else 0.0 for k in shape.assoc_keys]


def account_usage(shape: TreeShape, raw: list[float]) -> list[float]:
    """Each account's raw usage: the exactly rounded sum of its associations' (as
    ``build_tree``; ``math.fsum`` does not depend on the order)."""
    fsum = math.fsum
    at = raw.__getitem__
    # fsum of one finite value is that value.
    return [raw[b[0]] if len(b) == 1 else fsum(map(at, b)) for b in shape.below]
