"""The staff UI: server-rendered pages under ``/admin`` (templates in ``templates/admin/``), no JavaScript.

Every handler names the role it needs; every POST checks the CSRF token first, then the role, then the
input, and answers a bad input by re-rendering the page with the problem (4xx), never with a 500.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from nurture import clock, control, staff
from nurture.catalog import window_of
from nurture.config import Settings
from nurture.db import transaction
from nurture.models import AuditLog, Delivery, Enrollment, Sequence, StaffRole, Subscriber
from nurture.schedule import ScheduleError, format_delay, localize, resolve_zone, schedule_steps, zone
from nurture.stats import sequence_stats, standing_counts
from nurture.web.admin.auth import (
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


async def _form(request: Request) -> dict[str, Any]:
    try:
        return (await read_body(request, allow_json=False)).fields
    except BadBody as exc:
        raise Forbidden(exc.message) from None


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
            with transaction() as session:
                user = staff.authenticate(session, email, password, ip, staff.LoginLimits.of(settings))
                return staff.Actor.of(user), staff.session_fingerprint(user), None
        except staff.BadCredentials:
            # Recorded in its own transaction: the sign-in's was rolled back with the error.
            with transaction() as session:
                staff.record_failure(session, email, ip)
            return None, None, None
        except staff.LoginThrottled as exc:
            return None, None, exc.retry_after

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
    rendered = EmailTemplates(settings.templates_dir).render(step.template, context)
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
        request, "subscribers.html", csrf=current.csrf, actor=actor, q=query, found=found, total=total
    )


@router.get("/subscribers/{subscriber_id}")
def subscriber_page(request: Request, subscriber_id: str) -> HTMLResponse:
    actor, current = require(request, StaffRole.viewer)
    if not subscriber_id.isdigit() or len(subscriber_id) > 18:
        raise NotFound("There is no such subscriber.")
    with transaction() as session:
        subscriber = session.get(Subscriber, int(subscriber_id))
        if subscriber is None:
            raise NotFound("There is no such subscriber.")
        detail = explain(session, subscriber)
    return page(request, "subscriber.html", csrf=current.csrf, actor=actor, s=detail)


# --- audit ----------------------------------------------------------------------------------------------


@router.get("/audit")
def audit_page(request: Request) -> HTMLResponse:
    actor, current = require(request, StaffRole.admin)
    with transaction() as session:
        entries = list(session.scalars(select(AuditLog).order_by(AuditLog.id.desc()).limit(500)))
    return page(request, "audit.html", csrf=current.csrf, actor=actor, entries=entries)


__all__ = ["NotFound", "router"]
