"""Signups never confirmed are forgotten after the retention period; confirmed ones and fresh ones stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from nurture.core import clock
from nurture.core.db import transaction
from nurture.models import ConsentRecord, Event, OutboxMessage, Subscriber
from nurture.subscribers.retention import purge_unconfirmed
from tests.support.web import confirm_url, drain, path_of

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _signup(client: TestClient, email: str) -> None:
    answer = client.post("/subscribe", json={"email": email, "consent": True})
    assert answer.status_code == 202


def _emails(factory) -> set[str]:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return set(session.scalars(select(Subscriber.email)))


def test_unconfirmed_signups_are_deleted_after_the_retention_period(
    prospect_client: TestClient, app_factory
) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START) as advance:
        _signup(prospect_client, "stale@example.com")
        _signup(prospect_client, "confirmed@example.com")
        _, sent = drain(app_factory)
        link = next(confirm_url(m) for m in sent if "confirmed@example.com" in m["To"])
        assert prospect_client.post(path_of(link)).status_code == 200
        advance(timedelta(days=20))
        _signup(prospect_client, "recent@example.com")
        _signup(prospect_client, "again@example.com")
        advance(timedelta(days=11))  # stale: 31 days old; recent: 11 days old
        _signup(
            prospect_client, "again@example.com"
        )  # ...but "again" signed up once more, which restarts the clock
        with transaction(app_factory) as session:
            assert purge_unconfirmed(session, older_than_days=30) == 1
        assert _emails(app_factory) == {"confirmed@example.com", "recent@example.com", "again@example.com"}
        with transaction(app_factory) as session:
            # Nothing of the forgotten signup is left: consent records, outbox rows and events went with it.
            subscriber_ids = select(Subscriber.id)
            assert (
                session.scalar(select(func.count()).where(ConsentRecord.subscriber_id.not_in(subscriber_ids)))
                == 0
            )
            assert (
                session.scalar(select(func.count()).where(OutboxMessage.subscriber_id.not_in(subscriber_ids)))
                == 0
            )
            assert session.scalar(select(func.count()).where(Event.subscriber_id.is_(None))) == 0
        # Nothing about them is suppressed: they never asked us for anything and may sign up again.
        _signup(prospect_client, "stale@example.com")
        assert "stale@example.com" in _emails(app_factory)
