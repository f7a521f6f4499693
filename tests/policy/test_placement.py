"""Best fit: the node with the fewest free usable GPUs of the job's model that fits, by name
among equals; the job's GPUs are that node's lowest free indices."""

from __future__ import annotations

from gpuq.scheduler.policy import Decisions, GpuView, NodeView, Start, schedule
from gpuq.scheduler.policy.placement import Cluster
from tests.policy.builders import A100, H100, make_job, make_node, make_snapshot


def run(nodes, jobs, policy: str = "fairshare") -> Decisions:  # noqa: ANN001
    return schedule(make_snapshot(nodes, jobs, policy=policy))


def placed(d: Decisions) -> dict[int, tuple[str, tuple[int, ...]]]:
    return {s.job_id: (s.node, s.gpu_indices) for s in d.starts}


class TestBestFit:
    def test_the_fullest_node_that_fits(self) -> None:
        nodes = [make_node("a", free=range(8)), make_node("b", free={1, 4, 6}),
                 make_node("c", free={2, 5})]
        assert run(nodes, [make_job(1, gpus=2)]).starts == (Start(1, "c", (2, 5)),)

    def test_a_node_with_too_few_is_skipped(self) -> None:
        nodes = [make_node("a", free={0}), make_node("b", free={0, 1, 2})]
        assert run(nodes, [make_job(1, gpus=2)]).starts == (Start(1, "b", (0, 1)),)

    def test_ties_go_to_the_first_name(self) -> None:
        nodes = [make_node("c", free={0, 1}), make_node("a", free={3, 4}),
                 make_node("b", free={5, 6})]
        assert run(nodes, [make_job(1, gpus=2)]).starts == (Start(1, "a", (3, 4)),)

    def test_packing_keeps_a_whole_node_for_a_big_job(self) -> None:
        # First fit by name would put the 4-GPU job on "a" and leave no node for the 8.
        nodes = [make_node("a", gpus=8), make_node("b", gpus=8, free={0, 1, 2, 3})]
        d = run(nodes, [make_job(1, gpus=4), make_job(2, gpus=8)])
        assert placed(d) == {1: ("b", (0, 1, 2, 3)), 2: ("a", tuple(range(8)))}

    def test_counts_only_the_wanted_models_gpus(self) -> None:
        # "mixed" has 3 free GPUs but only 1 H100; "h" has 2 free H100s.
        nodes = [make_node("h", gpus=4, model=H100, free={0, 1}),
                 make_node("mixed", models=[A100, A100, H100, H100], free={0, 1, 2})]
        d = run(nodes, [make_job(1, gpu_model=H100)])
        assert d.starts == (Start(1, "mixed", (2,)),)

    def test_cpus_and_memory_are_honoured(self) -> None:
        nodes = [make_node("a", free={0}, cpus=8, free_cpus=1),
                 make_node("b", free={0, 1}, memory_mib=1000, free_memory_mib=10),
                 make_node("c", free={0, 1, 2})]
        d = run(nodes, [make_job(1, cpus=2, memory_mib=100)])
        assert d.starts == (Start(1, "c", (0,)),)

    def test_unhealthy_and_occupied_gpus_are_not_free(self) -> None:
        gpus = (GpuView(0, A100, healthy=False), GpuView(1, A100),
                GpuView(2, A100, occupied=True), GpuView(3, A100))
        node = NodeView("a", gpus, free_gpus=frozenset(range(4)))
        assert run([node], [make_job(1, gpus=2)]).starts == (Start(1, "a", (1, 3)),)

    def test_a_job_without_gpus_goes_to_the_fullest_node(self) -> None:
        nodes = [make_node("a"), make_node("b", free=())]
        assert run(nodes, [make_job(1, gpus=0)]).starts == (Start(1, "b", ()),)

    def test_jobs_in_turn_fill_the_fullest_first(self) -> None:
        nodes = [make_node("a", gpus=4), make_node("b", gpus=4, free={2, 3})]
        d = run(nodes, [make_job(1), make_job(2), make_job(3)])
        assert placed(d) == {1: ("b", (2,)), 2: ("b", (3,)), 3: ("a", (0,))}


class TestCluster:
    def test_buckets_follow_allocations(self) -> None:
        c = Cluster([make_node("a", gpus=4), make_node("b", gpus=4, free={3})])
        job = make_job(1)
        fit = c.static_fit(job)
        assert c.best_fit(job, fit) == 1
        c.allocate(1, job, (3,))
        assert c.best_fit(job, fit) == 0
        c.allocate(0, make_job(2, gpus=3), (0, 1, 2))
        assert c.best_fit(job, fit) == 0 and c.free_count(0, None) == 1

    def test_excluded_nodes_are_not_offered(self) -> None:
        c = Cluster([make_node("a"), make_node("b")])
        job = make_job(1)
        fit = c.static_fit(job)
        c.best_fit(job, fit)
        c.exclude(0)
        assert c.best_fit(job, fit) == 1
        c.exclude(1)
        assert c.best_fit(job, fit) is None

    def test_static_answers_are_shared_by_nodes_alike(self) -> None:
        c = Cluster([make_node(f"n{i}") for i in range(5)] + [make_node("x", state="DOWN")])
        assert len(c.reps) == 2
        fit = c.static_fit(make_job(1))
        assert fit.ok == [True, False] and fit.reason == [None, "node DOWN"]

    def test_a_mixed_node_can_give_other_models_first(self) -> None:
        c = Cluster([make_node("m", models=[A100, H100, A100, H100])])
        assert c.choose_gpus(0, make_job(1, gpus=2)) == (0, 1)
        assert c.choose_gpus(0, make_job(1, gpus=2), avoid_model=A100) == (1, 3)
        assert c.choose_gpus(0, make_job(1, gpus=3), avoid_model=A100) == (0, 1, 3)
