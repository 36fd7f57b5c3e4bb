"""``/preferences/{token}``: pause, resume, leave one course or all, resubscribe, name and time zone.

GET shows the page and changes nothing. Each POST is one action in one transaction (the subscriber row
locked), then a 303 back to the page with a fixed status message (never text from the request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from nurture.core import tokens
from nurture.core.addresses import known_zones
from nurture.core.config import Settings
from nurture.core.db import transaction
from nurture.core.ids import parse_id
from nurture.models import Enrollment, EnrollmentStatus, Sequence, Subscriber, SubscriberStatus, events
from nurture.sequences.schedule import resolve_zone
from nurture.subscribers import consent
from nurture.subscribers.enrollment import unsubscribe
from nurture.subscribers.preferences import (
    PAUSE_CHOICES,
    PreferenceError,
    leave_sequence,
    pause,
    resubscribe,
    resume,
    update_profile,
)
from nurture.subscribers.signup import SLUG, FieldErrors, text_field, validate_name, validate_zone
from nurture.web.public.forms import BadBody, origin_of, read_body
from nurture.web.public.pages import render
from nurture.web.public.subscribe import bad_body

router = APIRouter()

DONE_MESSAGES = {
    "update": "Your details are saved.",
    "pause": "Your emails are paused.",
    "resume": "Your emails are back on.",
    "leave": "You have left that course.",
    "leave-all": "You are unsubscribed from every email.",
    "resubscribe": "Welcome back: your emails will continue where they stopped.",
}


@dataclass(frozen=True)
class Course:
    slug: str
    name: str


@dataclass(frozen=True)
class View:
    status: str
    first_name: str | None
    timezone: str | None
    paused_until: str | None  # formatted in the subscriber's zone
    courses: list[Course]


def _public_id(token: str) -> str | None:
    try:
        return tokens.read_token(tokens.Purpose.preferences, token)
    except tokens.InvalidToken:
        return None


def _subscriber(session: Session, public_id: str, *, lock: bool = False) -> Subscriber | None:
    query = select(Subscriber).where(Subscriber.public_id == public_id)
    return session.scalar(query.with_for_update() if lock else query)


def _view(session: Session, subscriber: Subscriber) -> View:
    courses = [
        Course(slug, name)
        for slug, name in session.execute(
            select(Sequence.slug, Sequence.name)
            .join(Enrollment, Enrollment.sequence_id == Sequence.id)
            .where(Enrollment.subscriber_id == subscriber.id, Enrollment.status == EnrollmentStatus.active)
            .order_by(Sequence.name)
        )
    ]
    paused = None
    if subscriber.paused_until is not None:
        local = subscriber.paused_until.astimezone(resolve_zone(subscriber.timezone, None))
        paused = f"{local:%A} {local.day} {local:%B %Y}"
    return View(subscriber.status, subscriber.first_name, subscriber.timezone, paused, courses)


def _page(
    request: Request,
    token: str,
    view: View,
    *,
    status_code: int = 200,
    message: str | None = None,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    return render(
        request,
        "preferences.html",
        status_code=status_code,
        token=token,
        view=view,
        message=message,
        errors=errors or {},
        values={k: v for k, v in (values or {}).items() if isinstance(v, str)},
        pause_choices=PAUSE_CHOICES,
        zones=sorted(known_zones()),
        consent_version=consent.CURRENT,
        consent_text=consent.text_of(consent.CURRENT, settings.org_name),
    )


def _load_view(public_id: str) -> View | None:
    with transaction() as session:
        subscriber = _subscriber(session, public_id)
        return None if subscriber is None else _view(session, subscriber)


@router.get("/preferences/{token}", response_class=HTMLResponse, include_in_schema=False)
def preferences_page(request: Request, token: str, done: str | None = None) -> HTMLResponse:
    public_id = _public_id(token)
    view = _load_view(public_id) if public_id else None
    if view is None:
        return render(request, "invalid_link.html", status_code=404)
    return _page(request, token, view, message=DONE_MESSAGES.get(done or ""))


def apply(public_id: str, fields: dict[str, Any], origin: consent.Origin, settings: Settings) -> bool:
    """Run one action; False if the subscriber is gone; :class:`FieldErrors` (nothing changed) if refused."""
    with transaction() as session:
        subscriber = _subscriber(session, public_id, lock=True)
        if subscriber is None:
            return False
        action = fields.get("action")
        try:
            _dispatch(session, subscriber, action, fields, origin, settings)
        except PreferenceError as exc:
            raise FieldErrors({"action": str(exc)}) from None
        return True


def _dispatch(
    session: Session,
    subscriber: Subscriber,
    action: object,
    fields: dict[str, Any],
    origin: consent.Origin,
    settings: Settings,
) -> None:
    active = subscriber.status == SubscriberStatus.active
    action = action if isinstance(action, str) else None
    if action == "update":
        errors: dict[str, str] = {}
        name = validate_name(text_field(fields, "first_name", errors), errors)
        zone = validate_zone(text_field(fields, "timezone", errors), errors)
        if errors:
            raise FieldErrors(errors)
        update_profile(session, subscriber, name, zone)
    elif action == "pause" and active:
        days = parse_id(fields.get("days"))
        pause(session, subscriber, -1 if days is None else days)
    elif action == "resume" and active:
        resume(session, subscriber)
    elif action == "leave" and active:
        slug = fields.get("sequence")
        if not isinstance(slug, str) or not SLUG.match(slug):
            raise PreferenceError("That course is not one of yours.")
        enrollment_id = session.scalar(
            select(Enrollment.id)
            .join(Sequence, Sequence.id == Enrollment.sequence_id)
            .where(Enrollment.subscriber_id == subscriber.id, Sequence.slug == slug)
        )
        if enrollment_id is None:
            raise PreferenceError("That course is not one of yours.")
        leave_sequence(session, subscriber, enrollment_id)
    elif action == "leave-all":
        unsubscribe(session, subscriber, source="preferences")
    elif action == "resubscribe" and subscriber.status == SubscriberStatus.unsubscribed:
        version = fields.get("consent_version") or consent.CURRENT
        if not isinstance(version, str) or version not in consent.VERSIONS:
            raise PreferenceError("This page is out of date: please reload it and try again.")
        # The link came from their own mailbox and pressing the button is the agreement: recorded, and
        # confirmed at once.
        row = consent.signup_row(
            origin=origin,
            source="resubscribe",
            version=version,
            org_name=settings.org_name,
            sequence_slug=None,
            first_name=None,
            timezone=None,
        )
        record = consent.record_signup(session, subscriber.id, row)
        consent.mark_confirmed(record, origin)
        resubscribe(session, subscriber)
        events.record(session, "confirmed", subscriber_id=subscriber.id, consent=version)
    elif action in DONE_MESSAGES:
        raise PreferenceError("That is not available right now.")
    else:
        raise PreferenceError("Unknown action.")


@router.post("/preferences/{token}", include_in_schema=False)
async def preferences_submit(request: Request, token: str) -> Response:
    public_id = _public_id(token)
    if public_id is None:
        return render(request, "invalid_link.html", status_code=404)
    try:
        body = await read_body(request)
    except BadBody as exc:
        return bad_body(request, exc)
    settings: Settings = request.app.state.settings
    try:
        found = await run_in_threadpool(apply, public_id, body.fields, origin_of(request), settings)
    except FieldErrors as exc:
        if body.is_json:
            return JSONResponse({"errors": exc.errors}, status_code=422)
        view = await run_in_threadpool(_load_view, public_id)
        if view is None:
            return render(request, "invalid_link.html", status_code=404)
        return _page(request, token, view, status_code=422, errors=exc.errors, values=body.fields)
    if not found:
        return render(request, "invalid_link.html", status_code=404)
    action = str(body.fields.get("action"))
    if body.is_json:
        return JSONResponse({"status": "ok", "action": action})
    return RedirectResponse(f"/preferences/{token}?done={action}", status_code=303)
