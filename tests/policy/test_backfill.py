"""Backfill: a reservation for the top blocked job; lower jobs start now only where they do
not delay it (fairshare.md A6)."""

from __future__ import annotations

from gpuq.scheduler.policy import Decisions, JobView, NodeView, PolicyConfig, Reservation, schedule
from gpuq.scheduler.policy.backfill import reserve
from tests.policy.builders import A100, H100, make_job, make_node, make_running, make_snapshot

NOW = 1_000_000.0


def busy_node(name: str = "n1", busy: int = 6, ends_in: float = 1000.0, gpus: int = 8,
              job_id: int = 100, **node: object) -> tuple[NodeView, JobView]:
    """A node whose first ``busy`` GPUs run one job that ends ``ends_in`` s from now."""
    n = make_node(name, gpus=gpus, free=range(busy, gpus), **node)  # type: ignore[arg-type]
    r = make_running(job_id, name, range(busy), started_at=NOW - 200,
                     time_limit_s=ends_in + 200)
    return n, r


def run(nodes, jobs, running=(), policy: str = "fairshare+backfill", **config) -> Decisions:  # noqa: ANN001, ANN003
    cfg = PolicyConfig(policy=policy, **config)
    return schedule(make_snapshot(nodes, jobs, running=running, now=NOW, config=cfg))


def started(d: Decisions) -> dict[int, tuple[str, tuple[int, ...]]]:
    return {s.job_id: (s.node, s.gpu_indices) for s in d.starts}


def top(*jobs: JobView) -> list[JobView]:
    """Jobs in this order of priority (the first highest)."""
    return [JobView(**{**{f: getattr(j, f) for f in j.__slots__},
                       "priority": 1000 - 10 * k}) for k, j in enumerate(jobs)]


class TestReservation:
    def test_the_top_blocked_job_is_reserved_when_gpus_free_up(self) -> None:
        node, r = busy_node()
        d = run([node], top(make_job(1, gpus=8, time_limit_s=600)), [r])
        assert d.reservation == Reservation(job_id=1, node="n1", start_at=NOW + 1000,
                                            end_at=NOW + 1600, gpus=8, cpus=1)
        assert d.estimated_starts[1] == NOW + 1000
        assert d.pending_reasons[1] == \
            "Resources: no node has 8 free GPUs now (1 node: too few free GPUs)"

    def test_the_earliest_node_wins(self) -> None:
        a, ra = busy_node("a", busy=8, ends_in=5000, job_id=100)
        b, rb = busy_node("b", busy=8, ends_in=300, job_id=101)
        d = run([a, b], [make_job(1, gpus=8)], [ra, rb])
        assert d.reservation is not None
        assert (d.reservation.node, d.reservation.start_at) == ("b", NOW + 300)

    def test_several_running_jobs_free_gpus_in_turn(self) -> None:
        node = make_node("n1", free=())
        running = [make_running(100 + k, "n1", [2 * k, 2 * k + 1], started_at=NOW,
                                time_limit_s=100.0 * (k + 1)) for k in range(4)]
        d = run([node], [make_job(1, gpus=5)], running)
        assert d.reservation is not None and d.reservation.start_at == NOW + 300

    def test_a_job_past_its_time_limit_frees_its_gpus_now(self) -> None:
        node, r = busy_node(ends_in=-50)
        d = run([node], [make_job(1, gpus=8)], [r])
        assert d.reservation is not None and d.reservation.start_at == NOW

    def test_gpus_busy_with_no_known_job_never_free(self) -> None:
        # 6 GPUs busy, nothing in running says with what: no reservation, so nothing is
        # protected and the small job starts.
        node = make_node("n1", free={6, 7})
        d = run([node], top(make_job(1, gpus=8), make_job(2, time_limit_s=10**6)))
        assert d.reservation is None and 1 not in d.estimated_starts
        assert started(d) == {2: ("n1", (6,))}

    def test_beyond_the_window_no_reservation(self) -> None:
        node, r = busy_node(ends_in=3 * 86400)
        d = run([node], top(make_job(1, gpus=8), make_job(2, time_limit_s=10**6)), [r],
                backfill_window_s=86400)
        assert d.reservation is None and 2 in started(d)

    def test_cpus_and_memory_also_wait(self) -> None:
        # GPUs are free, but CPUs come back only when the running job ends.
        node = make_node("n1", gpus=8, free=range(4, 8), cpus=16, free_cpus=2)
        r = make_running(100, "n1", range(4), started_at=NOW, time_limit_s=700, cpus=14)
        d = run([node], [make_job(1, gpus=2, cpus=8)], [r])
        assert d.reservation is not None and d.reservation.start_at == NOW + 700

    def test_reserve_gives_what_the_cycle_reserves(self) -> None:
        node, r = busy_node()
        snap = make_snapshot([node], [make_job(1, gpus=8)], running=[r], now=NOW)
        assert reserve(snap, snap.pending[0]) == schedule(snap).reservation


class TestBackfill:
    def test_a_short_job_fills_idle_gpus_before_the_reservation(self) -> None:
        node, r = busy_node()
        d = run([node], top(make_job(1, gpus=8), make_job(2, time_limit_s=1000)), [r])
        assert started(d) == {2: ("n1", (6,))}  # ends at NOW + 1000: just in time

    def test_a_long_job_does_not(self) -> None:
        node, r = busy_node()
        d = run([node], top(make_job(1, gpus=8), make_job(2, time_limit_s=1001)), [r])
        assert d.starts == ()
        assert d.pending_reasons[2] == "Reservation: would delay job 1 (reserved on n1 in 1000 s)"

    def test_a_long_job_may_take_gpus_the_reservation_does_not_need(self) -> None:
        # At NOW + 1000 all 8 are free and the top job needs 6: 2 are spare.
        node, r = busy_node(busy=4)
        jobs = top(make_job(1, gpus=6), make_job(2, gpus=2, time_limit_s=10**5),
                   make_job(3, time_limit_s=10**5))
        d = run([node], jobs, [r])
        assert started(d) == {2: ("n1", (4, 5))}
        assert d.pending_reasons[3].startswith("Reservation: would delay job 1")

    def test_a_long_job_starts_on_a_node_the_reservation_does_not_use(self) -> None:
        node, r = busy_node("a")
        other = make_node("b", gpus=2, free={1})
        d = run([node, other], top(make_job(1, gpus=8), make_job(2, time_limit_s=10**6)), [r])
        assert started(d) == {2: ("b", (1,))}

    def test_a_long_job_of_another_model_shares_a_mixed_node(self) -> None:
        # The top job wants 4 A100s, free at NOW + 1000; the H100s are not its concern.
        node = make_node("m", models=[A100] * 4 + [H100] * 4, free={3, 4, 5})
        r = make_running(100, "m", [0, 1, 2], started_at=NOW, time_limit_s=1000)
        jobs = top(make_job(1, gpus=4, gpu_model=A100),
                   make_job(2, gpus=2, gpu_model=H100, time_limit_s=10**6),
                   make_job(3, gpus=1, time_limit_s=10**6),
                   make_job(4, gpus=1, gpu_model=A100, time_limit_s=10**6))
        d = run([node], jobs, [r])
        assert started(d) == {2: ("m", (4, 5))}
        assert d.pending_reasons[3].startswith("Reservation")  # only A100 3 is free now
        assert d.pending_reasons[4].startswith("Reservation")

    def test_a_job_of_any_model_takes_the_other_models_gpus(self) -> None:
        node = make_node("m", models=[A100] * 4 + [H100] * 4, free={3, 6, 7})
        r = make_running(100, "m", [0, 1, 2, 4, 5], started_at=NOW, time_limit_s=1000)
        jobs = top(make_job(1, gpus=4, gpu_model=A100), make_job(2, gpus=2, time_limit_s=10**6))
        d = run([node], jobs, [r])
        assert started(d) == {2: ("m", (6, 7))}

    def test_cpus_the_reservation_needs_are_protected(self) -> None:
        node = make_node("n1", gpus=8, free=range(4, 8), cpus=16, free_cpus=8)
        r = make_running(100, "n1", range(4), started_at=NOW, time_limit_s=1000, cpus=8)
        jobs = top(make_job(1, gpus=6, cpus=12), make_job(2, cpus=6, time_limit_s=10**5),
                   make_job(3, cpus=4, time_limit_s=10**5))
        d = run([node], jobs, [r])
        assert started(d) == {3: ("n1", (4,))}  # 16 - 12 = 4 CPUs are spare
        assert d.pending_reasons[2].startswith("Reservation")

    def test_higher_jobs_that_fit_start_before_the_reservation_is_made(self) -> None:
        node, r = busy_node()
        jobs = top(make_job(1, gpus=2, time_limit_s=10**5), make_job(2, gpus=8))
        d = run([node], jobs, [r])
        assert started(d) == {1: ("n1", (6, 7))}
        assert d.reservation is not None and d.reservation.start_at == NOW + 10**5

    def test_only_the_top_blocked_job_is_protected(self) -> None:
        # Job 2 is blocked too, but has no reservation: job 3 may take "its" node.
        a, ra = busy_node("a")
        b = make_node("b", gpus=4, model=H100, free={0})
        rb = make_running(101, "b", [1, 2, 3], started_at=NOW, time_limit_s=500)
        jobs = top(make_job(1, gpus=8), make_job(2, gpus=4, gpu_model=H100),
                   make_job(3, time_limit_s=10**6))
        d = run([a, b], jobs, [ra, rb])
        assert started(d) == {3: ("b", (0,))}
        assert d.reservation is not None and d.reservation.job_id == 1

    def test_the_hold_rule_without_backfill(self) -> None:
        node, r = busy_node()
        d = run([node], top(make_job(1, gpus=8), make_job(2, time_limit_s=100)), [r],
                policy="fairshare")
        assert d.starts == () and d.reservation is None
        assert d.pending_reasons[2] == "Priority: waiting behind job 1"


class TestEstimates:
    def test_waiting_jobs_get_a_not_before_estimate(self) -> None:
        node, r = busy_node()
        jobs = top(make_job(1, gpus=8, time_limit_s=600), make_job(2, time_limit_s=5000),
                   make_job(3, gpus=4))
        d = run([node], jobs, [r])
        # The node is the reservation's from NOW + 1000 to NOW + 1600.
        assert d.estimated_starts == {1: NOW + 1000, 2: NOW + 1600, 3: NOW + 1600}

    def test_estimates_use_other_nodes_when_they_free_first(self) -> None:
        a, ra = busy_node("a")
        b, rb = busy_node("b", busy=8, ends_in=1200, job_id=101)
        jobs = top(make_job(1, gpus=8, time_limit_s=600), make_job(2, gpus=8))
        d = run([a, b], jobs, [ra, rb])
        assert d.estimated_starts == {1: NOW + 1000, 2: NOW + 1200}

    def test_jobs_that_can_never_run_get_none(self) -> None:
        node, r = busy_node()
        d = run([node], [make_job(1, gpus=9)], [r])
        assert d.estimated_starts == {}
