"""Forget signups that were never confirmed.

An unconfirmed signup is an address someone typed into a form; until its owner clicks the confirmation link
we have no consent to keep it. After ``NURTURE_UNCONFIRMED_RETENTION_DAYS`` the subscriber, their consent
records, outbox rows and events are deleted. No suppression is left behind (unlike an erasure): the owner
never asked us for anything, so they may sign up again.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.models import ConsentRecord, Enrollment, Event, Subscriber, SubscriberStatus

CHUNK = 500


def purge_unconfirmed(session: Session, *, older_than_days: int, limit: int = 5000) -> int:
    """Delete up to ``limit`` subscribers still unconfirmed whose latest signup is older than the cutoff."""
    cutoff = clock.db_now(session) - timedelta(days=older_than_days)
    latest_signup = (
        select(func.max(ConsentRecord.created_at))
        .where(ConsentRecord.subscriber_id == Subscriber.id)
        .scalar_subquery()
    )
    stale = list(
        session.scalars(
            select(Subscriber.id)
            .where(
                Subscriber.status == SubscriberStatus.pending,
                Subscriber.confirmed_at.is_(None),
                Subscriber.created_at < cutoff,
                # A fresh signup restarts the clock; anyone who ever confirmed, or was ever enrolled (an
                # import or a staff action), is not a stray form entry and stays.
                func.coalesce(latest_signup, Subscriber.created_at) < cutoff,
                ~exists().where(
                    ConsentRecord.subscriber_id == Subscriber.id, ConsentRecord.confirmed_at.is_not(None)
                ),
                ~exists().where(Enrollment.subscriber_id == Subscriber.id),
            )
            .order_by(Subscriber.id)
            .limit(limit)
        )
    )
    for start in range(0, len(stale), CHUNK):
        chunk = stale[start : start + CHUNK]
        session.execute(
            delete(Event).where(Event.subscriber_id.in_(chunk)).execution_options(synchronize_session=False)
        )
        # The database cascades consent records and outbox rows (ON DELETE CASCADE).
        session.execute(
            delete(Subscriber).where(Subscriber.id.in_(chunk)).execution_options(synchronize_session=False)
        )
    return len(stale)
