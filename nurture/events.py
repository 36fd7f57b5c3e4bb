"""Append to the event log in the caller's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from nurture.models import Event


def record(
    session: Session,
    kind: str,
    *,
    subscriber_id: int | None = None,
    delivery_id: int | None = None,
    **detail: Any,
) -> None:
    session.add(Event(kind=kind, subscriber_id=subscriber_id, delivery_id=delivery_id, detail=detail))
