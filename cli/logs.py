"""``gpuq logs``: print a job's output, or follow it while the job runs."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import BinaryIO, NamedTuple

import click

from gpuq.cli.client import EXIT_INTERRUPTED, ApiClient
from gpuq.cli.context import Env, pass_env
from gpuq.cli.render import TERMINAL_STATES

#: Bytes asked for per read; the most output held in memory at once.
CHUNK_BYTES = 1024 * 1024
#: ``-f`` without ``--from-start`` begins with about this much of the end, from a line start.
TAIL_BYTES = 8 * 1024
#: Seconds between polls while the job runs and has nothing new.
POLL_S = 0.5
EXIT_BROKEN_PIPE = 141


class Chunk(NamedTuple):
    """One read of a job's log."""

    data: bytes
    next_offset: int
    state: str
    #: Bytes stored so far.
    size: int
    #: The run (attempt) the log is of (``X-Gpuq-Attempt``); ``None`` from a server that
    #: does not say.
    attempt: int | None


def read_chunk(api: ApiClient, job_id: int, offset: int, limit: int = CHUNK_BYTES,
               attempt: int | None = None) -> Chunk:
    """One read at ``offset`` of the current run's log, or of ``attempt``'s."""
    params = {"offset": offset, "limit": limit}
    if attempt is not None:
        params["attempt"] = attempt
    resp = api.request("GET", f"/v1/jobs/{job_id}/log", not_found=f"no job {job_id}",
                       params=params)
    data = resp.content
    h = resp.headers
    next_offset = int(h.get("X-Gpuq-Next-Offset") or offset + len(data))
    size = int(h.get("X-Gpuq-Log-Size") or next_offset)
    run = h.get("X-Gpuq-Attempt")
    return Chunk(data, next_offset, h.get("X-Gpuq-Job-State", ""), size,
                 int(run) if run and run.isdigit() else None)


def tail_offset(api: ApiClient, job_id: int) -> tuple[int, int | None]:
    """Where ``-f`` starts: the start of the first whole line of the last TAIL_BYTES; and
    the attempt whose log that offset is in."""
    probe = read_chunk(api, job_id, 0, limit=1)
    if probe.size <= TAIL_BYTES:
        return 0, probe.attempt
    start = probe.size - TAIL_BYTES
    data = read_chunk(api, job_id, start, limit=TAIL_BYTES, attempt=probe.attempt).data
    newline = data.find(b"\n")
    return (start + newline + 1 if newline >= 0 else start), probe.attempt


def copy_log(api: ApiClient, job_id: int, offset: int, out: BinaryIO, *, follow: bool,
             attempt: int | None = None, run: int | None = None,
             sleep: Callable[[float], None] | None = None, poll_s: float | None = None) -> int:
    """Write the log from ``offset`` to ``out``; returns the offset reached.

    Without ``follow``: until a read returns nothing. With it: until the job has ended
    and a read made after it was seen ended returns nothing (the node ships all output
    before it reports the end, so nothing is missed).

    ``attempt``: read that run's log. ``None``: the current run's; ``run`` is the attempt
    ``offset`` is in (``None``: the first read's). When the job was requeued meanwhile (a
    new run, whose log starts again at 0), go on with the new run's log from its start,
    and say so on stderr.
    """
    sleep = sleep or time.sleep
    poll_s = POLL_S if poll_s is None else poll_s
    seen_end = False
    while True:
        chunk = read_chunk(api, job_id, offset, attempt=attempt)
        if chunk.attempt is not None and run is not None and chunk.attempt != run:
            # A new run: what was read is from its log at the old run's offset. Read its
            # log from the start.
            click.echo(f"gpuq: job {job_id} was requeued; the output of attempt "
                       f"{chunk.attempt} follows", err=True)
            offset, run, seen_end = 0, chunk.attempt, False
            continue
        run = chunk.attempt if chunk.attempt is not None else run
        if chunk.data:
            out.write(chunk.data)
            out.flush()
            offset = chunk.next_offset
            continue
        if not follow or (seen_end and chunk.state in TERMINAL_STATES):
            return offset
        if chunk.state in TERMINAL_STATES:
            seen_end = True
            continue
        sleep(poll_s)


@click.command("logs")
@click.argument("job_id", type=int, metavar="JOB")
@click.option("-f", "--follow", is_flag=True, help="Keep printing output until the job ends.")
@click.option("--from-start", is_flag=True,
              help="With -f: print all output so far first, not only the last lines.")
@click.option("--attempt", type=click.IntRange(1), metavar="N",
              help="The output of run N of a requeued job [the current run].")
@pass_env
@click.pass_context
def logs(ctx: click.Context, env: Env, job_id: int, follow: bool, from_start: bool,
         attempt: int | None) -> None:
    """Print a job's output (stdout and stderr, as the job wrote them).

    A job that was requeued (its node failed) has a log per run: this prints the current
    run's, and -f goes on with the next run's if the job is requeued meanwhile.
    """
    if follow and attempt is not None:
        raise click.UsageError("-f follows the current run; --attempt reads an earlier one")
    sys.stdout.flush()
    out = sys.stdout.buffer
    try:
        with env.client() as api:
            offset, run = 0, None
            if follow and not from_start:
                offset, run = tail_offset(api, job_id)
            copy_log(api, job_id, offset, out, follow=follow, attempt=attempt, run=run)
    except KeyboardInterrupt:
        ctx.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (gpuq logs 42 | head): stop quietly, and keep Python from
        # complaining when it flushes stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        ctx.exit(EXIT_BROKEN_PIPE)
