"""The staff UI: server-rendered pages under ``/admin`` (templates in ``templates/admin/``), no JavaScript.

Every handler names the role it needs; every POST checks the CSRF token first, then the role, then the
input, and answers a bad input by re-rendering the page with the problem (4xx), never with a 500.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import TemplateError
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from nurture import clock, control, staff, subscriber_admin
from nurture.catalog import window_of
from nurture.config import Settings
from nurture.db import transaction
from nurture.ids import parse_id
from nurture.models import AuditLog, Delivery, Enrollment, Sequence, StaffRole, Subscriber
from nurture.schedule import ScheduleError, format_delay, localize, resolve_zone, schedule_steps, zone
from nurture.stats import sequence_stats, standing_counts
from nurture.web.admin.auth import (
    BadRequest,
    Forbidden,
    StaffSession,
    check_csrf,
    clear_session,
    read_session,
    require,
    safe_next,
    session_or_new,
    write_session,
)
from nurture.web.admin.funnel import funnel_svg
from nurture.web.api import explain, search_subscribers
from nurture.web.forms import BadBody, origin_of, read_body

router = APIRouter(prefix="/admin", include_in_schema=False)


def page(
    request: Request, name: str, status_code: int = 200, *, csrf: str | None = None, **context: Any
) -> HTMLResponse:
    templates = request.app.state.admin_pages
    response = templates.TemplateResponse(request, name, {"csrf": csrf, **context}, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _settings(request: Request) -> Settings:
    return request.app.state.settings


# Staff forms may carry a pasted list of addresses; the public forms' 32 KB limit would refuse ~1,500.
MAX_STAFF_FORM_BYTES = 2 * 1024 * 1024


async def _form(request: Request) -> dict[str, Any]:
    try:
        return (await read_body(request, allow_json=False, max_bytes=MAX_STAFF_FORM_BYTES)).fields
    except BadBody as exc:
        raise BadRequest(exc.status_code, exc.message) from None


async def _post(request: Request, needed: StaffRole) -> tuple[staff.Actor, StaffSession, dict[str, Any]]:
    """A staff POST: signed in, same-site with the session's CSRF token, role high enough."""
    actor, current = await run_in_threadpool(require, request, needed)
    fields = await _form(request)
    if not check_csrf(request, fields, current):
        raise Forbidden("This form has expired or came from another site. Go back, reload and try again.")
    return actor, current, fields


# --- login ----------------------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    current, fresh = session_or_new(request)
    response = page(request, "login.html", csrf=current.csrf, next=safe_next(next), email="")
    if fresh:
        write_session(response, request, current)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    current, _ = session_or_new(request)
    fields = await _form(request)
    next_path = safe_next(fields.get("next") if isinstance(fields.get("next"), str) else None)
    email = fields.get("email") if isinstance(fields.get("email"), str) else ""
    password = fields.get("password") if isinstance(fields.get("password"), str) else ""
    if not check_csrf(request, fields, read_session(request)):
        response = page(
            request,
            "login.html",
            403,
            csrf=current.csrf,
            next=next_path,
            email=email,
            error="This form has expired or came from another site. Please try again.",
        )
        write_session(response, request, current)
        return response
    settings = _settings(request)
    ip = staff.ip_key(origin_of(request).ip, settings)

    def attempt() -> tuple[staff.Actor | None, str | None, int | None]:
        try:
            # Committed before the password is checked, so parallel attempts see each other's counts.
            with transaction() as session:
                claim = staff.claim_attempt(session, email, ip, settings)
        except staff.LoginThrottled as exc:
            return None, None, exc.retry_after
        try:
            with transaction() as session:
                user = staff.authenticate(session, email, password)
                staff.release_attempt(session, claim)
                return staff.Actor.of(user), staff.session_fingerprint(user), None
        except staff.BadCredentials:
            # Recorded in its own transaction: the sign-in's was rolled back with the error.
            with transaction() as session:
                staff.record_failure(session, email, ip)
            return None, None, None

    actor, fingerprint, retry_after = await run_in_threadpool(attempt)
    if retry_after is not None:
        response = page(
            request,
            "login.html",
            429,
            csrf=current.csrf,
            next=next_path,
            email=email,
            error=f"Too many failed sign-ins. Try again in {max(1, retry_after // 60)} minutes.",
        )
        response.headers["Retry-After"] = str(retry_after)
        return response
    if actor is None:
        return page(
            request,
            "login.html",
            401,
            csrf=current.csrf,
            next=next_path,
            email=email,
            error="That email and password do not match an active staff account.",
        )
    response = RedirectResponse(next_path, status_code=303)
    # A new CSRF token on sign-in: a token planted before login is worth nothing after it.
    write_session(response, request, StaffSession(actor.id, StaffSession.anonymous().csrf, fingerprint))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    _actor, _current, _fields = await _post(request, StaffRole.viewer)
    response = RedirectResponse("/admin/login", status_code=303)
    clear_session(response, request)
    return response


@router.get("")
@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/admin/sequences", status_code=303)


# --- sequences ------------------------------------------------------------------------------------------


@router.get("/sequences")
def sequences_page(request: Request) -> HTMLResponse:
    actor, current = require(request, StaffRole.viewer)
    with transaction() as session:
        standing = standing_counts(session)
        rows = []
        for sequence in session.scalars(select(Sequence).order_by(Sequence.slug)):
            version = sequence.current_version
            counts = standing.get(sequence.id, {})
            rows.append(
                {
                    "slug": sequence.slug,
                    "name": sequence.name,
                    "status": control.effective_status(sequence),
                    "version": version.number if version else None,
                    "steps": [(s.key, counts.get(s.position, 0)) for s in (version.steps if version else [])],
                }
            )
    return page(request, "sequences.html", csrf=current.csrf, actor=actor, sequences=rows)


def _timeline(
    sequence: Sequence, signup_at: str | None, tz_name: str | None
) -> tuple[list[dict[str, Any]], str | None, str, str]:
    """(rows, error, signup value, zone value) of the sequence's timeline for one signup time and zone."""
    version = sequence.current_version
    if version is None:
        return [], "This sequence has no version yet.", signup_at or "", tz_name or ""
    error = None
    tz = resolve_zone(None, version.timezone)
    anchor = clock.now()
    try:
        if tz_name:
            tz = zone(tz_name)
        if signup_at:
            raw = datetime.fromisoformat(signup_at)
            anchor = raw.astimezone(UTC) if raw.tzinfo else localize(raw, tz)
    except (ScheduleError, ValueError) as exc:
        error = f"Cannot build the timeline: {exc}"
    steps = list(version.steps)
    due = schedule_steps(anchor, [timedelta(seconds=s.delay_seconds) for s in steps], window_of(version), tz)
    rows = [
        {"step": s, "utc": when, "local": when.astimezone(tz), "delay": format_delay(_td(s.delay_seconds))}
        for s, when in zip(steps, due, strict=True)
    ]
    signup_value = signup_at or anchor.astimezone(tz).strftime("%Y-%m-%dT%H:%M")
    return rows, error, signup_value, tz.key


def _td(seconds: int) -> timedelta:
    return timedelta(seconds=seconds)


def _sequence_or_404(session: Any, slug: str) -> Sequence:
    sequence = session.scalar(select(Sequence).where(Sequence.slug == slug))
    if sequence is None:
        raise NotFound(f"There is no sequence {slug!r}.")
    return sequence


def _subscriber_or_404(session: Any, subscriber_id: int) -> Subscriber:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise NotFound("There is no such subscriber.")
    return subscriber


class NotFound(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _detail(
    request: Request,
    actor: staff.Actor,
    current: StaffSession,
    slug: str,
    *,
    status_code: int = 200,
    error: str | None = None,
    notice: str | None = None,
) -> HTMLResponse:
    signup_at = request.query_params.get("signup_at")
    tz_name = request.query_params.get("tz")
    with transaction() as session:
        sequence = _sequence_or_404(session, slug)
        timeline, timeline_error, signup_value, tz_value = _timeline(sequence, signup_at, tz_name)
        version = sequence.current_version
        window = window_of(version) if version else None
        standing = standing_counts(session).get(sequence.id, {})
        return page(
            request,
            "sequence.html",
            status_code,
            csrf=current.csrf,
            actor=actor,
            sequence=sequence,
            status=control.effective_status(sequence),
            version=version,
            window=window.describe() if window else "any time",
            steps=[
                {
                    "step": s,
                    "delay": format_delay(_td(s.delay_seconds)),
                    "current": standing.get(s.position, 0),
                }
                for s in (version.steps if version else [])
            ],
            timeline=timeline,
            timeline_error=timeline_error,
            signup_value=signup_value,
            tz_value=tz_value,
            can_edit=actor.may(StaffRole.editor),
            error=error,
            notice=notice or request.query_params.get("done"),
        )


@router.get("/sequences/{slug}")
def sequence_page(request: Request, slug: str) -> HTMLResponse:
    actor, current = require(request, StaffRole.viewer)
    return _detail(request, actor, current, slug)


async def _control(request: Request, slug: str, action: str) -> Response:
    actor, current, fields = await _post(request, StaffRole.editor)
    settings = _settings(request)

    def work() -> tuple[str | None, str | None, int]:
        try:
            with transaction() as session:
                sequence = control.lock(session, slug)
                before = control.snapshot(sequence)
                if action == "pause":
                    held = control.pause(session, sequence)
                    message = f"Paused: {held} emails held."
                elif action == "resume":
                    try:
                        policy = control.ResumePolicy(fields.get("policy", ""))
                    except ValueError:
                        return None, "Choose how to resume.", 400
                    result = control.resume(
                        session, sequence, policy, per_minute=settings.resume_rate_per_minute
                    )
                    message = f"Resumed ({policy.value}): {result.resumed} emails back on schedule."
                else:
                    activate_at = _local_instant(fields.get("activate_at"), fields.get("tz"), sequence)
                    retimed = control.schedule(session, sequence, activate_at)
                    message = f"Scheduled for {activate_at:%Y-%m-%d %H:%M} UTC; {retimed} emails re-timed."
                staff.audit(
                    session,
                    actor,
                    f"sequence.{action}",
                    f"sequence:{slug}",
                    before,
                    control.snapshot(sequence),
                )
                return message, None, 200
        except control.ControlError as exc:
            return None, exc.message, {"not_found": 404, "conflict": 409}.get(exc.code, 400)

    message, error, status = await run_in_threadpool(work)
    if error is not None:
        return await run_in_threadpool(
            lambda: _detail(request, actor, current, slug, status_code=status, error=error)
        )
    return RedirectResponse(f"/admin/sequences/{slug}?done={_q(message or '')}", status_code=303)


def _q(text: str) -> str:
    return quote(text, safe="")


def _local_instant(value: Any, tz_name: Any, sequence: Sequence) -> datetime:
    """A datetime-local form value read in the given (or the sequence's) zone."""
    if not isinstance(value, str) or not value.strip():
        raise control.ControlError("invalid", "Give the date and time to start.")
    try:
        raw = datetime.fromisoformat(value.strip())
        tz = zone(tz_name) if isinstance(tz_name, str) and tz_name.strip() else None
    except (ValueError, ScheduleError) as exc:
        raise control.ControlError("invalid", f"Cannot read that date and time: {exc}") from None
    if raw.tzinfo is not None:
        return raw.astimezone(UTC)
    version = sequence.current_version
    return localize(raw, tz or resolve_zone(None, version.timezone if version else None))


@router.post("/sequences/{slug}/pause")
async def pause_form(request: Request, slug: str) -> Response:
    return await _control(request, slug, "pause")


@router.post("/sequences/{slug}/resume")
async def resume_form(request: Request, slug: str) -> Response:
    return await _control(request, slug, "resume")


@router.post("/sequences/{slug}/schedule")
async def schedule_form(request: Request, slug: str) -> Response:
    return await _control(request, slug, "schedule")


# --- preview and test send ------------------------------------------------------------------------------


def _render_step(
    request: Request, session: Any, sequence: Sequence, key: str, subscriber: Subscriber | None, to: str
) -> dict[str, Any]:
    from nurture.mail.context import Recipient, template_context
    from nurture.mail.templates import EmailTemplates

    settings = _settings(request)
    version = sequence.current_version
    step = next((s for s in (version.steps if version else []) if s.key == key), None)
    if version is None or step is None:
        raise NotFound(f"Sequence {sequence.slug!r} has no step {key!r}.")
    recipient = Recipient(
        subscriber.email if subscriber else to,
        subscriber.first_name if subscriber else "Sam",
        subscriber.public_id if subscriber else "preview",
    )
    context = template_context(
        settings,
        recipient,
        sequence_name=sequence.name,
        step_number=step.position,
        step_count=len(version.steps),
    )
    templates = EmailTemplates(settings.templates_dir)
    # A step's subject override (nurture.versions) is what subscribers see, so the preview shows it too.
    try:
        rendered = templates.render(step.template, context, step.subject or None)
    except TemplateError as exc:  # e.g. a subject stored before the sandbox refused it at save time
        raise BadRequest(400, f"Step {step.key!r} cannot be rendered: {exc}") from None
    # When would this subscriber (or a sample signing up now) get it, on their own clock?
    tz = resolve_zone(subscriber.timezone if subscriber else None, version.timezone)
    due = None
    if subscriber is not None:
        due = session.scalar(
            select(Delivery.due_at)
            .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
            .where(Delivery.subscriber_id == subscriber.id, Delivery.step_id == step.id)
        )
    if due is None:
        steps = list(version.steps)
        times = schedule_steps(clock.now(), [_td(s.delay_seconds) for s in steps], window_of(version), tz)
        due = times[step.position - 1]
    return {
        "step": step,
        "rendered": rendered,
        "recipient": recipient,
        "due": due,
        "local": due.astimezone(tz),
    }


@router.get("/sequences/{slug}/steps/{key}")
def preview_page(request: Request, slug: str, key: str, subscriber: str | None = None) -> HTMLResponse:
    actor, current = require(request, StaffRole.viewer)
    with transaction() as session:
        sequence = _sequence_or_404(session, slug)
        chosen = None
        error = None
        if subscriber:
            chosen = session.scalar(select(Subscriber).where(Subscriber.email == subscriber.strip().lower()))
            if chosen is None:
                error = f"No subscriber {subscriber!r}; showing the sample subscriber."
        preview = _render_step(request, session, sequence, key, chosen, actor.email)
        return page(
            request,
            "preview.html",
            404 if error else 200,
            csrf=current.csrf,
            actor=actor,
            sequence=sequence,
            subscriber=subscriber or "",
            error=error,
            notice=request.query_params.get("done"),
            **preview,
        )


@router.post("/sequences/{slug}/steps/{key}/test")
async def send_test(request: Request, slug: str, key: str) -> Response:
    from nurture.mail.compose import Envelope, compose, message_id_for
    from nurture.mail.transports import SendFailure, transport_from_url

    actor, _current, _fields = await _post(request, StaffRole.viewer)
    settings = _settings(request)

    def work() -> str:
        with transaction() as session:
            sequence = _sequence_or_404(session, slug)
            preview = _render_step(request, session, sequence, key, None, actor.email)
        rendered = dataclasses.replace(preview["rendered"], subject="[TEST] " + preview["rendered"].subject)
        envelope = Envelope(
            from_address=settings.from_address,
            to_address=actor.email,
            to_name=None,
            message_id=message_id_for(0, settings.secret_key + clock.now().isoformat(), settings.from_domain),
            date=clock.now(),
            unsubscribe_url=None,
            reply_to=settings.reply_to or None,
        )
        transport = transport_from_url(
            settings.resolved_smtp_url, timeout=settings.smtp_timeout, local_hostname=settings.from_domain
        )
        try:
            transport.send(settings.envelope_from, actor.email, compose(rendered, envelope))
        except SendFailure as exc:
            return f"The test was not sent: {exc}"
        finally:
            transport.close()
        return f"Test sent to {actor.email}."

    message = await run_in_threadpool(work)
    return RedirectResponse(f"/admin/sequences/{slug}/steps/{key}?done={_q(message)}", status_code=303)


# --- results --------------------------------------------------------------------------------------------


@router.get("/sequences/{slug}/results")
def results_page(request: Request, slug: str) -> HTMLResponse:
    actor, current = require(request, StaffRole.viewer)
    with transaction() as session:
        sequence = _sequence_or_404(session, slug)
        stats = sequence_stats(session, sequence)
    return page(
        request,
        "results.html",
        csrf=current.csrf,
        actor=actor,
        sequence=sequence,
        stats=stats,
        funnel=funnel_svg(stats),
    )


# --- subscribers ----------------------------------------------------------------------------------------


@router.get("/subscribers")
def subscribers_page(request: Request, q: str | None = None) -> HTMLResponse:
    actor, current = require(request, StaffRole.viewer)
    query = (q or "").strip()[:200]
    with transaction() as session:
        found = search_subscribers(session, None, query) if query else []
        total = session.scalar(select(func.count()).select_from(Subscriber))
    return page(
        request,
        "subscribers.html",
        csrf=current.csrf,
        actor=actor,
        q=query,
        found=found,
        total=total,
        notice=request.query_params.get("done"),
    )


# --- audit ----------------------------------------------------------------------------------------------


@router.get("/audit")
def audit_page(request: Request) -> HTMLResponse:
    actor, current = require(request, StaffRole.admin)
    with transaction() as session:
        entries = list(session.scalars(select(AuditLog).order_by(AuditLog.id.desc()).limit(500)))
    return page(request, "audit.html", csrf=current.csrf, actor=actor, entries=entries)


# --- per-subscriber actions -----------------------------------------------------------------------------


def _subscriber_id(value: str) -> int:
    parsed = parse_id(value)
    if parsed is None:
        raise NotFound("There is no such subscriber.")
    return parsed


def _subscriber_detail(
    request: Request,
    actor: staff.Actor,
    current: StaffSession,
    subscriber_id: int,
    *,
    status_code: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    with transaction() as session:
        subscriber = _subscriber_or_404(session, subscriber_id)
        detail = explain(session, subscriber)
        paused = subscriber.paused_until is not None and subscriber.paused_until > clock.now()
        zone_name = resolve_zone(subscriber.timezone, None).key
    return page(
        request,
        "subscriber.html",
        status_code,
        csrf=current.csrf,
        actor=actor,
        s=detail,
        can_edit=actor.may(StaffRole.editor),
        paused=paused,
        zone_name=zone_name,
        live=[e["sequence"] for e in detail["enrollments"] if e["status"] in ("active", "paused")],
        error=error,
        notice=request.query_params.get("done"),
    )


@router.get("/subscribers/{subscriber_id}")
def subscriber_page(request: Request, subscriber_id: str) -> HTMLResponse:
    actor, current = require(request, StaffRole.viewer)
    return _subscriber_detail(request, actor, current, _subscriber_id(subscriber_id))


_DONE = {
    "pause": "Paused until {paused_until}; {moved} emails moved.",
    "resume": "Pause ended; {moved} emails back on schedule.",
    "unsubscribe": "Unsubscribed; {cancelled} unsent emails cancelled.",
    "resubscribe": "Resubscribed with the consent recorded; {reopened} sequences continue.",
    "remove": "Removed from {sequence}; {cancelled} unsent emails cancelled.",
}


def _pause_until(fields: dict[str, Any]) -> datetime:
    """The form's local date and time, read in the zone given (default UTC)."""
    from nurture.subscriber_admin import ActionError

    value = fields.get("until")
    tz_name = fields.get("tz")
    if not isinstance(value, str) or not value.strip():
        raise ActionError("invalid", "Give the date and time the pause ends.")
    try:
        raw = datetime.fromisoformat(value.strip())
        tz = zone(tz_name.strip()) if isinstance(tz_name, str) and tz_name.strip() else zone("UTC")
    except (ValueError, ScheduleError) as exc:
        raise ActionError("invalid", f"Cannot read that date and time: {exc}") from None
    return raw.astimezone(UTC) if raw.tzinfo else localize(raw, tz)


@router.post("/subscribers/{subscriber_id}/{action}")
async def subscriber_action(request: Request, subscriber_id: str, action: str) -> Response:
    if action not in subscriber_admin.ACTIONS:
        raise NotFound("There is no such action.")
    actor, current, fields = await _post(request, StaffRole.editor)
    target = _subscriber_id(subscriber_id)

    def work() -> tuple[dict[str, Any] | None, str | None, int]:
        try:
            if action == "erase":
                return _erase(actor, target, fields)
            params: dict[str, Any] = {}
            if action == "pause":
                params = {"until": _pause_until(fields)}
            elif action == "resubscribe":
                params = {"consent_source": fields.get("consent_source"), "note": fields.get("note")}
            elif action == "remove":
                params = {"sequence": fields.get("sequence")}
            with transaction() as session:
                return subscriber_admin.act(session, actor, target, action, **params), None, 200
        except subscriber_admin.ActionError as exc:
            message = exc.message[:1].upper() + exc.message[1:]
            return None, message, {"not_found": 404, "conflict": 409}.get(exc.code, 400)

    result, error, status = await run_in_threadpool(work)
    if action == "erase":
        if error is not None:
            return await run_in_threadpool(
                lambda: _erase_page(request, actor, current, target, status_code=status, error=error)
            )
        return RedirectResponse(
            "/admin/subscribers?done="
            + _q("Erased. An anonymous hash keeps the address from being re-added."),
            status_code=303,
        )
    if error is not None:
        return await run_in_threadpool(
            lambda: _subscriber_detail(request, actor, current, target, status_code=status, error=error)
        )
    assert result is not None
    return RedirectResponse(
        f"/admin/subscribers/{target}?done={_q(_DONE[action].format(**result))}", status_code=303
    )


def _erase(actor: staff.Actor, target: int, fields: dict[str, Any]) -> tuple[dict[str, Any], None, int]:
    """Erase only when the form repeats the address: the confirmation step of an irreversible action."""
    with transaction() as session:
        subscriber = session.get(Subscriber, target)
        if subscriber is None:
            raise subscriber_admin.ActionError("not_found", "there is no such subscriber")
        typed = fields.get("confirm")
        if not isinstance(typed, str) or typed.strip().lower() != subscriber.email:
            raise subscriber_admin.ActionError(
                "invalid", "type the subscriber's email address exactly to confirm the erasure"
            )
        return subscriber_admin.act(session, actor, target, "erase"), None, 200


def _erase_page(
    request: Request,
    actor: staff.Actor,
    current: StaffSession,
    target: int,
    *,
    status_code: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    with transaction() as session:
        subscriber = _subscriber_or_404(session, target)
        email = subscriber.email
    return page(
        request,
        "erase.html",
        status_code,
        csrf=current.csrf,
        actor=actor,
        id=target,
        email=email,
        error=error,
    )


@router.get("/subscribers/{subscriber_id}/erase")
def erase_confirm_page(request: Request, subscriber_id: str) -> HTMLResponse:
    actor, current = require(request, StaffRole.editor)
    return _erase_page(request, actor, current, _subscriber_id(subscriber_id))


@router.get("/subscribers/{subscriber_id}/export")
def subscriber_export(request: Request, subscriber_id: str) -> Response:
    actor, _current = require(request, StaffRole.editor)
    target = _subscriber_id(subscriber_id)
    try:
        with transaction() as session:
            data = subscriber_admin.export_one(session, actor, target)
    except subscriber_admin.ActionError:
        raise NotFound("There is no such subscriber.") from None
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="subscriber-{target}.json"',
            "Cache-Control": "no-store",
        },
    )


# --- import and export ----------------------------------------------------------------------------------

MAX_UPLOAD_BYTES = 64 * 1024 * 1024


async def _upload(
    request: Request, needed: StaffRole
) -> tuple[staff.Actor, StaffSession, dict[str, Any], bytes | None]:
    """A staff POST that may carry one file (multipart/form-data): signed in, CSRF checked, role high
    enough; the file is read up to MAX_UPLOAD_BYTES."""
    from starlette.datastructures import UploadFile

    actor, current = await run_in_threadpool(require, request, needed)
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "multipart/form-data":
        return actor, current, await _form_checked(request, current), None
    try:
        form = await request.form(max_files=1, max_fields=20)
    except Exception as exc:  # python-multipart's parse errors: a bad upload, never a 500
        raise BadRequest(400, f"The upload could not be read: {exc}") from None
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not check_csrf(request, fields, current):
        raise Forbidden("This form has expired or came from another site. Go back, reload and try again.")
    upload = form.get("file")
    data = None
    if isinstance(upload, UploadFile):
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise BadRequest(413, f"The file is larger than {MAX_UPLOAD_BYTES // 2**20} MB.")
    return actor, current, fields, data or None


async def _form_checked(request: Request, current: StaffSession) -> dict[str, Any]:
    fields = await _form(request)
    if not check_csrf(request, fields, current):
        raise Forbidden("This form has expired or came from another site. Go back, reload and try again.")
    return fields


def _slugs() -> list[str]:
    with transaction() as session:
        return list(
            session.scalars(
                select(Sequence.slug).where(Sequence.status != "archived").order_by(Sequence.slug)
            )
        )


@router.get("/import")
def import_page(request: Request) -> HTMLResponse:
    actor, current = require(request, StaffRole.editor)
    return page(request, "import.html", csrf=current.csrf, actor=actor, slugs=_slugs(), report=None, form={})


@router.post("/import")
async def import_upload(request: Request) -> Response:
    from nurture.importer import ImportError_
    from nurture.web.api import run_import

    actor, current, fields, data = await _upload(request, StaffRole.editor)
    slug = fields.get("sequence", "")
    source = fields.get("consent_source", "")

    def work() -> tuple[Any, str | None]:
        if data is None:
            return None, "Choose a CSV file to import."
        if not source.strip():
            return None, "Say where these people gave their consent (consent source)."
        try:
            return run_import(actor, data, slug, source), None
        except ImportError_ as exc:
            return None, f"Nothing was imported: {exc}"

    report, error = await run_in_threadpool(work)
    return page(
        request,
        "import.html",
        400 if error else 200,
        csrf=current.csrf,
        actor=actor,
        slugs=await run_in_threadpool(_slugs),
        report=report,
        error=error,
        form={"sequence": slug, "consent_source": source},
    )


@router.get("/subscribers.csv")
def export_all(request: Request) -> Response:
    actor, _current = require(request, StaffRole.editor)
    with transaction() as session:
        data = subscriber_admin.export_all_csv(session, actor)
    return Response(
        data,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="subscribers.csv"',
            "Cache-Control": "no-store",
        },
    )


# --- enroll existing subscribers ------------------------------------------------------------------------


def _enroll_page(
    request: Request,
    actor: staff.Actor,
    current: StaffSession,
    slug: str,
    *,
    status_code: int = 200,
    error: str | None = None,
    result: dict[str, Any] | None = None,
    form: dict[str, Any] | None = None,
) -> HTMLResponse:
    with transaction() as session:
        sequence = _sequence_or_404(session, slug)
        name, tz_default = (
            sequence.name,
            (sequence.current_version.timezone if sequence.current_version else None),
        )
    return page(
        request,
        "enroll.html",
        status_code,
        csrf=current.csrf,
        actor=actor,
        slug=slug,
        sequence_name=name,
        tz_default=tz_default or "UTC",
        error=error,
        result=result,
        form=form or {},
    )


@router.get("/sequences/{slug}/enroll")
def enroll_page(request: Request, slug: str) -> HTMLResponse:
    actor, current = require(request, StaffRole.editor)
    return _enroll_page(request, actor, current, slug)


def _addresses(fields: dict[str, Any], data: bytes | None) -> list[str] | None:
    """The addresses pasted or uploaded (CSV with an email column, or one address a line); None: all."""
    from nurture.importer import ImportError_, read_csv

    if fields.get("who") == "all":
        return None
    if data is not None:
        try:
            rows, errors = read_csv(data)
        except ImportError_:
            # Not a CSV with a header: read it as one address a line.
            text = data.decode("utf-8-sig", errors="replace")
            return [line.strip() for line in text.splitlines() if line.strip()]
        return [r.email for r in rows] + [e.email for e in errors if e.email]
    pasted = fields.get("emails") if isinstance(fields.get("emails"), str) else ""
    return [a.strip() for a in pasted.replace(",", "\n").splitlines() if a.strip()]


@router.post("/sequences/{slug}/enroll")
async def enroll_form(request: Request, slug: str) -> Response:
    from nurture.importer import enroll_existing

    actor, current, fields, data = await _upload(request, StaffRole.editor)

    def work() -> tuple[dict[str, Any] | None, str | None, int]:
        emails = _addresses(fields, data)
        if emails is not None and not emails:
            return (
                None,
                "Give the addresses to enroll (paste them or upload a CSV), or choose all active.",
                400,
            )
        if emails is not None and len(emails) > 100_000:
            return None, "At most 100,000 addresses at a time.", 400
        start_at = None
        if fields.get("when") == "later":
            try:
                with transaction() as session:
                    start_at = _local_instant(
                        fields.get("start_at"), fields.get("tz"), _sequence_or_404(session, slug)
                    )
            except control.ControlError as exc:
                return None, exc.message, 400
            if start_at < clock.now():
                return (
                    None,
                    "The start must not be in the past (every missed step would be due at once).",
                    400,
                )
        with transaction() as session:
            sequence = _sequence_or_404(session, slug)
            try:
                counts = enroll_existing(session, sequence, emails=emails, start_at=start_at)
            except ValueError as exc:
                return None, str(exc), 409
            staff.audit(
                session,
                actor,
                "sequence.enroll",
                f"sequence:{slug}",
                None,
                {
                    "all_active": emails is None,
                    "start_at": start_at.isoformat() if start_at else None,
                    **{k: v for k, v in counts.items() if k != "invalid"},
                    "invalid": len(counts["invalid"]),  # type: ignore[arg-type]
                },
            )
        return counts, None, 200

    result, error, status = await run_in_threadpool(work)
    form = {k: fields.get(k, "") for k in ("who", "emails", "when", "start_at", "tz")}
    return await run_in_threadpool(
        lambda: _enroll_page(
            request, actor, current, slug, status_code=status, error=error, result=result, form=form
        )
    )


# --- staff users (admins) -------------------------------------------------------------------------------


def _users_page(
    request: Request,
    actor: staff.Actor,
    current: StaffSession,
    *,
    status_code: int = 200,
    error: str | None = None,
    new_token: tuple[str, str] | None = None,
    form: dict[str, Any] | None = None,
) -> HTMLResponse:
    with transaction() as session:
        users = [
            {"user": u, "tokens": [t for t in staff.tokens_of(session, u) if t.revoked_at is None]}
            for u in staff.list_users(session)
        ]
        return page(
            request,
            "users.html",
            status_code,
            csrf=current.csrf,
            actor=actor,
            users=users,
            roles=[r.value for r in StaffRole],
            error=error,
            notice=request.query_params.get("done"),
            new_token=new_token,
            form=form or {},
        )


@router.get("/users")
def users_page(request: Request) -> HTMLResponse:
    actor, current = require(request, StaffRole.admin)
    return _users_page(request, actor, current)


@router.post("/users")
async def users_create(request: Request) -> Response:
    actor, current, fields = await _post(request, StaffRole.admin)
    email, role, password = (
        fields.get(k) if isinstance(fields.get(k), str) else "" for k in ("email", "role", "password")
    )

    def work() -> str | None:
        try:
            with transaction() as session:
                user = staff.create_user(session, email, role, password)
                staff.audit(
                    session, actor, "user.create", f"user:{user.email}", None, staff.user_snapshot(user)
                )
        except staff.StaffError as exc:
            return str(exc)
        return None

    error = await run_in_threadpool(work)
    if error:
        return await run_in_threadpool(
            lambda: _users_page(
                request,
                actor,
                current,
                status_code=400,
                error=error[:1].upper() + error[1:],
                form={"email": email, "role": role},
            )
        )
    return RedirectResponse(
        f"/admin/users?done={_q(f'Created {role} {email.strip().lower()}.')}", status_code=303
    )


USER_ACTIONS = ("role", "deactivate", "reactivate", "password", "token", "revoke")


@router.post("/users/{user_id}/{action}")
async def user_action(request: Request, user_id: str, action: str) -> Response:
    target = parse_id(user_id)
    if action not in USER_ACTIONS or target is None:
        raise NotFound("There is no such staff user or action.")
    actor, current, fields = await _post(request, StaffRole.admin)

    def change(session: Any, user: Any) -> tuple[str, str | None]:
        if action == "role":
            staff.set_role(session, user, str(fields.get("role", "")))
            return f"{user.email} is now {user.role}.", None
        if action in ("deactivate", "reactivate"):
            staff.set_active(session, user, action == "reactivate")
            return f"{user.email} is {'active' if user.active else 'deactivated'}.", None
        if action == "password":
            staff.reset_password(session, user, str(fields.get("password", "")))
            return f"New password set for {user.email}; their sessions have ended.", None
        if action == "token":
            if not user.active:
                raise staff.StaffError("the user is deactivated; reactivate them first")
            return f"Token issued for {user.email}.", staff.issue_token(session, user)
        token_id = parse_id(fields.get("token_id"))
        if token_id is None:
            raise staff.StaffError("that user has no such token")
        staff.revoke_token(session, user, token_id)
        return f"Token revoked for {user.email}.", None

    def work() -> tuple[str | None, str | None, str | None, str]:
        try:
            with transaction() as session:
                user = staff.get_user(session, target, lock=True)
                before = staff.user_snapshot(user)
                message, token = change(session, user)
                audit_action = "revoke-token" if action == "revoke" else action
                staff.audit(
                    session,
                    actor,
                    f"user.{audit_action}",
                    f"user:{user.email}",
                    before,
                    staff.user_snapshot(user),
                )
                return message, token, None, user.email
        except staff.StaffError as exc:
            text = str(exc)
            return None, None, text[:1].upper() + text[1:], exc.code

    message, token, error, extra = await run_in_threadpool(work)
    if error is not None:
        status = {"not_found": 404, "conflict": 409}.get(extra, 400)
        return await run_in_threadpool(
            lambda: _users_page(request, actor, current, status_code=status, error=error)
        )
    if token is not None:
        # Shown once, on this page only (no redirect: the token must not travel in a URL).
        return await run_in_threadpool(lambda: _users_page(request, actor, current, new_token=(extra, token)))
    return RedirectResponse(f"/admin/users?done={_q(message or '')}", status_code=303)


__all__ = ["NotFound", "router"]
