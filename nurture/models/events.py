"""Append to the event log in the caller's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert
from sqlalchemy.orm import Session

from nurture.models import Event

_INSERT_EVENT = insert(Event.__table__)  # built once: the signup path appends one event per request


def record(
    session: Session,
    kind: str,
    *,
    subscriber_id: int | None = None,
    delivery_id: int | None = None,
    **detail: Any,
) -> None:
    session.add(Event(kind=kind, subscriber_id=subscriber_id, delivery_id=delivery_id, detail=detail))


def insert_now(
    connection: Connection,
    kind: str,
    *,
    subscriber_id: int | None = None,
    delivery_id: int | None = None,
    **detail: Any,
) -> None:
    """:func:`record` as one Core INSERT executed now, for hot paths that use no ORM objects (no flush)."""
    connection.execute(
        _INSERT_EVENT,
        {"kind": kind, "subscriber_id": subscriber_id, "delivery_id": delivery_id, "detail": detail},
    )
