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
from itertools import accumulate

from gpuq.scheduler.policy.snapshot import AccountView, AssocView
from gpuq.scheduler.policy.usage import UsageVector

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
    #: Fair Tree's sort entries (-LevelFS, static rank, is_user, index, size) of the
    #: members, in order, for when the head's raw usage is 0 (every U is 0: they depend on
    #: shares only). The size is the count of associations the member stands for (1 for a
    #: user, those below for an account).
    zero_usage: tuple[tuple[float, int, bool, int, int], ...]
    #: The running sums of ``zero_usage``'s sizes.
    zero_prefix: tuple[int, ...]
    #: Per member, as columns for Fair Tree's LevelFS: where its raw usage is in the list
    #: ``raw + acc_raw`` (an association's index, or the associations' count plus an
    #: account's), its share (0.0 when None or 0), the -LevelFS it has whatever its usage
    #: (-inf for a FairShare=parent user, -0.0 for a share of 0; unused otherwise), and the
    #: sort entries' tail: static rank, is_user, index.
    src: tuple[int, ...]
    weights: tuple[float, ...]
    consts: tuple[float, ...]
    ranks: tuple[int, ...]
    is_user: tuple[bool, ...]
    idx: tuple[int, ...]
    sizes: tuple[int, ...]
    #: The positions of the users among the members.
    user_pos: tuple[int, ...]
    #: The -LevelFS of ``zero_usage``'s members in member order, and sorted.
    zero_negs: tuple[float, ...]
    zero_sorted: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class AccountSums:
    """How ``usage_sums`` adds up each account's usage (indices into the associations)."""

    #: The accounts with one association below (that one's index), two, and more (not the
    #: root); in that order after [raw..., root's total, 0.0] in the list it builds.
    singles: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    more: tuple[tuple[int, ...], ...]
    #: Per account: the position of its sum in that list.
    position: tuple[int, ...]


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
    #: How ``usage_sums`` adds up the accounts' usage.
    sums: AccountSums
    #: Per association: (level, member position) of itself and of every account above it
    #: that is a member of a level (not the root, not FairShare=parent).
    assoc_path: tuple[tuple[tuple[int, int], ...], ...]


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
        sizes = tuple(1 if is_user else len(below_lists[idx]) for is_user, idx, *_ in level)
        zero = tuple(sorted((-(0.0 if s == 0 else math.inf), rank, is_user, idx, size)
                            for (is_user, idx, s, _, rank), size in zip(level, sizes,
                                                                       strict=True)))
        n_assocs = len(tree.assocs)
        levels.append(Level(
            i, level, zero, tuple(accumulate(e[4] for e in zero)),
            src=tuple(idx if is_user else n_assocs + idx for is_user, idx, *_ in level),
            weights=tuple(s or 0.0 for _, _, s, _, _ in level),
            consts=tuple(-math.inf if s is None else -0.0 if s == 0 else 0.0
                         for _, _, s, _, _ in level),
            ranks=tuple(m[4] for m in level), is_user=tuple(m[0] for m in level),
            idx=tuple(m[1] for m in level), sizes=sizes,
            user_pos=tuple(p for p, m in enumerate(level) if m[0]),
            zero_negs=tuple(-(0.0 if s == 0 else math.inf) for _, _, s, _, _ in level),
            zero_sorted=tuple(e[0] for e in zero)))
    member_at = {(m[0], m[1]): (li, p) for li, lv in enumerate(levels)
                 for p, m in enumerate(lv.members)}
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
                             for u in tree.assocs),
        sums=_account_sums(tuple(tuple(below_lists[i]) for i in range(len(tree.accounts))),
                           len(tree.assocs)),
        assoc_path=tuple(
            ((member_at[(True, i)],) if (True, i) in member_at else ()) + tuple(
                member_at[(False, acc_index[id(a)])] for a in _ancestors(u)
                if (False, acc_index[id(a)]) in member_at)
            for i, u in enumerate(tree.assocs)))


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


def usage_sums(shape: TreeShape, usage: Mapping[tuple[str, str], float],
               ) -> tuple[list[float], list[float]]:
    """``(assoc_usage(shape, usage), account_usage(shape, that))``, the same values, cheaper.

    The root is above every association: its sum is the one ``math.fsum`` of them all, and
    once that is finite no partial sum overflows, so an account of two associations has
    the sum ``a + b`` (one rounding of the exact sum, as ``fsum``'s). A ``UsageVector``
    whose keys start with the shape's associations is read without a lookup per key, and
    its values as they are when every one is finite and >= 0 (``assoc_usage`` would change
    none but a -0.0, which every later step treats as 0.0: they compare with 0 and add)."""
    raw: list[float] | None = None
    total = 0.0
    keys = shape.assoc_keys
    if type(usage) is UsageVector:
        have = usage.keys_
        n = len(keys)
        if have is keys or (len(have) >= n and _starts_with(have, keys)):
            values = usage.values_ if len(have) == n else usage.values_[:n]
            try:
                total = math.fsum(values)
            except (OverflowError, ValueError):  # a sum too large, or inf - inf
                total = math.inf
            if total < math.inf and (not values or min(values) >= 0.0):
                raw = values
    if raw is None:
        raw = assoc_usage(shape, usage)
        try:
            total = math.fsum(raw)
        except OverflowError:
            return raw, account_usage(shape, raw)  # which raises it too
    at = raw.__getitem__
    fsum = math.fsum
    sums = shape.sums
    parts = [*raw, total, 0.0, *map(at, sums.singles),
             *[at(i) + at(j) for i, j in sums.pairs],
             *[fsum(map(at, b)) for b in sums.more]]
    return raw, list(map(parts.__getitem__, sums.position))


def _account_sums(below: tuple[tuple[int, ...], ...], n_assocs: int) -> AccountSums:
    singles: list[int] = []
    pairs: list[tuple[int, int]] = []
    more: list[tuple[int, ...]] = []
    kind: list[tuple[int, int]] = []  # (group, position in it) per account
    for a, b in enumerate(below):
        if a == 0:
            kind.append((0, 0))
        elif not b:
            kind.append((1, 0))
        elif len(b) == 1:
            kind.append((2, len(singles)))
            singles.append(b[0])
        elif len(b) == 2:
            kind.append((3, len(pairs)))
            pairs.append((b[0], b[1]))
        else:
            kind.append((4, len(more)))
            more.append(b)
    base = [n_assocs, n_assocs + 1, n_assocs + 2, n_assocs + 2 + len(singles),
            n_assocs + 2 + len(singles) + len(pairs)]
    return AccountSums(tuple(singles), tuple(pairs), tuple(more),
                       tuple(base[g] + k for g, k in kind))


#: (a vector's keys, a shape's keys) pairs known to start alike: checked once per pair.
_ALIGNED: list[tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = []


def _starts_with(have: tuple[tuple[str, str], ...], keys: tuple[tuple[str, str], ...]) -> bool:
    for a, b in _ALIGNED:
        if a is have and b is keys:
            return True
    if have[:len(keys)] != keys:
        return False
    _ALIGNED[:] = [*_ALIGNED[-(_SHAPES_MAX - 1):], (have, keys)]
    return True
