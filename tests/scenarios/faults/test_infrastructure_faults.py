"""Scenarios 3, 6 and 12: Redis lost, PostgreSQL connections killed, the SMTP server down for a while."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest
import redis
from sqlalchemy import create_engine, text

from tests.conftest import service_missing
from tests.scenarios.faults.conftest import Cluster, duplicates, seed
from tests.support.processes import SmtpServer, free_port, wait_until

# Real processes on a 2-core machine: generous hang guards; the assertions are on outcomes, not time.
pytestmark = pytest.mark.timeout(900)


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    wait_until(lambda: _pings(client), 20, "a private Redis to start")
    return server


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_redis_killed_and_restarted_empty_loses_nothing(cluster: Cluster) -> None:
    if shutil.which("redis-server") is None:
        service_missing("redis-server (to run a private broker that can be killed)", FileNotFoundError())
    port = free_port()
    broker = _start_redis(port)
    seed(cluster.factory, 1000, "one-step")
    try:
        with SmtpServer() as smtp:
            env = {"NURTURE_SMTP_URL": smtp.url, "NURTURE_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
            cluster.beat(**env)
            cluster.worker(concurrency=2, **env)
            wait_until(lambda: len(smtp.received) >= 100, 120, "sending under way")
            broker.kill()  # every queued task and claim message is gone with it
            broker.wait()
            time.sleep(2)  # the outage itself
            broker = _start_redis(port)  # empty: no tasks survive
            wait_until(
                lambda: cluster.statuses().get("sent", 0) == 1000, 240, "all 1000 sent after the restart"
            )
        assert duplicates(smtp) == {} and len(smtp.received) == 1000
    finally:
        broker.kill()
        broker.wait()


def test_postgres_connections_killed_mid_claim_and_mid_send(cluster: Cluster) -> None:
    seed(cluster.factory, 600, "one-step")
    url = cluster.factory.kw["bind"].url
    admin = create_engine(url.set(database="test"), isolation_level="AUTOCOMMIT")
    stop = threading.Event()
    killed: list[int] = []

    def terminator() -> None:
        with admin.connect() as connection:
            while not stop.wait(0.5):
                rows = connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                    ),
                    {"db": url.database},
                ).all()
                killed.append(len(rows))

    with SmtpServer() as smtp:
        env = {"NURTURE_SMTP_URL": smtp.url}
        cluster.beat(**env)
        cluster.worker(concurrency=2, **env)
        wait_until(lambda: len(smtp.received) >= 30, 120, "sending under way")
        thread = threading.Thread(target=terminator, daemon=True)
        thread.start()
        wait_until(
            lambda: len(smtp.received) >= 400 or sum(killed) >= 60, 180, "sending while connections die"
        )
        stop.set()
        thread.join()
        wait_until(lambda: cluster.statuses().get("sent", 0) == 600, 600, "all 600 recorded as sent")
    admin.dispose()
    assert sum(killed) > 0, "no connection was killed: the scenario did not happen"
    assert duplicates(smtp) == {} and len(smtp.received) == 600


def test_smtp_down_for_a_while_then_drained_at_the_configured_rate(cluster: Cluster) -> None:
    port = free_port()
    seed(cluster.factory, 200, "one-step")
    env = {
        "NURTURE_SMTP_URL": f"smtp://127.0.0.1:{port}",
        "NURTURE_MAX_ATTEMPTS": "2",  # being unreachable must not use up a message's attempts
        "NURTURE_SMTP_RATE": "40/s",
        "NURTURE_RETRY_BASE_SECONDS": "1",
    }
    cluster.beat(**env)
    cluster.worker(concurrency=2, **env)
    wait_until(lambda: "SMTP unreachable" in cluster.processes.logs(), 60, "the worker to notice the outage")
    time.sleep(4)  # the outage goes on for a while
    assert cluster.statuses().get("failed", 0) == 0
    with SmtpServer(port=port) as smtp:
        wait_until(lambda: cluster.statuses().get("sent", 0) == 200, 120, "the backlog drained")
    assert duplicates(smtp) == {} and len(smtp.received) == 200
    stamps = sorted(r.at for r in smtp.received)
    # 200 messages at 40/s with a one-second burst cannot take less than (200 - 40) / 40 = 4 s.
    assert stamps[-1] - stamps[0] >= 3.5
    assert cluster.statuses().get("failed", 0) == 0
