"""``gpuq up``, ``gpuq server`` and ``gpuq worker``: running the system's processes."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from gpuq.cli.client import ApiClient, CliError
from gpuq.cli.config import client_config_path, write_client_config

DEFAULT_SIMULATED = "4xA100-80GB"


def _settings(**overrides: Any) -> Any:
    from gpuq.config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except Exception as e:  # pydantic's ValidationError: one clear line
        raise click.ClickException(f"bad configuration: {e}") from None


def _logging(level: str) -> None:
    import logging

    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic narrates every plugin at INFO; kombu warns that the filesystem broker URL
    # has no host name (it needs none).
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("kombu.connection").addFilter(
        lambda r: "No hostname was supplied" not in r.getMessage())


@click.command()
@click.option("--host", "listen_host", help="Address to listen on [127.0.0.1].")
@click.option("--port", "listen_port", type=click.IntRange(1, 65535), help="Port [8642].")
@click.option("--database-url", help="SQLAlchemy URL, e.g. postgresql+psycopg://gpuq@db/gpuq.")
@click.option("--broker-url", help="Celery broker, e.g. redis://127.0.0.1:6379/0.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--workers", "api_workers", type=click.IntRange(min=1),
              help="API processes [1]. 2 or more (PostgreSQL only): the API in that many "
                   "processes, the scheduling loop in one of its own; about one per core.")
@click.option("--log-level", default="info", show_default=True)
def server(log_level: str, **opts: Any) -> None:
    """Run the scheduler: the API server and the scheduling loop.

    Brings the database schema up to date first. On the very first start it creates an
    admin token and writes it to DATA_DIR/admin.token (mode 0600). Settings also come
    from GPUQ_* variables and the file named by GPUQ_CONFIG.
    """
    _logging(log_level)
    from gpuq.scheduler.entry.prefork import SetupError
    from gpuq.scheduler.entry.server import run

    try:
        code = run(_settings(**opts))
    except SetupError as e:  # --workers on SQLite, the port taken: one clear line
        raise click.ClickException(str(e)) from None
    sys.exit(code)


@click.command()
@click.option("--server", "server_url", help="The scheduler's URL [http://127.0.0.1:8642].")
@click.option("--node-name", help="This host's name in gpuq [the host name].")
@click.option("--token-file", "node_token_file", help="File holding this node's token.")
@click.option("--simulate-gpus", metavar="SPEC",
              help="Simulate GPUs instead of NVML, e.g. 4xA100-80GB or 2xA100-80GB,1xT4-16GB.")
@click.option("--broker-url", help="Celery broker, e.g. redis://scheduler:6379/0.")
@click.option("--state-dir", "worker_state_dir", help="Job supervisors' state and logs.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--log-level", default="info", show_default=True)
def worker(log_level: str, **opts: Any) -> None:
    """Run the worker daemon of this GPU host.

    It registers the host's GPUs, takes launch and kill tasks from its own queue, runs
    each job on exactly its GPUs and heartbeats. The node token comes from GPUQ_NODE_TOKEN
    or --token-file (an admin makes it: gpuq admin token create --role node --node NAME).
    """
    _logging(log_level)
    from gpuq.worker.daemon import run

    run(_settings(**opts))


def _has_nvidia_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no driver, no library, no GPU: all mean "none"
        return False


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when ``gpuq up`` dies, however it dies
    (Linux ``PR_SET_PDEATHSIG``; not inherited by the job supervisors the worker starts)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """A process that ``gpuq up`` keeps running, restarting it when it dies (as systemd's
    Restart=on-failure does for ``gpuq server`` and ``gpuq worker``)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.backoff_s = 1.0
        self.started_at = 0.0
        self.restarts = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()

    def check(self) -> int | None:
        """Restart the process if it exited; returns its exit code then, else None."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is None:
            if time.monotonic() - self.started_at > 60:
                self.backoff_s = 1.0
            return None
        click.echo(f"gpuq up: the {self.name} exited with code {code}; restarting in "
                   f"{self.backoff_s:.0f} s", err=True)
        time.sleep(self.backoff_s)
        self.backoff_s = min(self.backoff_s * 2, 30.0)
        self.restarts += 1
        self.start()
        return code

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(
                f"the server exited with code {proc.returncode} before it answered at {url} "
                "(is the port taken? try --port)")
        try:
            with ApiClient(url, None, timeout_s=1.0, retry_delays_s=()) as api:
                if api.request("GET", "/healthz").status_code == 200:
                    return
        except CliError:  # not answering yet
            pass
        time.sleep(0.1)
    raise click.ClickException(f"the server did not answer at {url} within {timeout_s:.0f} s")


@click.command()
@click.option("--simulate-gpus", metavar="SPEC",
              help=f"Simulated GPUs, e.g. {DEFAULT_SIMULATED}. Default: the real GPUs "
                   f"(NVML), or {DEFAULT_SIMULATED} when this machine has none.")
@click.option("--port", type=click.IntRange(1, 65535), default=8642, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Database, logs and tokens [the user data directory].")
@click.option("--config-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the CLI configuration [~/.config/gpuq/config.toml].")
@click.option("--allow-root-jobs", is_flag=True,
              help="When run as root, let jobs run as root too (refused otherwise).")
def up(simulate_gpus: str | None, port: int, host: str, data_dir: Path | None,
       config_file: Path | None, allow_root_jobs: bool) -> None:
    """Run the whole system on this machine: API server, scheduling loop and a worker.

    No external service: SQLite and a filesystem message broker under the data
    directory. Writes the CLI configuration for you, so `gpuq submit` works at once from
    another terminal. Stop with Ctrl-C.
    """
    from gpuq.scheduler.entry.local import provision

    if os.geteuid() == 0 and not allow_root_jobs:
        click.echo("gpuq up: running as root: jobs would run as root, so they will be "
                   "refused; run gpuq up as yourself, or pass --allow-root-jobs", err=True)
    if simulate_gpus is None and not _has_nvidia_gpu():
        simulate_gpus = DEFAULT_SIMULATED
        click.echo(f"gpuq up: no NVIDIA GPU found; simulating {simulate_gpus}")
    settings = _settings(data_dir=data_dir, listen_host=host, listen_port=port,
                         simulate_gpus=simulate_gpus or "")
    if simulate_gpus:
        from gpuq.worker.gpus.sim import parse_spec

        try:
            parse_spec(simulate_gpus)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--simulate-gpus") from None
    creds = provision(settings, unix_user=getpass.getuser(), now=datetime.now(UTC))
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    written = write_client_config(config_file or client_config_path(), url, creds.user_token,
                                  creds.admin_token)

    env = {k: v for k, v in os.environ.items()
           if k not in ("GPUQ_TOKEN", "GPUQ_ADMIN_TOKEN", "GPUQ_NODE_TOKEN")}
    env.update({
        "GPUQ_DATA_DIR": str(settings.data_dir),
        "GPUQ_LISTEN_HOST": host,
        "GPUQ_LISTEN_PORT": str(port),
        "GPUQ_SERVER_URL": url,
        "GPUQ_NODE_NAME": settings.node_name,
        "GPUQ_NODE_TOKEN_FILE": str(creds.node_token_file),
        "GPUQ_SIMULATE_GPUS": simulate_gpus or "",
        # One person's machine: jobs run as the person who ran gpuq up.
        "GPUQ_WORKER_RUN_AS": "daemon",
        "GPUQ_WORKER_ALLOW_ROOT_JOBS": "1" if allow_root_jobs else "0",
    })
    py = [sys.executable, "-m", "gpuq"]
    srv = Child("server", [*py, "server"], env)
    wrk = Child("worker", [*py, "worker"], env)
    stopping = False

    def _stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _stop)
    srv.start()
    try:
        _wait_healthy(url, srv.proc, 60)  # type: ignore[arg-type]
        wrk.start()
        gpus = simulate_gpus or "the real GPUs (NVML)"
        click.echo(f"gpuq is up at {url} with {gpus} on node {settings.node_name}.\n"
                   f"  CLI configuration: {written}\n"
                   f"  Data: {settings.data_dir}\n"
                   "  Try, in another terminal:\n"
                   "    gpuq submit --gpus 1 -- sh -c 'echo my GPUs: $CUDA_VISIBLE_DEVICES'\n"
                   "    gpuq q\n  Stop with Ctrl-C.")
        while not stopping:
            srv.check()
            wrk.check()
            time.sleep(0.2)
    finally:
        click.echo("gpuq up: stopping")
        wrk.stop()
        srv.stop()
