"""Shared steps for the prospects' side tests: counting rows, draining the outbox, reading links."""

from __future__ import annotations

import re
from collections import Counter
from email import message_from_bytes
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.delivery.confirmations import Outbox
from nurture.mail.templates import EmailTemplates
from nurture.mail.transports import MemoryTransport, Transport
from nurture.models import (
    ConsentRecord,
    Delivery,
    Enrollment,
    Event,
    OutboxMessage,
    RateLimitCounter,
    Subscriber,
    Suppression,
)

TABLES = (
    Subscriber,
    ConsentRecord,
    OutboxMessage,
    RateLimitCounter,
    Enrollment,
    Delivery,
    Event,
    Suppression,
)
CONFIRM_LINK = re.compile(r"https?://[^\s\"<>]+/confirm/[A-Za-z0-9_.\-]+")


def row_counts(factory: sessionmaker[Session]) -> dict[str, int]:
    counts = [select(func.count()).select_from(model).scalar_subquery() for model in TABLES]
    with transaction(factory) as session:
        row = session.execute(select(*counts)).one()  # one round trip: the fuzz tests call this a lot
    return {model.__tablename__: count for model, count in zip(TABLES, row, strict=True)}


def snapshot(factory: sessionmaker[Session]) -> dict[str, list[tuple[Any, ...]]]:
    """Every column of every row of the prospect-facing tables: to prove a request changed nothing."""
    with transaction(factory) as session:
        return {
            model.__tablename__: sorted(
                (tuple(str(getattr(row, c.key)) for c in model.__mapper__.column_attrs))
                for row in session.scalars(select(model))
            )
            for model in TABLES
        }


def drain(factory: sessionmaker[Session], transport: Transport | None = None) -> tuple[Counter[str], list]:
    """One outbox tick in-process; returns the outcomes and the messages a memory transport received."""
    settings = get_settings()
    memory = transport or MemoryTransport()
    outcomes = Outbox(settings, factory, memory, EmailTemplates(settings.templates_dir)).drain()
    sent = [message_from_bytes(m.data) for m in memory.outbox] if isinstance(memory, MemoryTransport) else []
    return outcomes, sent


def text_part(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode("utf-8")
    raise AssertionError("no text/plain part")


def html_part(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/html":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode("utf-8")
    raise AssertionError("no text/html part")


def confirm_url(message: Message) -> str:
    match = CONFIRM_LINK.search(text_part(message))
    assert match, "no confirm link in the email"
    return match.group(0)


def path_of(url: str) -> str:
    return urlsplit(url).path


def list_unsubscribe_url(message: Message) -> str:
    header = message["List-Unsubscribe"]
    match = re.search(r"<(https?://[^>]+)>", header)
    assert match, header
    return match.group(1)
