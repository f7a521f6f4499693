"""What production high availability relies on, on one machine: PostgreSQL reached through a
multi-host URL (``target_session_attrs=read-write``: libpq tries each host in turn and
keeps the one that takes writes) and Redis through Sentinel. A real `gpuq server`, a real
`gpuq worker` (simulated GPUs), a job submitted and run end to end."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import PG_ADMIN_URL
from tests.e2e.conftest import Cluster, Proc, base_env, free_port, spawn, start_server, wait_for

JOB = [sys.executable, "-c", "print('hello from', __import__('os').environ['GPUQ_JOB_ID'])"]


def run_one_job(cluster: Cluster, within_s: float = 30) -> dict:
    token = cluster.user_tokens["alice"]
    import httpx

    r = httpx.post(cluster.url + "/v1/jobs", timeout=10,
                   headers={"Authorization": f"Bearer {token}"},
                   json={"command": JOB, "workdir": str(cluster.tmp), "gpus": 1})
    assert r.status_code == 201, r.text
    job = cluster.wait_state(r.json()["id"], {"COMPLETED", "FAILED"}, within_s)
    assert job["state"] == "COMPLETED", job
    assert f"hello from {job['id']}" in cluster.log(job["id"])
    return job


def stop_all(cluster: Cluster) -> None:
    for p in reversed(cluster.procs):
        p.stop()


# --- PostgreSQL: a multi-host URL whose first host is down ---------------------------------


@pytest.fixture
def empty_pg_database(pg_template: str) -> Iterator[str]:
    """A new, empty database (the server migrates it), dropped afterwards."""
    name = f"gpuq_ha_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
@pytest.mark.redis
def test_a_multi_host_database_url_skips_a_host_that_is_down(
        empty_pg_database: str, redis_url: str, tmp_path: Path) -> None:
    """Port 1 refuses: libpq goes on to the next host; the server migrates the empty
    database through it. libpq's form of the URL (gpuq.config rewrites it to SQLAlchemy's:
    tests/scheduler/test_ha_settings.py) and the prefork server (--workers 2), whose
    wake-ups and listing caches make connections of their own from the URL (LISTEN/NOTIFY,
    scheduler/runtime/wakeups.conninfo): with the loop's timer at 30 s, a job that runs
    within seconds was woken through them."""
    pg = make_url(PG_ADMIN_URL)
    url = (f"postgresql+psycopg://{pg.username}@127.0.0.1:1,{pg.host}:{pg.port or 5432}/"
           f"{empty_pg_database}?target_session_attrs=read-write&connect_timeout=5")
    broker = redis_url.rsplit("/", 1)[0] + f"/{uuid.uuid4().int % 15 + 1}"
    cluster = start_server(tmp_path, {
        "GPUQ_DATABASE_URL": url, "GPUQ_BROKER_URL": broker, "GPUQ_API_WORKERS": "2",
        "GPUQ_SCHEDULE_INTERVAL_S": "30"})
    try:
        cluster.add_worker(f"ha-{uuid.uuid4().hex[:6]}", "2xA100-80GB")
        cluster.add_user("alice")
        job = run_one_job(cluster, within_s=20)
        assert (job["submitted_at"] is not None and job["dispatched_at"] is not None)
        q = cluster.gpuq("q", "--all")
        assert q.returncode == 0
        admin = create_engine(PG_ADMIN_URL)
        try:
            with admin.connect() as conn:
                wakeups = conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = :d "
                    "AND application_name = 'gpuq-wakeups'"), {"d": empty_pg_database}).scalar()
        finally:
            admin.dispose()
        # The loop's listener and each API process's sender.
        assert wakeups >= 3, cluster.procs[0].output()[-3000:]
        server_log = cluster.procs[0].output()
        assert "wake-up listener:" not in server_log and "wake-up sender:" not in server_log
    finally:
        stop_all(cluster)


# --- Redis through Sentinel ------------------------------------------------------------------


def need_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip("redis-server is not installed: the Sentinel tests start their own "
                    "Sentinel (and Redis) processes with it")
    return path


def ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def start_redis(tmp: Path, name: str, port: int, *args: str) -> Proc:
    proc = spawn(name, [need_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--dir", str(tmp), *args],
                 base_env(tmp), tmp)
    wait_for(lambda: ping(port), 10, f"{name}\n{proc.output()}")
    return proc


def start_sentinel(tmp: Path, port: int, master: str, master_port: int,
                   down_after_ms: int = 1000) -> Proc:
    conf = tmp / f"sentinel-{port}.conf"  # Sentinel rewrites its file: one of its own
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp}\n"
                    f"sentinel monitor {master} 127.0.0.1 {master_port} 1\n"
                    f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
                    f"sentinel failover-timeout {master} 5000\n")
    proc = spawn(f"sentinel-{port}", [need_redis_server(), str(conf), "--sentinel"],
                 base_env(tmp), tmp)
    wait_for(lambda: master_of(port, master) is not None, 10, f"sentinel\n{proc.output()}")
    return proc


def master_of(sentinel_port: int, master: str) -> tuple[str, int] | None:
    import redis

    try:
        addr = redis.Redis(host="127.0.0.1", port=sentinel_port, socket_timeout=1).execute_command(
            "SENTINEL", "get-master-addr-by-name", master)
    except redis.RedisError:
        return None
    return (addr[0].decode(), int(addr[1])) if addr else None


def connections(port: int) -> int:
    import redis

    return int(redis.Redis(host="127.0.0.1", port=port).info("stats")[
        "total_connections_received"])


@pytest.mark.postgres
@pytest.mark.redis
def test_the_broker_through_sentinel(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """A Sentinel of the test's own watches the machine's Redis; the server and the worker
    know only the Sentinel (``sentinel://``) and the master's name."""
    need_redis_server()
    redis_port = urlsplit(redis_url).port or 6379
    sentinel_port, master = free_port(), f"gpuq-test-{uuid.uuid4().hex[:6]}"
    # Slow to call the shared Redis down: with no replica there is nothing to fail over to.
    sentinel = start_sentinel(tmp_path, sentinel_port, master, redis_port, 60_000)
    db = uuid.uuid4().int % 15 + 1
    cluster = start_server(tmp_path, {
        "GPUQ_DATABASE_URL": pg_url, "GPUQ_BROKER_URL": f"sentinel://127.0.0.1:{sentinel_port}/{db}",
        "GPUQ_BROKER_MASTER_NAME": master})
    cluster.procs.insert(0, sentinel)
    try:
        cluster.add_worker(f"sn-{uuid.uuid4().hex[:6]}", "2xA100-80GB")
        cluster.add_user("alice")
        run_one_job(cluster)
        # The server (sending the launch) and the worker (consuming) asked the Sentinel.
        assert connections(sentinel_port) >= 2
    finally:
        stop_all(cluster)


@pytest.mark.postgres
@pytest.mark.redis
def test_the_broker_survives_a_redis_fail_over(pg_url: str, tmp_path: Path) -> None:
    """A Redis master and its replica of the test's own, a Sentinel watching them. The
    master is killed (SIGKILL); the Sentinel promotes the replica; the next job is
    dispatched through the new master, with no setting changed."""
    need_redis_server()
    m_port, r_port, s_port = free_port(), free_port(), free_port()
    master = start_redis(tmp_path, "redis-master", m_port)
    replica = start_redis(tmp_path, "redis-replica", r_port,
                          "--replicaof", "127.0.0.1", str(m_port))
    name = "gpuq-ha"
    sentinel = start_sentinel(tmp_path, s_port, name, m_port)
    cluster = start_server(tmp_path, {
        "GPUQ_DATABASE_URL": pg_url, "GPUQ_BROKER_URL": f"sentinel://127.0.0.1:{s_port}/0",
        "GPUQ_BROKER_MASTER_NAME": name})
    cluster.procs[:0] = [master, replica, sentinel]
    try:
        cluster.add_worker(f"fo-{uuid.uuid4().hex[:6]}", "2xA100-80GB")
        cluster.add_user("alice")
        run_one_job(cluster)
        wait_for(lambda: _info(m_port, "replication").get("connected_slaves") == 1, 10,
                 "the replica to connect")
        killed = time.monotonic()
        os.killpg(master.popen.pid, signal.SIGKILL)
        master.popen.wait()
        wait_for(lambda: master_of(s_port, name) == ("127.0.0.1", r_port), 30,
                 lambda: f"the Sentinel to promote the replica\n{sentinel.output()}")
        promoted = time.monotonic() - killed
        job = run_one_job(cluster, within_s=60)
        print(f"Redis master killed: replica promoted after {promoted:.1f} s; the next job "
              f"ran {time.monotonic() - killed:.1f} s after the kill (job {job['id']})")
    finally:
        stop_all(cluster)


def _info(port: int, section: str) -> dict:
    import redis

    try:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).info(section)
    except redis.RedisError:
        return {}
