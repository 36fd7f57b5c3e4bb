"""Emails whose fate is unknown, how each was resolved, and what staff can do with one held for a person.

An outcome is unknown when a worker died with the email on the wire, or the connection broke after its
data was sent (docs/reliability.md, "Crashes"): the server may or may not have it. Each gets an
``ambiguous`` event with its ``resolution``: ``resent`` (the default policy: sent again with the same
Message-ID, so the receiver can fold a repeat) or ``held`` (``NURTURE_AMBIGUOUS_POLICY=hold``: the delivery
waits in status ``ambiguous`` for a person). A held one is resolved by staff, from the UI, the API or the
CLI, with one of :data:`ACTIONS`; every resolution is audited and is an ``ambiguous-resolved`` event.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.core.config import Settings
from nurture.mail.compose import message_id_for
from nurture.models import Delivery, DeliveryStatus, Enrollment, Event, Sequence, Step, Subscriber, events
from nurture.staff import accounts

MARK_SENT = "mark-sent"  # a person checked (the recipient has it, or the server's log says so)
SEND_AGAIN = "send-again"  # back to pending, due now: it goes with the same Message-ID
ACTIONS = (MARK_SENT, SEND_AGAIN)
RESOLVED = "ambiguous-resolved"


class ResolveError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # "not_found" | "not_held" | "invalid"
        self.message = message


@dataclass(frozen=True)
class UnknownOutcome:
    delivery_id: int
    subscriber_id: int
    email: str | None
    sequence: str
    step: str
    at: datetime
    cause: str
    resolution: str  # resent | held | mark-sent | send-again (a held one staff have resolved)
    status: str  # the delivery's status now

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"at": self.at.isoformat()}


def unknown_outcomes(
    session: Session,
    *,
    subscriber_id: int | None = None,
    sequence_id: int | None = None,
    held_only: bool = False,
    limit: int = 200,
) -> list[UnknownOutcome]:
    """The newest unknown outcomes first, each with how it was resolved (a staff resolution wins)."""
    query = (
        select(Event, Delivery.status, Delivery.subscriber_id, Subscriber.email, Sequence.slug, Step.key)
        .join(Delivery, Delivery.id == Event.delivery_id)
        .join(Step, Step.id == Delivery.step_id)
        .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
        .join(Sequence, Sequence.id == Enrollment.sequence_id)
        .outerjoin(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Event.kind == "ambiguous")
        .order_by(Event.id.desc())
        .limit(limit)
    )
    if subscriber_id is not None:
        query = query.where(Delivery.subscriber_id == subscriber_id)
    if sequence_id is not None:
        query = query.where(Enrollment.sequence_id == sequence_id)
    if held_only:
        query = query.where(Delivery.status == DeliveryStatus.ambiguous)
    rows = session.execute(query).all()
    resolved = _staff_resolutions(session, [row.Event.delivery_id for row in rows])
    return [
        UnknownOutcome(
            delivery_id=row.Event.delivery_id,
            subscriber_id=row.subscriber_id,
            email=row.email,
            sequence=row.slug,
            step=row.key,
            at=row.Event.created_at,
            cause=str(row.Event.detail.get("cause") or row.Event.detail.get("error") or "unknown"),
            resolution=resolved.get(row.Event.delivery_id) or _resolution(row.Event.detail),
            status=row.status,
        )
        for row in rows
    ]


def _resolution(detail: dict[str, Any]) -> str:
    if "resolution" in detail:
        return str(detail["resolution"])
    return "resent" if detail.get("resend") else "held"  # events written before resolutions were named


def _staff_resolutions(session: Session, delivery_ids: list[int]) -> dict[int, str]:
    if not delivery_ids:
        return {}
    rows = session.execute(
        select(Event.delivery_id, Event.detail)
        .where(Event.kind == RESOLVED, Event.delivery_id.in_(delivery_ids))
        .order_by(Event.id)
    )
    return {delivery_id: str(detail.get("action")) for delivery_id, detail in rows}


def resolve(
    session: Session, settings: Settings, delivery_id: int, action: str, actor: accounts.Actor | None
) -> dict[str, Any]:
    """Resolve one held delivery: mark it sent, or send it again. Audited in the same transaction."""
    if action not in ACTIONS:
        raise ResolveError("invalid", f"action must be one of {', '.join(ACTIONS)}")
    delivery = session.scalar(select(Delivery).where(Delivery.id == delivery_id).with_for_update())
    if delivery is None:
        raise ResolveError("not_found", f"no delivery {delivery_id}")
    if delivery.status != DeliveryStatus.ambiguous:
        raise ResolveError("not_held", f"delivery {delivery_id} is {delivery.status}, not held as unknown")
    before = {"status": delivery.status}
    now = clock.db_now(session)
    if action == MARK_SENT:
        message_id = message_id_for(delivery.id, settings.secret_key, settings.mail.from_domain)
        values: dict[str, Any] = {"status": DeliveryStatus.sent, "sent_at": now, "message_id": message_id}
        events.record(session, "sent", delivery_id=delivery.id, message_id=message_id, marked_by_staff=True)
    else:
        values = {"status": DeliveryStatus.pending, "due_at": now}
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery.id, Delivery.status == DeliveryStatus.ambiguous)
        .values(claim_token=None, lease_until=None, last_error=None, **values)
        .execution_options(synchronize_session=False)
    )
    by = actor.email if actor else "cli"
    events.record(session, RESOLVED, delivery_id=delivery.id, action=action, by=by)
    after = {"status": str(values["status"]), "action": action}
    accounts.audit(session, actor, f"delivery.{action}", f"delivery:{delivery.id}", before, after)
    return {"delivery": delivery.id, **after}
