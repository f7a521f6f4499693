"""Issue 17 made the replays faster (FIFO's cycle, the loop's FIFO skip, Fair Tree ranking
only the pending jobs' associations); no job's start may move. The digests below are of
replays of the shipped trace's first 1,500 jobs, recorded with the code before that change:
every job's start time, node and GPUs."""

from __future__ import annotations

import hashlib

import pytest

from gpuq.scheduler.policy import schedule
from gpuq.scheduler.sim import TraceJob, build_nodes, load_trace, parse_nodes, replay
from gpuq.scheduler.sim.engine import JobRecord
from tests.sim.builders import SHIPPED_TRACE

JOBS = 1_500
BEFORE = {
    ("fifo", "2x8"): "0cadb21d1eeb9f21",
    ("fifo", "2x8,2x4,1x2"): "3fef83567dea88a9",
    ("fairshare", "2x8"): "bbf1a293d4bce190",
    ("fairshare", "2x8,2x4,1x2"): "dee262e5b1325788",
    ("fairshare+backfill", "2x8"): "7b14745832e0e9ab",
    ("fairshare+backfill", "2x8,2x4,1x2"): "4bf2e815e7f9ee4f",
}


def digest(records: list[JobRecord]) -> str:
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.job.id):
        gpus = ";".join(map(str, r.gpu_indices))
        h.update(f"{r.job.id},{r.start_s!r},{r.node},{gpus}\n".encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def jobs() -> list[TraceJob]:
    return load_trace(SHIPPED_TRACE, limit=JOBS)


@pytest.mark.parametrize(("policy", "nodes"), sorted(BEFORE))
def test_every_start_is_what_it_was(jobs: list[TraceJob], policy: str, nodes: str) -> None:
    run = replay(jobs, build_nodes(parse_nodes(nodes)), policy=policy)
    assert digest(run.result.records) == BEFORE[policy, nodes]


@pytest.mark.parametrize("nodes", ["2x8", "2x8,2x4,1x2"])
def test_the_fifo_skip_changes_no_start(jobs: list[TraceJob], nodes: str) -> None:
    """The loop skips FIFO calls while the queue's head holds every node; a policy that is
    not the real one (here the same policy, wrapped) turns the skip off: same records."""
    cluster = build_nodes(parse_nodes(nodes))
    calls = {"wrapped": 0}

    def wrapped(snapshot):  # type: ignore[no-untyped-def]
        calls["wrapped"] += 1
        return schedule(snapshot)

    skipping = replay(jobs, cluster, policy="fifo")
    every = replay(jobs, cluster, policy="fifo", schedule=wrapped)
    assert digest(skipping.result.records) == digest(every.result.records)
    assert every.result.policy_calls == calls["wrapped"]
    if nodes == "2x8":  # homogeneous: any waiting head holds every node
        assert skipping.result.policy_calls < every.result.policy_calls
