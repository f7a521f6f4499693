"""``gpuq logs``: print a job's output, or follow it while the job runs."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import BinaryIO

import click

from cli.client import EXIT_INTERRUPTED, ApiClient
from cli.context import Env, pass_env
from cli.render import TERMINAL_STATES

#: Bytes asked for per read; the most output held in memory at once.
CHUNK_BYTES = 1024 * 1024
#: ``-f`` without ``--from-start`` begins with about this much of the end, from a line start.
TAIL_BYTES = 8 * 1024
#: Seconds between polls while the job runs and has nothing new.
POLL_S = 0.5
EXIT_BROKEN_PIPE = 141


def read_chunk(api: ApiClient, job_id: int, offset: int,
               limit: int = CHUNK_BYTES) -> tuple[bytes, int, str, int]:
    """``(data, next offset, job state, log size)`` of one read at ``offset``."""
    resp = api.request("GET", f"/v1/jobs/{job_id}/log", not_found=f"no job {job_id}",
                       params={"offset": offset, "limit": limit})
    data = resp.content
    h = resp.headers
    next_offset = int(h.get("X-Gpuq-Next-Offset") or offset + len(data))
    size = int(h.get("X-Gpuq-Log-Size") or next_offset)
    return data, next_offset, h.get("X-Gpuq-Job-State", ""), size


def tail_offset(api: ApiClient, job_id: int) -> int:
    """Where ``-f`` starts: the start of the first whole line of the last TAIL_BYTES."""
    _, _, _, size = read_chunk(api, job_id, 0, limit=1)
    if size <= TAIL_BYTES:
        return 0
    start = size - TAIL_BYTES
    data, _, _, _ = read_chunk(api, job_id, start, limit=TAIL_BYTES)
    newline = data.find(b"\n")
    return start + newline + 1 if newline >= 0 else start


def copy_log(api: ApiClient, job_id: int, offset: int, out: BinaryIO, *, follow: bool,
             sleep: Callable[[float], None] | None = None, poll_s: float | None = None) -> int:
    """Write the log from ``offset`` to ``out``; returns the offset reached.

    Without ``follow``: until a read returns nothing. With it: until the job has ended
    and a read made after it was seen ended returns nothing (the node ships all output
    before it reports the end, so nothing is missed).
    """
    sleep = sleep or time.sleep
    poll_s = POLL_S if poll_s is None else poll_s
    seen_end = False
    while True:
        data, offset_next, state, _ = read_chunk(api, job_id, offset)
        if data:
            out.write(data)
            out.flush()
            offset = offset_next
            continue
        if not follow or (seen_end and state in TERMINAL_STATES):
            return offset
        if state in TERMINAL_STATES:
            seen_end = True
            continue
        sleep(poll_s)


@click.command("logs")
@click.argument("job_id", type=int, metavar="JOB")
@click.option("-f", "--follow", is_flag=True, help="Keep printing output until the job ends.")
@click.option("--from-start", is_flag=True,
              help="With -f: print all output so far first, not only the last lines.")
@pass_env
@click.pass_context
def logs(ctx: click.Context, env: Env, job_id: int, follow: bool, from_start: bool) -> None:
    """Print a job's output (stdout and stderr, as the job wrote them)."""
    sys.stdout.flush()
    out = sys.stdout.buffer
    try:
        with env.client() as api:
            offset = tail_offset(api, job_id) if follow and not from_start else 0
            copy_log(api, job_id, offset, out, follow=follow)
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
