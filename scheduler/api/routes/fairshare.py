"""/v1/fairshare: the fair-share table, the columns of Slurm's ``sshare -l``."""

from __future__ import annotations

import math

from fastapi import APIRouter

from gpuq.scheduler.api.deps import Ctx, UserOrAdmin
from gpuq.scheduler.domain.snapshot import tree_views
from gpuq.scheduler.policy import classic_fairshare, fair_tree
from gpuq.wire.admin import FairShareRow

router = APIRouter(tags=["fair share"])


@router.get("/v1/fairshare", response_model=list[FairShareRow])
def fairshare(ctx: Ctx, _: UserOrAdmin) -> list[FairShareRow]:
    """Every account and user association: raw and normalised shares, raw (decayed) and
    effective usage, LevelFS and the fair-share factor, in tree order. Raw shares include
    active share grants."""
    with ctx.transaction() as session:
        accounts, assocs, usage = tree_views(session, ctx.clock())
    if ctx.settings.fairshare_algorithm == "classic":
        table = classic_fairshare(accounts, assocs, usage)
    else:
        table = fair_tree(accounts, assocs, usage)
    out = []
    for r in table.rows:
        lf = r.level_fs
        out.append(FairShareRow(
            name=r.name, account=r.account, user=r.user, parent=r.parent,
            raw_shares="parent" if r.shares_parent else r.raw_shares,
            norm_shares=r.norm_shares, raw_usage=r.raw_usage, norm_usage=r.norm_usage,
            effective_usage=r.effective_usage,
            level_fs="inf" if lf is not None and math.isinf(lf) else lf,
            fairshare=r.fairshare))
    return out
