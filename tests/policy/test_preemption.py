"""Reservation grants, preemption and claims, hand-worked (policy-v3.md)."""

from __future__ import annotations

import pytest

from gpuq.scheduler.policy import (
    AccountView,
    Borrow,
    Claim,
    ClaimView,
    GrantView,
    Preemption,
    schedule,
)
from gpuq.scheduler.policy import _inner as inner_policy
from tests.policy.builders import A100, H100, make_job, make_node, make_running, make_snapshot

NOW = 1_000_000.0
POLICIES = ["fifo", "fairshare", "fairshare+backfill"]
#: qlab and its sub-group qsub hold the grants; other is a plain lab.
ACCOUNTS = [AccountView("root", None), AccountView("qlab", "root"),
            AccountView("qsub", "qlab"), AccountView("other", "root")]


def snap(nodes, pending, running=(), grants=(), policy="fairshare+backfill"):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
    return make_snapshot(nodes, pending, running=running, grants=grants, now=NOW,
                         accounts=ACCOUNTS, policy=policy)


def busy(name: str = "n1", gpus: int = 4, free: tuple[int, ...] = (), **kw: object):  # type: ignore[no-untyped-def]  # noqa: ANN201
    return make_node(name, gpus=gpus, free=set(free), **kw)  # type: ignore[arg-type]


class TestGranteeReclaims:
    grant = GrantView(3, "qlab", gpus=4, nodes=("n1",))
    borrower = make_running(10, "n1", (0, 1, 2, 3), account="other", started_at=NOW - 100)

    @pytest.mark.parametrize("policy", POLICIES)
    def test_a_grantee_preempts_the_borrower_and_claims_its_gpus(self, policy: str) -> None:
        job = make_job(42, gpus=2, account="qlab")
        d = schedule(snap([busy()], [job], [self.borrower], [self.grant], policy))
        assert d.preemptions == (Preemption(
            10, 42, "n1", 3,
            "preempted for job 42 (qlab): reservation grant 3 needs its GPUs back"),)
        assert d.claims == {42: Claim(42, "n1", (0, 1), (10,), 3)}
        assert d.pending_reasons[42] == "Preempting: waiting for job 10 to stop (grace period)"
        assert d.starts == ()
        # The claim counts as the grantee's; the victim is stopping: no one's borrower now.
        assert d.borrowing == {}

    def test_a_job_of_a_sub_account_is_a_grantee(self) -> None:
        job = make_job(42, gpus=1, account="qsub")
        d = schedule(snap([busy()], [job], [self.borrower], [self.grant]))
        assert d.claims[42].grant == 3

    def test_before_the_grantee_asks_the_borrower_is_labelled_only(self) -> None:
        d = schedule(snap([busy()], [], [self.borrower], [self.grant]))
        assert d.borrowing == {10: Borrow(3, 4)}
        assert d.preemptions == () and d.claims == {}

    def test_grantees_reclaim_at_most_what_the_grant_still_needs(self) -> None:
        grant = GrantView(3, "qlab", gpus=2, nodes=("n1",))
        mine = make_running(9, "n1", (0,), account="qlab")
        lender = make_running(10, "n1", (1, 2, 3), account="other")
        too_big = make_job(42, gpus=2, account="qlab")
        d = schedule(snap([busy()], [too_big], [mine, lender], [grant]))
        assert d.borrowing == {10: Borrow(3, 1)}
        assert d.preemptions == () and d.claims == {}
        fits = make_job(43, gpus=1, account="qlab")
        d = schedule(snap([busy()], [too_big, fits], [mine, lender], [grant]))
        assert list(d.claims) == [43] and d.claims[43].gpu_indices == (1,)
        assert d.borrowing == {}  # the grant's 2 GPUs are its grantees' now

    def test_a_second_grantee_does_not_take_what_the_first_reclaimed(self) -> None:
        grant = GrantView(3, "qlab", gpus=2, nodes=("n1",))
        jobs = [make_job(42, gpus=2, account="qlab"), make_job(43, gpus=2, account="qlab")]
        lenders = [make_running(10, "n1", (0, 1), account="other"),
                   make_running(11, "n1", (2, 3), account="other")]
        d = schedule(snap([busy()], jobs, lenders, [grant]))
        assert list(d.claims) == [42]
        assert len(d.preemptions) == 1
        assert not d.pending_reasons[43].startswith("Preempting")


class TestQosPreemption:
    def test_a_normal_job_preempts_a_preemptible_one_and_not_a_normal_one(self) -> None:
        running = [make_running(10, "n1", (0, 1), qos="preemptible"),
                   make_running(11, "n1", (2, 3))]
        d = schedule(snap([busy()], [make_job(42, gpus=2, account="other")], running))
        assert d.preemptions == (Preemption(
            10, 42, "n1", None,
            "preempted for job 42 (other): QOS 'normal' preempts QOS 'preemptible'"),)
        assert d.claims == {42: Claim(42, "n1", (0, 1), (10,), None)}

    def test_the_latest_started_preemptible_job_goes_first(self) -> None:
        running = [make_running(10, "n1", (0,), qos="preemptible", started_at=NOW - 50),
                   make_running(11, "n1", (1,), qos="preemptible", started_at=NOW - 10),
                   make_running(12, "n1", (2, 3))]
        d = schedule(snap([busy()], [make_job(42)], running))
        assert [p.victim_id for p in d.preemptions] == [11]
        assert d.claims[42].gpu_indices == (1,)

    def test_free_gpus_are_used_first_and_the_node_with_fewest_victim_gpus_wins(self) -> None:
        nodes = [busy("a", free=()), busy("b", free=(3,))]
        running = [make_running(10, "a", (0, 1, 2, 3), qos="preemptible"),
                   make_running(11, "b", (0,), qos="preemptible"),
                   make_running(12, "b", (1, 2))]
        d = schedule(snap(nodes, [make_job(42, gpus=2)], running))
        assert d.claims == {42: Claim(42, "b", (0, 3), (11,), None)}

    def test_a_preemptible_job_never_preempts(self) -> None:
        running = [make_running(10, "n1", (0, 1, 2, 3), qos="preemptible")]
        d = schedule(snap([busy()], [make_job(42, qos="preemptible")], running))
        assert d.preemptions == () and d.claims == {}
        assert d.pending_reasons[42].startswith("Resources")

    def test_a_preemptible_grantee_does_not_reclaim_either(self) -> None:
        grant = GrantView(3, "qlab", gpus=4)
        running = [make_running(10, "n1", (0, 1, 2, 3), account="other")]
        job = make_job(42, account="qlab", qos="preemptible")
        d = schedule(snap([busy()], [job], running, [grant]))
        assert d.preemptions == () and d.claims == {}
        assert d.borrowing == {10: Borrow(3, 4)}

    def test_a_non_grantee_never_preempts_a_normal_borrower(self) -> None:
        grant = GrantView(3, "qlab", gpus=4)
        running = [make_running(10, "n1", (0, 1, 2, 3), account="other")]
        for account in ("other", "root"):  # root is above qlab, not below it
            d = schedule(snap([busy()], [make_job(42, account=account)], running, [grant]))
            assert d.preemptions == () and d.claims == {}

    def test_a_job_that_fits_free_gpus_is_not_given_victims(self) -> None:
        """fairshare: job 2 is held behind job 1; it does not preempt to get round it."""
        nodes = [busy(free=(3,))]
        running = [make_running(10, "n1", (0, 1, 2), qos="preemptible", started_at=NOW)]
        jobs = [make_job(1, gpus=4, priority=10, qos="preemptible"), make_job(2)]
        d = schedule(snap(nodes, jobs, running, policy="fairshare"))
        assert d.claims == {} and d.preemptions == ()


class TestClaims:
    claim = ClaimView("n1", (0, 1), victims=(10,), grant=None)

    def test_the_claim_is_kept_while_its_victim_stops_and_nobody_takes_its_gpus(self) -> None:
        node = busy(free=(0,))  # GPU 1 is the victim's; 2, 3 another job's
        running = [make_running(10, "n1", (1,), qos="preemptible", preempting=True),
                   make_running(11, "n1", (2, 3))]
        jobs = [make_job(42, gpus=2, claim=self.claim), make_job(43, gpus=1, priority=99)]
        d = schedule(snap([node], jobs, running))
        assert d.starts == ()
        assert d.claims == {42: Claim(42, "n1", (0, 1), (10,), None)}
        assert d.pending_reasons[42] == "Preempting: waiting for job 10 to stop (grace period)"
        assert d.preemptions == ()  # job 10 is already stopping
        assert d.pending_reasons[43].startswith("Resources")
        assert d.order == (43, 42)
        assert set(d.priorities) == {42, 43}

    def test_once_the_victim_has_stopped_the_job_starts_on_its_claim(self) -> None:
        node = busy(free=(0, 1))
        jobs = [make_job(42, gpus=2, claim=self.claim), make_job(43, gpus=1, priority=99)]
        d = schedule(snap([node], jobs, [make_running(11, "n1", (2, 3))]))
        assert [(s.job_id, s.gpu_indices) for s in d.starts] == [(42, (0, 1))]
        assert d.claims == {}
        assert d.pending_reasons[43].startswith("Resources")

    def test_a_claim_on_a_gpu_taken_by_someone_else_is_dropped(self) -> None:
        node = busy(free=(0, 3))
        running = [make_running(11, "n1", (1, 2))]  # not the victim: job 10 is gone
        d = schedule(snap([node], [make_job(42, gpus=2, claim=self.claim)], running))
        assert d.claims == {}
        assert [(s.job_id, s.gpu_indices) for s in d.starts] == [(42, (0, 3))]

    @pytest.mark.parametrize("state", ["DOWN", "DRAIN"])
    def test_a_claim_on_a_node_no_longer_up_is_dropped(self, state: str) -> None:
        nodes = [busy(free=(0, 1), state=state), make_node("n2", gpus=2)]
        d = schedule(snap(nodes, [make_job(42, gpus=2, claim=self.claim)]))
        assert d.claims == {}
        assert [(s.job_id, s.node) for s in d.starts] == [(42, "n2")]

    def test_a_victim_whose_preemption_was_lost_is_asked_again(self) -> None:
        running = [make_running(10, "n1", (0, 1), qos="preemptible")]  # not preempting
        d = schedule(snap([busy(free=(2, 3))], [make_job(42, gpus=2, claim=self.claim)],
                          running))
        assert [(p.victim_id, p.for_job) for p in d.preemptions] == [(10, 42)]
        assert 42 in d.claims

    def test_fifo_honours_claims_too(self) -> None:
        jobs = [make_job(42, gpus=2, claim=self.claim), make_job(1, gpus=1, priority=5)]
        d = schedule(snap([busy(free=(0, 1))], jobs, policy="fifo"))
        assert [s.job_id for s in d.starts] == [42]
        assert d.order == (1, 42)


class TestBorrowing:
    """n1: 8 GPUs, a grant of 4; the grantee runs on one, 2 are free: 1 is lent."""

    grant = GrantView(5, "qlab", gpus=4, nodes=("n1",))
    node = make_node("n1", gpus=8, free={6, 7})

    def running(self, extra: dict[int, dict[str, object]] | None = None) -> list:  # type: ignore[type-arg]
        kw = extra or {}
        spec = {1: (0,), 2: (1, 2), 3: (3, 4), 4: (5,)}
        accounts = {1: "qlab"}
        return [make_running(i, "n1", g, account=accounts.get(i, "other"),
                             started_at=NOW - 1000 + 100 * i, **kw.get(i, {}))  # type: ignore[arg-type]
                for i, g in spec.items()]

    def test_only_the_lent_gpus_are_labelled_on_the_latest_started(self) -> None:
        d = schedule(snap([self.node], [], self.running(), [self.grant]))
        assert d.borrowing == {4: Borrow(5, 1)}

    def test_labels_are_sticky_then_preemptible_first(self) -> None:
        sticky = self.running({2: {"borrowed_grant": 5, "borrowed_gpus": 1}})
        assert schedule(snap([self.node], [], sticky, [self.grant])).borrowing == \
            {2: Borrow(5, 1)}
        cheap = self.running({3: {"qos": "preemptible"}})
        assert schedule(snap([self.node], [], cheap, [self.grant])).borrowing == \
            {3: Borrow(5, 1)}

    def test_nothing_is_lent_while_enough_reserved_gpus_idle(self) -> None:
        node = make_node("n1", gpus=8, free={5, 6, 7})
        running = self.running()[:3]
        assert schedule(snap([node], [], running, [self.grant])).borrowing == {}

    def test_a_job_started_this_cycle_on_reserved_gpus_borrows_them(self) -> None:
        grant = GrantView(5, "qlab", gpus=2)
        d = schedule(snap([make_node("n1", gpus=2)], [make_job(1, gpus=2, account="other")],
                          [], [grant]))
        assert d.borrowing == {1: Borrow(5, 2)}

    def test_a_grant_of_a_model_counts_only_that_model(self) -> None:
        grant = GrantView(5, "qlab", gpus=2, gpu_model=H100)
        node = busy(models=[A100, A100, H100, H100])
        running = [make_running(1, "n1", (0, 1), account="other", started_at=NOW),
                   make_running(2, "n1", (2, 3), account="other")]
        d = schedule(snap([node], [make_job(9, gpus=2, account="qlab")], running, [grant]))
        assert d.preemptions[0].victim_id == 2  # the older job, but on the H100s
        assert d.claims[9].gpu_indices == (2, 3)

    def test_a_grant_on_named_nodes_counts_only_those(self) -> None:
        grant = GrantView(5, "qlab", gpus=4, nodes=("n2",))
        nodes = [busy("n1"), busy("n2", free=(0, 1, 2))]
        running = [make_running(1, "n1", (0, 1, 2, 3), account="other"),
                   make_running(2, "n2", (3,), account="other")]
        d = schedule(snap(nodes, [], running, [grant]))
        assert d.borrowing == {2: Borrow(5, 1)}

    def test_overlapping_grants_label_each_job_once_in_grant_id_order(self) -> None:
        grants = [GrantView(2, "other", gpus=2), GrantView(1, "qlab", gpus=2)]
        running = [make_running(10, "n1", (0, 1), account="root", started_at=NOW - 20),
                   make_running(11, "n1", (2, 3), account="root", started_at=NOW - 10)]
        d = schedule(snap([busy()], [], running, grants))
        assert d.borrowing == {11: Borrow(1, 2), 10: Borrow(2, 2)}
        one = [make_running(10, "n1", (0, 1, 2, 3), account="root")]
        assert schedule(snap([busy()], [], one, grants)).borrowing == {10: Borrow(1, 2)}


class TestNothingChangesWithoutGrants:
    @pytest.mark.parametrize("policy", POLICIES)
    def test_an_idle_grant_or_an_unthreatened_preemptible_job_changes_no_start(
            self, policy: str) -> None:
        nodes = [busy(free=(2, 3)), make_node("n2", gpus=2)]
        running = [make_running(10, "n1", (0, 1), qos="preemptible")]
        jobs = [make_job(1, gpus=2, account="other"), make_job(2, gpus=2, account="qlab"),
                make_job(3, gpus=1, qos="preemptible")]  # waits, and does not preempt
        plain = inner_policy(snap(nodes, jobs, [], policy=policy))
        for extra in ({"running": running}, {"grants": [GrantView(1, "nobody", gpus=2)]}):
            d = schedule(snap(nodes, jobs, policy=policy, **extra))  # type: ignore[arg-type]
            assert d.starts == plain.starts and d.order == plain.order
            assert d.pending_reasons == plain.pending_reasons


class TestFloatingReservation:
    """A reservation of N GPUs anywhere: the borrowers' labels fall where they fall, but a
    grantee job needing its GPUs on one node takes them there from any job of another
    account, borrowers first, never more than the reservation's lent-out GPUs."""

    grant = GrantView(3, "qlab", gpus=4)
    #: Two 4-GPU nodes full of another lab's 1-GPU jobs; the newest are on both nodes.
    running = [make_running(10 + i, "ab"[i % 2] + "1", (i // 2,), account="other",
                            started_at=NOW - 100 + i) for i in range(8)]

    @pytest.mark.parametrize("policy", POLICIES)
    def test_a_grantee_job_wanting_a_whole_node_gets_it(self, policy: str) -> None:
        nodes = [busy("a1"), busy("b1")]
        before = schedule(snap(nodes, [], self.running, [self.grant], policy))
        assert sum(b.gpus for b in before.borrowing.values()) == 4
        assert {r.node for r in self.running if r.id in before.borrowing} == {"a1", "b1"}
        job = make_job(42, gpus=4, account="qlab")
        d = schedule(snap(nodes, [job], self.running, [self.grant], policy))
        assert 42 in d.claims and len(d.claims[42].gpu_indices) == 4
        victims = {p.victim_id for p in d.preemptions}
        assert len(victims) == 4 and all(p.grant == 3 for p in d.preemptions)
        node = d.claims[42].node
        labelled = {v for v in before.borrowing if
                    next(r for r in self.running if r.id == v).node == node}
        assert labelled <= victims  # the borrowers there go first

    def test_never_more_than_the_reservation(self) -> None:
        nodes = [busy("a1"), busy("b1")]
        grant = GrantView(3, "qlab", gpus=2)
        job = make_job(42, gpus=4, account="qlab")
        d = schedule(snap(nodes, [job], self.running, [grant]))
        assert d.claims == {} and d.preemptions == ()
