"""PNG plots of a replay (matplotlib's Agg renderer, no display needed).

- ``shares.png``: the top accounts' share of GPU-time per sliding window, each with its
  target (dashed);
- ``queue.png``: the mean number of pending jobs over time;
- ``utilization.png``: the fraction of GPUs in use over time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gpuq.scheduler.sim.engine import JobRecord
from gpuq.scheduler.sim.series import bins_for, busy_gpus, queue_length
from gpuq.scheduler.sim.windows import WindowShares

DAY_S = 86_400.0
PLOT_BINS = 500
TOP_ACCOUNTS = 5


def _figure(title: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_xlabel("days since the first submit")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_shares(shares: WindowShares, accounts: Sequence[str], t0: float,
                path: Path) -> None:
    fig, ax = _figure(f"Share of GPU-time per {shares.window_s / DAY_S:g}-day window "
                      "(dashed: target)", "share of GPU-time")
    days = [(t - t0) / DAY_S for t in shares.ends]
    for i, account in enumerate(accounts):
        color = f"C{i}"
        got = [w.shares.get(account, 0.0) if w else float("nan") for w in shares.windows]
        want = [w.targets.get(account, 0.0) if w else float("nan") for w in shares.windows]
        ax.plot(days, got, color=color, linewidth=1, label=account)
        ax.plot(days, want, color=color, linewidth=1, linestyle="--")
    ax.set_ylim(0, 1)
    if accounts:
        ax.legend(loc="upper right", fontsize="small")
    fig.savefig(path, dpi=100)


def plot_series(days: Sequence[float], values: Sequence[float], title: str, ylabel: str,
                path: Path, *, ylim: tuple[float, float] | None = None) -> None:
    fig, ax = _figure(title, ylabel)
    ax.step(days, values, where="post", linewidth=1)
    if ylim:
        ax.set_ylim(*ylim)
    fig.savefig(path, dpi=100)


def write_plots(records: Sequence[JobRecord], total_gpus: int, shares: WindowShares,
                top_accounts: Sequence[str], out: Path) -> list[Path]:
    """Write the three PNGs into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    t0, bin_s, n = bins_for(records, PLOT_BINS)
    days = [(k * bin_s) / DAY_S for k in range(n)]
    paths = [out / "shares.png", out / "queue.png", out / "utilization.png"]
    plot_shares(shares, list(top_accounts)[:TOP_ACCOUNTS], t0, paths[0])
    plot_series(days, queue_length(records, t0, bin_s, n), "Queue length",
                "pending jobs (mean per bin)", paths[1])
    used = busy_gpus(records, t0, bin_s, n)
    plot_series(days, [u / total_gpus for u in used], "GPU utilization",
                "fraction of GPUs in use (mean per bin)", paths[2], ylim=(0, 1.05))
    return paths
