"""Multifactor priority (fairshare.md A3): factors in [0, 1], weights from the config."""

from __future__ import annotations

import pytest

from gpuq.scheduler.policy import AccountView, AssocView, PolicyConfig, Priority, priorities
from gpuq.scheduler.policy.priority import fairshare_table, jobsize_factor, qos_factors
from tests.policy.builders import make_job, make_node, make_snapshot

DAY = 86400.0
NOW = 1_000_000.0
ONLY = dict(weight_fairshare=0, weight_age=0, weight_jobsize=0, weight_qos=0)


def prio(job, config: PolicyConfig | None = None, fs: float = 0.0,  # noqa: ANN001
         nodes=(make_node(gpus=8),)) -> Priority:  # noqa: ANN001
    snap = make_snapshot(nodes, [job], now=NOW, config=config or PolicyConfig())
    return priorities(snap, {(job.user, job.account): fs})[job.id]


class TestFactors:
    def test_age_grows_to_one_at_max_age(self) -> None:
        assert prio(make_job(1, submitted_at=NOW - 3.5 * DAY)).age == 0.5
        assert prio(make_job(1, submitted_at=NOW - 7 * DAY)).age == 1.0
        assert prio(make_job(1, submitted_at=NOW - 30 * DAY)).age == 1.0

    def test_age_of_a_job_from_the_future_is_zero(self) -> None:
        assert prio(make_job(1, submitted_at=NOW + 5)).age == 0.0

    def test_max_age_zero_saturates_at_once(self) -> None:
        assert prio(make_job(1, submitted_at=NOW - 1), PolicyConfig(max_age_s=0)).age == 1.0

    def test_jobsize_is_gpus_over_the_clusters_gpus(self) -> None:
        nodes = (make_node("a", gpus=4), make_node("b", gpus=4, state="DOWN"))
        assert prio(make_job(1, gpus=2), nodes=nodes).jobsize == 0.25
        small = PolicyConfig(jobsize_favor_small=True)
        assert prio(make_job(1, gpus=2), small, nodes=nodes).jobsize == 0.75

    def test_jobsize_edges(self) -> None:
        assert jobsize_factor(16, 8) == 1.0
        assert jobsize_factor(1, 0) == 0.0

    def test_qos_is_normalised_by_the_largest(self) -> None:
        assert qos_factors({"normal": 0, "high": 100, "mid": 50}) == {
            "normal": 0.0, "high": 1.0, "mid": 0.5}
        assert qos_factors({"a": 0}) == {"a": 0.0}
        assert prio(make_job(1, qos="high")).qos == 1.0
        assert prio(make_job(1, qos="normal")).qos == 0.0

    def test_fairshare_comes_from_the_table(self) -> None:
        assert prio(make_job(1), fs=0.75).fairshare == 0.75


class TestTotal:
    def test_weighted_sum_minus_nice_plus_site(self) -> None:
        c = PolicyConfig(weight_fairshare=1000, weight_age=100, weight_jobsize=10,
                         weight_qos=1)
        p = prio(make_job(1, gpus=4, submitted_at=NOW - 3.5 * DAY, qos="high", nice=7,
                          priority=3), c, fs=0.5)
        assert p == Priority(total=3 + 1000 * 0.5 + 100 * 0.5 + 10 * 0.5 + 1 * 1.0 - 7,
                             fairshare=0.5, age=0.5, jobsize=0.5, qos=1.0, nice=7, site=3)

    def test_weight_zero_turns_a_factor_off(self) -> None:
        c = PolicyConfig(**ONLY)
        assert prio(make_job(1, qos="high"), c, fs=1.0).total == 0.0

    def test_negative_nice_raises_priority(self) -> None:
        assert prio(make_job(1, nice=-50), PolicyConfig(**ONLY)).total == 50.0


class TestOrder:
    def _order(self, jobs, fs: dict[str, float], **config: float):  # noqa: ANN001, ANN202
        snap = make_snapshot([make_node()], jobs, now=NOW, config=PolicyConfig(**config))
        p = priorities(snap, {(u, "lab"): f for u, f in fs.items()})
        return [j.id for j in p.order()]

    def test_fairshare_dominates_by_default_weights(self) -> None:
        jobs = [make_job(1, user="heavy", submitted_at=NOW - 7 * DAY),
                make_job(2, user="light", submitted_at=NOW)]
        assert self._order(jobs, {"heavy": 0.2, "light": 0.8}) == [2, 1]

    def test_then_submit_time_then_id(self) -> None:
        jobs = [make_job(9, submitted_at=5.0), make_job(4, submitted_at=5.0),
                make_job(7, submitted_at=1.0)]
        assert self._order(jobs, {}, weight_age=0) == [7, 4, 9]

    def test_same_as_sorting_by_the_priorities(self) -> None:
        jobs = [make_job(i, user=f"u{i % 3}", gpus=1 + i % 4, submitted_at=NOW - i * 3000,
                         nice=i % 2) for i in range(1, 30)]
        snap = make_snapshot([make_node()], jobs, now=NOW,
                             config=PolicyConfig(weight_jobsize=100))
        p = priorities(snap, {("u0", "lab"): 0.1, ("u1", "lab"): 0.5, ("u2", "lab"): 0.9})
        expected = sorted(jobs, key=lambda j: (-p[j.id].total, j.submitted_at, j.id))
        assert p.order() == expected


class TestPrioritiesMapping:
    def test_reads_like_a_dict(self) -> None:
        jobs = [make_job(1), make_job(2, qos="high")]
        p = priorities(make_snapshot([make_node()], jobs, now=NOW), {})
        assert len(p) == 2 and list(p) == [1, 2] and 2 in p and 3 not in p
        assert dict(p) == {1: p[1], 2: p[2]} and p == dict(p)
        with pytest.raises(KeyError):
            p[3]


def test_fairshare_table_follows_the_configured_algorithm() -> None:
    accounts = [AccountView("root", None)]
    assocs = [AssocView("a", "root"), AssocView("b", "root")]
    usage = {("a", "root"): 10.0, ("b", "root"): 30.0}
    fair = make_snapshot(accounts=accounts, assocs=assocs, usage=usage)
    classic = make_snapshot(accounts=accounts, assocs=assocs, usage=usage,
                            config=PolicyConfig(fairshare_algorithm="classic"))
    assert fairshare_table(fair).factors == {("a", "root"): 1.0, ("b", "root"): 0.5}
    assert fairshare_table(classic).factor("a", "root") == 2 ** (-0.25 / 0.5)


class TestConfig:
    @pytest.mark.parametrize("bad", [
        dict(policy="lottery"), dict(fairshare_algorithm="ticket"),
        dict(classic_dampening=0), dict(weight_age=-1), dict(backfill_window_s=0),
    ])
    def test_bad_values_are_refused(self, bad: dict[str, object]) -> None:
        with pytest.raises(ValueError):
            PolicyConfig(**bad)  # type: ignore[arg-type]

    def test_qos_mapping_is_stored_as_sorted_pairs(self) -> None:
        c = PolicyConfig(qos_priority={"z": 1, "a": 2})
        assert c.qos_priority == (("a", 2), ("z", 1))
        assert hash(c) == hash(PolicyConfig(qos_priority=(("z", 1), ("a", 2))))
