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

from nurture import clock, control, staff, subscriber_admin, unknown_outcomes
from nurture.addresses import InvalidInput, normalise_email
from nurture.catalog import window_of
from nurture.db import transaction
from nurture.ids import parse_id
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
        **subscriber_admin.profile(subscriber),
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
            {"subscribers": [subscriber_admin.profile(s) for s in search_subscribers(session, email, q)]}
        )


@router.get(
    "/subscribers/{subscriber_id}", summary="One subscriber with enrollments, deliveries, skip reasons"
)
def get_subscriber(request: Request, subscriber_id: str) -> JSONResponse:
    _actor(request, StaffRole.viewer)
    target = _subscriber_id(subscriber_id)
    with transaction() as session:
        subscriber = session.get(Subscriber, target)
        if subscriber is None:
            raise ApiError(404, "not_found", "no such subscriber")
        return JSONResponse(explain(session, subscriber))


# --- per-subscriber actions -----------------------------------------------------------------------------


def _subscriber_id(value: str) -> int:
    parsed = parse_id(value)
    if parsed is None:
        raise ApiError(404, "not_found", "no such subscriber")
    return parsed


_ACTION_STATUS = {"invalid": 400, "not_found": 404, "conflict": 409}


async def _subscriber_action(request: Request, subscriber_id: str, action: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.editor)
    fields = await _json(request)
    target = _subscriber_id(subscriber_id)
    params: dict[str, Any] = {
        "pause": {"until": fields.get("until")},
        "resubscribe": {"consent_source": fields.get("consent_source"), "note": fields.get("note")},
        "remove": {"sequence": fields.get("sequence")},
    }.get(action, {})

    def work() -> dict[str, Any]:
        try:
            with transaction() as session:
                return subscriber_admin.act(session, actor, target, action, **params)
        except subscriber_admin.ActionError as exc:
            raise ApiError(_ACTION_STATUS.get(exc.code, 400), exc.code, exc.message) from None

    return JSONResponse(await run_in_threadpool(work))


@router.post(
    "/subscribers/{subscriber_id}/pause",
    summary='Pause one subscriber until a date: {"until": ISO 8601 with offset}; nothing is skipped',
)
async def pause_subscriber(request: Request, subscriber_id: str) -> JSONResponse:
    return await _subscriber_action(request, subscriber_id, "pause")


@router.post("/subscribers/{subscriber_id}/resume", summary="End a subscriber's pause now")
async def resume_subscriber(request: Request, subscriber_id: str) -> JSONResponse:
    return await _subscriber_action(request, subscriber_id, "resume")


@router.post(
    "/subscribers/{subscriber_id}/unsubscribe", summary="Unsubscribe: every unsent email is cancelled"
)
async def unsubscribe_subscriber(request: Request, subscriber_id: str) -> JSONResponse:
    return await _subscriber_action(request, subscriber_id, "unsubscribe")


@router.post(
    "/subscribers/{subscriber_id}/resubscribe",
    summary='Resubscribe with fresh consent: {"consent_source": "...", "note": "..."} (recorded)',
)
async def resubscribe_subscriber(request: Request, subscriber_id: str) -> JSONResponse:
    return await _subscriber_action(request, subscriber_id, "resubscribe")


@router.post(
    "/subscribers/{subscriber_id}/remove",
    summary='Remove from one sequence: {"sequence": slug}; its unsent emails are cancelled',
)
async def remove_subscriber(request: Request, subscriber_id: str) -> JSONResponse:
    return await _subscriber_action(request, subscriber_id, "remove")


@router.post(
    "/subscribers/{subscriber_id}/erase",
    summary="GDPR erasure: personal data deleted, an anonymous suppression hash kept",
)
async def erase_subscriber(request: Request, subscriber_id: str) -> JSONResponse:
    return await _subscriber_action(request, subscriber_id, "erase")


@router.get(
    "/subscribers/{subscriber_id}/export",
    summary="Everything held about one subscriber (profile, consent, enrollments, deliveries, events)",
)
def export_subscriber(request: Request, subscriber_id: str) -> JSONResponse:
    actor = _actor(request, StaffRole.editor)
    target = _subscriber_id(subscriber_id)
    try:
        with transaction() as session:
            data = subscriber_admin.export_one(session, actor, target)
    except subscriber_admin.ActionError as exc:
        raise ApiError(404, exc.code, exc.message) from None
    return JSONResponse(
        data, headers={"Content-Disposition": f'attachment; filename="subscriber-{target}.json"'}
    )


# --- import and export ----------------------------------------------------------------------------------

MAX_IMPORT_BYTES = 64 * 1024 * 1024  # 100,000 rows with a few attributes are about 10 MB


def import_report_dict(report: Any) -> dict[str, Any]:
    return {
        "imported": report.imported,
        "enrolled_existing": report.enrolled_existing,
        "already_enrolled": report.already_enrolled,
        "skipped": dict(report.skipped),
        "errors": [{"line": e.line, "email": e.email, "message": e.message} for e in report.errors],
    }


def run_import(actor: Actor, data: bytes, slug: str, consent_source: str) -> Any:
    """Parse, import, audit; raises ImportError_ for a file that cannot be imported at all."""
    from nurture.db import session_factory
    from nurture.importer import ImportReport, import_rows, read_csv

    rows, errors = read_csv(data)
    report = ImportReport(errors=errors)
    import_rows(session_factory(), rows, slug, consent_source, report)
    with transaction() as session:
        staff.audit(
            session,
            actor,
            "subscribers.import",
            f"sequence:{slug}",
            None,
            {**import_report_dict(report), "errors": len(report.errors), "consent_source": consent_source},
        )
    return report


@router.post(
    "/subscribers/import",
    summary="Import a CSV body (text/csv) with ?sequence=SLUG&consent_source=TEXT; per-row errors returned",
)
async def import_subscribers(request: Request, sequence: str = "", consent_source: str = "") -> JSONResponse:
    from nurture.importer import ImportError_

    actor = await run_in_threadpool(_actor, request, StaffRole.editor)
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind not in ("text/csv", "application/csv"):
        raise ApiError(415, "bad_request", "send the CSV file as the body with Content-Type: text/csv")
    if not sequence:
        raise ApiError(400, "invalid", "give ?sequence=SLUG")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_IMPORT_BYTES:
            raise ApiError(413, "bad_request", f"the file must be at most {MAX_IMPORT_BYTES // 2**20} MB")

    def work() -> dict[str, Any]:
        try:
            report = run_import(actor, bytes(data), sequence, consent_source)
        except ImportError_ as exc:
            raise ApiError(400, "invalid", str(exc)) from None
        return import_report_dict(report)

    return JSONResponse(await run_in_threadpool(work))


@router.get("/subscribers.csv", summary="Every subscriber as CSV (attributes as one JSON column)")
def export_subscribers(request: Request) -> Any:

    from fastapi.responses import Response

    actor = _actor(request, StaffRole.editor)
    with transaction() as session:
        data = subscriber_admin.export_all_csv(session, actor)
    return Response(
        data,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="subscribers.csv"'},
    )


# --- staff users (admins) -------------------------------------------------------------------------------


def user_dict(user: Any, tokens: list[Any] | None = None) -> dict[str, Any]:
    body = {
        "id": user.id,
        "email": user.email,
        "role": user.role,
        "active": user.active,
        "created_at": _iso(user.created_at),
        "last_login_at": _iso(user.last_login_at),
    }
    if tokens is not None:
        body["tokens"] = [
            {
                "id": t.id,
                "created_at": _iso(t.created_at),
                "last_used_at": _iso(t.last_used_at),
                "revoked_at": _iso(t.revoked_at),
            }
            for t in tokens
        ]
    return body


def _user_id(value: str) -> int:
    parsed = parse_id(value)
    if parsed is None:
        raise ApiError(404, "not_found", "no such staff user")
    return parsed


def user_change(actor: Actor, user_id: int, action: str, change: Any) -> dict[str, Any]:
    """Lock the user, apply ``change(session, user) -> extra``, audit before/after; one transaction."""
    try:
        with transaction() as session:
            user = staff.get_user(session, user_id, lock=True)
            before = staff.user_snapshot(user)
            extra = change(session, user) or {}
            staff.audit(
                session, actor, f"user.{action}", f"user:{user.email}", before, staff.user_snapshot(user)
            )
            return {**user_dict(user), **extra}
    except staff.StaffError as exc:
        raise ApiError(_ACTION_STATUS.get(exc.code, 400), exc.code, exc.args[0]) from None


@router.get("/users", summary="Staff users (admins only)")
def list_users(request: Request) -> JSONResponse:
    _actor(request, StaffRole.admin)
    with transaction() as session:
        return JSONResponse(
            {"users": [user_dict(u, staff.tokens_of(session, u)) for u in staff.list_users(session)]}
        )


@router.post("/users", summary='Create a staff user: {"email", "role", "password"} (admins only)')
async def create_user(request: Request) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.admin)
    fields = await _json(request)
    values = [fields.get(k) for k in ("email", "role", "password")]
    if not all(isinstance(v, str) for v in values):
        raise ApiError(400, "invalid", "email, role and password are required strings")
    email, role, password = values

    def work() -> dict[str, Any]:
        try:
            with transaction() as session:
                user = staff.create_user(session, email, role, password)
                staff.audit(
                    session, actor, "user.create", f"user:{user.email}", None, staff.user_snapshot(user)
                )
                return user_dict(user)
        except staff.StaffError as exc:
            raise ApiError(_ACTION_STATUS.get(exc.code, 400), exc.code, exc.args[0]) from None

    return JSONResponse(await run_in_threadpool(work), status_code=201)


@router.post("/users/{user_id}/role", summary='Change a user\'s role: {"role": "admin|editor|viewer"}')
async def change_role(request: Request, user_id: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.admin)
    role = (await _json(request)).get("role")
    if not isinstance(role, str):
        raise ApiError(400, "invalid", "role is required")
    target = _user_id(user_id)
    return JSONResponse(
        await run_in_threadpool(user_change, actor, target, "role", lambda s, u: staff.set_role(s, u, role))
    )


@router.post("/users/{user_id}/deactivate", summary="Deactivate: sessions and tokens stop working at once")
async def deactivate_user(request: Request, user_id: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.admin)
    await _json(request)
    target = _user_id(user_id)
    return JSONResponse(
        await run_in_threadpool(
            user_change, actor, target, "deactivate", lambda s, u: staff.set_active(s, u, False)
        )
    )


@router.post("/users/{user_id}/reactivate", summary="Reactivate a deactivated user")
async def reactivate_user(request: Request, user_id: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.admin)
    await _json(request)
    target = _user_id(user_id)
    return JSONResponse(
        await run_in_threadpool(
            user_change, actor, target, "reactivate", lambda s, u: staff.set_active(s, u, True)
        )
    )


@router.post("/users/{user_id}/password", summary='Reset a password: {"password": ...}; ends their sessions')
async def reset_password(request: Request, user_id: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.admin)
    password = (await _json(request)).get("password")
    if not isinstance(password, str):
        raise ApiError(400, "invalid", "password is required")
    target = _user_id(user_id)
    return JSONResponse(
        await run_in_threadpool(
            user_change, actor, target, "password", lambda s, u: staff.reset_password(s, u, password)
        )
    )


@router.post("/users/{user_id}/tokens", summary="Issue an API token for a user; shown once in the answer")
async def issue_user_token(request: Request, user_id: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.admin)
    await _json(request)
    target = _user_id(user_id)

    def issue(session: Any, user: Any) -> dict[str, Any]:
        if not user.active:
            raise staff.StaffError("the user is deactivated; reactivate them first", "conflict")
        return {"token": staff.issue_token(session, user)}

    return JSONResponse(await run_in_threadpool(user_change, actor, target, "token", issue), status_code=201)


@router.post("/users/{user_id}/tokens/{token_id}/revoke", summary="Revoke one API token")
async def revoke_user_token(request: Request, user_id: str, token_id: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.admin)
    await _json(request)
    target = _user_id(user_id)
    token = parse_id(token_id)
    if token is None:
        raise ApiError(404, "not_found", "that user has no such token")

    def revoke(session: Any, user: Any) -> dict[str, Any]:
        revoked = staff.revoke_token(session, user, token)
        return {"revoked_token": revoked.id}

    return JSONResponse(await run_in_threadpool(user_change, actor, target, "revoke-token", revoke))
