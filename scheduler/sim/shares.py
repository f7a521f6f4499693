"""The account tree the policy sees: accounts with shares, users as leaves under them.

A shares file is CSV with the header ``type,name,parent,shares``; one row per account or
user association::

    type,name,parent,shares
    account,physics,,60          # empty parent: a child of root
    account,hep,physics,2
    account,chem,,40
    user,alice,hep,1             # a user row's parent is its account
    user,bob,hep,parent          # "parent": Slurm's FairShare=parent

Shares are whole numbers >= 0, or ``parent``. Accounts and users that the trace uses but
the file does not name get 1 share (accounts under root). Without a file every account is a
child of root and every user a child of its accounts, all with 1 share.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gpuq.scheduler.policy.snapshot import AccountView, AssocView
from gpuq.scheduler.sim.errors import SimInputError, at

ROOT = "root"
HEADER = ("type", "name", "parent", "shares")


#: The policy's own views: the tree the simulator reads is what it hands to the policy.
Account = AccountView
Assoc = AssocView


@dataclass(frozen=True, slots=True)
class Tree:
    accounts: tuple[Account, ...]  # root first, then by name
    assocs: tuple[Assoc, ...]      # by (account, user)

    def top_levels(self) -> dict[str, tuple[str, int]]:
        """Each account -> (the child of root its usage counts toward, that one's shares):
        the level that fair share divides between first. A ``parent``-shares account is not
        a level of its own, so its children stand in for it."""
        by_name = {a.name: a for a in self.accounts}
        out: dict[str, tuple[str, int]] = {}
        for account in self.accounts:
            if account.parent is None:
                continue
            path = [account]
            while path[-1].parent not in (None, ROOT):
                path.append(by_name[path[-1].parent])
            top = next((a for a in reversed(path) if not a.shares_parent), None)
            out[account.name] = (top.name, top.shares) if top else (account.name, 1)
        return out


def _shares(path: Path, line: int, text: str) -> tuple[int, bool]:
    if text == "parent":
        return 1, True
    if text.isdigit():
        return int(text), False
    raise at(path, line, "shares", f"must be a whole number >= 0 or 'parent', got {text!r}")


def load_shares(path: str | Path) -> Tree:
    path = Path(path)
    accounts: dict[str, Account] = {}
    assocs: dict[tuple[str, str], Assoc] = {}
    lines: dict[str, int] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = tuple(h.strip() for h in next(reader, ()))
            if header != HEADER:
                raise at(path, 1, None, f"expected the header {','.join(HEADER)}")
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(HEADER):
                    raise at(path, line, None, f"has {len(row)} fields, expected 4")
                kind, name, parent, text = (c.strip() for c in row)
                if not name:
                    raise at(path, line, "name", "must not be empty")
                shares, inherit = _shares(path, line, text)
                if kind == "account":
                    if name == ROOT or name in accounts:
                        raise at(path, line, "name", f"account {name!r} is already defined"
                                 if name != ROOT else "root is implied; do not list it")
                    accounts[name] = Account(name, parent or ROOT, shares, inherit)
                    lines[name] = line
                elif kind == "user":
                    if not parent:
                        raise at(path, line, "parent", "a user row needs its account")
                    if (name, parent) in assocs:
                        raise at(path, line, "name", f"user {name!r} is already in {parent!r}")
                    assocs[name, parent] = Assoc(name, parent, shares, inherit)
                    lines[f"{name}\0{parent}"] = line
                else:
                    raise at(path, line, "type", f"must be 'account' or 'user', got {kind!r}")
    except (OSError, UnicodeDecodeError) as e:
        raise SimInputError(f"{path}: cannot read the shares file: {e}") from None
    for a in accounts.values():
        if a.parent != ROOT and a.parent not in accounts:
            raise at(path, lines[a.name], "parent", f"no account {a.parent!r}")
        seen = {a.name}
        up = a.parent
        while up != ROOT:
            if up in seen:
                raise at(path, lines[a.name], "parent", f"account {a.name!r} is in a cycle")
            seen.add(up)
            up = accounts[up].parent
    for (user, account), _ in assocs.items():
        if account not in accounts:
            raise at(path, lines[f"{user}\0{account}"], "parent", f"no account {account!r}")
    return _tree(accounts, assocs)


def complete(tree: Tree | None, used: Iterable[tuple[str, str]]) -> Tree:
    """The tree plus every (user, account) the trace uses, with 1 share where missing."""
    accounts = {a.name: a for a in tree.accounts if a.parent is not None} if tree else {}
    assocs = {(s.user, s.account): s for s in tree.assocs} if tree else {}
    for user, account in used:
        if account not in accounts:
            accounts[account] = Account(account, ROOT)
        if (user, account) not in assocs:
            assocs[user, account] = Assoc(user, account)
    return _tree(accounts, assocs)


def _tree(accounts: dict[str, Account], assocs: dict[tuple[str, str], Assoc]) -> Tree:
    return Tree(
        accounts=(Account(ROOT, None), *sorted(accounts.values(), key=lambda a: a.name)),
        assocs=tuple(sorted(assocs.values(), key=lambda s: (s.account, s.user))),
    )
