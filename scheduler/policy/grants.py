"""Grants seen by the policy: share boosts, and what a reservation grant covers.

A *share* grant only raises an account's raw shares for its window; the snapshot builder
applies it with ``boost_shares`` and the fair-share code never knows. A *reservation* grant
(``GrantView``) reserves GPUs for an account's subtree: ``GrantScope`` says which jobs are
its grantees and which GPUs are eligible (E_g in policy-v3.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from gpuq.scheduler.policy.snapshot import AccountView, GrantView, JobView, NodeView


def boost_shares(accounts: Iterable[AccountView],
                 boosts: Mapping[str, int]) -> tuple[AccountView, ...]:
    """The accounts with ``boosts[name]`` added to their raw shares. An account with
    FairShare=parent is no level of its own, so a boost leaves it unchanged."""
    return tuple(
        replace(a, shares=a.shares + boosts[a.name])
        if a.name in boosts and not a.shares_parent else a
        for a in accounts)


def subtree(accounts: Iterable[AccountView], root: str) -> frozenset[str]:
    """``root`` and every account below it (``root`` alone if the tree does not know it)."""
    children: dict[str, list[str]] = {}
    for a in accounts:
        if a.parent is not None:
            children.setdefault(a.parent, []).append(a.name)
    seen = {root}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return frozenset(seen)


@dataclass(frozen=True, slots=True)
class GrantScope:
    grant: GrantView
    #: The grantee accounts: the grant's account and its subtree.
    accounts: frozenset[str]
    #: Node name -> the eligible GPU indices there (UP node, in the grant's nodes and of its
    #: model if given, healthy, not held by foreign processes), in node name order.
    gpus: dict[str, tuple[int, ...]]

    @property
    def id(self) -> int:
        return self.grant.id

    def is_grantee(self, job: JobView) -> bool:
        return job.account in self.accounts


def scopes(grants: Iterable[GrantView], accounts: Iterable[AccountView],
           nodes: Iterable[NodeView]) -> list[GrantScope]:
    """Each grant's scope, in grant id order (the order overlapping grants are served in)."""
    accounts = tuple(accounts)
    ordered = sorted(nodes, key=lambda n: n.name)
    out = []
    for g in sorted(grants, key=lambda g: g.id):
        named = set(g.nodes)
        gpus = {}
        for n in ordered:
            if not n.schedulable or (named and n.name not in named):
                continue
            mine = tuple(sorted(x.index for x in n.gpus if x.healthy and not x.occupied
                                and (g.gpu_model is None or x.model == g.gpu_model)))
            if mine:
                gpus[n.name] = mine
        out.append(GrantScope(g, subtree(accounts, g.account), gpus))
    return out
