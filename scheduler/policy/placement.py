"""Best-fit placement over the free resources of one cycle.

A job goes to the node with the fewest free usable GPUs (of its model) that fits it, ties
broken by node name; its GPUs are that node's lowest free indices. Packing keeps whole
nodes free for big jobs. The filters are the ones of ``filters.py``.

``Cluster`` is the mutable state of one cycle. It keeps every UP node in a bucket per free
usable GPU count (per wanted model), so a best fit is a walk up from the bucket of the
job's GPU count, and it evaluates the static filters once per node *class* (nodes alike in
state, GPUs, CPUs and memory), not once per node.
"""

from __future__ import annotations

from bisect import insort
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gpuq.scheduler.policy.filters import CAPACITY, STATIC, first_failure
from gpuq.scheduler.policy.snapshot import GpuView, JobView, NodeView

#: What the placement of a job depends on: (gpus, gpu model, cpus, memory MiB).
Shape = tuple[int, str | None, int, int]


def shape_of(job: JobView) -> Shape:
    return (job.gpus, job.gpu_model, job.cpus, job.memory_mib)


@dataclass(slots=True)
class StaticFit:
    """The static filters' answer for one shape, per node class."""

    ok: list[bool]
    #: First static failure (None when ok).
    reason: list[str | None]
    #: Whether a node of the class could run it were it UP (for NodeDown).
    capable: list[bool]


@dataclass(slots=True)
class Survey:
    """Why a job fits nowhere now: counts per reason, and the nodes it could run on."""

    misses: Counter[str]
    #: Nodes passing the static filters (UP, big enough): it could run there later.
    eligible: list[int]
    #: State -> count of nodes that could run it but are not UP.
    down: Counter[str]
    #: It fits now on some node, but that node is held or reserved for another job.
    blocked: bool


@dataclass(slots=True)
class Layout:
    """What a cycle's nodes *are*, not what is free on them: the nodes by name, their
    classes and the static filters' answers per job shape (filled as shapes come). Read
    only, but for ``static``, a cache of a pure function of the classes."""

    #: Per node, in the order given: (name, state, gpus, cpus, memory MiB).
    given: list[tuple[str, str, tuple[GpuView, ...], int, int]]
    #: The positions of the given nodes, by name.
    order: list[int]
    names: list[str]
    index: dict[str, int]
    up: list[bool]
    cpus: list[int]
    mem: list[int]
    model_of: list[dict[int, str]]
    #: Per node: (index, model) of its healthy GPUs that no foreign process holds, by index;
    #: and their one model (None when they are of several, or none).
    healthy: list[list[tuple[int, str]]]
    one_model: list[str | None]
    cls: list[int]
    reps: list[NodeView]
    sizes: list[int]
    caps: list[tuple[bool, int, int, dict[str | None, int], dict[str | None, int]]]
    static: dict[Shape, StaticFit]


def _layout_of(nodes: tuple[NodeView, ...] | list[NodeView]) -> Layout:
    order = sorted(range(len(nodes)), key=lambda k: nodes[k].name)
    views = [nodes[k] for k in order]
    classes: dict[tuple[object, ...], int] = {}
    cls: list[int] = []
    reps: list[NodeView] = []
    sizes: list[int] = []
    healthy: list[list[tuple[int, str]]] = []
    one_model: list[str | None] = []
    for v in views:
        mine = sorted((g.index, g.model) for g in v.gpus if g.healthy and not g.occupied)
        healthy.append(mine)
        models = {m for _, m in mine}
        one_model.append(models.pop() if len(models) == 1 else None)
        # The static filters read only these: nodes alike in them share the answers.
        key = (v.state, v.gpus, v.cpus, v.memory_mib)
        c = classes.get(key)
        if c is None:
            c = classes[key] = len(reps)
            reps.append(v)
            sizes.append(0)
        sizes[c] += 1
        cls.append(c)
    #: Per class: (UP, CPUs, memory, GPUs installed per model, healthy GPUs per model);
    #: model None counts every GPU.
    caps = []
    for v in reps:
        installed: dict[str | None, int] = {None: len(v.gpus)}
        healthy_n: dict[str | None, int] = {None: sum(1 for g in v.gpus if g.healthy)}
        for g in v.gpus:
            installed[g.model] = installed.get(g.model, 0) + 1
            healthy_n[g.model] = healthy_n.get(g.model, 0) + (1 if g.healthy else 0)
        caps.append((v.schedulable, v.cpus, v.memory_mib, installed, healthy_n))
    names = [v.name for v in views]
    return Layout(
        given=[(v.name, v.state, v.gpus, v.cpus, v.memory_mib) for v in nodes],
        order=order, names=names, index={name: i for i, name in enumerate(names)},
        up=[v.schedulable for v in views], cpus=[v.cpus for v in views],
        mem=[v.memory_mib for v in views],
        model_of=[{g.index: g.model for g in v.gpus} for v in views],
        healthy=healthy, one_model=one_model, cls=cls, reps=reps, sizes=sizes, caps=caps,
        static={})


#: The last few layouts, newest last. The simulator hands every cycle node views that share
#: their (immutable) ``gpus`` tuples with the last cycle's where only free resources changed,
#: so a layout is found by identity of those tuples (and equality of the other static
#: fields); any other input builds a new one. A cache of a pure function of immutable input:
#: decisions do not depend on it.
_LAYOUTS: list[Layout] = []
_LAYOUTS_MAX = 4


def layout(nodes: tuple[NodeView, ...] | list[NodeView]) -> Layout:
    """The (cached) layout of ``nodes``."""
    n = len(nodes)
    for i in range(len(_LAYOUTS) - 1, -1, -1):
        lay = _LAYOUTS[i]
        given = lay.given
        if len(given) != n:
            continue
        for v, (name, state, gpus, cpus, mem) in zip(nodes, given, strict=True):
            if v.gpus is not gpus or v.name != name or v.state != state or v.cpus != cpus \
                    or v.memory_mib != mem:
                break
        else:
            return lay
    lay = _layout_of(nodes)
    _LAYOUTS[:] = [*_LAYOUTS[-(_LAYOUTS_MAX - 1):], lay]
    return lay


class Cluster:
    def __init__(self, nodes: Iterable[NodeView]) -> None:
        given = nodes if isinstance(nodes, tuple | list) else tuple(nodes)
        lay = layout(given)
        self.layout = lay
        self.views = views = [given[k] for k in lay.order]
        self.names = lay.names
        self.index = lay.index
        self.up = lay.up
        self.cpus = lay.cpus
        self.mem = lay.mem
        self.free_cpus = [v.free_cpus for v in views]
        self.free_mem = [v.free_memory_mib for v in views]
        self.model_of = lay.model_of
        #: Node -> model (None: any) -> free usable GPU indices, ascending.
        self.usable: list[dict[str | None, list[int]]] = []
        for v, healthy, model in zip(views, lay.healthy, lay.one_model, strict=True):
            free = v.free_gpus
            if model is not None:
                mine = [i for i, _ in healthy if i in free]
                self.usable.append({None: mine, model: mine[:]} if mine else {None: mine})
                continue
            usable = [(i, m) for i, m in healthy if i in free]
            by_model: dict[str | None, list[int]] = {None: [i for i, _ in usable]}
            for i, m in usable:
                by_model.setdefault(m, []).append(i)
            self.usable.append(by_model)
        self.cls = lay.cls
        self.reps = lay.reps
        self._sizes = lay.sizes
        self._caps = lay.caps
        self._excluded = [False] * len(views)
        self._buckets: dict[str | None, list[list[int]]] = {}
        self._static = lay.static

    # --- what a node is ---------------------------------------------------------------------

    def static_fit(self, job: JobView) -> StaticFit:
        shape = shape_of(job)
        fit = self._static.get(shape)
        if fit is None:
            reason = [first_failure(STATIC, rep, job) for rep in self.reps]
            fit = StaticFit(ok=[r is None for r in reason], reason=reason,
                            capable=[first_failure(CAPACITY, rep, job) is None
                                     for rep in self.reps])
            self._static[shape] = fit
        return fit

    def eligible_classes(self, job: JobView) -> list[int]:
        """The classes whose nodes pass the static filters for the job: ``filters.STATIC``
        by plain comparisons, for the many shapes that only need a yes or no."""
        g, model, cpus, mem = job.gpus, job.gpu_model, job.cpus, job.memory_mib
        return [c for c, (up, c_cpus, c_mem, installed, healthy) in enumerate(self._caps)
                if up and (model is None or installed.get(model, 0) > 0)
                and healthy.get(model, 0) >= g and (c_cpus == 0 or c_cpus >= cpus)
                and (c_mem == 0 or c_mem >= mem)]

    def static_survey(self, job: JobView) -> Survey:
        """``survey`` for a job that no UP node can take: the static reasons only, counted
        per class (no node-by-node walk)."""
        fit = self.static_fit(job)
        misses: Counter[str] = Counter()
        down: Counter[str] = Counter()
        for c, why in enumerate(fit.reason):
            if why is None:
                continue
            misses[why] += self._sizes[c]
            if not self._caps[c][0] and fit.capable[c]:
                down[why] += self._sizes[c]
        return Survey(misses, [], down, False)

    # --- what is free now -------------------------------------------------------------------

    def free_count(self, i: int, model: str | None) -> int:
        return len(self.usable[i].get(model, ()))

    def fits_now(self, i: int, job: JobView) -> bool:
        """Whether node ``i`` has the job's GPUs, CPUs and memory free (not its static fit)."""
        return (len(self.usable[i].get(job.gpu_model, ())) >= job.gpus
                and (not self.cpus[i] or self.free_cpus[i] >= job.cpus)
                and (not self.mem[i] or self.free_mem[i] >= job.memory_mib))

    def dynamic_failure(self, i: int, job: JobView) -> str | None:
        """``filters.DYNAMIC`` on this cycle's free resources."""
        if len(self.usable[i].get(job.gpu_model, ())) < job.gpus:
            return "too few free GPUs"
        if self.cpus[i] and self.free_cpus[i] < job.cpus:
            return "too few free CPUs"
        if self.mem[i] and self.free_mem[i] < job.memory_mib:
            return "too little free memory"
        return None

    def _bucket_list(self, model: str | None) -> list[list[int]]:
        buckets = self._buckets.get(model)
        if buckets is None:
            counts = [(self.free_count(i, model), i) for i in range(len(self.views))
                      if self.up[i] and not self._excluded[i]]
            buckets = [[] for _ in range(max((c for c, _ in counts), default=0) + 1)]
            for c, i in counts:  # ascending i: each bucket is in name order
                buckets[c].append(i)
            self._buckets[model] = buckets
        return buckets

    def best_fit(self, job: JobView, fit: StaticFit,
                 allow: Callable[[int], bool] | None = None) -> int | None:
        """The UP node with the fewest free GPUs of the job's model that fits it now (and that
        ``allow`` accepts), by name among equals; None when there is none."""
        buckets = self._bucket_list(job.gpu_model)
        ok, cls = fit.ok, self.cls
        cpus, mem, free_cpus, free_mem = self.cpus, self.mem, self.free_cpus, self.free_mem
        want_cpus, want_mem = job.cpus, job.memory_mib
        for c in range(max(job.gpus, 0), len(buckets)):
            for i in buckets[c]:
                if not ok[cls[i]]:
                    continue
                if cpus[i] and free_cpus[i] < want_cpus:
                    continue
                if mem[i] and free_mem[i] < want_mem:
                    continue
                if allow is not None and not allow(i):
                    continue
                return i
        return None

    def choose_gpus(self, i: int, job: JobView, avoid_model: str | None = None) -> tuple[int, ...]:
        """The job's GPUs on node ``i``: the lowest free indices of its model; with
        ``avoid_model``, GPUs of other models first (a job of any model on a mixed node)."""
        free = self.usable[i].get(job.gpu_model, [])
        if avoid_model is None or job.gpu_model is not None:
            return tuple(free[: job.gpus])
        model = self.model_of[i]
        others = [g for g in free if model[g] != avoid_model]
        return tuple(sorted((others + [g for g in free if model[g] == avoid_model])[: job.gpus]))

    def allocate(self, i: int, job: JobView, gpus: tuple[int, ...]) -> None:
        self.free_cpus[i] -= job.cpus
        self.free_mem[i] -= job.memory_mib
        if not gpus:
            return
        usable = self.usable[i]
        model = self.model_of[i]
        before = {m: len(lst) for m, lst in usable.items()}
        taken = set(gpus)
        for m in {None, *(model[g] for g in gpus)}:
            usable[m] = [g for g in usable[m] if g not in taken]
        if self._excluded[i] or not self.up[i]:
            return
        for m, buckets in self._buckets.items():
            old = before.get(m, 0)
            new = len(usable.get(m, ()))
            if new != old:
                buckets[old].remove(i)
                insort(buckets[new], i)

    def exclude(self, i: int) -> None:
        """Take node ``i`` out of every later best fit (held for a blocked job)."""
        if self._excluded[i]:
            return
        self._excluded[i] = True
        if not self.up[i]:
            return
        for m, buckets in self._buckets.items():
            buckets[self.free_count(i, m)].remove(i)

    # --- why not ----------------------------------------------------------------------------

    def survey(self, job: JobView, fit: StaticFit,
               held_by: list[int | None] | None = None,
               allow: Callable[[int], bool] | None = None,
               blocked_why: str = "") -> Survey:
        """Every node's reason not to take the job now: held nodes (``held_by``) count as
        ``held for job N``; a node it fits that ``allow`` refuses counts as ``blocked_why``."""
        misses: Counter[str] = Counter()
        down: Counter[str] = Counter()
        eligible: list[int] = []
        reason, capable, up = fit.reason, fit.capable, self.up
        model, gpus, cpus, mem = job.gpu_model, job.gpus, job.cpus, job.memory_mib
        few_gpus = few_cpus = few_mem = refused = 0
        for i, (c, usable, n_cpus, n_free_cpus, n_mem, n_free_mem) in enumerate(zip(
                self.cls, self.usable, self.cpus, self.free_cpus, self.mem, self.free_mem,
                strict=True)):
            why = reason[c]
            if why is not None:
                misses[why] += 1
                if capable[c] and not up[i]:
                    down[why] += 1
                continue
            eligible.append(i)
            if held_by is not None and held_by[i] is not None:
                misses[f"held for job {held_by[i]}"] += 1
            elif len(usable.get(model, ())) < gpus:  # filters.DYNAMIC, inline
                few_gpus += 1
            elif n_cpus and n_free_cpus < cpus:
                few_cpus += 1
            elif n_mem and n_free_mem < mem:
                few_mem += 1
            elif allow is not None and not allow(i):
                refused += 1
        for why, n in (("too few free GPUs", few_gpus), ("too few free CPUs", few_cpus),
                       ("too little free memory", few_mem), (blocked_why, refused)):
            if n:
                misses[why] += n
        return Survey(misses, eligible, down, refused > 0)
