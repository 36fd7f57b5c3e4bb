"""Enrolling subscribers who are already here (editors): pasted or uploaded addresses, or every active
subscriber, now or from a later start (:func:`nurture.subscribers.importer.enroll_existing`, audited)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from nurture.core import clock
from nurture.core.db import transaction
from nurture.models import Subscriber, SubscriberStatus
from nurture.sequences import control
from nurture.staff import accounts, jobs
from nurture.web.admin.common import local_instant, page, sequence_or_404, settings_of
from nurture.web.admin.deps import Editor, EditorUpload, Staff

router = APIRouter(prefix="/admin", include_in_schema=False)
MAX_ADDRESSES = 100_000


def _enroll_page(
    request: Request,
    who: Staff,
    slug: str,
    *,
    status_code: int = 200,
    error: str | None = None,
    result: dict[str, Any] | None = None,
    form: dict[str, Any] | None = None,
) -> HTMLResponse:
    with transaction() as session:
        sequence = sequence_or_404(session, slug)
        name, tz_default = (
            sequence.name,
            (sequence.current_version.timezone if sequence.current_version else None),
        )
    return page(
        request,
        "enroll.html",
        status_code,
        csrf=who.csrf,
        actor=who.actor,
        slug=slug,
        sequence_name=name,
        tz_default=tz_default or "UTC",
        error=error,
        result=result,
        form=form or {},
    )


@router.get("/sequences/{slug}/enroll")
def enroll_page(request: Request, slug: str, who: Editor) -> HTMLResponse:
    return _enroll_page(request, who, slug)


def addresses(fields: dict[str, Any], data: bytes | None) -> list[str] | None:
    """The addresses pasted or uploaded (CSV with an email column, or one address a line); None: all."""
    from nurture.subscribers.importer import addresses_in

    if fields.get("who") == "all":
        return None
    if data is not None:
        return addresses_in(data)
    pasted = fields.get("emails") if isinstance(fields.get("emails"), str) else ""
    return [a.strip() for a in pasted.replace(",", "\n").splitlines() if a.strip()]


def active_count(session: Any) -> int:
    return session.scalar(select(func.count()).where(Subscriber.status == SubscriberStatus.active)) or 0


def enroll(
    actor: accounts.Actor,
    slug: str,
    emails: list[str] | None,
    start_at: datetime | None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Enroll and audit, in one transaction; ValueError for a sequence that takes no enrollments."""
    from nurture.subscribers.importer import enroll_and_audit

    with transaction() as session:
        sequence = sequence_or_404(session, slug)
        counts = enroll_and_audit(
            session, actor, sequence, emails=emails, start_at=start_at, progress=progress
        )
    invalid = list(counts["invalid"])  # type: ignore[call-overload]
    # A job keeps its result in a row: the first 1,000 refused addresses are enough to act on.
    return {**counts, "invalid_count": len(invalid), "invalid": invalid[:1000]}


@router.post("/sequences/{slug}/enroll")
async def enroll_form(request: Request, slug: str, upload: EditorUpload) -> Response:
    actor, fields, data = upload.actor, upload.fields, upload.data
    threshold = settings_of(request).web.background_rows

    def work() -> tuple[dict[str, Any] | None, str | None, int]:
        emails = addresses(fields, data)
        if emails is not None and not emails:
            return (
                None,
                "Give the addresses to enroll (paste them or upload a CSV), or choose all active.",
                400,
            )
        if emails is not None and len(emails) > MAX_ADDRESSES:
            return None, "At most 100,000 addresses at a time.", 400
        start_at = None
        if fields.get("when") == "later":
            try:
                with transaction() as session:
                    start_at = local_instant(
                        fields.get("start_at"), fields.get("tz"), sequence_or_404(session, slug)
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
            size = len(emails) if emails is not None else active_count(session)
        if size > threshold:
            job_id = jobs.start(
                "enroll",
                f"Enrolling {size:,} people in {slug}",
                actor,
                size,
                lambda progress: jobs.Outcome(enroll(actor, slug, emails, start_at, progress.add)),
            )
            return {"job": job_id}, None, 303
        try:
            return enroll(actor, slug, emails, start_at), None, 200
        except ValueError as exc:
            return None, str(exc), 409

    result, error, status = await run_in_threadpool(work)
    if status == 303 and result is not None:
        return RedirectResponse(f"/admin/jobs/{result['job']}", status_code=303)
    form = {k: fields.get(k, "") for k in ("who", "emails", "when", "start_at", "tz")}
    return await run_in_threadpool(
        lambda: _enroll_page(request, upload, slug, status_code=status, error=error, result=result, form=form)
    )
