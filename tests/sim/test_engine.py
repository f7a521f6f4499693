"""The event loop: exact FIFO starts, no GPU double-booked, starts checked, calls skipped."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from gpuq.scheduler.policy import schedule
from gpuq.scheduler.policy.decisions import Decisions, Start
from gpuq.scheduler.policy.snapshot import Snapshot
from gpuq.scheduler.sim import (
    SimInputError,
    SimResult,
    Simulation,
    SimulationError,
    TraceJob,
    build_nodes,
    complete,
    parse_nodes,
    replay,
)
from gpuq.scheduler.sim.engine import JobRecord

POLICIES = ("fifo", "fairshare", "fairshare+backfill")


def job(job_id: int, submit: float, gpus: int, duration: float, *, user: str = "u",
        account: str = "a", limit: float | None = None, model: str | None = None) -> TraceJob:
    return TraceJob(job_id, submit, user, account, gpus, duration, limit, model)


def simulate(jobs: list[TraceJob], nodes: str, policy: str = "fifo",
             **kw: Any) -> SimResult:
    tree = complete(None, {(j.user, j.account) for j in jobs})
    return Simulation(jobs, build_nodes(parse_nodes(nodes)), tree, policy=policy, **kw).run()


def random_jobs(seed: int, n: int = 300,
                models: tuple[str | None, ...] = (None,)) -> list[TraceJob]:
    rng = random.Random(seed)
    t, jobs = 0.0, []
    for i in range(1, n + 1):
        t += rng.expovariate(1 / 40)
        duration = rng.choice([0, 5, 30, 120, 600, 2400]) * rng.random()
        limit = rng.choice([None, duration * rng.uniform(0.3, 3) + 1])
        jobs.append(job(i, round(t), rng.choice([1, 1, 1, 2, 4, 8]), round(duration),
                        user=f"u{rng.randrange(8)}", account=f"g{rng.randrange(4)}",
                        limit=limit, model=rng.choice(models)))
    return jobs


def assert_no_double_booking(records: list[JobRecord]) -> None:
    by_gpu: dict[tuple[str, int], list[tuple[float, float, int]]] = defaultdict(list)
    for r in records:
        assert r.start_s is not None and r.end_s is not None, f"job {r.job.id} never ran"
        assert r.start_s >= r.job.submit_s
        assert r.end_s - r.start_s == pytest.approx(r.job.duration_s)
        assert len(r.gpu_indices) == len(set(r.gpu_indices)) == r.job.gpus
        for g in r.gpu_indices:
            by_gpu[r.node, g].append((r.start_s, r.end_s, r.job.id))
    for (node, gpu), spans in by_gpu.items():
        spans.sort()
        for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"{node} GPU {gpu}: job {b} starts at {start} before job " \
                                 f"{a} ends at {end}"


def test_fifo_start_times_on_a_hand_checked_trace() -> None:
    # One node of 4 GPUs. Job 3 needs all of them: it waits for job 1 and holds the node,
    # so jobs 4 and 5 wait behind it although GPUs are free from t=50.
    jobs = [job(1, 0, 2, 100), job(2, 0, 2, 50), job(3, 10, 4, 10), job(4, 20, 1, 5),
            job(5, 60, 2, 10)]
    result = simulate(jobs, "1x4")
    got = {r.job.id: (r.start_s, r.end_s, r.gpu_indices) for r in result.records}
    assert got == {1: (0, 100, (0, 1)), 2: (0, 50, (2, 3)), 3: (100, 110, (0, 1, 2, 3)),
                   4: (110, 115, (0,)), 5: (110, 120, (1, 2))}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", [1, 2])
def test_no_gpu_is_ever_double_booked(policy: str, seed: int) -> None:
    result = simulate(random_jobs(seed), "2x8,1x4", policy)
    assert_no_double_booking(result.records)


@pytest.mark.parametrize("policy", POLICIES)
def test_gpu_models_are_honoured(policy: str) -> None:
    jobs = random_jobs(3, 200, models=(None, "A100-80GB", "H100-80GB"))
    result = simulate(jobs, "1x8:A100-80GB,1x8:H100-80GB", policy)
    assert_no_double_booking(result.records)
    for r in result.records:
        if r.job.gpu_model:
            assert r.node == {"A100-80GB": "node0001", "H100-80GB": "node0002"}[
                r.job.gpu_model]


def test_the_policy_sees_the_simulated_state() -> None:
    seen: list[Snapshot] = []
    jobs = [job(1, 0, 2, 100, limit=30, user="x", account="lab"), job(2, 10, 8, 5)]
    simulate(jobs, "1x8:A100-80GB", "fairshare+backfill",
             observe=lambda snap, _: seen.append(snap))
    first, second = seen[0], seen[1]
    assert first.now == 0 and [j.id for j in first.pending] == [1]
    assert first.pending[0].time_limit_s == 100   # the limit, capped at the duration
    assert first.config.policy == "fairshare+backfill"
    assert {a.name for a in first.accounts} == {"root", "a", "lab"}
    assert second.now == 100  # job 2 could not fit at t=10: no call then
    assert [j.id for j in second.pending] == [2] and second.running == ()
    # 2 A100-80GB GPUs (billed 4.8 each) for 100 s, decayed a little over 100 s.
    assert second.usage[("x", "lab")] == pytest.approx(2 * 4.8 * 100, rel=1e-3)
    assert second.nodes[0].free_gpus == frozenset(range(8))


def test_running_jobs_are_in_the_snapshot_with_their_place() -> None:
    seen: list[Snapshot] = []
    simulate([job(1, 0, 2, 100), job(2, 5, 1, 10)], "1x8", "fairshare",
             observe=lambda snap, _: seen.append(snap))
    (running,) = seen[1].running
    assert (running.id, running.node, running.gpu_indices, running.started_at) == (
        1, "node0001", (0, 1), 0)
    assert seen[1].nodes[0].free_gpus == frozenset(range(2, 8))
    assert seen[1].usage[("u", "a")] == pytest.approx(2 * 5, rel=1e-4)


def test_the_policy_runs_once_per_event_time_and_only_when_a_job_could_start() -> None:
    calls: list[float] = []

    def counting(snapshot: Snapshot) -> Decisions:
        calls.append(snapshot.now)
        return schedule(snapshot)

    # Three submits at t=0 coalesce; at t=5 and t=6 nothing fits (8 GPUs busy) -> no call.
    jobs = [job(1, 0, 4, 100), job(2, 0, 4, 100), job(3, 0, 8, 10), job(4, 5, 1, 1),
            job(5, 6, 1, 1)]
    simulate(jobs, "1x8", schedule=counting)
    assert calls == [0, 100, 110]


@pytest.mark.parametrize(("bad", "message"), [
    (lambda s: Start(99, "node0001", (0,)), "started job 99, which is not pending"),
    (lambda s: Start(s.pending[0].id, "node0009", (0,)), "on node0009"),
    (lambda s: Start(s.pending[0].id, "node0001", (0, 0)), "not free or do not fit"),
    (lambda s: Start(s.pending[0].id, "node0001", (7,)), "GPUs [7]"),
])
def test_an_impossible_start_stops_the_run(bad: Callable[[Snapshot], Start],
                                           message: str) -> None:
    def policy(snapshot: Snapshot) -> Decisions:
        if snapshot.running:  # job 1 holds GPU 7; the next start is the bad one
            return Decisions(starts=(bad(snapshot),))
        return Decisions(starts=(Start(snapshot.pending[0].id, "node0001", (7,)),))

    with pytest.raises(SimulationError, match=message.replace("[", r"\[")):
        simulate([job(1, 0, 1, 100), job(2, 1, 1, 10)], "1x8", schedule=policy)


def test_a_policy_that_never_starts_a_job_is_reported() -> None:
    with pytest.raises(SimulationError, match="left 1 job.* pending on an idle cluster"):
        simulate([job(1, 0, 1, 10)], "1x8", schedule=lambda s: Decisions())


def test_a_job_that_fits_no_node_is_refused_before_the_run() -> None:
    nodes = build_nodes(parse_nodes("2x8:A100-80GB"))
    with pytest.raises(SimInputError, match="t.csv:7: column 'gpus': job 1 needs 16 GPUs on "
                                            "one node, but the largest node has 8"):
        replay([TraceJob(1, 0, "u", "a", 16, 10, line=7)], nodes, source="t.csv")
    with pytest.raises(SimInputError, match="column 'gpu_model': .* no node has H100"):
        replay([TraceJob(1, 0, "u", "a", 1, 10, gpu_model="H100-80GB", line=2)], nodes,
               source="t.csv")


def test_zero_length_jobs_and_same_time_events() -> None:
    jobs = [job(1, 0, 8, 0), job(2, 0, 8, 10), job(3, 10, 8, 0), job(4, 10, 8, 5)]
    result = simulate(jobs, "1x8")
    assert [(r.start_s, r.end_s) for r in result.records] == [(0, 0), (0, 10), (10, 10),
                                                              (10, 15)]
    assert_no_double_booking(result.records)


def test_replay_is_deterministic() -> None:
    jobs = random_jobs(7, 200)
    a = simulate(jobs, "2x8", "fairshare+backfill")
    b = simulate(jobs, "2x8", "fairshare+backfill")
    assert [(r.start_s, r.node, r.gpu_indices) for r in a.records] == \
        [(r.start_s, r.node, r.gpu_indices) for r in b.records]
