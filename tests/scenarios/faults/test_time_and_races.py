"""Scenarios 4, 10 and 11: long delays against the broker's visibility timeout, a worker clock that runs
ahead, and unsubscribes that race the sender."""

from __future__ import annotations

import shutil
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from nurture.core import clock
from nurture.core.db import transaction
from nurture.models import Delivery, Subscriber
from nurture.subscribers.enrollment import unsubscribe
from tests.conftest import service_missing
from tests.scenarios.faults.conftest import Cluster, duplicates, seed
from tests.support.processes import SmtpServer, wait_until

# Real processes on a 2-core machine: generous hang guards; the assertions are on outcomes, not time.
pytestmark = pytest.mark.timeout(900)


def _delay_first(cluster: Cluster, email: str, delta: timedelta) -> float:
    """Move one subscriber's delivery ``delta`` ahead by the database clock; returns the epoch due time."""
    with transaction(cluster.factory) as session:
        due = clock.db_now(session) + delta
        subscriber_id = session.scalar(select(Subscriber.id).where(Subscriber.email == email))
        session.execute(update(Delivery).where(Delivery.subscriber_id == subscriber_id).values(due_at=due))
    return due.timestamp()


def test_a_step_due_later_than_the_visibility_timeout_is_sent_once_at_its_time(cluster: Cluster) -> None:
    # Scaled: "due in 3 days with a 1-hour visibility timeout" becomes due in 6 s with a 1 s timeout. An ETA
    # task would be redelivered several times over; a row in the database is claimed once, when due.
    seed(cluster.factory, 1, "one-step")
    due = _delay_first(cluster, "reader0@example.com", timedelta(seconds=6))
    with SmtpServer() as smtp:
        env = {"NURTURE_SMTP_URL": smtp.url, "NURTURE_BROKER_VISIBILITY_TIMEOUT": "1"}
        cluster.beat(**env)
        cluster.worker(**env)
        wait_until(lambda: cluster.statuses().get("sent", 0) == 1, 60, "the delivery to be sent")
        time.sleep(3)  # three more visibility timeouts: any redelivered copy would have arrived by now
    assert len(smtp.received) == 1
    assert smtp.received[0].at >= due - 0.05  # not early (small allowance for the two clocks' rounding)


def test_a_worker_whose_clock_runs_two_hours_ahead_sends_nothing_early(cluster: Cluster) -> None:
    if shutil.which("faketime") is None:
        service_missing("faketime (Debian package, to skew a worker's clock)", FileNotFoundError())
    seed(cluster.factory, 2, "one-step")
    _delay_first(cluster, "reader1@example.com", timedelta(hours=1))
    ahead = ["faketime", "-f", "+2h"]
    with SmtpServer() as smtp:
        cluster.beat(prefix=ahead, NURTURE_SMTP_URL=smtp.url)
        cluster.worker(prefix=ahead, NURTURE_SMTP_URL=smtp.url)
        wait_until(lambda: len(smtp.received) == 1, 60, "the delivery due now")
        time.sleep(4)  # a dozen more dispatch ticks, any of which would have sent it had it looked due
        assert [r.rcpt_tos for r in smtp.received] == [["reader0@example.com"]]
    assert cluster.statuses() == {"sent": 1, "pending": 1}


def test_unsubscribes_racing_the_sender_never_get_mail_after_they_leave(cluster: Cluster) -> None:
    seed(cluster.factory, 60, "one-step")
    with SmtpServer() as smtp:
        # A slow, rate-limited worker keeps deliveries claimed and queued while people leave.
        env = {"NURTURE_SMTP_URL": smtp.url, "NURTURE_SMTP_RATE": "10/s", "NURTURE_BATCH_SIZE": "30"}
        cluster.beat(**env)
        cluster.worker(**env)
        wait_until(lambda: len(smtp.received) >= 5, 60, "sending under way")
        for n in range(0, 60, 2):
            with transaction(cluster.factory) as session:
                subscriber = session.scalar(
                    select(Subscriber).where(Subscriber.email == f"reader{n}@example.com")
                )
                unsubscribe(session, subscriber, source="test")
        terminal = {"sent", "cancelled"}
        wait_until(
            lambda: set(cluster.statuses()) <= terminal and sum(cluster.statuses().values()) == 60, 90, "done"
        )
    with transaction(cluster.factory) as session:
        sent_to = set(
            session.scalars(
                select(Subscriber.email)
                .join(Delivery, Delivery.subscriber_id == Subscriber.id)
                .where(Delivery.status == "sent")
            )
        )
    received = {r.rcpt_tos[0] for r in smtp.received}
    assert received == sent_to, "mail went out for a delivery that was not recorded as sent"
    assert duplicates(smtp) == {}
    assert cluster.statuses()["cancelled"] >= 10, "the race did not happen: few deliveries were still pending"
