"""Grants, the pure part: a grant's state at a moment, and the exact overcommit check.

No database and no clock: the services hand in rows (or anything shaped like them) and
the time. ``scheduler/services/grants.py`` is the database side.

The overcommit check: reservation grants may overlap in time as long as, at every moment,
the GPUs the cluster has can be split among the active reservations so that each gets
``gpus`` GPUs it may use (of its ``gpu_model``, on its ``nodes``). That is a bipartite
b-matching (reservations -> groups of identical GPUs); it exists iff a max-flow saturates
every reservation (Hall's condition). The set of overlapping reservations only grows at a
start, and a subset of a feasible set is feasible, so checking at every start inside the
window is checking at every moment.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

#: Grant states, in the order a grant goes through them (or straight to revoked).
SCHEDULED, ACTIVE, EXPIRED, REVOKED = "scheduled", "active", "expired", "revoked"
#: States a grant never leaves.
FINAL = frozenset({EXPIRED, REVOKED})


class GrantLike(Protocol):
    start_at: datetime
    end_at: datetime
    revoked_at: datetime | None
    exhausted_at: datetime | None
    gpu_hours: float | None
    state_reason: str


def iso(t: datetime) -> str:
    """A moment for people and messages: 2027-01-03T00:00Z (seconds when not zero)."""
    fmt = "%Y-%m-%dT%H:%MZ" if t.second == 0 and t.microsecond == 0 else "%Y-%m-%dT%H:%M:%SZ"
    return t.strftime(fmt)


def hours(h: float) -> str:
    return f"{h:g}"


def state_at(grant: GrantLike, now: datetime) -> tuple[str, str]:
    """(state, reason) of ``grant`` at ``now``: revoked if revoked; expired once its end is
    reached or its budget used up; active from its start; else scheduled."""
    if grant.revoked_at is not None:
        reason = grant.state_reason if grant.state_reason.startswith("revoked") else "revoked"
        return REVOKED, reason
    if now >= grant.end_at:
        return EXPIRED, "end reached"
    if grant.exhausted_at is not None:
        budget = hours(grant.gpu_hours) if grant.gpu_hours is not None else "?"
        return EXPIRED, f"budget of {budget} billed GPU-hours used up"
    if grant.start_at <= now:
        return ACTIVE, f"in its window until {iso(grant.end_at)}"
    return SCHEDULED, f"starts at {iso(grant.start_at)}"


# --- the overcommit check ---------------------------------------------------------------


@dataclass(frozen=True)
class Reservation:
    """A reservation grant's demand: ``gpus`` GPUs of ``model`` (None: any) on ``nodes``
    (empty: any), over [start, end)."""

    id: int | None  # None: the grant being created
    gpus: int
    start: datetime
    end: datetime
    model: str | None = None
    nodes: tuple[str, ...] = ()

    def may_use(self, node: str, model: str) -> bool:
        return (self.model is None or self.model == model) and \
            (not self.nodes or node in self.nodes)


#: The cluster's GPUs: how many of each model each node has.
Supply = Mapping[tuple[str, str], int]


@dataclass(frozen=True)
class Overcommit:
    """Why a reservation does not fit: at ``moment``, the grants in ``conflicts`` and the
    new one need ``needed`` GPUs of the groups they may use, which have only ``available``."""

    moment: datetime
    needed: int
    available: int
    conflicts: tuple[int, ...]
    models: tuple[str, ...]
    nodes: tuple[str, ...]

    def message(self, new: Reservation) -> str:
        what = "/".join(self.models) or "any model"
        where = ", ".join(self.nodes) or "no node"
        ids = ", ".join(str(i) for i in self.conflicts)
        if self.conflicts:
            tail = (f"; together with grants {ids} it would need {self.needed} GPUs of {what} "
                    f"on {where} at {iso(self.moment)}, and those nodes have "
                    f"{self.available}: conflicts with grants {ids}. Shorten the window, "
                    f"ask for fewer GPUs, or revoke or shorten one of them")
        else:
            tail = (f"; at {iso(self.moment)} only {self.available} GPUs of {what} on {where} "
                    f"can be reserved. Ask for fewer GPUs")
        return f"the grant would reserve {new.gpus} GPUs of {new.model or 'any model'}" + tail


def _overlapping(res: Reservation, at: datetime) -> bool:
    return res.start <= at < res.end


def moments(new: Reservation, others: Iterable[Reservation]) -> list[datetime]:
    """The moments of ``new``'s window where the set of overlapping reservations changes
    by a start (where it is largest)."""
    points = {new.start} | {o.start for o in others if new.start < o.start < new.end}
    return sorted(points)


def find_overcommit(new: Reservation, others: Sequence[Reservation],
                    supply: Supply) -> Overcommit | None:
    """The first moment in ``new``'s window where it cannot get its GPUs on top of the
    other reservations active then (None: it fits everywhere). Reservations that already
    do not fit among themselves (a node lost GPUs) do not count against ``new`` beyond
    what they really take: it is refused only where its own GPUs are missing."""
    for moment in moments(new, others):
        active = [o for o in others if _overlapping(o, moment)]
        found = _check(new, active, supply)
        if found is not None:
            needed, available, conflicts, groups = found
            return Overcommit(moment=moment, needed=needed, available=available,
                              conflicts=conflicts,
                              models=tuple(sorted({m for _, m in groups})),
                              nodes=tuple(sorted({n for n, _ in groups})))
    return None


def _check(new: Reservation, active: Sequence[Reservation], supply: Supply,
           ) -> tuple[int, int, tuple[int, ...], list[tuple[str, str]]] | None:
    groups = sorted(g for g, n in supply.items() if n > 0)
    flow = _Flow(active, groups, supply)
    flow.saturate(range(len(active)))
    flow.add(new)
    got = flow.saturate([len(active)])
    if got >= new.gpus:
        return None
    # Hall's violator: what the new grant can reach in the residual graph are the grants
    # that hold the GPUs it could use, and those GPUs.
    grants, reach = flow.reachable_from(len(active))
    conflicts = tuple(sorted(i for i in (active[g].id for g in grants if g < len(active))
                             if i is not None))
    needed = sum(flow.demand[g] for g in grants)
    available = sum(supply[groups[k]] for k in reach)
    return needed, available, conflicts, [groups[k] for k in reach]


class _Flow:
    """A small max-flow: source -> reservation (its gpus) -> GPU group -> sink (its size)."""

    def __init__(self, active: Sequence[Reservation], groups: list[tuple[str, str]],
                 supply: Supply) -> None:
        self.groups = groups
        self.cap = [supply[g] for g in groups]
        self.used = [0] * len(groups)
        self.demand: list[int] = []
        self.edges: list[list[int]] = []  # reservation -> group indices
        self.flow: list[dict[int, int]] = []  # reservation -> {group: GPUs}
        for res in active:
            self.add(res)

    def add(self, res: Reservation) -> None:
        self.demand.append(res.gpus)
        self.edges.append([k for k, (node, model) in enumerate(self.groups)
                           if res.may_use(node, model)])
        self.flow.append({})

    def saturate(self, sources: Iterable[int]) -> int:
        """Push as much of each source's demand as augmenting paths allow; returns what
        the last source got."""
        got = 0
        for r in sources:
            got = 0
            while got < self.demand[r]:
                pushed = self._augment(r, self.demand[r] - got)
                if pushed == 0:
                    break
                got += pushed
        return got

    def _augment(self, start: int, want: int) -> int:
        # BFS over reservations; a group with spare room ends the path.
        parent: dict[tuple[str, int], tuple[str, int] | None] = {("r", start): None}
        queue: deque[int] = deque([start])
        end: int | None = None
        while queue and end is None:
            r = queue.popleft()
            for k in self.edges[r]:
                if ("g", k) in parent:
                    continue
                parent[("g", k)] = ("r", r)
                if self.used[k] < self.cap[k]:
                    end = k
                    break
                for r2, f in enumerate(self.flow):  # who holds group k: reroute them
                    if f.get(k, 0) > 0 and ("r", r2) not in parent:
                        parent[("r", r2)] = ("g", k)
                        queue.append(r2)
        if end is None:
            return 0
        # Bottleneck along the path.
        amount = min(want, self.cap[end] - self.used[end])
        node: tuple[str, int] = ("g", end)
        while True:
            prev = parent[node]
            if prev is None:
                break
            if node[0] == "r":  # prev is a group that node (a reservation) gives up
                amount = min(amount, self.flow[node[1]].get(prev[1], 0))
            node = prev
        node = ("g", end)
        self.used[end] += amount
        while True:
            prev = parent[node]
            if prev is None:
                break
            if node[0] == "g":  # prev (a reservation) takes more of group node
                f = self.flow[prev[1]]
                f[node[1]] = f.get(node[1], 0) + amount
            else:  # node (a reservation) gives up group prev
                f = self.flow[node[1]]
                f[prev[1]] -= amount
            node = prev
        return amount

    def reachable_from(self, start: int) -> tuple[set[int], set[int]]:
        grants, groups = {start}, set()
        queue: deque[int] = deque([start])
        while queue:
            r = queue.popleft()
            for k in self.edges[r]:
                if k in groups:
                    continue
                groups.add(k)
                for r2, f in enumerate(self.flow):
                    if f.get(k, 0) > 0 and r2 not in grants:
                        grants.add(r2)
                        queue.append(r2)
        return grants, groups


def eligible_gpus(supply: Supply, *, model: str | None, nodes: Sequence[str]) -> int:
    """GPUs a reservation of ``model`` on ``nodes`` could ever get (nothing else held)."""
    probe = Reservation(id=None, gpus=0, start=datetime.min, end=datetime.max, model=model,
                        nodes=tuple(nodes))
    return sum(n for (node, m), n in supply.items() if probe.may_use(node, m))
