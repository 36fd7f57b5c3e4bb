"""The staff JSON API, ``/api/v1``: bearer tokens (``nurture users token``), role checks, JSON errors.

Every error is ``{"error": {"code": ..., "message": ...}}`` with a 4xx status; bodies are parsed here, not
by FastAPI's validation, so a bad body is a 400 in that shape rather than FastAPI's own 422 format.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import or_, select
from starlette.concurrency import run_in_threadpool

from nurture import clock, control, staff
from nurture.addresses import InvalidInput, normalise_email
from nurture.catalog import window_of
from nurture.db import transaction
from nurture.models import (
    ConsentRecord,
    Delivery,
    Enrollment,
    Event,
    Sequence,
    StaffRole,
    Step,
    Subscriber,
)
from nurture.schedule import format_delay
from nurture.staff import Actor
from nurture.stats import sequence_stats, standing_counts
from nurture.web.forms import BadBody, read_body

router = APIRouter(prefix="/api/v1", tags=["staff"])
MAX_SEARCH_RESULTS = 50


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    async def on_api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, headers)

    app.add_exception_handler(ApiError, on_api_error)
    app.include_router(router)


# --- auth -----------------------------------------------------------------------------------------------


def _actor(request: Request, needed: StaffRole) -> Actor:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token> (nurture users token EMAIL)")
    with transaction() as session:
        user = staff.user_for_token(session, token.strip())
        actor = Actor.of(user) if user is not None else None
    if actor is None:
        raise ApiError(401, "unauthorized", "the token is not valid")
    if not actor.may(needed):
        raise ApiError(403, "forbidden", f"this needs the {needed.value} role; you are {actor.role}")
    return actor


async def _json(request: Request) -> dict[str, Any]:
    try:
        return (await read_body(request, allow_json=True)).fields
    except BadBody as exc:
        raise ApiError(exc.status_code, "bad_request", exc.message) from None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_instant(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise ApiError(400, "invalid", f"{field} must be an ISO 8601 date-time with an offset")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, "invalid", f"{field}: {value!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise ApiError(400, "invalid", f"{field} needs a time zone offset, e.g. 2026-12-01T09:00:00Z")
    return moment.astimezone(UTC)


def _sequence(session: Any, slug: str) -> Sequence:
    sequence = session.scalar(select(Sequence).where(Sequence.slug == slug))
    if sequence is None:
        raise ApiError(404, "not_found", f"no sequence {slug!r}")
    return sequence


# --- sequences ------------------------------------------------------------------------------------------


def sequence_summary(sequence: Sequence, standing: dict[int, int]) -> dict[str, Any]:
    version = sequence.current_version
    return {
        "slug": sequence.slug,
        "name": sequence.name,
        "status": control.effective_status(sequence),
        "paused_at": _iso(sequence.paused_at),
        "activate_at": _iso(sequence.activate_at),
        "version": version.number if version else None,
        "steps": len(version.steps) if version else 0,
        "standing": {s.key: standing.get(s.position, 0) for s in version.steps} if version else {},
    }


def sequence_detail(sequence: Sequence) -> dict[str, Any]:
    version = sequence.current_version
    window = window_of(version) if version else None
    return {
        **sequence_summary(sequence, {}),
        "timezone": version.timezone if version else None,
        "window": (
            {
                "days": sorted(window.days),
                "start": f"{window.start:%H:%M}",
                "end": f"{window.end:%H:%M}",
                "description": window.describe(),
            }
            if window
            else None
        ),
        "step_list": [
            {
                "key": s.key,
                "position": s.position,
                "delay": format_delay(_seconds(s.delay_seconds)),
                "delay_seconds": s.delay_seconds,
                "template": s.template,
            }
            for s in (version.steps if version else [])
        ],
    }


def _seconds(value: int) -> timedelta:
    return timedelta(seconds=value)


@router.get("/sequences", summary="Every sequence with its status and where live enrollments stand")
def list_sequences(request: Request) -> JSONResponse:
    _actor(request, StaffRole.viewer)
    with transaction() as session:
        standing = standing_counts(session)
        rows = session.scalars(select(Sequence).order_by(Sequence.slug)).all()
        return JSONResponse({"sequences": [sequence_summary(s, standing.get(s.id, {})) for s in rows]})


@router.get("/sequences/{slug}", summary="One sequence: steps with delay, window and template")
def get_sequence(request: Request, slug: str) -> JSONResponse:
    _actor(request, StaffRole.viewer)
    with transaction() as session:
        return JSONResponse(sequence_detail(_sequence(session, slug)))


@router.get("/sequences/{slug}/stats", summary="Per step: scheduled, sent, failed, bounced, skipped, left")
def get_stats(request: Request, slug: str) -> JSONResponse:
    _actor(request, StaffRole.viewer)
    with transaction() as session:
        return JSONResponse(sequence_stats(session, _sequence(session, slug)).as_dict())


def run_control(actor: Actor, slug: str, action: str, work: Any) -> dict[str, Any]:
    """Lock the sequence, apply ``work(session, sequence)``, audit before/after; one transaction."""
    try:
        with transaction() as session:
            sequence = control.lock(session, slug)
            before = control.snapshot(sequence)
            result = work(session, sequence)
            after = control.snapshot(sequence)
            staff.audit(session, actor, f"sequence.{action}", f"sequence:{slug}", before, after)
            return {"sequence": slug, **after, **result}
    except control.ControlError as exc:
        status = {"not_found": 404, "conflict": 409}.get(exc.code, 400)
        raise ApiError(status, exc.code, exc.message) from None


@router.post("/sequences/{slug}/pause", summary="Hold every email of the sequence until resumed")
async def pause_sequence(request: Request, slug: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.editor)
    await _json(request)
    body = await run_in_threadpool(
        run_control, actor, slug, "pause", lambda s, seq: {"held": control.pause(s, seq)}
    )
    return JSONResponse(body)


@router.post(
    "/sequences/{slug}/resume",
    summary='Resume: {"policy": "shift"} (move by the pause) or {"policy": "send_due"} (rate limited)',
)
async def resume_sequence(request: Request, slug: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.editor)
    fields = await _json(request)
    try:
        policy = control.ResumePolicy(fields.get("policy", ""))
    except ValueError:
        raise ApiError(400, "invalid", 'policy must be "shift" or "send_due"') from None
    rate = request.app.state.settings.resume_rate_per_minute

    def work(session: Any, sequence: Sequence) -> dict[str, Any]:
        result = control.resume(session, sequence, policy, per_minute=rate)
        return {"policy": policy.value, **result.__dict__}

    return JSONResponse(await run_in_threadpool(run_control, actor, slug, "resume", work))


@router.post("/sequences/{slug}/schedule", summary='Start at a time: {"activate_at": ISO 8601 with offset}')
async def schedule_sequence(request: Request, slug: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.editor)
    fields = await _json(request)
    activate_at = _parse_instant(fields.get("activate_at"), "activate_at")
    body = await run_in_threadpool(
        run_control,
        actor,
        slug,
        "schedule",
        lambda s, seq: {"retimed": control.schedule(s, seq, activate_at)},
    )
    return JSONResponse(body)


@router.post(
    "/sequences/{slug}/enroll",
    summary='Enroll existing subscribers: {"emails": [...]} or {"all_active": true}, optional start_at',
)
async def enroll_subscribers(request: Request, slug: str) -> JSONResponse:
    from nurture.importer import enroll_existing

    actor = await run_in_threadpool(_actor, request, StaffRole.editor)
    fields = await _json(request)
    emails = fields.get("emails")
    all_active = fields.get("all_active") is True
    if all_active == (emails is not None):
        raise ApiError(400, "invalid", 'send either "emails": [...] or "all_active": true')
    if emails is not None and (
        not isinstance(emails, list) or not all(isinstance(e, str) for e in emails) or len(emails) > 10_000
    ):
        raise ApiError(400, "invalid", "emails must be a list of at most 10000 strings")
    start_at = _parse_instant(fields["start_at"], "start_at") if fields.get("start_at") else None
    if start_at is not None and start_at < clock.now() - timedelta(minutes=5):
        # A start in the past would make every missed step due at once: the flood this API must not cause.
        raise ApiError(400, "invalid", "start_at must not be in the past")

    def work() -> dict[str, Any]:
        with transaction() as session:
            sequence = _sequence(session, slug)
            try:
                counts = enroll_existing(session, sequence, emails=emails, start_at=start_at)
            except ValueError as exc:
                raise ApiError(409, "conflict", str(exc)) from None
            staff.audit(
                session,
                actor,
                "sequence.enroll",
                f"sequence:{slug}",
                None,
                {"all_active": all_active, "start_at": _iso(start_at), **counts},
            )
            return {"sequence": slug, **counts}

    return JSONResponse(await run_in_threadpool(work))


# --- subscribers ----------------------------------------------------------------------------------------


def subscriber_summary(subscriber: Subscriber) -> dict[str, Any]:
    return {
        "id": subscriber.id,
        "email": subscriber.email,
        "first_name": subscriber.first_name,
        "timezone": subscriber.timezone,
        "status": subscriber.status,
        "created_at": _iso(subscriber.created_at),
        "confirmed_at": _iso(subscriber.confirmed_at),
        "unsubscribed_at": _iso(subscriber.unsubscribed_at),
    }


def search_subscribers(session: Any, email: str | None, q: str | None) -> list[Subscriber]:
    query = select(Subscriber).order_by(Subscriber.id).limit(MAX_SEARCH_RESULTS)
    if email:
        query = query.where(Subscriber.email == email.strip().lower())
    elif q:
        pattern = "%" + q.strip().lower().replace("\\", "").replace("%", "").replace("_", "") + "%"
        query = query.where(or_(Subscriber.email.like(pattern), Subscriber.first_name.ilike(pattern)))
    return list(session.scalars(query))


def explain(session: Any, subscriber: Subscriber) -> dict[str, Any]:
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
        entry["deliveries"].append(
            {
                "id": delivery.id,
                "step": step.key,
                "position": step.position,
                "status": delivery.status,
                "due_at": _iso(delivery.due_at),
                "sent_at": _iso(delivery.sent_at),
                "attempts": delivery.attempts,
                "skip_reason": delivery.skip_reason,
                "last_error": delivery.last_error,
            }
        )
    consents = session.scalars(
        select(ConsentRecord).where(ConsentRecord.subscriber_id == subscriber.id).order_by(ConsentRecord.id)
    )
    events = session.scalars(
        select(Event).where(Event.subscriber_id == subscriber.id).order_by(Event.id.desc()).limit(200)
    )
    return {
        **subscriber_summary(subscriber),
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
    }


@router.get(
    "/subscribers", summary="Find subscribers by exact email (?email=) or by part of email or name (?q=)"
)
def list_subscribers(request: Request, email: str | None = None, q: str | None = None) -> JSONResponse:
    _actor(request, StaffRole.viewer)
    if not email and not q:
        raise ApiError(400, "invalid", "give ?email= or ?q=")
    if email:
        try:
            email = normalise_email(email)
        except InvalidInput as exc:
            raise ApiError(400, "invalid", str(exc)) from None
    with transaction() as session:
        return JSONResponse(
            {"subscribers": [subscriber_summary(s) for s in search_subscribers(session, email, q)]}
        )


@router.get(
    "/subscribers/{subscriber_id}", summary="One subscriber with enrollments, deliveries, skip reasons"
)
def get_subscriber(request: Request, subscriber_id: str) -> JSONResponse:
    _actor(request, StaffRole.viewer)
    if not subscriber_id.isdigit() or len(subscriber_id) > 18:
        raise ApiError(404, "not_found", "no such subscriber")
    with transaction() as session:
        subscriber = session.get(Subscriber, int(subscriber_id))
        if subscriber is None:
            raise ApiError(404, "not_found", "no such subscriber")
        return JSONResponse(explain(session, subscriber))
