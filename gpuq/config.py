"""Configuration: a TOML file plus ``GPUQ_*`` environment variables (pydantic-settings).

Precedence, highest first: keyword arguments, environment variables, the TOML file named by
``GPUQ_CONFIG`` (default ``~/.config/gpuq/server.toml`` when it exists), then the defaults below.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

#: Billing weight per GPU model, in billed GPU-seconds per GPU-second. Relative to an
#: A100-40GB = 4.0 (the Alliance's RGU table); a model not listed here is billed 1.0.
DEFAULT_GPU_BILLING_WEIGHTS: dict[str, float] = {
    "A100-40GB": 4.0,
    "A100-80GB": 4.8,
    "H100-80GB": 12.2,
    "H200-141GB": 14.0,
    "V100-32GB": 2.6,
    "V100-16GB": 2.2,
    "T4-16GB": 1.3,
    "P100-16GB": 1.1,
    "P100-12GB": 1.0,
}


#: libpq's multi-host form of a PostgreSQL URL: hosts (each with its port) separated by
#: commas in the authority, e.g. ``postgresql+psycopg://gpuq@db1:5432,db2:5432/gpuq``.
_MULTI_HOST = re.compile(r"^(?P<scheme>postgresql(?:\+\w+)?://)(?P<user>[^@/?#]*@)?"
                         r"(?P<hosts>[^/?#]*,[^/?#]*)(?P<path>/[^?#]*)?(?:\?(?P<query>.*))?$")


def sqlalchemy_database_url(url: str) -> str:
    """``url`` as SQLAlchemy reads it. libpq's multi-host form, which SQLAlchemy cannot
    parse (it takes ``db1:5432,db2`` for one host and port), is rewritten to SQLAlchemy's:
    ``postgresql+psycopg://gpuq@/gpuq?host=db1:5432&host=db2:5432`` (its query, e.g.
    ``target_session_attrs=read-write``, kept). Every other URL is returned as given."""
    m = _MULTI_HOST.match(url)
    if m is None:
        return url
    hosts = "&".join(f"host={h.strip()}" for h in m["hosts"].split(",") if h.strip())
    query = "&".join(q for q in (hosts, m["query"]) if q)
    return f"{m['scheme']}{m['user'] or ''}{m['path'] or '/'}?{query}"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("gpuq"))


def default_config_file() -> Path:
    return Path(platformdirs.user_config_dir("gpuq")) / "server.toml"


class Settings(BaseSettings):
    """Settings shared by ``gpuq server``, ``gpuq worker`` and ``gpuq up``."""

    model_config = SettingsConfigDict(env_prefix="GPUQ_", extra="ignore")

    # --- where things are -------------------------------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir)
    #: SQLAlchemy URL. Empty means a SQLite file ``gpuq.db`` in ``data_dir``. PostgreSQL
    #: with a standby: every host, and only the primary taken (libpq tries them in turn),
    #: ``postgresql+psycopg://gpuq@db1:5432,db2:5432/gpuq?target_session_attrs=read-write``.
    database_url: str = ""
    #: PostgreSQL ends a session of the server that sits idle inside a transaction for
    #: this many seconds (``idle_in_transaction_session_timeout``): a replica that vanished
    #: mid-cycle (host down or cut off, VM paused: no connection closes) holds the
    #: scheduling loop's lock, and every other replica's loop waits, until then. Keep it
    #: above the longest pause inside a cycle (the policy's run: 0.35 s at 100,000 jobs,
    #: bench/policy_cycle.py). 0: no limit (the database's own setting).
    idle_in_transaction_timeout_s: float = Field(30.0, ge=0)
    #: Celery broker URL. Empty means the local filesystem transport in ``data_dir/broker``
    #: (no external service; one machine only). Production: ``redis://host:6379/0``.
    broker_url: str = ""
    #: Polling interval of broker transports that poll (filesystem, SQL), in seconds. The
    #: filesystem broker's worker is woken by a message (inotify, Linux): there it is only
    #: the longest wait, and the delay where inotify is not to be had.
    broker_polling_interval_s: float = 0.1
    #: Redis through Sentinel: ``broker_url = "sentinel://s1:26379;sentinel://s2:26379;
    #: sentinel://s3:26379"`` (every Sentinel, ``;`` between them) and the name of the
    #: master they watch (``sentinel monitor <name> ...``). A Redis password goes in each
    #: URL (``sentinel://:secret@s1:26379``); the Sentinels' own, if they have one, here.
    broker_master_name: str = "mymaster"
    broker_sentinel_password: str = ""

    # --- the API server ------------------------------------------------------------------
    listen_host: str = "127.0.0.1"
    listen_port: int = 8642
    #: Where the first admin token is written (mode 0600). Empty: ``data_dir/admin.token``.
    admin_token_file: str = ""
    #: Seconds an API process trusts a token it has checked (its user, accounts, QOS)
    #: before looking it up again; an admin change empties the process's cache at once,
    #: other ``--workers`` processes see it within this time. 0: look up every request.
    auth_cache_s: float = Field(5.0, ge=0)
    #: API processes (``gpuq server --workers N``). 1: one process, the scheduling loop a
    #: thread in it. 2 or more (PostgreSQL only): the API in N forked processes sharing
    #: the port, the loop in a process of its own, woken over LISTEN/NOTIFY (rule of
    #: thumb: one per core on a busy cluster).
    api_workers: int = Field(1, ge=1)
    #: Keep each brief queue listing (``gpuq q``) per API process until PostgreSQL
    #: notifies a change of the jobs (scheduler/api/listing_cache.py). PostgreSQL only.
    listing_cache: bool = True
    #: The largest request body the API reads, bytes; a larger one is answered 413 before
    #: it is read (``scheduler/api/limits.py``). It must exceed the largest legitimate
    #: body: a job with a 1 MiB script and a 1 MiB environment (``gpuq.wire.common``'s
    #: limits), JSON-escaped; a worker's log chunk (256 KiB; at most 4 MiB per call).
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024)

    # --- scheduling ----------------------------------------------------------------------
    gpu_billing_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_GPU_BILLING_WEIGHTS)
    )
    #: The loop runs at least this often, in seconds, even without events.
    schedule_interval_s: float = 5.0
    #: After an event (submit, job end, node change) the loop waits this long, in seconds,
    #: so a burst of events makes one cycle.
    schedule_coalesce_s: float = 0.05
    #: A cycle an event woke (a job's end, a submit) looks at this many pending jobs, the
    #: first in priority order (plus those holding a claim), as Slurm's main scheduler does
    #: (``default_queue_depth``): a freed GPU gets its next job in milliseconds whatever the
    #: queue's length. The timer's cycle (``schedule_interval_s``) looks at the whole queue
    #: (backfill, every job's reason, priority and estimated start). 0: every cycle does.
    schedule_queue_depth: int = Field(100, ge=0)
    #: Niceness added to the loop's process under ``gpuq server --workers N`` (N > 1): a
    #: cycle over a long queue takes a core for a few hundred milliseconds, and the API
    #: processes' requests should not wait behind it (0: the same priority).
    loop_nice: int = Field(10, ge=0, le=19)
    #: A DISPATCHED job that its node has not reported after this many seconds is sent again.
    dispatch_resend_after_s: float = 20.0
    #: A node that has not sent a heartbeat for this many seconds is marked DOWN, and its
    #: jobs end NODE_FAIL (and go back to the queue if they allow it). Its silence counts
    #: only while the scheduler could hear it: after the server's own outage (a restart,
    #: its database away) every node gets this long again. It must exceed the fence:
    #: ``node_down_after_s >= fence_after_s + fence_grace_s + fence_margin_s``, so that a
    #: node cut off from the scheduler has stopped its jobs before they run elsewhere.
    node_down_after_s: float = Field(60.0, gt=0)
    #: Fencing: a worker stops its jobs itself (SIGTERM, ``fence_grace_s``, SIGKILL; the
    #: run ends NODE_FAIL) once this many seconds have passed since it sent the last
    #: heartbeat the scheduler accepted. Told to the workers when they register and in
    #: every heartbeat reply. Empty: ``node_down_after_s - fence_grace_s - fence_margin_s``
    #: (45 s with the defaults). At least two heartbeat intervals.
    fence_after_s: float | None = Field(None, gt=0)
    #: Seconds between a fenced job's SIGTERM and its SIGKILL.
    fence_grace_s: float = Field(10.0, ge=0)
    #: What ``node_down_after_s`` keeps beyond the fence and its grace period: the job
    #: supervisors' check period (0.5 s), processes slow to go after SIGKILL (the
    #: supervisor waits up to 5 s for them), and how far clocks run apart.
    fence_margin_s: float = Field(5.0, ge=1.0)
    #: A "database unavailable" answer (503) to a node counts as contact for its fence:
    #: while its database is away the scheduler cannot mark a node down, and afterwards
    #: every node gets a fresh timeout, so a database outage stops no job. Turn it off when
    #: server replicas on several hosts share the database (one may lose it while another
    #: keeps it and marks nodes down): then an outage longer than the fence stops the jobs.
    fence_hold_on_database_outage: bool = True
    #: Usage decays with this half-life, in seconds (Slurm's PriorityDecayHalfLife; 0: none).
    usage_half_life_s: float = 7 * 86400
    #: How often running jobs are charged and usage decayed, in seconds.
    usage_charge_interval_s: float = 30.0
    #: The scheduling policy: fifo | fairshare | fairshare+backfill.
    policy: Literal["fifo", "fairshare", "fairshare+backfill"] = "fairshare+backfill"
    #: The fair-share factor: fair_tree (Slurm's) or classic (2^(-usage/shares)).
    fairshare_algorithm: Literal["fair_tree", "classic"] = "fair_tree"
    #: Multifactor priority weights (fairshare.md A3) and the age at which age saturates.
    priority_weight_fairshare: float = 10_000
    priority_weight_age: float = 1_000
    priority_weight_jobsize: float = 0
    #: QOS priority (high 100, normal and preemptible 0) scaled to [0, 1]: high jobs go
    #: before every normal one.
    priority_weight_qos: float = 20_000
    priority_max_age_s: float = 7 * 86400
    #: A preempted job gets SIGTERM, then SIGKILL after this many seconds (to checkpoint).
    preempt_grace_s: float = 60.0
    #: A job's GPU samples are stored at most this often, in seconds (totals: every beat).
    job_sample_interval_s: float = 60.0
    #: A GPU's last sample (utilisation, power, memory: shown by ``gpuq nodes`` and
    #: /metrics) is stored at most this often, in seconds; health and foreign processes
    #: are stored at every heartbeat that changes them.
    gpu_sample_interval_s: float = Field(10.0, ge=0)
    #: Default and maximum job time limit, in seconds.
    default_time_limit_s: int = 24 * 3600
    max_time_limit_s: int = 14 * 24 * 3600
    #: Bytes of job output kept per job on the server; beyond it the log is truncated.
    max_log_bytes: int = 256 * 1024 * 1024

    # --- accounting, idle GPUs, metrics (scheduler/domain/accounting.py, idle.py, metrics.py) ----
    #: Grid carbon intensity, grams CO2e per kWh (about the world average); per node below.
    carbon_intensity_g_per_kwh: float = Field(475.0, ge=0)
    #: Node name -> grams CO2e per kWh, for nodes on another grid (or a greener contract).
    carbon_intensity_by_node: dict[str, float] = Field(default_factory=dict)
    #: A GPU under this utilisation, percent, is idle.
    idle_utilization_pct: float = Field(5.0, ge=0, le=100)
    #: A running job whose GPUs are all idle for this many seconds is flagged idle.
    idle_window_s: float = Field(1800.0, gt=0)
    #: What to do about an idle job, per QOS: none (flag only), notify (an event the owner
    #: sees in `gpuq q`/`gpuq show`, and the webhook), cancel (after ``idle_cancel_grace_s``).
    idle_actions: dict[str, Literal["none", "notify", "cancel"]] = Field(default_factory=dict)
    #: The action for a QOS that ``idle_actions`` does not name.
    idle_action_default: Literal["none", "notify", "cancel"] = "notify"
    #: Seconds between flagging an idle job and cancelling it (QOS with action cancel).
    idle_cancel_grace_s: float = Field(1800.0, ge=0)
    #: When set, each idle flag and idle cancel is POSTed there as JSON (best effort).
    idle_webhook_url: str = ""
    #: ``GET /metrics`` without a token; off: an admin token or ``metrics_token``.
    metrics_public: bool = False
    #: A bearer token that may read ``/metrics`` only (for Prometheus); empty: none.
    metrics_token: str = ""

    # --- the worker ----------------------------------------------------------------------
    server_url: str = "http://127.0.0.1:8642"
    node_name: str = Field(default_factory=lambda: os.uname().nodename)
    #: File holding this node's token (mode 0600). ``GPUQ_NODE_TOKEN`` overrides it.
    node_token_file: str = ""
    node_token: str = ""
    #: ``4xA100-80GB`` (or ``2xA100-80GB,1xT4-16GB``) simulates GPUs; empty uses NVML.
    simulate_gpus: str = ""
    #: A directory of device nodes for the simulated GPUs, ``nvidia<index>`` (made as root
    #: with ``mknod DIR/nvidia0 c 195 0``, ...): the GPU fence denies a job those of the
    #: GPUs it was not given, as it does ``/dev/nvidia<minor>`` on real GPUs. Empty: none.
    simulate_gpu_devices: str = ""
    #: Directory of the job supervisors' state and logs. Empty: ``data_dir/worker/<node>``.
    worker_state_dir: str = ""
    heartbeat_interval_s: float = 5.0
    #: How often the worker looks at its jobs and ships new log output, in seconds.
    job_poll_interval_s: float = 0.25
    #: ``user``: a worker running as root runs each job as the local account named like
    #: the gpuq user; ``daemon``: every job runs as the worker's own account.
    worker_run_as: Literal["user", "daemon"] = "user"
    #: Let jobs run as root (uid 0). Off: such a job fails with a reason saying so.
    worker_allow_root_jobs: bool = False
    #: Seconds between SIGTERM and SIGKILL when a job is cancelled or hits its time limit.
    kill_grace_s: float = 10.0
    #: CPUs and memory (MiB) the node offers to jobs; 0: all the host has.
    worker_cpus: int = Field(0, ge=0)
    worker_memory_mib: int = Field(0, ge=0)
    #: A cgroup2 directory under which each job run gets ``gpuq/<node>/job-<id>.<attempt>``
    #: (so every process of a job is killed with it). ``auto``: ``/sys/fs/cgroup`` when it is
    #: cgroup2, else ``/sys/fs/cgroup/unified`` (hybrid hosts); empty: no cgroups. Without
    #: one (not root, read-only, no cgroup2) jobs are killed by process group and descendants.
    #: The job's limits (memory, CPUs, GPU devices: ``gpuq.worker.limits``) go in it, and in
    #: cgroup v1 hierarchies for what cgroup2 lacks here; empty: no limits either.
    worker_cgroup_root: str = "auto"

    @model_validator(mode="after")
    def _fence_fits(self) -> Settings:
        """The fence must end a cut-off node's jobs before the scheduler runs them again
        (``node_down_after_s``), and leave room for heartbeats."""
        fence = self.effective_fence_after_s
        if fence <= 0:
            raise ValueError(
                f"node_down_after_s ({self.node_down_after_s:g}) leaves no time to fence: "
                f"it must exceed fence_grace_s + fence_margin_s "
                f"({self.fence_grace_s:g} + {self.fence_margin_s:g})")
        need = fence + self.fence_grace_s + self.fence_margin_s
        if self.node_down_after_s < need:
            raise ValueError(
                f"node_down_after_s ({self.node_down_after_s:g}) must be at least "
                f"fence_after_s + fence_grace_s + fence_margin_s ({fence:g} + "
                f"{self.fence_grace_s:g} + {self.fence_margin_s:g} = {need:g}): a node cut "
                "off from the scheduler must have stopped its jobs before they run elsewhere")
        if fence < 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"the fence ({fence:g} s) must be at least two heartbeat intervals "
                f"(heartbeat_interval_s = {self.heartbeat_interval_s:g})")
        return self

    @field_validator("data_dir", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        return Path(v).expanduser() if isinstance(v, str | Path) else v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("GPUQ_CONFIG", "") or default_config_file())
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # --- derived values ----------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return sqlalchemy_database_url(self.database_url)
        return f"sqlite:///{self.data_dir / 'gpuq.db'}"

    @property
    def effective_fence_after_s(self) -> float:
        """Seconds without contact after which a worker stops its jobs (``fence_after_s``,
        else what ``node_down_after_s`` leaves after the grace period and the margin)."""
        if self.fence_after_s is not None:
            return self.fence_after_s
        return self.node_down_after_s - self.fence_grace_s - self.fence_margin_s

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def effective_admin_token_file(self) -> Path:
        if self.admin_token_file:
            return Path(self.admin_token_file)
        return self.data_dir / "admin.token"

    @property
    def effective_worker_state_dir(self) -> Path:
        if self.worker_state_dir:
            return Path(self.worker_state_dir)
        return self.data_dir / "worker" / self.node_name

    def billing_weight(self, model: str) -> float:
        return self.gpu_billing_weights.get(model, 1.0)

    def carbon_intensity(self, node: str | None) -> float:
        """Grams CO2e per kWh of ``node``'s electricity."""
        return self.carbon_intensity_by_node.get(node or "", self.carbon_intensity_g_per_kwh)

    def idle_action(self, qos: str) -> str:
        return self.idle_actions.get(qos, self.idle_action_default)
