"""Subscribers: search, one subscriber's explain log, the six staff actions
(nurture.subscribers.staff_actions: lock,
change, event and audit row in one transaction) and the GDPR export of one subscriber."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from nurture.core.addresses import InvalidInput, normalise_email
from nurture.core.db import transaction
from nurture.delivery import unknown_outcomes
from nurture.models import ConsentRecord, Delivery, Enrollment, Event, Sequence, Step, Subscriber
from nurture.staff.accounts import Actor
from nurture.subscribers import staff_actions
from nurture.web.api.deps import DbSession, Editor, SubscriberId, Viewer
from nurture.web.api.errors import ApiError, error_responses
from nurture.web.api.routing import ApiRoute
from nurture.web.api.schemas import JsonObject, NoBody, Profile, RequestBody, Timestamp, UnknownOutcome

router = APIRouter(prefix="/api/v1", tags=["subscribers"], route_class=ApiRoute)
MAX_SEARCH_RESULTS = 50
ACTION_STATUS = {"invalid": 400, "not_found": 404, "conflict": 409}
ACTION_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415)

# --- models ---------------------------------------------------------------------------------------------


class SubscriberList(BaseModel):
    subscribers: list[Profile] = Field(description=f"At most {MAX_SEARCH_RESULTS}, by id")


class DeliveryLog(BaseModel):
    id: int
    step: str
    position: int
    status: str
    due_at: Timestamp
    sent_at: Timestamp
    attempts: int
    skip_reason: str | None
    last_error: str | None


class EnrollmentLog(BaseModel):
    id: int
    sequence: str
    version: int
    status: str
    enrolled_at: Timestamp
    ended_at: Timestamp
    end_reason: str | None
    deliveries: list[DeliveryLog]


class ConsentLog(BaseModel):
    created_at: Timestamp
    source: str
    consent_version: str
    consent_text: str
    confirmed_at: Timestamp


class EventLog(BaseModel):
    kind: str
    at: Timestamp
    detail: JsonObject | None


class Explained(Profile):
    """Everything about one subscriber: enrollments, each delivery's due time and outcome, consent, events."""

    attributes: JsonObject | None
    enrollments: list[EnrollmentLog]
    consent: list[ConsentLog]
    events: list[EventLog] = Field(description="The newest 200 first")
    unknown_outcomes: list[UnknownOutcome]


class PauseBody(RequestBody):
    until: str = Field(
        json_schema_extra={"format": "date-time"},
        description="ISO 8601 with an offset, in the future, at most a year ahead",
    )


class ResubscribeBody(RequestBody):
    consent_source: str = Field(description="Where and how they consented again (at most 100 characters)")
    note: str | None = None


class RemoveBody(RequestBody):
    sequence: str = Field(description="The sequence's slug")


class ActionDone(BaseModel):
    id: int
    action: str


class PauseDone(ActionDone):
    paused_until: Timestamp
    moved: int


class ResumeDone(ActionDone):
    moved: int


class UnsubscribeDone(ActionDone):
    cancelled: int


class ResubscribeDone(ActionDone):
    reopened: int = Field(description="enrollments the unsubscribe ended that continue")


class RemoveDone(ActionDone):
    sequence: str
    cancelled: int


class EraseDone(ActionDone):
    erased: bool


class SubscriberExport(BaseModel):
    """Everything held about one person (nurture.subscribers.staff_actions.export_data)."""

    exported_at: Timestamp
    profile: JsonObject
    attributes: JsonObject
    consent_records: list[JsonObject]
    enrollments: list[JsonObject]
    events: list[JsonObject]
    system_emails: list[JsonObject]


# --- shapes, also used by the staff UI ---------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def search_subscribers(session: Session, email: str | None, q: str | None) -> list[Subscriber]:
    query = select(Subscriber).order_by(Subscriber.id).limit(MAX_SEARCH_RESULTS)
    if email:
        query = query.where(Subscriber.email == email.strip().lower())
    elif q:
        pattern = "%" + q.strip().lower().replace("\\", "").replace("%", "").replace("_", "") + "%"
        query = query.where(or_(Subscriber.email.like(pattern), Subscriber.first_name.ilike(pattern)))
    return list(session.scalars(query))


def explain(session: Session, subscriber: Subscriber) -> dict[str, Any]:
    """Everything about one subscriber: enrollments, each delivery's due time and outcome, consent, events."""
    rows = session.execute(
        select(Delivery, Step, Enrollment, Sequence)
        .join(Step, Step.id == Delivery.step_id)
        .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
        .join(Sequence, Sequence.id == Enrollment.sequence_id)
        .where(Delivery.subscriber_id == subscriber.id)
        .order_by(Enrollment.id, Step.position)
    ).all()
    enrollments: dict[int, dict[str, Any]] = {}
    for delivery, step, enrollment, sequence in rows:
        entry = enrollments.setdefault(
            enrollment.id,
            {
                "id": enrollment.id,
                "sequence": sequence.slug,
                "version": enrollment.version.number,
                "status": enrollment.status,
                "enrolled_at": _iso(enrollment.enrolled_at),
                "ended_at": _iso(enrollment.ended_at),
                "end_reason": enrollment.end_reason,
                "deliveries": [],
            },
        )
        entry["deliveries"].append(staff_actions.delivery_fields(delivery, step.key, step.position))
    consents = session.scalars(
        select(ConsentRecord).where(ConsentRecord.subscriber_id == subscriber.id).order_by(ConsentRecord.id)
    )
    events = session.scalars(
        select(Event).where(Event.subscriber_id == subscriber.id).order_by(Event.id.desc()).limit(200)
    )
    return {
        **staff_actions.profile(subscriber),
        "attributes": subscriber.attributes,
        "enrollments": list(enrollments.values()),
        "consent": [
            {
                "created_at": _iso(c.created_at),
                "source": c.source,
                "consent_version": c.consent_version,
                "consent_text": c.consent_text,
                "confirmed_at": _iso(c.confirmed_at),
            }
            for c in consents
        ],
        "events": [{"kind": e.kind, "at": _iso(e.created_at), "detail": e.detail} for e in events],
        # Sends a crash or a broken connection left unknown, and how each was resolved (held: a person).
        "unknown_outcomes": [
            u.as_dict() for u in unknown_outcomes.unknown_outcomes(session, subscriber_id=subscriber.id)
        ],
    }


# --- reads ------------------------------------------------------------------------------------------------


@router.get(
    "/subscribers",
    summary="Find subscribers by exact email (?email=) or by part of email or name (?q=)",
    response_model=SubscriberList,
    responses=error_responses(400, 401),
)
def list_subscribers(
    actor: Viewer, session: DbSession, email: str | None = None, q: str | None = None
) -> JSONResponse:
    if not email and not q:
        raise ApiError(400, "invalid", "give ?email= or ?q=")
    if email:
        try:
            email = normalise_email(email)
        except InvalidInput as exc:
            raise ApiError(400, "invalid", str(exc)) from None
    found = search_subscribers(session, email, q)
    return JSONResponse({"subscribers": [staff_actions.profile(s) for s in found]})


@router.get(
    "/subscribers/{subscriber_id}",
    summary="One subscriber with enrollments, deliveries, skip reasons",
    response_model=Explained,
    responses=error_responses(401, 404),
)
def get_subscriber(actor: Viewer, session: DbSession, subscriber_id: SubscriberId) -> JSONResponse:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise ApiError(404, "not_found", "no such subscriber")
    return JSONResponse(explain(session, subscriber))


# --- actions ----------------------------------------------------------------------------------------------


def act(actor: Actor, subscriber_id: int, action: str, **params: Any) -> JSONResponse:
    try:
        with transaction() as session:
            return JSONResponse(staff_actions.act(session, actor, subscriber_id, action, **params))
    except staff_actions.ActionError as exc:
        raise ApiError(ACTION_STATUS.get(exc.code, 400), exc.code, exc.message) from None


@router.post(
    "/subscribers/{subscriber_id}/pause",
    summary='Pause one subscriber until a date: {"until": ISO 8601 with offset}; nothing is skipped',
    response_model=PauseDone,
    responses=ACTION_ERRORS,
)
def pause_subscriber(actor: Editor, subscriber_id: SubscriberId, body: PauseBody) -> JSONResponse:
    return act(actor, subscriber_id, "pause", until=body.until)


@router.post(
    "/subscribers/{subscriber_id}/resume",
    summary="End a subscriber's pause now",
    response_model=ResumeDone,
    responses=ACTION_ERRORS,
)
def resume_subscriber(actor: Editor, subscriber_id: SubscriberId, body: NoBody) -> JSONResponse:
    return act(actor, subscriber_id, "resume")


@router.post(
    "/subscribers/{subscriber_id}/unsubscribe",
    summary="Unsubscribe: every unsent email is cancelled",
    response_model=UnsubscribeDone,
    responses=ACTION_ERRORS,
)
def unsubscribe_subscriber(actor: Editor, subscriber_id: SubscriberId, body: NoBody) -> JSONResponse:
    return act(actor, subscriber_id, "unsubscribe")


@router.post(
    "/subscribers/{subscriber_id}/resubscribe",
    summary='Resubscribe with fresh consent: {"consent_source": "...", "note": "..."} (recorded)',
    response_model=ResubscribeDone,
    responses=ACTION_ERRORS,
)
def resubscribe_subscriber(actor: Editor, subscriber_id: SubscriberId, body: ResubscribeBody) -> JSONResponse:
    return act(actor, subscriber_id, "resubscribe", consent_source=body.consent_source, note=body.note)


@router.post(
    "/subscribers/{subscriber_id}/remove",
    summary='Remove from one sequence: {"sequence": slug}; its unsent emails are cancelled',
    response_model=RemoveDone,
    responses=ACTION_ERRORS,
)
def remove_subscriber(actor: Editor, subscriber_id: SubscriberId, body: RemoveBody) -> JSONResponse:
    return act(actor, subscriber_id, "remove", sequence=body.sequence)


@router.post(
    "/subscribers/{subscriber_id}/erase",
    summary="GDPR erasure: personal data deleted, an anonymous suppression hash kept",
    response_model=EraseDone,
    responses=ACTION_ERRORS,
)
def erase_subscriber(actor: Editor, subscriber_id: SubscriberId, body: NoBody) -> JSONResponse:
    return act(actor, subscriber_id, "erase")


@router.get(
    "/subscribers/{subscriber_id}/export",
    summary="Everything held about one subscriber (profile, consent, enrollments, deliveries, events)",
    response_model=SubscriberExport,
    responses=error_responses(401, 403, 404),
)
def export_subscriber(actor: Editor, subscriber_id: SubscriberId) -> JSONResponse:
    try:
        with transaction() as session:
            data = staff_actions.export_one(session, actor, subscriber_id)
    except staff_actions.ActionError as exc:
        raise ApiError(404, exc.code, exc.message) from None
    return JSONResponse(
        data, headers={"Content-Disposition": f'attachment; filename="subscriber-{subscriber_id}.json"'}
    )
