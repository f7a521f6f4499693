"""Slurm's classic fair-share factor (fairshare.md A2): ``F = 2^(-UE / S / d)``.

``S`` is the global normalised share (the product, down the path from the root, of each
node's share of its level); ``UE`` the effective usage, computed top-down:
``UE = Un`` for the root's level, else ``Un + (UE(parent) - Un) x shares / Σ shares of the
level`` (``UE(parent)`` when that sum is 0), with ``Un = raw usage / the root's``. ``F = 0``
when ``S <= 0``. A FairShare=parent account's members count at its parent's level; a
FairShare=parent user takes the factor of the account heading its level.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gpuq.scheduler.policy.snapshot import AccountView, AssocView
from gpuq.scheduler.policy.tree import (
    FairShareTable,
    Node,
    account_usage,
    assoc_usage,
    build_tree,
    level_shares,
    tree_shape,
)


def classic_factor(effective_usage: float, norm_shares: float, dampening: float = 1.0) -> float:
    if norm_shares <= 0:
        return 0.0
    return 2.0 ** (-effective_usage / norm_shares / dampening)


def classic_fairshare(accounts: Iterable[AccountView], assocs: Iterable[AssocView],
                      usage: Mapping[tuple[str, str], float],
                      dampening: float = 1.0) -> FairShareTable:
    if not dampening > 0:
        raise ValueError("dampening must be > 0")
    tree = build_tree(accounts, assocs, usage)
    total = tree.root.raw_usage

    def un(n: Node) -> float:
        return n.raw_usage / total if total else 0.0

    root = tree.root
    root.S, root.U = 1.0, un(root)
    for head in tree.accounts:  # depth-first: a level's head is done before its members
        if head.transparent:
            continue
        members = head.level
        shares = level_shares(members)
        share_sum = sum(m.shares for m, s in zip(members, shares, strict=True)
                        if s is not None)
        assert head.S is not None and head.U is not None
        for m, s in zip(members, shares, strict=True):
            if s is None:  # FairShare=parent user: the head's values
                continue
            m.S = s * head.S
            if head is root:
                m.U = un(m)
            elif share_sum == 0:
                m.U = head.U
            else:  # s is shares / share_sum
                m.U = un(m) + (head.U - un(m)) * s
    for a in tree.accounts:  # display: a transparent account's usage
        if a.transparent:
            a.U = un(a)
    factors: dict[tuple[str, str], float] = {}
    for u in tree.assocs:
        head = tree.level_parent(u) if u.shares_parent else u
        assert head.S is not None and head.U is not None and u.user is not None
        u.fs = classic_factor(head.U, head.S, dampening)
        factors[(u.user, u.account)] = u.fs
    return FairShareTable(rows=tree.rows(), factors=factors)


def classic_factors(accounts: Iterable[AccountView], assocs: Iterable[AssocView],
                    usage: Mapping[tuple[str, str], float],
                    dampening: float = 1.0) -> dict[tuple[str, str], float]:
    """``classic_fairshare(...).factors`` without the display rows, on the cached tree shape:
    what scheduling needs. Equal to ``classic_fairshare``'s factors, bit for bit."""
    if not dampening > 0:
        raise ValueError("dampening must be > 0")
    shape = tree_shape(accounts, assocs)
    raw = assoc_usage(shape, usage)
    acc_raw = account_usage(shape, raw)
    total = acc_raw[0] if acc_raw else 0.0
    n_acc = len(acc_raw)
    acc_S: list[float | None] = [None] * n_acc
    acc_U: list[float | None] = [None] * n_acc
    user_S: list[float | None] = [None] * len(raw)
    user_U: list[float | None] = [None] * len(raw)
    if n_acc:
        acc_S[0], acc_U[0] = 1.0, (acc_raw[0] / total if total else 0.0)
    for level in shape.levels:  # depth-first: a level's head is done before its members
        head = level.head
        head_S, head_U = acc_S[head], acc_U[head]
        assert head_S is not None and head_U is not None
        share_sum = sum(shares for _, _, s, shares, _ in level.members if s is not None)
        for is_user, idx, s, _shares, _rank in level.members:
            if s is None:  # FairShare=parent user: the head's values
                continue
            r = raw[idx] if is_user else acc_raw[idx]
            un = r / total if total else 0.0
            if head == 0:
                U = un
            elif share_sum == 0:
                U = head_U
            else:
                U = un + (head_U - un) * s
            if is_user:
                user_S[idx], user_U[idx] = s * head_S, U
            else:
                acc_S[idx], acc_U[idx] = s * head_S, U
    factors: dict[tuple[str, str], float] = {}
    for i, key in enumerate(shape.assoc_keys):
        if shape.assoc_shares_parent[i]:
            h = shape.assoc_level_head[i]
            S, U = acc_S[h], acc_U[h]
        else:
            S, U = user_S[i], user_U[i]
        assert S is not None and U is not None
        factors[key] = classic_factor(U, S, dampening)
    return factors
