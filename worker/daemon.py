"""The worker daemon (``gpuq worker``): registers the node, sends heartbeats, runs what the
scheduler dispatches to it, and reports what its jobs do.

Threads: the main thread consumes the node's Celery queue; a heartbeat thread sends the
job runs (each with its GPUs' sample) and the GPU samples (health, and the processes on
each GPU that gpuq did not start), and acts on the reply; a poll thread ships job output
and reports state changes. SIGTERM or SIGINT stops consuming and the threads, and leaves the
job supervisors running (a restarted daemon re-adopts them); a second signal exits at once.

Fencing (``worker.lease``): each heartbeat or registration the scheduler accepts renews
the node's lease for the time the scheduler says (``FenceTerms``); the job supervisors
stop their jobs when it runs out, so a node cut off from the scheduler (this daemon
stopped or hung, the network cut) has stopped its jobs before the scheduler runs them
elsewhere. A daemon restarted before then renews it at its registration.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType

from celery import Celery
from celery.worker import state as celery_state

from gpuq.broker import make_celery
from gpuq.config import Settings
from gpuq.wire.nodes import FenceTerms, Heartbeat, JobRef, RegisterReply
from gpuq.wire.nodes import GpuSample as WireGpuSample
from gpuq.worker import jobdir as jd
from gpuq.worker.client import ApiError, NodeClient, ServerUnavailable
from gpuq.worker.gpus import GpuBackend, GpuSample, open_backend
from gpuq.worker.host import read_node_token, registration
from gpuq.worker.jobenv import Identity, identity_for, identity_policy
from gpuq.worker.jobs import JobManager
from gpuq.worker.lease import Keeper
from gpuq.worker.procs import JobProcesses, foreign_processes
from gpuq.worker.tasks import Handlers, register_tasks

log = logging.getLogger("gpuq.worker")
#: Longest wait between registration attempts, in seconds.
MAX_REGISTER_BACKOFF_S = 30.0
TASK_THREADS = 4


class Daemon:
    def __init__(self, settings: Settings, backend: GpuBackend, api: NodeClient, *,
                 identity: Callable[[str], Identity] = identity_for) -> None:
        self.settings, self.backend, self.api = settings, backend, api
        self.stop = threading.Event()
        self.manager = JobManager(state_dir=settings.effective_worker_state_dir,
                                  node=settings.node_name, api=api,
                                  kill_grace_s=settings.kill_grace_s, identity=identity,
                                  gpus=backend, cgroup_root=settings.worker_cgroup_root)
        #: Set when a launched job has started or a run started or ended (its supervisor
        #: wrote into the ``poke`` FIFO): the poll thread reports it at once.
        self.poke = threading.Event()
        self.handlers = Handlers(api, self.manager, on_started=self.poke.set)
        #: The node's lease (fencing, ``worker.lease``): renewed at each contact with the
        #: scheduler; each job's supervisor stops its job when it runs out.
        self.lease = Keeper(self.manager.lease_path)
        api.on_contact = self.lease.contact
        self.heartbeat_interval_s = settings.heartbeat_interval_s
        self._threads: list[threading.Thread] = []
        self._down_since: dict[str, str] = {}
        self._foreign_seen: dict[int, frozenset[int]] = {}
        self._unhealthy_seen: dict[int, str | None] = {}

    # --- registration and heartbeats -------------------------------------------------
    def register(self) -> RegisterReply | None:
        """Register, retrying until the server answers (``None`` if stopped first).
        A refused token (401/403) is not retried: it raises ``ApiError``."""
        body = registration(self.backend, cpus=self.settings.worker_cpus,
                            memory=self.settings.worker_memory_mib,
                            enforcement=self.manager.enforcement.summary())
        delay_s = 1.0
        while not self.stop.is_set():
            try:
                reply = self.api.register(body)
            except ServerUnavailable as e:
                log.warning("cannot reach the scheduler at %s to register (%s); "
                            "retrying in %.0f s", self.settings.server_url, e, delay_s)
            else:
                self.heartbeat_interval_s = reply.heartbeat_interval_s
                self._fence(reply.fence)
                log.info("registered node %s with %d GPU(s) (%s backend); consuming %s",
                         reply.node, len(body.gpus), self.backend.name, reply.queue)
                return reply
            self.stop.wait(delay_s)
            delay_s = min(MAX_REGISTER_BACKOFF_S, delay_s * 2)
        return None

    def heartbeat(self) -> None:
        procs = self.manager.job_processes()
        self.backend.set_busy(procs.gpus)
        samples = self.backend.samples()
        terms = self.lease.terms
        listed_at = datetime.now(UTC)  # before the list: a job launched now may be in it
        body = Heartbeat(listed_at=listed_at, jobs=self.manager.jobs(samples),
                         gpus=[self._wire_sample(s, procs) for s in samples],
                         fence=FenceTerms(after_s=terms[0], grace_s=terms[1],
                                          hold_on_database_outage=terms[2]) if terms else None)
        try:
            reply = self.api.heartbeat(body)
        except ApiError as e:
            if e.status != 409:
                raise
            log.warning("the scheduler has forgotten this node (%s); registering again", e)
            self.register()
            return
        if reply.fence is not None:
            self._fence(reply.fence)
        # Kills first: a launch of a job's next attempt waits for its older run here to end.
        for ref in reply.kill:
            self._kill(ref)
        for job_id in reply.launch:
            try:
                self.handlers.launch(job_id)
            except (ApiError, ServerUnavailable) as e:  # sent again at a later heartbeat
                log.warning("heartbeat: launch %s failed (%s); the scheduler sends it again",
                            job_id, e)

    def _fence(self, terms: FenceTerms | None) -> None:
        """Keep the scheduler's fence (``None``: an older scheduler: no fencing)."""
        if terms is None:
            if self.lease.fencing or self.lease.path.exists():
                log.warning("the scheduler gives no fence: jobs here run on when it cannot "
                            "be reached")
            self.lease.clear()
            return
        if not self.lease.fencing:
            log.info("fence: jobs here stop %g s after the last heartbeat the scheduler "
                     "accepted (SIGTERM, then SIGKILL %g s later)", terms.after_s,
                     terms.grace_s)
        self.lease.set_terms(terms.after_s, terms.grace_s, terms.hold_on_database_outage)

    def _kill(self, ref: JobRef) -> None:
        if self.manager.kill(ref.job_id, ref.attempt, ref.grace_s):
            log.info("heartbeat: the scheduler wants job %s.%s dead", ref.job_id, ref.attempt)

    def _wire_sample(self, s: GpuSample, procs: JobProcesses) -> WireGpuSample:
        foreign = foreign_processes(s.processes, procs, held=s.index in procs.gpus)
        pids = frozenset(p.pid for p in foreign)
        if pids != self._foreign_seen.get(s.index, frozenset()):
            if foreign:
                log.info("GPU %d: in use by processes gpuq did not start (no job gets it): %s",
                         s.index, "; ".join(f"pid {p.pid} ({p.user}: {p.command})"
                                            for p in foreign))
            else:
                log.info("GPU %d: no process gpuq did not start is left on it", s.index)
            self._foreign_seen[s.index] = pids
        if not s.healthy and self._unhealthy_seen.get(s.index) != s.health_reason:
            log.error("GPU %d is unhealthy (no job gets it): %s", s.index, s.health_reason)
        self._unhealthy_seen[s.index] = None if s.healthy else s.health_reason
        return WireGpuSample(
            index=s.index, utilization_pct=s.utilization_pct, memory_used_mib=s.memory_used_mib,
            power_w=s.power_w, energy_j=s.energy_j, temperature_c=s.temperature_c,
            healthy=s.healthy,
            health_reason=s.health_reason[:256] if s.health_reason is not None else None,
            foreign_processes=foreign[:256])

    # --- threads -----------------------------------------------------------------------
    def _every(self, name: str, interval_s: Callable[[], float], fn: Callable[[], None],
               wake: threading.Event | None = None) -> None:
        """``fn`` every ``interval_s()`` seconds, or sooner when ``wake`` is set."""
        while not self.stop.is_set():
            try:
                fn()
                if self._down_since.pop(name, None):
                    log.info("%s: the scheduler answers again", name)
            except ServerUnavailable as e:
                if name not in self._down_since:
                    log.warning("%s: cannot reach the scheduler: %s", name, e)
                    self._down_since[name] = str(e)
            except Exception:
                log.exception("%s failed", name)
            if wake is None:
                self.stop.wait(interval_s())
            else:
                wake.wait(interval_s())
                wake.clear()

    def start_threads(self) -> None:
        for name, interval, fn, wake in (
            ("heartbeat", lambda: self.heartbeat_interval_s, self.heartbeat, None),
            ("poll", lambda: self.settings.job_poll_interval_s, self.manager.poll, self.poke),
        ):
            t = threading.Thread(target=self._every, args=(name, interval, fn, wake),
                                 name=f"gpuq-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._listen_pokes, name="gpuq-pokes", daemon=True)
        t.start()
        self._threads.append(t)

    def _listen_pokes(self) -> None:
        """Wake the poll thread when a supervisor writes into the ``poke`` FIFO (its job
        started or ended): a freed GPU is reported at once, not at the next pass."""
        try:
            fd = jd.open_poke(self.manager.jobs_dir.parent)
        except OSError as e:
            log.warning("no poke FIFO (%s): job ends are reported every %.2f s", e,
                        self.settings.job_poll_interval_s)
            return
        try:
            while not self.stop.is_set():
                ready, _, _ = select.select([fd], [], [], 1.0)
                if ready:
                    jd.drain_poke(fd)
                    self.poke.set()
        finally:
            os.close(fd)

    def stop_threads(self, timeout_s: float = 15.0) -> None:
        self.stop.set()
        self.poke.set()
        for t in self._threads:
            t.join(timeout_s)

    # --- the queue ---------------------------------------------------------------------
    def consume(self, app: Celery, queue: str) -> None:
        """Run a Celery worker on ``queue`` in this thread until a signal stops it."""
        register_tasks(app, self.handlers)
        worker = app.WorkController(
            hostname=f"gpuq@{self.settings.node_name}", queues=[queue], pool="threads",
            concurrency=TASK_THREADS, without_heartbeat=True, without_mingle=True,
            without_gossip=True, loglevel=logging.getLogger().getEffectiveLevel())
        worker.start()


def _install_signals(daemon: Daemon) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        if daemon.stop.is_set():
            log.warning("second %s: exiting now (job supervisors keep running)",
                        signal.Signals(signum).name)
            os._exit(1)
        log.info("%s: shutting down (job supervisors keep running)",
                 signal.Signals(signum).name)
        daemon.stop.set()
        celery_state.should_stop = 0  # the consumer loop raises WorkerShutdown

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def run(settings: Settings) -> None:
    """The ``gpuq worker`` entry point; returns after a graceful shutdown."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    token = read_node_token(settings)
    backend = open_backend(settings)
    identity = identity_policy(settings.worker_run_as,
                               allow_root=settings.worker_allow_root_jobs)
    api = NodeClient(settings.server_url, settings.node_name, token)
    daemon: Daemon | None = None
    try:
        daemon = Daemon(settings, backend, api, identity=identity)
        _install_signals(daemon)
        adopted = [str(k) for k in daemon.manager.runs()]
        if adopted:
            log.info("re-adopting %d job run(s) from %s: %s", len(adopted),
                     daemon.manager.jobs_dir, ", ".join(adopted))
        reply = daemon.register()
        if reply is None:
            return
        daemon.start_threads()
        try:
            daemon.consume(make_celery(settings), reply.queue)
            asked = daemon.stop.is_set()
            log.info("stopped consuming %s", reply.queue)
        finally:
            daemon.stop_threads()
        if not asked:
            # Celery gave up (an "Unrecoverable error" above, e.g. a message it could
            # not decode): exit 1, for systemd (Restart=on-failure) or gpuq up to restart
            # the worker; its jobs keep running and are re-adopted.
            log.error("the task consumer stopped without being asked to; exiting with "
                      "status 1 to be restarted")
            raise SystemExit(1)
        log.info("worker stopped")
    finally:
        if daemon is not None:
            daemon.manager.close()
        api.close()
        backend.close()
