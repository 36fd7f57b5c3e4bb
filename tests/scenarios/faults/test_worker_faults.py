"""Scenarios 1, 2 and 5: workers killed, stopped and run side by side."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess

import pytest
from sqlalchemy import func, select

from nurture.core.db import transaction
from nurture.models import Delivery
from tests.scenarios.faults.conftest import Cluster, duplicates, seed
from tests.support.processes import SmtpServer, wait_until

KILLS = int(os.environ.get("NURTURE_SOAK_KILLS", "5"))
EMAILS = int(os.environ.get("NURTURE_SOAK_EMAILS", "2000"))

# Real processes on a 2-core machine: generous hang guards; the assertions are on outcomes, not time.
pytestmark = pytest.mark.timeout(1500)


# The soak (10,000 emails, 100 kills) gets a hang guard scaled to its size.
@pytest.mark.timeout(max(1500, EMAILS // 4 + KILLS * 20))
def test_sigkilled_workers_lose_nothing_and_leave_at_most_one_unknown_per_kill(any_cluster: Cluster) -> None:
    """The default settings: each kill of a worker (one pool process) leaves at most the email on the wire
    unknown, which the reaper resends with its Message-ID; everything else is recorded or sent once."""
    cluster = any_cluster
    seed(cluster.factory, EMAILS, "one-step")
    rng = random.Random(EMAILS * 31 + KILLS)
    with SmtpServer() as smtp:
        env = {"NURTURE_SMTP_URL": smtp.url, "NURTURE_LEASE_SECONDS": "8"}
        cluster.beat(**env)
        worker = cluster.worker(**env)
        step = max(10, EMAILS // (KILLS + 1))
        for _ in range(KILLS):
            # Kill while the worker is busy: after a random amount of progress, mid-batch and often mid-SMTP.
            target = len(smtp.received) + rng.randint(step // 2, step)
            wait_until(lambda t=target: len(smtp.received) >= t, 300, f"{target} emails")
            cluster.kill(worker, signal.SIGKILL)
            worker = cluster.worker(**env)
        wait_until(
            lambda: cluster.statuses().get("sent", 0) == EMAILS, 900, "every delivery recorded as sent"
        )
    ids = smtp.handler.message_ids()
    assert len(set(ids)) == EMAILS, "an email was lost"
    extra = duplicates(smtp)
    doubled = sum(n - 1 for n in extra.values())
    unknown = cluster.events("ambiguous")
    assert len(unknown) <= KILLS, "more than the one email on the wire per kill was left unknown"
    assert doubled <= len(unknown)
    with transaction(cluster.factory) as session:
        duplicated = set(session.scalars(select(Delivery.id).where(Delivery.message_id.in_(list(extra)))))
        recounted = session.scalar(select(func.count()).where(Delivery.attempts > 1))
    assert duplicated <= {event.delivery_id for event in unknown}, "a duplicate that was not an unknown one"
    assert all(event.detail.get("resolution") == "resent" for event in unknown)
    assert recounted == len(unknown), "an email never handed over had an attempt counted"
    # Each is in the log of the process that reaped it, besides its event (results, subscriber, /metrics).
    logs = "".join(path.read_text(errors="replace") for _, _, path in cluster.processes.children)
    reaped = [int(n) for n in re.findall(r"reaped a dead worker's sends: \d+ accepted, (\d+) unknown", logs)]
    assert sum(reaped) == len(unknown)
    summary = f"{EMAILS} emails, {KILLS} kills, 0 lost, {doubled} duplicates, {len(unknown)} unknown (resent)"
    print(f"\nscenario 1 ({cluster.env['NURTURE_DATABASE_URL'].split(':')[0]}): {summary}")


def test_sigterm_finishes_the_current_batch_and_leaves_nothing_sending(cluster: Cluster) -> None:
    seed(cluster.factory, 400, "one-step")
    with SmtpServer() as smtp:
        env = {"NURTURE_SMTP_URL": smtp.url}
        cluster.beat(**env)
        worker = cluster.worker(concurrency=2, **env)
        wait_until(lambda: len(smtp.received) >= 60, 120, "sending under way")
        cluster.kill(worker, signal.SIGTERM)
        assert worker.returncode == 0, "warm shutdown should exit cleanly"
        assert cluster.statuses().get("sending", 0) == 0
        cluster.worker(**env)
        wait_until(lambda: cluster.statuses().get("sent", 0) == 400, 600, "the rest sent by a new worker")
    assert duplicates(smtp) == {} and len(smtp.received) == 400


def test_two_dispatchers_and_three_workers_never_claim_twice(cluster: Cluster) -> None:
    seed(cluster.factory, 1000, "one-step")
    with SmtpServer() as smtp:
        env = {"NURTURE_SMTP_URL": smtp.url, "NURTURE_CLAIM_LIMIT": "60", "NURTURE_BATCH_SIZE": "5"}
        cluster.beat(**env)
        cluster.beat(**env)
        for _ in range(3):
            cluster.worker(**env)
        wait_until(lambda: cluster.statuses().get("sent", 0) == 1000, 600, "1000 sent")
    assert duplicates(smtp) == {} and len(smtp.received) == 1000
    with transaction(cluster.factory) as session:
        assert session.scalar(select(func.count()).where(Delivery.attempts != 1)) == 0


def test_a_celery_worker_that_dies_under_nurture_worker_is_started_again_and_the_rest_goes_out(
    cluster: Cluster,
) -> None:
    """What Celery's "Unrecoverable error" after a broker restart looks like from outside: the Celery worker
    under ``nurture worker`` is gone. Its keeper starts a new one, which sends the rest; nobody restarts
    anything by hand (nurture/cli/keep_alive.py)."""
    seed(cluster.factory, 600, "one-step")
    with SmtpServer() as smtp:
        env = {"NURTURE_SMTP_URL": smtp.url, "NURTURE_LEASE_SECONDS": "8"}
        cluster.beat(**env)
        keeper = cluster.worker(concurrency=2, **env)
        wait_until(lambda: len(smtp.received) >= 100, 120, "sending under way")
        children = subprocess.run(["pgrep", "-P", str(keeper.pid)], capture_output=True, text=True)
        [celery_main] = children.stdout.split()
        os.kill(int(celery_main), signal.SIGKILL)  # the Celery worker alone; its pool is orphaned with it
        wait_until(
            lambda: cluster.statuses().get("sent", 0) == 600, 300, "all 600 sent by the same nurture worker"
        )
        assert keeper.poll() is None, "nurture worker itself should still be running"
    assert "celery worker died (signal 9)" in cluster.log("worker1")
    assert len(set(smtp.handler.message_ids())) == 600, "an email was lost"
    unknown = cluster.events("ambiguous")
    assert len(unknown) <= 2, "more than one email on the wire per pool process was left unknown"
    assert sum(n - 1 for n in duplicates(smtp).values()) <= len(unknown)
