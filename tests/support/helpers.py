"""Shared steps of in-process engine tests."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.delivery.dispatch import dispatch_once
from nurture.delivery.sender import Sender
from nurture.mail.factory import transport_from_url
from nurture.mail.templates import EmailTemplates
from nurture.mail.transports import Transport
from nurture.models import Delivery
from nurture.sequences.loader import load_all
from nurture.sequences.sync import sync_definition
from nurture.subscribers.enrollment import add_subscriber


def sync_sequences(factory: sessionmaker[Session]) -> None:
    settings = get_settings()
    with transaction(factory) as session:
        for definition in load_all(settings.sequences_dir, EmailTemplates(settings.templates_dir)):
            sync_definition(session, definition)


def subscribe(factory: sessionmaker[Session], email: str, slug: str, **kwargs: str | None) -> int:
    with transaction(factory) as session:
        subscriber, _ = add_subscriber(session, email, sequence_slug=slug, **kwargs)
        return subscriber.id


def make_sender(factory: sessionmaker[Session], transport: Transport | None = None) -> Sender:
    settings = get_settings()
    transport = transport or transport_from_url(settings.resolved_smtp_url)
    return Sender(settings, factory, transport, EmailTemplates(settings.templates_dir))


def dispatch_inline(factory: sessionmaker[Session], sender: Sender) -> Counter[str]:
    """One dispatch tick whose batches are sent right here instead of through a broker."""
    outcomes: Counter[str] = Counter()
    dispatch_once(lambda token, ids: outcomes.update(sender.send_batch(token, ids)), factory=factory)
    return outcomes


def deliveries(factory: sessionmaker[Session]) -> list[Delivery]:
    with transaction(factory) as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def statuses(factory: sessionmaker[Session]) -> list[str]:
    return [d.status for d in deliveries(factory)]


def due_times(factory: sessionmaker[Session]) -> list[datetime]:
    return [d.due_at for d in deliveries(factory)]
