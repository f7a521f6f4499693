"""``schedule``: the policy that ``config.policy`` names, and what the fair-share policies
decide and say (order, priorities, reasons)."""

from __future__ import annotations

import pytest

from gpuq.scheduler.policy import AccountView, AssocView, PolicyConfig, Snapshot, fifo, schedule
from tests.policy.builders import A100, H100, make_job, make_node, make_running, make_snapshot

NOW = 1_000_000.0
BOTH = ["fairshare", "fairshare+backfill"]


def test_the_default_policy_is_fairshare_with_backfill() -> None:
    assert PolicyConfig().policy == "fairshare+backfill"
    assert Snapshot(now=0, nodes=(), pending=()).config == PolicyConfig()


def test_fifo_is_dispatched_to_fifo() -> None:
    nodes = [make_node("a", gpus=4, free={0}), make_node("b", gpus=2)]
    jobs = [make_job(1, gpus=2, priority=3), make_job(2), make_job(3, gpus=4)]
    snap = make_snapshot(nodes, jobs, policy="fifo")
    assert schedule(snap) == fifo.schedule(snap)
    assert schedule(snap).order == (1, 2, 3)


@pytest.mark.parametrize("policy", BOTH)
def test_nothing_pending_decides_nothing(policy: str) -> None:
    d = schedule(make_snapshot([make_node()], [], policy=policy))
    assert d.starts == () and d.pending_reasons == {} and d.order == ()


class TestFairShareOrder:
    """Two users of one lab: heavy used 90 GPU-hours, light 10; both submit 1-GPU jobs."""

    accounts = [AccountView("root", None), AccountView("lab", "root")]
    assocs = [AssocView("heavy", "lab"), AssocView("light", "lab")]
    usage = {("heavy", "lab"): 90 * 3600.0, ("light", "lab"): 10 * 3600.0}

    def snap(self, policy: str, gpus: int = 2) -> Snapshot:
        jobs = [make_job(1, user="heavy", submitted_at=NOW - 100),
                make_job(2, user="heavy", submitted_at=NOW - 90),
                make_job(3, user="light", submitted_at=NOW - 10),
                make_job(4, user="light", submitted_at=NOW - 5)]
        return make_snapshot([make_node(gpus=gpus)], jobs, now=NOW, accounts=self.accounts,
                             assocs=self.assocs, usage=self.usage, policy=policy)

    @pytest.mark.parametrize("policy", BOTH)
    def test_the_under_served_user_goes_first(self, policy: str) -> None:
        d = schedule(self.snap(policy))
        assert d.order == (3, 4, 1, 2)
        assert [s.job_id for s in d.starts] == [3, 4]

    def test_every_pending_job_has_its_priority(self) -> None:
        d = schedule(self.snap("fairshare+backfill"))
        assert set(d.priorities) == {1, 2, 3, 4}
        assert d.priorities[3].fairshare == 1.0 and d.priorities[1].fairshare == 0.5
        assert d.priorities[3].total > d.priorities[1].total

    def test_fifo_ignores_fair_share(self) -> None:
        assert schedule(self.snap("fifo")).order == (1, 2, 3, 4)


class TestReasons:
    @pytest.mark.parametrize("policy", BOTH)
    def test_node_down_when_every_node_that_could_run_it_is_down(self, policy: str) -> None:
        nodes = [make_node("a", gpus=8, state="DOWN"), make_node("b", gpus=8, state="DRAIN"),
                 make_node("c", gpus=2)]
        d = schedule(make_snapshot(nodes, [make_job(1, gpus=4)], policy=policy))
        assert d.pending_reasons[1] == ("NodeDown: every node that could run it is down "
                                        "(1 node: node DOWN, 1 node: node DRAIN)")

    @pytest.mark.parametrize("policy", BOTH)
    def test_resources_when_no_node_is_big_enough(self, policy: str) -> None:
        nodes = [make_node("a", gpus=2, state="DOWN"), make_node("c", gpus=2)]
        d = schedule(make_snapshot(nodes, [make_job(1, gpus=4)], policy=policy))
        assert d.pending_reasons[1] == ("Resources: no node has 4 free GPUs now "
                                        "(1 node: node DOWN, 1 node: too few GPUs)")

    @pytest.mark.parametrize("policy", BOTH)
    def test_unknown_qos_waits(self, policy: str) -> None:
        d = schedule(make_snapshot([make_node()], [make_job(1, qos="gold"), make_job(2)],
                                   policy=policy))
        assert [s.job_id for s in d.starts] == [2]
        assert d.pending_reasons[1] == \
            "QOS: unknown QOS 'gold' (known: high, normal, preemptible)"

    def test_held_nodes_are_counted_like_fifo(self) -> None:
        nodes = [make_node("a", gpus=4, free={3}), make_node("b", gpus=1, free=())]
        jobs = [make_job(1, gpus=4, priority=9), make_job(2)]
        d = schedule(make_snapshot(nodes, jobs, policy="fairshare"))
        assert d.pending_reasons[2] == ("Resources: no node has 1 free GPU now "
                                        "(1 node: held for job 1, 1 node: too few free GPUs)")

    def test_later_jobs_of_a_blocked_shape_wait_behind_the_first(self) -> None:
        node = make_node(gpus=8, free={0, 1})
        jobs = [make_job(1, gpus=8, priority=9), make_job(2, gpus=8, priority=5),
                make_job(3, gpus=8, priority=1)]
        d = schedule(make_snapshot([node], jobs, policy="fairshare"))
        assert d.pending_reasons == {
            1: "Resources: no node has 8 free GPUs now (1 node: too few free GPUs)",
            2: "Priority: waiting behind job 1", 3: "Priority: waiting behind job 1"}

    def test_every_job_that_does_not_start_has_a_reason(self) -> None:
        nodes = [make_node("a", gpus=2), make_node("b", gpus=4, free={0})]
        jobs = [make_job(i, gpus=1 + i % 4) for i in range(1, 40)]
        for policy in BOTH:
            d = schedule(make_snapshot(nodes, jobs, policy=policy))
            assert {s.job_id for s in d.starts} | set(d.pending_reasons) == set(range(1, 40))
            assert not {s.job_id for s in d.starts} & set(d.pending_reasons)


class TestDominatedRequests:
    """A job asking for no less than one that did not fit is not searched for; its reason
    still says what stops it."""

    def _busy(self) -> tuple[list, list]:  # type: ignore[type-arg]
        node = make_node("n1", gpus=8, free={6, 7}, cpus=64)
        running = [make_running(100, "n1", range(6), started_at=NOW, time_limit_s=1000)]
        return [node], running

    def test_a_bigger_job_blocked_only_by_the_reservation_says_so(self) -> None:
        nodes, running = self._busy()
        jobs = [make_job(1, gpus=8, priority=9),
                make_job(2, cpus=1, time_limit_s=5000, priority=5),
                make_job(3, cpus=2, time_limit_s=5000, priority=1)]
        d = schedule(make_snapshot(nodes, jobs, running=running, now=NOW))
        assert d.pending_reasons[2] == d.pending_reasons[3] == \
            "Reservation: would delay job 1 (reserved on n1 in 1000 s)"

    def test_a_shorter_job_of_a_blocked_shape_is_still_tried(self) -> None:
        nodes, running = self._busy()
        jobs = [make_job(1, gpus=8, priority=9),
                make_job(2, cpus=1, time_limit_s=5000, priority=5),
                make_job(3, cpus=2, time_limit_s=900, priority=1)]
        d = schedule(make_snapshot(nodes, jobs, running=running, now=NOW))
        assert [s.job_id for s in d.starts] == [3]

    def test_a_blocked_shape_whose_gpus_a_later_job_took_now_lacks_resources(self) -> None:
        # Job 2 fits n1 now but would delay job 1. Job 3 ends by the reserved start, so it
        # takes n1's free GPUs. Job 4, of job 2's shape, then fits nowhere at all: that is a
        # Resources reason, not job 2's cached "would delay" (found by hypothesis, comparing
        # the cycle with a search of every job).
        node = make_node("n1", gpus=4, free={2, 3})
        running = [make_running(100, "n1", [0, 1], started_at=NOW, time_limit_s=60)]
        jobs = [make_job(1, gpus=4, time_limit_s=60, priority=9),
                make_job(2, time_limit_s=600, priority=8),
                make_job(3, gpus=2, time_limit_s=60, priority=7),
                make_job(4, time_limit_s=600, priority=6),
                make_job(5, cpus=2, time_limit_s=600, priority=5)]  # dominated by job 2
        d = schedule(make_snapshot([node], jobs, running=running, now=NOW))
        assert [s.job_id for s in d.starts] == [3]
        assert d.pending_reasons[2] == "Reservation: would delay job 1 (reserved on n1 in 60 s)"
        assert d.pending_reasons[4] == d.pending_reasons[5] == \
            "Resources: no node has 1 free GPU now (1 node: too few free GPUs)"

    def test_a_bigger_job_waits_behind_the_most_urgent_holder(self) -> None:
        nodes = [make_node("a", gpus=8, model=A100, free={0}),
                 make_node("b", gpus=8, model=H100, free={0})]
        jobs = [make_job(1, gpus=8, gpu_model=H100, priority=9),
                make_job(2, gpus=8, gpu_model=A100, priority=8),
                make_job(3, gpus=8, priority=5), make_job(4, gpus=8, cpus=4, priority=1)]
        d = schedule(make_snapshot(nodes, jobs, policy="fairshare"))
        assert d.pending_reasons[3] == d.pending_reasons[4] == "Priority: waiting behind job 1"

    def test_a_bigger_job_that_no_node_could_run(self) -> None:
        nodes = [make_node("a", gpus=8, cpus=16, free=()), make_node("b", gpus=8, cpus=32,
                                                                     state="DOWN")]
        jobs = [make_job(1, cpus=20, priority=9), make_job(2, cpus=40, priority=5)]
        for policy in BOTH:
            d = schedule(make_snapshot(nodes, jobs, policy=policy))
            assert d.pending_reasons[1] == \
                "NodeDown: every node that could run it is down (1 node: node DOWN)"
            assert d.pending_reasons[2] == ("Resources: no node has 1 free GPU now "
                                            "(1 node: node DOWN, 1 node: too few CPUs)")

    def test_many_distinct_requests_still_get_the_right_kind_of_reason(self) -> None:
        nodes, running = self._busy()
        jobs = [make_job(1, gpus=8, priority=10**6)]
        jobs += [make_job(10 + k, gpus=2, cpus=1 + k, memory_mib=1000 * k, priority=1000 - k)
                 for k in range(50)]
        d = schedule(make_snapshot(nodes, jobs, running=running, now=NOW))
        assert {r.split(":")[0] for j, r in d.pending_reasons.items() if j != 1} == \
            {"Reservation"}
