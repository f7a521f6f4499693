"""Dispatch over Celery: launch and kill tasks go to the node's own queue.

Tasks carry only a job id; the worker re-reads the job from the API with its node token,
so a message on the broker can never make a host run a command the scheduler did not
accept, and a task delivered twice does no harm.

Brokers: Redis in production (``GPUQ_BROKER_URL=redis://host:6379/0``), or Redis behind
Sentinel for a broker that survives its host (``sentinel://s1:26379;sentinel://s2:26379``
and ``GPUQ_BROKER_MASTER_NAME``). With no broker
configured, the kombu *filesystem* transport under ``data_dir/broker`` is used: no service,
one machine only. Its consumer (the worker) waits on an inotify watch of the folder, so a
message wakes it at once (gpuq/fsbroker.py); ``broker_polling_interval_s`` (0.1 s) is only
the longest wait, what a message waits where inotify is not to be had (not Linux).
"""

from __future__ import annotations

from celery import Celery

from gpuq.config import Settings
from gpuq.files import private_dir

LAUNCH = "gpuq.launch"
KILL = "gpuq.kill"


def queue_name(node: str) -> str:
    return f"gpuq.node.{node}"


def make_celery(settings: Settings) -> Celery:
    url = settings.effective_broker_url
    app = Celery("gpuq", broker=url, backend=None, set_as_current=False)
    conf: dict[str, object] = {
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_enable_remote_control": False,
        "broker_connection_timeout": 5,
    }
    if url.startswith("filesystem://"):
        # kombu's own writes a message in place, which a consumer can read half-written
        # (gpuq/fsbroker.py).
        conf["broker_transport"] = "gpuq.fsbroker:Transport"
        folder = settings.broker_dir
        for sub in ("processed", "control"):  # 0700, as all of the data directory
            private_dir(folder / sub)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": settings.broker_polling_interval_s,
        }
    elif url.startswith(("redis://", "rediss://")):
        conf["broker_transport_options"] = {"visibility_timeout": 3600}
    elif url.startswith("sentinel://"):
        # Redis through Sentinel: kombu asks the Sentinels for the master of
        # ``broker_master_name`` at each (re)connect, so a fail-over needs no change here.
        options: dict[str, object] = {"visibility_timeout": 3600,
                                      "master_name": settings.broker_master_name}
        if settings.broker_sentinel_password:
            options["sentinel_kwargs"] = {"password": settings.broker_sentinel_password}
        conf["broker_transport_options"] = options
    app.conf.update(conf)
    return app


def send_launch(app: Celery, node: str, job_id: int) -> None:
    app.send_task(LAUNCH, args=[job_id], queue=queue_name(node))


def send_kill(app: Celery, node: str, job_id: int) -> None:
    app.send_task(KILL, args=[job_id], queue=queue_name(node))
