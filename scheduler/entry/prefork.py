"""``gpuq server --workers N``: the HTTP API in N forked processes, the scheduling loop in
a process of its own, and a supervisor above them (gunicorn's prefork model).

The supervisor (the process ``gpuq server`` started):

1. refuses SQLite (``check``); empties ``DATA_DIR/metrics-multiproc`` and names it in
   ``PROMETHEUS_MULTIPROC_DIR`` before anything imports prometheus_client (scheduler/
   metrics.py: the histograms of every process are summed at each scrape);
2. migrates and bootstraps the database (``build_context``), then disposes of its engine;
3. binds the listening socket (``SO_REUSEADDR``);
4. forks the N API processes and the loop process, and from then on only waits: it
   never starts a thread nor opens a database connection, so that it can fork again,
   safely, to replace a process that dies (logged, and restarted at once, or after a
   growing backoff when it died within ``YOUNG_S`` of its start).

SIGTERM or SIGINT to the supervisor: SIGTERM to every child (uvicorn stops accepting and
finishes the requests in flight, the loop finishes its cycle), SIGKILL to any child still
there after ``GRACE_S``, exit status 0. Each child also gets SIGTERM should the supervisor
die any other way (``PR_SET_PDEATHSIG``), so none is left orphaned.

The loop runs in a child, not in the supervisor, because the supervisor must stay free of
threads and pooled connections to fork replacements safely, and the loop is a thread that
holds connections; as a child it also has a core of its own, and is restarted like any
other if it dies.

* An API process builds its own engine, context and app and serves the inherited socket
  with ``uvicorn.Server.run(sockets=[sock])`` (the kernel hands each connection to one of
  the processes accepting). Its ``ctx.wake`` is a ``WakeSender`` (scheduler/runtime/wakeups.py):
  NOTIFY ``gpuq_wake``. Its responses carry ``X-Gpuq-Pid``, the process that served them.
* The loop process runs ``SchedulerLoop`` and a ``WakeListener`` that wakes it on each
  NOTIFY. As with server replicas, the loop's advisory lock makes loops take turns.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from gpuq.config import Settings
from gpuq.files import private_dir
from gpuq.scheduler.runtime.gcfreeze import freeze_startup_objects

log = logging.getLogger(__name__)

#: Seconds the children have to stop after SIGTERM before they get SIGKILL.
GRACE_S = 20.0
#: A child that dies younger than this, in seconds, is restarted after a backoff that
#: doubles each time (from the first value to the second); an older one at once.
YOUNG_S = 10.0
BACKOFF_S = (1.0, 30.0)


class SetupError(Exception):
    """A setting that rules the prefork mode out: the message names it and the fix."""


def check(settings: Settings) -> None:
    url = make_url(settings.effective_database_url)
    if url.get_backend_name() != "postgresql":
        n = settings.api_workers
        raise SetupError(
            f"--workers {n} (GPUQ_API_WORKERS / api_workers = {n}) needs PostgreSQL, and the "
            f"database is {url.get_backend_name()} ({url.render_as_string()}): the API "
            "processes wake the scheduling loop, a process of its own, with PostgreSQL's "
            "LISTEN/NOTIFY, and SQLite takes one writer at a time. Set --database-url "
            "(GPUQ_DATABASE_URL) to a postgresql+psycopg:// URL, or run with --workers 1.")


def metrics_dir(settings: Settings) -> Path:
    return settings.data_dir / "metrics-multiproc"


def _prepare_metrics(path: Path) -> None:
    """An empty directory for the processes' metric files, named before prometheus_client
    is imported (it chooses where values live at import)."""
    if "prometheus_client" in sys.modules and \
            os.environ.get("PROMETHEUS_MULTIPROC_DIR") != str(path):
        raise RuntimeError("prometheus_client was imported before the prefork server set "
                           "PROMETHEUS_MULTIPROC_DIR: the metrics would not add up")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every API process accepts on."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise SetupError(f"cannot listen on {host}:{port}: {e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise SetupError(f"cannot listen on {host}:{port}: {e.strerror or e} (is the port "
                         "taken? set --port / GPUQ_LISTEN_PORT)") from None
    return sock


class _NoDispatch:
    """The supervisor's context dispatches nothing (it only migrates and bootstraps)."""

    def launch(self, node: str, job_id: int) -> None:
        raise RuntimeError("the supervisor does not dispatch")

    def kill(self, node: str, job_id: int) -> None:
        raise RuntimeError("the supervisor does not dispatch")


class _StopFlag:
    """SIGTERM/SIGINT set ``requested`` (installed in a child, before its work starts)."""

    def __init__(self) -> None:
        self.requested = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, _signum: int, _frame: Any) -> None:
        self.requested = True


class _PidHeader:
    """ASGI wrapper: each HTTP response says which process served it (``X-Gpuq-Pid``)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.header = (b"x-gpuq-pid", str(os.getpid()).encode())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def _send(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        return await self.app(scope, receive, _send)


def _serve_api(settings: Settings, sock: socket.socket, dsn: str) -> None:
    """An API process: its own context and app, uvicorn on the inherited socket."""
    stop = _StopFlag()
    import uvicorn

    from gpuq.scheduler.api.app import create_app
    from gpuq.scheduler.runtime.context import open_context
    from gpuq.scheduler.runtime.wakeups import WakeSender

    ctx = open_context(settings)
    sender = WakeSender(dsn)
    ctx.wake = sender.wake
    app = _PidHeader(create_app(ctx))
    freeze_startup_objects()
    if stop.requested:
        return
    sender.start()
    try:
        server = uvicorn.Server(uvicorn.Config(
            app, log_level="info", access_log=False,
            timeout_graceful_shutdown=int(GRACE_S) - 5))
        server.run(sockets=[sock])  # returns on SIGTERM/SIGINT, requests finished
    finally:
        sender.stop()
        ctx.sessions.kw["bind"].dispose()


def _run_loop(settings: Settings, sock: socket.socket, dsn: str) -> None:
    """The loop process: the scheduling loop, woken by the API processes' NOTIFYs."""
    stop = _StopFlag()
    sock.close()  # this process serves no HTTP
    from gpuq.scheduler.runtime.context import open_context
    from gpuq.scheduler.runtime.loop import SchedulerLoop
    from gpuq.scheduler.runtime.wakeups import WakeListener

    if settings.loop_nice:
        try:
            os.nice(settings.loop_nice)
        except OSError as e:
            log.warning("could not lower the loop's priority (loop_nice %d): %s",
                        settings.loop_nice, e)
    ctx = open_context(settings)
    loop = SchedulerLoop(ctx, rest=False)  # the API processes have their own
    freeze_startup_objects()
    listener = WakeListener(dsn, loop.wake)
    loop.start()
    listener.start()  # wakes the loop once it listens: a cycle at start
    try:
        while not stop.requested:
            time.sleep(0.2)
    finally:
        listener.stop()
        loop.stop()
        ctx.sessions.kw["bind"].dispose()


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the prctl
        os._exit(0)


@dataclass
class _Child:
    name: str
    target: Callable[[], None]
    pid: int = 0
    started: float = 0.0
    backoff_s: float = BACKOFF_S[0]
    restart_at: float | None = None


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class Supervisor:
    """Forks the children, replaces those that die, stops them all on SIGTERM/SIGINT."""

    def __init__(self, children: list[_Child], metrics_path: Path | None = None) -> None:
        self.children = children
        self.metrics_path = metrics_path
        self.stopping = False
        self.pid = os.getpid()

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for child in self.children:
            self._fork(child)
        while not self.stopping:
            self._reap()
            now = time.monotonic()
            for child in self.children:
                if child.restart_at is not None and now >= child.restart_at \
                        and not self.stopping:
                    self._fork(child)
            time.sleep(0.1)
        self._stop_all()
        log.info("gpuq server: stopped")
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            log.info("gpuq server: %s, stopping", signal.Signals(signum).name)
        self.stopping = True

    def _fork(self, child: _Child) -> None:
        if threading.active_count() > 1:  # never expected: fork copies no other thread
            log.warning("forking with %d threads", threading.active_count())
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the supervisor's code
            code = 1
            try:
                _die_with_parent(self.pid)
                child.target()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                log.exception("the %s process failed", child.name)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        child.pid, child.started, child.restart_at = pid, time.monotonic(), None
        log.info("gpuq server: started the %s process (pid %d)", child.name, pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = next((c for c in self.children if c.pid == pid), None)
            if child is None:
                continue
            child.pid = 0
            if self.metrics_path is not None:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(pid, str(self.metrics_path))
            if self.stopping:
                continue
            lived = time.monotonic() - child.started
            delay = 0.0 if lived >= YOUNG_S else child.backoff_s
            child.backoff_s = BACKOFF_S[0] if lived >= YOUNG_S else \
                min(child.backoff_s * 2, BACKOFF_S[1])
            log.error("gpuq server: the %s process (pid %d) %s after %.0f s; restarting it"
                      " in %.0f s", child.name, pid, _describe(status), lived, delay)
            child.restart_at = time.monotonic() + delay

    def _stop_all(self) -> None:
        for child in self.children:
            child.restart_at = None
            if child.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while any(c.pid for c in self.children) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for child in self.children:
            if child.pid:
                log.warning("gpuq server: the %s process (pid %d) did not stop within "
                            "%.0f s; killing it", child.name, child.pid, GRACE_S)
                try:
                    os.kill(child.pid, signal.SIGKILL)
                    os.waitpid(child.pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
                child.pid = 0


def run(settings: Settings) -> int:
    """Serve with ``settings.api_workers`` API processes until SIGTERM/SIGINT."""
    check(settings)
    path = metrics_dir(settings)
    private_dir(settings.data_dir)
    _prepare_metrics(path)
    from gpuq.scheduler.entry.bootstrap import build_context
    from gpuq.scheduler.runtime import metrics
    from gpuq.scheduler.runtime.wakeups import conninfo

    metrics.enable_multiprocess(path)
    dsn = conninfo(settings.effective_database_url)
    ctx = build_context(settings, dispatcher=_NoDispatch())
    ctx.sessions.kw["bind"].dispose()  # no connection crosses a fork
    del ctx
    sock = bind(settings.listen_host, settings.listen_port)
    children = [_Child("scheduling loop", lambda: _run_loop(settings, sock, dsn))]
    children += [_Child(f"api-{i}", lambda: _serve_api(settings, sock, dsn))
                 for i in range(1, settings.api_workers + 1)]
    log.info("gpuq server on http://%s:%s: %d API processes and the scheduling loop "
             "(supervisor pid %d)", settings.listen_host, settings.listen_port,
             settings.api_workers, os.getpid())
    try:
        return Supervisor(children, path).run()
    finally:
        sock.close()
