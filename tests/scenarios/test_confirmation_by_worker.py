"""The confirmation email through real processes: beat schedules drain_outbox, a Celery worker sends it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from nurture.core.db import transaction
from nurture.models import OutboxMessage
from tests.support.processes import SmtpServer, wait_until
from tests.support.public import make_client
from tests.support.web import confirm_url

pytestmark = pytest.mark.slow


def test_beat_and_worker_send_the_queued_confirmation_once(
    pg_factory, redis_url, courses, processes, set_env
) -> None:  # type: ignore[no-untyped-def]
    from tests.support.helpers import sync_sequences

    sync_sequences(pg_factory)
    with SmtpServer() as smtp:
        set_env(smtp_url=smtp.url)
        url = pg_factory.kw["bind"].url.render_as_string(hide_password=False)
        env = {
            "NURTURE_DATABASE_URL": url,
            "NURTURE_BROKER_URL": redis_url,
            "NURTURE_SMTP_URL": smtp.url,
            "NURTURE_DISPATCH_INTERVAL": "0.5",
            "NURTURE_SEQUENCES_DIR": str(courses),
            "NURTURE_DEFAULT_SEQUENCE": "two-step",
        }
        processes.start("worker", ["worker", "--concurrency", "1"], env)
        processes.start("beat", ["beat"], env)
        with make_client() as client:
            assert (
                client.post("/subscribe", json={"email": "ana@example.com", "consent": True}).status_code
                == 202
            )
        try:
            wait_until(lambda: smtp.received, 90, "the confirmation email")
            wait_until(lambda: _status(pg_factory) == "sent", 30, "the outbox row recorded as sent")
        except AssertionError:
            print(processes.logs())
            raise
        assert len(smtp.received) == 1 and "/confirm/" in confirm_url(smtp.received[0].message)


def _status(factory) -> str | None:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return session.scalar(select(OutboxMessage.status))
