"""Tell the server what a job did: its output (in bounded chunks, resuming from the offset
the server acknowledged) and its state changes (RUNNING, then the final state, which is
sent only once all of the output is in)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler.api.schemas import JobStateReport
from worker import jobdir as jd
from worker.client import ApiError, NodeClient

if TYPE_CHECKING:
    from worker.jobs import Observed

log = logging.getLogger(__name__)
#: Chunks shipped per job per pass, so one chatty job cannot starve the others.
MAX_CHUNKS_PER_PASS = 8


class Reporter:
    def __init__(self, api: NodeClient, *, chunk_bytes: int = 256 * 1024) -> None:
        self.api, self.chunk_bytes = api, chunk_bytes
        self._complained: dict[int, str] = {}

    def sync(self, obs: Observed) -> bool:
        """One pass for one job; ``True`` once the server holds everything (retire it).

        Raises ``ServerUnavailable`` when the server cannot be reached.
        """
        d, job_id = obs.dir, obs.job_id
        try:
            if obs.started and not jd.read_text(d / jd.REPORTED):
                self.api.report(job_id, JobStateReport(state="RUNNING"))
                jd.write_text_atomic(d / jd.REPORTED, jd.RUNNING)
            caught_up = self.ship(d, job_id)
            if obs.state not in jd.FINAL or not caught_up:
                return False
            now = self.api.report(job_id, JobStateReport.model_validate(
                {"state": obs.state, "exit_code": obs.exit_code, "reason": obs.reason[:256]}))
            jd.write_text_atomic(d / jd.REPORTED, obs.state)
            log.info("job %s: reported %s (server: %s)", job_id, obs.state, now)
            self._complained.pop(job_id, None)
            return True
        except ApiError as e:
            if e.status == 404:
                self._complained.pop(job_id, None)
                log.warning("job %s: the server says it is not assigned to this node; "
                            "keeping its files in done/ and forgetting it", job_id)
                return True
            if self._complained.get(job_id) != str(e):
                log.error("job %s: the server refused a report: %s", job_id, e)
                self._complained[job_id] = str(e)
            return False

    def ship(self, d: Path, job_id: int) -> bool:
        """Send output the server does not have yet; ``True`` when it has all of it."""
        path = d / jd.LOG
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return True
        acked = int(jd.read_text(d / jd.SHIPPED, "0") or 0)
        if acked >= size:
            return True
        with open(path, "rb") as f:
            for _ in range(MAX_CHUNKS_PER_PASS):
                if acked >= size:
                    break
                f.seek(acked)
                data = f.read(min(self.chunk_bytes, size - acked))
                if not data:
                    break
                ack = self.api.ship_log(job_id, acked, data)
                if not ack.resend and ack.size <= acked:
                    log.warning("job %s: the server took none of the output at offset %d",
                                job_id, acked)
                    break
                acked = ack.size
                jd.write_text_atomic(d / jd.SHIPPED, str(acked))
        return acked >= os.path.getsize(path)
