"""GDPR erasure: a person and everything about them go; an anonymous suppression hash stays."""

from __future__ import annotations

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from nurture.models import Delivery, Event, Subscriber
from nurture.subscribers.suppression import suppress_erased


def erase(session: Session, email: str) -> bool:
    """GDPR erasure: the subscriber and everything about them (enrollments, deliveries, events, consent,
    outbox) go; an anonymous suppression hash stays so no import or staff action re-adds the address.
    Returns False when there was no such subscriber (the hash is kept either way)."""
    address = email.strip().lower()
    suppress_erased(session, address)
    subscriber_id = session.scalar(select(Subscriber.id).where(Subscriber.email == address))
    if subscriber_id is None:
        session.flush()
        return False
    delivery_ids = select(Delivery.id).where(Delivery.subscriber_id == subscriber_id).scalar_subquery()
    session.execute(
        delete(Event)
        .where(or_(Event.subscriber_id == subscriber_id, Event.delivery_id.in_(delivery_ids)))
        .execution_options(synchronize_session=False)
    )
    # The database cascades the rest (ON DELETE CASCADE on every table that names the subscriber).
    session.execute(
        delete(Subscriber).where(Subscriber.id == subscriber_id).execution_options(synchronize_session=False)
    )
    session.flush()
    return True
