from __future__ import annotations

import struct
from pathlib import Path

from gpuq.scheduler.sim import build_nodes, complete, parse_nodes, replay, write_outputs
from tests.sim.test_engine import random_jobs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plots_and_metrics_are_written(tmp_path: Path) -> None:
    jobs = random_jobs(5, 200)
    run = replay(jobs, build_nodes(parse_nodes("2x8")),
                 complete(None, {(j.user, j.account) for j in jobs}),
                 policy="fairshare+backfill", window_s=3600, step_s=600)
    written = write_outputs(run, tmp_path / "out", tmp_path / "jobs.csv")
    names = sorted(p.name for p in written)
    assert names == ["jobs.csv", "metrics.json", "queue.png", "shares.png",
                     "utilization.png"]
    for name in ("queue.png", "shares.png", "utilization.png"):
        width, height = png_size(tmp_path / "out" / name)
        assert (width, height) == (1000, 400)
