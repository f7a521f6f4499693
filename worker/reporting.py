"""Tell the server what a job run did: its output (in bounded chunks, resuming from the
offset the server acknowledged) and its state changes (RUNNING, then the final state,
which is sent only once all of the output is in, with the job's GPUs at its end: its
*end sample*, ``worker.usage.finish``). Every report and chunk names the run's attempt.

When the server says a run is not the job's current attempt (the log's 409 with
``"stale": true``) or not this node's job any more (404), the run is marked *stale*
(``stale`` in its directory): the rest of its output is dropped, nothing more is
reported, and it is retired locally once it has ended. Killing it is the heartbeat's
business (the server lists it in ``kill``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from gpuq.wire.nodes import JobEndSample, JobStateReport
from gpuq.wire.states import JobState
from gpuq.worker import jobdir as jd
from gpuq.worker import usage
from gpuq.worker.client import ApiError, NodeClient
from gpuq.worker.observe import Observed

log = logging.getLogger(__name__)
#: Chunks shipped per job per pass, so one chatty job cannot starve the others.
MAX_CHUNKS_PER_PASS = 8
#: The most ``JobEndSample.ended_s_ago`` takes (a year).
MAX_END_AGE_S = 365 * 86400.0


class Stale(Exception):
    """The server takes nothing more about this run."""


class Reporter:
    def __init__(self, api: NodeClient, *, chunk_bytes: int = 256 * 1024,
                 wall: Callable[[], float] = time.time) -> None:
        self.api, self.chunk_bytes, self.wall = api, chunk_bytes, wall
        self._complained: dict[jd.RunKey, str] = {}

    def sync(self, obs: Observed) -> bool:
        """One pass for one run; ``True`` once there is nothing more to send (retire it).

        Raises ``ServerUnavailable`` when the server cannot be reached.
        """
        d, key = obs.dir, obs.key
        if (d / jd.STALE).exists():
            return obs.state in jd.FINAL
        try:
            if obs.started and not jd.read_text(d / jd.REPORTED):
                running = JobStateReport(attempt=key.attempt, state=JobState.RUNNING)
                self.api.report(key.job_id, running)
                jd.write_text_atomic(d / jd.REPORTED, jd.RUNNING)
            caught_up = self.ship(d, key)
            if obs.state not in jd.FINAL or not caught_up:
                return False
            now = self._report_end(obs)
            jd.write_text_atomic(d / jd.REPORTED, obs.state)
            log.info("job %s: reported %s (server: %s)", key, obs.state, now)
            self._complained.pop(key, None)
            return True
        except Stale as e:
            self._mark_stale(d, key, str(e))
            return obs.state in jd.FINAL
        except ApiError as e:
            if e.status == 404:
                self._mark_stale(d, key, "the server says the job is not assigned to this node")
                return obs.state in jd.FINAL
            if self._complained.get(key) != str(e):
                log.error("job %s: the server refused a report: %s", key, e)
                self._complained[key] = str(e)
            return False

    def _report_end(self, obs: Observed) -> str:
        """Send the run's final state with its end sample (``JobManager.end_sample`` took
        it); once more without it if the server refuses the report (one older than the
        field refuses it with a 422)."""
        report = {"attempt": obs.key.attempt, "state": obs.state, "exit_code": obs.exit_code,
                  "reason": obs.reason[:256]}
        end = self.end_sample(obs.dir)
        if end is None:
            return self.api.report(obs.key.job_id, JobStateReport.model_validate(report))
        try:
            return self.api.report(obs.key.job_id, JobStateReport.model_validate(
                {**report, "end_sample": end}))
        except ApiError as e:
            if e.status != 422:
                raise
            log.warning("job %s: the server refused the end sample (%s); reporting the end "
                        "without it", obs.key, e)
            return self.api.report(obs.key.job_id, JobStateReport.model_validate(report))

    def end_sample(self, d: Path) -> JobEndSample | None:
        """The run's end sample as ``usage.json`` keeps it, aged now (``ended_s_ago``)."""
        try:
            record = jd.read_json(d / jd.USAGE)
        except ValueError:
            return None
        sample, ended = usage.end_sample(record), usage.ended_at(record)
        if sample is None:
            return None
        ago = max(0.0, self.wall() - ended) if ended is not None else 0.0
        return JobEndSample(sample=sample, ended_s_ago=round(min(ago, MAX_END_AGE_S), 3))

    def _mark_stale(self, d: Path, key: jd.RunKey, why: str) -> None:
        self._complained.pop(key, None)
        log.warning("job %s: %s; dropping the rest of this run's output, and keeping its "
                    "files in done/ once it has ended", key, why)
        with contextlib.suppress(FileNotFoundError):
            jd.write_text_atomic(d / jd.STALE, why)

    def ship(self, d: Path, key: jd.RunKey) -> bool:
        """Send output the server does not have yet; ``True`` when it has all of it.
        Raises ``Stale`` when the server takes no more output of this run."""
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
                ack = self.api.ship_log(key.job_id, key.attempt, acked, data)
                if ack.stale:
                    raise Stale(f"the server says attempt {key.attempt} is not the job's "
                                "current one")
                if not ack.resend and ack.size <= acked:
                    log.warning("job %s: the server took none of the output at offset %d",
                                key, acked)
                    break
                acked = ack.size
                jd.write_text_atomic(d / jd.SHIPPED, str(acked))
        return acked >= os.path.getsize(path)
