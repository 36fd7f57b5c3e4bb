"""What the conditions of a batch's conditional steps look at (nurture.sequences.conditions), read in three
grouped queries for the whole batch: the steps each enrollment clicked in, the variants it was sent, and the
subscriber's attributes. Only batches with a conditional step pay for them."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from nurture.models import Delivery, DeliveryStatus, Enrollment, LinkClick, Step, Subscriber, TrackedLink
from nurture.sequences.conditions import Facts


def facts_of(session: Session, enrollment_ids: list[int]) -> dict[int, Facts]:
    """enrollment id -> what its conditions may look at, now."""
    ids = sorted(set(enrollment_ids))
    clicked: dict[int, set[str]] = defaultdict(set)
    for enrollment_id, key in session.execute(
        select(Delivery.enrollment_id, Step.key)
        .select_from(LinkClick)
        .join(TrackedLink, TrackedLink.id == LinkClick.link_id)
        .join(Delivery, Delivery.id == TrackedLink.delivery_id)
        .join(Step, Step.id == Delivery.step_id)
        .where(Delivery.enrollment_id.in_(ids), LinkClick.kind == "click")
        .distinct()
    ):
        clicked[enrollment_id].add(key)
    variants: dict[int, dict[str, str]] = defaultdict(dict)
    for enrollment_id, key, variant in session.execute(
        select(Delivery.enrollment_id, Step.key, Delivery.variant)
        .join(Step, Step.id == Delivery.step_id)
        .where(
            Delivery.enrollment_id.in_(ids),
            Delivery.variant.is_not(None),
            Delivery.status == DeliveryStatus.sent,  # "went out as": an email that was only prepared did not
        )
    ):
        variants[enrollment_id][key] = variant
    attributes = {
        enrollment_id: values
        for enrollment_id, values in session.execute(
            select(Enrollment.id, Subscriber.attributes)
            .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
            .where(Enrollment.id.in_(ids))
        )
    }
    return {
        enrollment_id: Facts(
            clicked=frozenset(clicked[enrollment_id]),
            variants=variants[enrollment_id],
            attributes=attributes.get(enrollment_id) or {},
        )
        for enrollment_id in ids
    }
