"""grants.py: share boosts, and a reservation grant's grantees and eligible GPUs."""

from __future__ import annotations

from dataclasses import replace

from gpuq.scheduler.policy import AccountView, GrantView, boost_shares
from gpuq.scheduler.policy.grants import scopes, subtree
from gpuq.scheduler.policy.snapshot import GpuView
from tests.policy.builders import A100, H100, make_job, make_node

TREE = [AccountView("root", None), AccountView("phys", "root", 3),
        AccountView("qlab", "phys", 2), AccountView("qsub", "qlab", 1, shares_parent=True),
        AccountView("bio", "root", 1)]


def test_boost_shares_adds_to_raw_shares_of_named_accounts_only() -> None:
    out = boost_shares(TREE, {"qlab": 5, "bio": 1, "qsub": 7, "nobody": 9})
    assert [(a.name, a.shares) for a in out] == [
        ("root", 1), ("phys", 3), ("qlab", 7), ("qsub", 1), ("bio", 2)]
    assert boost_shares(TREE, {}) == tuple(TREE)


def test_the_grantees_are_the_account_and_its_subtree() -> None:
    assert subtree(TREE, "qlab") == {"qlab", "qsub"}
    assert subtree(TREE, "phys") == {"phys", "qlab", "qsub"}
    assert subtree(TREE, "gone") == {"gone"}
    (scope,) = scopes([GrantView(1, "qlab", 2)], TREE, [])
    assert scope.is_grantee(make_job(1, account="qsub"))
    assert not scope.is_grantee(make_job(1, account="phys"))


def test_eligible_gpus_are_healthy_unoccupied_of_the_model_on_named_up_nodes() -> None:
    n1 = make_node("n1", models=[A100, H100, H100, H100], unhealthy={2})
    n1 = replace(n1, gpus=(*n1.gpus[:3], GpuView(3, H100, occupied=True)))
    nodes = [n1, make_node("n2", gpus=2, model=H100), make_node("n3", gpus=2, state="DOWN")]
    grants = [GrantView(2, "qlab", 4, gpu_model=H100, nodes=("n1", "n3")),
              GrantView(1, "qlab", 4)]
    any_gpu, h100 = scopes(grants, TREE, nodes)
    assert any_gpu.id == 1 and any_gpu.gpus == {"n1": (0, 1), "n2": (0, 1)}
    assert h100.gpus == {"n1": (1,)}
