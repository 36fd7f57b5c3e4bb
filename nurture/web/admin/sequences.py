"""Sequences in the staff UI: the list, one sequence's page (steps, timeline) and its controls (pause,
resume, schedule: :mod:`nurture.sequences.control`, audited)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from nurture.core import clock
from nurture.core.db import transaction
from nurture.delivery import frequency_cap
from nurture.models import Sequence, StaffRole
from nurture.sequences import control, timetable
from nurture.sequences.results import standing_counts
from nurture.sequences.schedule import ScheduleError, format_delay, localize, zone
from nurture.sequences.timetable import window_of
from nurture.staff import accounts
from nurture.web.admin import timeline as timeline_picture
from nurture.web.admin.common import local_instant, page, q, seconds, sequence_or_404, settings_of
from nurture.web.admin.deps import EditorForm, Staff, StaffForm, Viewer

router = APIRouter(prefix="/admin", include_in_schema=False)


@router.get("/sequences")
def sequences_page(request: Request, who: Viewer) -> HTMLResponse:
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
    return page(request, "sequences.html", csrf=who.csrf, actor=who.actor, sequences=rows)


def _timeline(
    sequence: Sequence, signup_at: str | None, tz_name: str | None
) -> tuple[list[dict[str, Any]], str | None, str, str]:
    """(rows, error, signup value, zone value) of the sequence's timeline for one signup time and zone."""
    version = sequence.current_version
    if version is None:
        return [], "This sequence has no version yet.", signup_at or "", tz_name or ""
    error = None
    rules = timetable.Rules.of_version(version)
    table = rules.for_subscriber(None)
    anchor = clock.now()
    try:
        if tz_name:
            table = rules.for_subscriber(zone(tz_name).key)
        if signup_at:
            raw = datetime.fromisoformat(signup_at)
            anchor = raw.astimezone(UTC) if raw.tzinfo else localize(raw, table.tz)
    except (ScheduleError, ValueError) as exc:
        error = f"Cannot build the timeline: {exc}"
    tz = table.tz
    steps = list(version.steps)
    rows = [
        {
            "step": s,
            "utc": placed.due,
            "local": placed.due.astimezone(tz),
            "delay": format_delay(seconds(s.delay_seconds)),
            # What moved it (a holiday, the window) or that it skips the window: staff see why.
            "note": placed.note(),
        }
        for s, placed in zip(steps, table.plan(anchor, steps), strict=True)
    ]
    signup_value = signup_at or anchor.astimezone(tz).strftime("%Y-%m-%dT%H:%M")
    return rows, error, signup_value, tz.key


def _picture(
    version: Any, rows: list[dict[str, Any]], signup_value: str, tz_value: str
) -> tuple[list[timeline_picture.Day], Any]:
    """The timeline's day strip and the holiday calendar it shows (None when the sequence has none)."""
    if version is None or not rows:
        return [], None
    table = timetable.Rules.of_version(version).for_subscriber(tz_value)
    try:
        signup = datetime.fromisoformat(signup_value)
    except ValueError:
        signup = rows[0]["local"]
    signup = signup.replace(tzinfo=None)
    sends = [(row["step"].key, row["local"].replace(tzinfo=None), row.get("note", "")) for row in rows]
    return timeline_picture.day_strip(signup, sends, table.window, table.calendar), table.calendar


def _detail(
    request: Request,
    who: Staff,
    slug: str,
    *,
    status_code: int = 200,
    error: str | None = None,
    notice: str | None = None,
) -> HTMLResponse:
    signup_at = request.query_params.get("signup_at")
    tz_name = request.query_params.get("tz")
    with transaction() as session:
        sequence = sequence_or_404(session, slug)
        timeline, timeline_error, signup_value, tz_value = _timeline(sequence, signup_at, tz_name)
        version = sequence.current_version
        window = window_of(version) if version else None
        strip, calendar = _picture(version, timeline, signup_value, tz_value)
        standing = standing_counts(session).get(sequence.id, {})
        return page(
            request,
            "sequence.html",
            status_code,
            csrf=who.csrf,
            actor=who.actor,
            sequence=sequence,
            status=control.effective_status(sequence),
            version=version,
            window=window.describe() if window else "any time",
            steps=[
                {
                    "step": s,
                    "delay": format_delay(seconds(s.delay_seconds)),
                    "current": standing.get(s.position, 0),
                }
                for s in (version.steps if version else [])
            ],
            timeline=timeline,
            strip=strip,
            window_hours=f"{window.start:%H:%M}-{window.end:%H:%M}" if window else None,
            holidays=calendar.code if calendar else None,
            timeline_error=timeline_error,
            cap_notice=frequency_cap.timeline_notice(settings_of(request).mail.frequency_cap_hours),
            signup_value=signup_value,
            tz_value=tz_value,
            can_edit=who.actor.may(StaffRole.editor),
            error=error,
            notice=notice or request.query_params.get("done"),
        )


@router.get("/sequences/{slug}")
def sequence_page(request: Request, slug: str, who: Viewer) -> HTMLResponse:
    return _detail(request, who, slug)


async def _control(request: Request, slug: str, action: str, form: StaffForm) -> Response:
    settings = settings_of(request)
    actor, fields = form.actor, form.fields

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
                        session, sequence, policy, per_minute=settings.limits.resume_rate_per_minute
                    )
                    message = f"Resumed ({policy.value}): {result.resumed} emails back on schedule."
                else:
                    activate_at = local_instant(fields.get("activate_at"), fields.get("tz"), sequence)
                    retimed = control.schedule(session, sequence, activate_at)
                    message = f"Scheduled for {activate_at:%Y-%m-%d %H:%M} UTC; {retimed} emails re-timed."
                accounts.audit(
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
        return await run_in_threadpool(lambda: _detail(request, form, slug, status_code=status, error=error))
    return RedirectResponse(f"/admin/sequences/{slug}?done={q(message or '')}", status_code=303)


@router.post("/sequences/{slug}/pause")
async def pause_form(request: Request, slug: str, form: EditorForm) -> Response:
    return await _control(request, slug, "pause", form)


@router.post("/sequences/{slug}/resume")
async def resume_form(request: Request, slug: str, form: EditorForm) -> Response:
    return await _control(request, slug, "resume", form)


@router.post("/sequences/{slug}/schedule")
async def schedule_form(request: Request, slug: str, form: EditorForm) -> Response:
    return await _control(request, slug, "schedule", form)
