"""The first policy (``config.policy == "fifo"``): priority order, first fit by node name, one
node per job, the hold rule. Called directly; test_schedule.py checks that ``schedule``
dispatches to it."""

from __future__ import annotations

import dataclasses
import random

import pytest

from gpuq.scheduler.policy import Decisions, JobView, NodeView, Start
from gpuq.scheduler.policy.fifo import priority_order, schedule
from tests.policy.builders import A100, H100, make_job, make_node, make_snapshot


def started(decisions: Decisions) -> dict[int, tuple[str, tuple[int, ...]]]:
    return {s.job_id: (s.node, s.gpu_indices) for s in decisions.starts}


class TestPriorityOrder:
    def test_higher_priority_first(self) -> None:
        jobs = (make_job(1, priority=0), make_job(2, priority=5), make_job(3, priority=1))
        assert [j.id for j in priority_order(jobs)] == [2, 3, 1]

    def test_then_earlier_submit(self) -> None:
        jobs = (make_job(1, submitted_at=30.0), make_job(2, submitted_at=10.0),
                make_job(3, submitted_at=20.0))
        assert [j.id for j in priority_order(jobs)] == [2, 3, 1]

    def test_then_lower_id(self) -> None:
        jobs = (make_job(9, submitted_at=5.0), make_job(4, submitted_at=5.0),
                make_job(7, submitted_at=5.0))
        assert [j.id for j in priority_order(jobs)] == [4, 7, 9]

    def test_priority_beats_submit_time(self) -> None:
        jobs = (make_job(1, submitted_at=1.0), make_job(2, priority=1, submitted_at=99.0))
        assert [j.id for j in priority_order(jobs)] == [2, 1]

    def test_schedule_gives_the_last_gpu_to_the_first_in_order(self) -> None:
        node = make_node(gpus=1)
        for winner, jobs in [
            (2, [make_job(1, priority=0), make_job(2, priority=1)]),
            (2, [make_job(1, submitted_at=9.0), make_job(2, submitted_at=3.0)]),
            (1, [make_job(2, submitted_at=3.0), make_job(1, submitted_at=3.0)]),
        ]:
            d = schedule(make_snapshot([node], jobs))
            assert [s.job_id for s in d.starts] == [winner]


class TestPlacement:
    def test_one_job_starts_on_the_lowest_free_gpus(self) -> None:
        d = schedule(make_snapshot([make_node(gpus=8, free={1, 3, 4, 6})],
                                   [make_job(1, gpus=2)]))
        assert d.starts == (Start(1, "n1", (1, 3)),)
        assert d.pending_reasons == {}

    def test_first_fit_by_node_name_not_input_order(self) -> None:
        nodes = [make_node("gpu-c"), make_node("gpu-a"), make_node("gpu-b")]
        d = schedule(make_snapshot(nodes, [make_job(1)]))
        assert d.starts == (Start(1, "gpu-a", (0,)),)

    def test_first_fit_skips_a_node_that_is_full(self) -> None:
        nodes = [make_node("a", gpus=2, free={1}), make_node("b", gpus=2)]
        d = schedule(make_snapshot(nodes, [make_job(1, gpus=2)]))
        assert d.starts == (Start(1, "b", (0, 1)),)

    def test_jobs_pack_onto_the_first_node_in_turn(self) -> None:
        nodes = [make_node("a", gpus=4), make_node("b", gpus=4)]
        jobs = [make_job(1, gpus=3), make_job(2, gpus=1), make_job(3, gpus=2)]
        d = schedule(make_snapshot(nodes, jobs))
        assert started(d) == {1: ("a", (0, 1, 2)), 2: ("a", (3,)), 3: ("b", (0, 1))}

    def test_all_gpus_of_a_job_on_one_node(self) -> None:
        # Four GPUs are free in all, but no node has three.
        nodes = [make_node("a", gpus=2), make_node("b", gpus=2)]
        d = schedule(make_snapshot(nodes, [make_job(1, gpus=3)]))
        assert d.starts == ()
        assert d.pending_reasons[1] == \
            "Resources: no node has 3 free GPUs now (2 nodes: too few GPUs)"

    def test_starts_are_in_priority_order(self) -> None:
        nodes = [make_node("a", gpus=8)]
        jobs = [make_job(1), make_job(2, priority=3), make_job(3, priority=1)]
        d = schedule(make_snapshot(nodes, jobs))
        assert [s.job_id for s in d.starts] == [2, 3, 1]
        assert [s.gpu_indices for s in d.starts] == [(0,), (1,), (2,)]

    def test_a_job_without_gpus_gets_none(self) -> None:
        d = schedule(make_snapshot([make_node(gpus=1, free=())], [make_job(1, gpus=0)]))
        assert d.starts == (Start(1, "n1", ()),)

    def test_nothing_pending_decides_nothing(self) -> None:
        assert schedule(make_snapshot([make_node()], [])) == Decisions()


class TestHealthAndState:
    def test_unhealthy_gpus_are_never_given(self) -> None:
        node = make_node(gpus=4, unhealthy={0, 2})
        d = schedule(make_snapshot([node], [make_job(1), make_job(2), make_job(3)]))
        assert started(d) == {1: ("n1", (1,)), 2: ("n1", (3,))}
        assert d.pending_reasons[3] == \
            "Resources: no node has 1 free GPU now (1 node: too few free GPUs)"

    @pytest.mark.parametrize("state", ["DOWN", "DRAIN", "UNKNOWN"])
    def test_nodes_not_up_are_never_used(self, state: str) -> None:
        d = schedule(make_snapshot([make_node("a", state=state)], [make_job(1)]))
        assert d.starts == ()
        assert d.pending_reasons[1] == \
            f"Resources: no node has 1 free GPU now (1 node: node {state})"

    @pytest.mark.parametrize("state", ["DOWN", "DRAIN", "UNKNOWN"])
    def test_a_node_not_up_is_passed_over_for_the_next(self, state: str) -> None:
        nodes = [make_node("a", state=state), make_node("b")]
        d = schedule(make_snapshot(nodes, [make_job(1)]))
        assert d.starts == (Start(1, "b", (0,)),)

    def test_a_node_not_up_is_not_held(self) -> None:
        # Job 1 could only ever run on the drained node: it holds nothing, so job 2 runs.
        nodes = [make_node("a", gpus=8, state="DRAIN"), make_node("b", gpus=2)]
        d = schedule(make_snapshot(nodes, [make_job(1, gpus=8, priority=9), make_job(2)]))
        assert started(d) == {2: ("b", (0,))}
        assert d.pending_reasons[1] == ("Resources: no node has 8 free GPUs now "
                                        "(1 node: node DRAIN, 1 node: too few GPUs)")


class TestConstraints:
    def test_gpu_model_picks_the_node_with_that_model(self) -> None:
        nodes = [make_node("a", model=A100), make_node("b", model=H100)]
        d = schedule(make_snapshot(nodes, [make_job(1, gpus=2, gpu_model=H100)]))
        assert d.starts == (Start(1, "b", (0, 1)),)

    def test_gpu_model_picks_those_cards_on_a_mixed_node(self) -> None:
        node = make_node(models=[A100, H100, A100, H100])
        d = schedule(make_snapshot([node], [make_job(1, gpus=2, gpu_model=H100),
                                            make_job(2, gpus=2, gpu_model=A100)]))
        assert started(d) == {1: ("n1", (1, 3)), 2: ("n1", (0, 2))}

    def test_no_node_of_the_model(self) -> None:
        nodes = [make_node("a", model=A100), make_node("b", model=A100)]
        d = schedule(make_snapshot(nodes, [make_job(1, gpu_model=H100)]))
        assert d.starts == ()
        assert d.pending_reasons[1] == (f"Resources: no node has 1 free {H100} GPU now "
                                        f"(2 nodes: no {H100} GPU)")

    def test_any_model_takes_any_card(self) -> None:
        node = make_node(models=[H100, A100])
        d = schedule(make_snapshot([node], [make_job(1, gpus=2)]))
        assert d.starts == (Start(1, "n1", (0, 1)),)

    def test_cpu_limit(self) -> None:
        nodes = [make_node("a", cpus=8, free_cpus=2), make_node("b", cpus=8)]
        d = schedule(make_snapshot(nodes, [make_job(1, cpus=4), make_job(2, cpus=2)]))
        assert started(d) == {1: ("b", (0,)), 2: ("a", (0,))}

    def test_cpus_are_used_up_within_a_cycle(self) -> None:
        node = make_node(gpus=8, cpus=8)
        jobs = [make_job(1, cpus=4), make_job(2, cpus=4), make_job(3, cpus=1)]
        d = schedule(make_snapshot([node], jobs))
        assert set(started(d)) == {1, 2}
        assert d.pending_reasons[3] == \
            "Resources: no node has 1 free GPU now (1 node: too few free CPUs)"

    def test_more_cpus_than_any_node_has(self) -> None:
        d = schedule(make_snapshot([make_node(cpus=8)], [make_job(1, cpus=9)]))
        assert d.pending_reasons[1] == \
            "Resources: no node has 1 free GPU now (1 node: too few CPUs)"

    def test_memory_limit(self) -> None:
        nodes = [make_node("a", memory_mib=1000, free_memory_mib=100),
                 make_node("b", memory_mib=1000)]
        d = schedule(make_snapshot(nodes, [make_job(1, memory_mib=600),
                                           make_job(2, memory_mib=600)]))
        assert started(d) == {1: ("b", (0,))}
        assert d.pending_reasons[2] == ("Resources: no node has 1 free GPU now "
                                        "(2 nodes: too little free memory)")

    def test_more_memory_than_any_node_has(self) -> None:
        d = schedule(make_snapshot([make_node(memory_mib=1000)], [make_job(1, memory_mib=1001)]))
        assert d.pending_reasons[1] == \
            "Resources: no node has 1 free GPU now (1 node: too little memory)"

    def test_unknown_cpus_and_memory_do_not_limit(self) -> None:
        d = schedule(make_snapshot([make_node(cpus=0, memory_mib=0)],
                                   [make_job(1, cpus=1000, memory_mib=10**9)]))
        assert d.starts == (Start(1, "n1", (0,)),)


class TestHoldRule:
    def test_a_blocked_job_holds_its_node_from_lower_jobs(self) -> None:
        # Job 1 needs all 8 GPUs; 4 are busy. Job 2 would fit in the other 4 but must wait.
        node = make_node(gpus=8, free={4, 5, 6, 7})
        d = schedule(make_snapshot([node], [make_job(1, gpus=8, priority=5), make_job(2)]))
        assert d.starts == ()
        assert d.pending_reasons == {
            1: "Resources: no node has 8 free GPUs now (1 node: too few free GPUs)",
            2: "Priority: waiting behind job 1",
        }

    def test_lower_jobs_start_on_nodes_the_blocked_job_cannot_use(self) -> None:
        nodes = [make_node("big", gpus=8, free={0}), make_node("small", gpus=2)]
        d = schedule(make_snapshot(nodes, [make_job(1, gpus=8), make_job(2), make_job(3)]))
        assert started(d) == {2: ("small", (0,)), 3: ("small", (1,))}
        assert d.pending_reasons == {
            1: ("Resources: no node has 8 free GPUs now "
                "(1 node: too few GPUs, 1 node: too few free GPUs)"),
        }

    def test_a_node_of_another_model_is_not_held(self) -> None:
        nodes = [make_node("a", model=H100, free=()), make_node("b", model=A100)]
        d = schedule(make_snapshot(nodes, [make_job(1, gpu_model=H100), make_job(2)]))
        assert started(d) == {2: ("b", (0,))}

    def test_a_node_with_too_few_cpus_is_not_held(self) -> None:
        nodes = [make_node("a", cpus=4), make_node("b", cpus=64, free_cpus=0)]
        d = schedule(make_snapshot(nodes, [make_job(1, cpus=32), make_job(2, cpus=1)]))
        assert started(d) == {2: ("a", (0,))}
        assert d.pending_reasons[1] == ("Resources: no node has 1 free GPU now "
                                        "(1 node: too few CPUs, 1 node: too few free CPUs)")

    def test_held_and_full_nodes_are_both_named(self) -> None:
        nodes = [make_node("a", gpus=4, free={3}), make_node("b", gpus=1, free=())]
        d = schedule(make_snapshot(nodes, [make_job(1, gpus=4), make_job(2)]))
        assert d.starts == ()
        assert d.pending_reasons[2] == ("Resources: no node has 1 free GPU now "
                                        "(1 node: held for job 1, 1 node: too few free GPUs)")

    def test_the_first_blocked_job_keeps_the_hold(self) -> None:
        node = make_node(gpus=8, free={0, 1})
        jobs = [make_job(1, gpus=8), make_job(2, gpus=4), make_job(3)]
        d = schedule(make_snapshot([node], jobs))
        assert d.starts == ()
        assert d.pending_reasons[2] == "Priority: waiting behind job 1"
        assert d.pending_reasons[3] == "Priority: waiting behind job 1"

    def test_a_higher_job_that_starts_holds_nothing(self) -> None:
        node = make_node(gpus=4)
        d = schedule(make_snapshot([node], [make_job(1, gpus=3, priority=1), make_job(2)]))
        assert started(d) == {1: ("n1", (0, 1, 2)), 2: ("n1", (3,))}

    def test_higher_jobs_are_not_held_by_lower_ones(self) -> None:
        # Job 2 (lower) is blocked; job 1 (higher) still starts on the same node.
        node = make_node(gpus=4, free={0})
        d = schedule(make_snapshot([node], [make_job(2, gpus=4), make_job(1, priority=1)]))
        assert started(d) == {1: ("n1", (0,))}

    def test_waiting_behind_when_every_usable_node_is_held(self) -> None:
        nodes = [make_node("a", gpus=4, model=A100, free=()),
                 make_node("b", gpus=4, model=H100, free=())]
        jobs = [make_job(1, gpus=4, gpu_model=A100), make_job(2, gpus=4, gpu_model=H100),
                make_job(3)]
        d = schedule(make_snapshot(nodes, jobs))
        assert d.starts == ()
        # Job 1 holds a, job 2 holds b: job 3 could use either, so it waits on priority.
        assert d.pending_reasons[3] == "Priority: waiting behind job 1"


class TestReasons:
    def test_every_pending_job_not_started_has_a_reason(self) -> None:
        node = make_node(gpus=2)
        jobs = [make_job(i) for i in range(1, 6)]
        d = schedule(make_snapshot([node], jobs))
        assert {s.job_id for s in d.starts} == {1, 2}
        assert set(d.pending_reasons) == {3, 4, 5}

    def test_singular_and_plural(self) -> None:
        d = schedule(make_snapshot([make_node(gpus=1, free=())], [make_job(1, gpus=1)]))
        assert d.pending_reasons[1] == \
            "Resources: no node has 1 free GPU now (1 node: too few free GPUs)"
        nodes = [make_node("a", gpus=1, free=()), make_node("b", gpus=2, free=())]
        d = schedule(make_snapshot(nodes, [make_job(1, gpus=2)]))
        assert d.pending_reasons[1] == ("Resources: no node has 2 free GPUs now "
                                        "(1 node: too few GPUs, 1 node: too few free GPUs)")

    def test_reasons_are_counted_per_reason(self) -> None:
        nodes = [make_node(f"n{i}", gpus=1, free=()) for i in range(3)]
        nodes.append(make_node("n9", state="DOWN"))
        d = schedule(make_snapshot(nodes, [make_job(1)]))
        assert d.pending_reasons[1] == ("Resources: no node has 1 free GPU now "
                                        "(1 node: node DOWN, 3 nodes: too few free GPUs)")

    def test_no_nodes_at_all(self) -> None:
        d = schedule(make_snapshot([], [make_job(1)]))
        assert d.starts == ()
        assert d.pending_reasons[1].startswith("Resources")


class TestDeterminism:
    def _cluster(self) -> tuple[list[NodeView], list[JobView]]:
        nodes = [
            make_node("c", gpus=4, free={0, 2, 3}, cpus=16, free_cpus=10),
            make_node("a", gpus=2, model=H100),
            make_node("b", gpus=8, free={1, 2, 5, 6, 7}, unhealthy={5}),
            make_node("d", gpus=8, state="DRAIN"),
        ]
        jobs = [make_job(i, gpus=1 + i % 4, priority=i % 3, submitted_at=float(i // 2),
                         gpu_model=H100 if i % 5 == 0 else None, cpus=1 + i % 6)
                for i in range(1, 16)]
        return nodes, jobs

    def test_same_snapshot_same_decisions(self) -> None:
        nodes, jobs = self._cluster()
        snap = make_snapshot(nodes, jobs)
        first = schedule(snap)
        assert first.starts  # the scenario starts something and blocks something
        assert first.pending_reasons
        for _ in range(3):
            assert schedule(snap) == first

    def test_input_order_does_not_matter(self) -> None:
        nodes, jobs = self._cluster()
        expected = schedule(make_snapshot(nodes, jobs))
        rng = random.Random(1234)  # a fixed seed: the test itself is deterministic
        for _ in range(20):
            rng.shuffle(nodes)
            rng.shuffle(jobs)
            shuffled = [dataclasses.replace(n, gpus=tuple(rng.sample(n.gpus, len(n.gpus))))
                        for n in nodes]
            got = schedule(make_snapshot(shuffled, jobs))
            assert got == expected
            assert list(got.pending_reasons) == list(expected.pending_reasons)


class TestReviewFixes:
    def test_the_most_urgent_holder_is_named(self) -> None:
        # Job 9 has the higher priority and holds node a; job 2 holds b.
        nodes = [make_node("a", gpus=4, model=A100, free=()),
                 make_node("b", gpus=4, model=H100, free=())]
        jobs = [make_job(9, gpus=4, gpu_model=A100, priority=10),
                make_job(2, gpus=4, gpu_model=H100), make_job(3)]
        d = schedule(make_snapshot(nodes, jobs))
        assert d.pending_reasons[3] == "Priority: waiting behind job 9"

    def test_a_node_with_a_dead_gpu_is_not_held_for_a_job_it_cannot_fit(self) -> None:
        # 8 GPUs, one broken, 4 busy: an 8-GPU job can never run there while the GPU is
        # broken, so it must not block the 1-GPU job behind it.
        node = make_node(gpus=8, unhealthy=[7], free=[4, 5, 6, 7])
        d = schedule(make_snapshot([node], [make_job(1, gpus=8), make_job(2, gpus=1)]))
        assert [s.job_id for s in d.starts] == [2]
        assert "too few healthy GPUs" in d.pending_reasons[1]
