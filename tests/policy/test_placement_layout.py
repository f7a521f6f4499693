"""The cluster's layout (what the nodes are: their order by name, classes, static filter
answers) is cached across cycles, found by the identity of each node's GPU tuple, as the
simulator hands it over (its node views change only in what is free). A cycle on a cached
layout decides exactly as on a fresh one, however the free resources moved; an input that
only looks alike gets a layout of its own; the cache stays small."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuq.scheduler.policy import NodeView, Snapshot, schedule
from gpuq.scheduler.policy import placement as placement_mod
from gpuq.scheduler.policy.placement import Cluster
from tests.policy.builders import make_node
from tests.policy.test_invariants import clusters


def _fresh(snap: Snapshot):  # type: ignore[no-untyped-def]
    placement_mod._LAYOUTS.clear()
    return schedule(snap)


def _state(c: Cluster) -> tuple[object, ...]:
    # A class's representative may be an earlier cycle's view of its node: the static
    # filters read only what a node is.
    reps = [(v.name, v.state, v.gpus, v.cpus, v.memory_mib) for v in c.reps]
    return (c.views, c.names, c.index, c.up, c.cpus, c.mem, c.free_cpus, c.free_mem,
            c.model_of, c.usable, c.cls, reps, c._sizes, c._caps)


@settings(max_examples=150, deadline=None)
@given(clusters(), st.data())
def test_a_cached_layout_decides_as_a_fresh_one(snap: Snapshot, data: st.DataObject) -> None:
    want = _fresh(snap)
    assert schedule(snap) == want  # the layout found again, static answers cached
    # The same nodes (the same GPU tuples) with other free GPUs, CPUs and memory.
    moved = []
    for n in snap.nodes:
        free = data.draw(st.sets(st.sampled_from([g.index for g in n.gpus]))
                         if n.gpus else st.just(set()))
        moved.append(dataclasses.replace(
            n, free_gpus=frozenset(free),
            free_cpus=data.draw(st.integers(0, n.cpus)),
            free_memory_mib=data.draw(st.integers(0, n.memory_mib))))
    later = dataclasses.replace(snap, nodes=tuple(moved))
    got = schedule(later)  # on the cached layout
    assert _state(Cluster(later.nodes)) == _state(_cluster_fresh(later.nodes))
    assert got == _fresh(later)


def _cluster_fresh(nodes: tuple[NodeView, ...]) -> Cluster:
    placement_mod._LAYOUTS.clear()
    return Cluster(nodes)


def test_layouts_are_found_by_the_identity_of_the_gpu_tuples() -> None:
    placement_mod._LAYOUTS.clear()
    a = (make_node("b", gpus=4, free={0}), make_node("a", gpus=2))
    first = Cluster(a).layout
    again = (dataclasses.replace(a[0], free_gpus=frozenset({1, 2})), a[1])
    assert Cluster(again).layout is first
    assert Cluster(again).names == ["a", "b"]
    # Equal but new GPU tuples (a fresh snapshot of the real scheduler): a new layout.
    alike = (make_node("b", gpus=4, free={0}), make_node("a", gpus=2))
    assert Cluster(alike).layout is not first
    # A static field that changed (state, CPUs, memory, name): a new layout.
    drained = (dataclasses.replace(a[0], state="DRAIN"), a[1])
    assert Cluster(drained).layout is not first
    assert Cluster(drained).up == [True, False]
    for k in range(10):
        Cluster((make_node(f"n{k}"),))
    assert len(placement_mod._LAYOUTS) <= placement_mod._LAYOUTS_MAX
