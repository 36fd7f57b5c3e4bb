"""Subscribers in the staff UI: the list (filtered, sorted and paged by :mod:`nurture.subscribers.listing`,
with bulk actions behind a confirmation page), one person's page (enrollments, deliveries and why each was or
was not sent) and the actions on it (pause, resume, unsubscribe, resubscribe, remove from a sequence, erase),
each through :func:`nurture.subscribers.staff_actions.act`, audited."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from nurture.core import clock
from nurture.core.db import transaction
from nurture.models import Sequence, StaffRole, Subscriber
from nurture.sequences.schedule import ScheduleError, localize, resolve_zone, zone
from nurture.subscribers import listing, staff_actions
from nurture.web.admin import erasure
from nurture.web.admin.common import (
    capitalized,
    known_action,
    page,
    parse_subscriber_id,
    q,
    row_id,
    settings_of,
    subscriber_or_404,
)
from nurture.web.admin.deps import EditorForm, Staff, StaffForm, Viewer, list_form_for
from nurture.web.api import explain

router = APIRouter(prefix="/admin", include_in_schema=False)


@router.get("/subscribers")
def subscribers_page(request: Request, who: Viewer) -> HTMLResponse:
    params = dict(request.query_params)
    error = None
    try:
        filters = listing.Filters.read(params)
    except listing.FilterError as exc:
        filters, error = listing.Filters(), capitalized(str(exc)) + "."
    with transaction() as session:
        try:
            found = listing.listing(session, filters)
        except listing.FilterError as exc:
            filters, error = listing.Filters(), capitalized(str(exc)) + "."
            found = listing.listing(session, filters)
        total = session.scalar(select(func.count()).select_from(Subscriber)) or 0
        slugs = list(session.scalars(select(Sequence.slug).order_by(Sequence.slug)))
        steps = listing.step_keys(session, filters.sequence) if filters.sequence else []
    return page(
        request,
        "subscribers.html",
        400 if error else 200,
        csrf=who.csrf,
        actor=who.actor,
        listing=found,
        filters=found.filters,
        total=total,
        slugs=slugs,
        steps=steps,
        statuses=listing.STATUSES,
        sorts=listing.SORTS,
        sort_choices=listing.SORT_CHOICES,
        per_page=listing.PER_PAGE,
        bulk_actions=BULK_ACTIONS,
        can_edit=who.actor.may(StaffRole.editor),
        # Past this many rows an export is worth a progress bar (a job) over a plain download.
        export_job=total > settings_of(request).web.background_rows,
        href=lambda **changes: "/admin/subscribers?" + urlencode(found.filters.query(**changes)),
        error=error,
        notice=request.query_params.get("done"),
    )


def _subscriber_detail(
    request: Request,
    who: Staff,
    target: int,
    *,
    status_code: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    with transaction() as session:
        subscriber = subscriber_or_404(session, target)
        detail = explain(session, subscriber)
        paused = subscriber.paused_until is not None and subscriber.paused_until > clock.now()
        zone_name = resolve_zone(subscriber.timezone, None).key
    return page(
        request,
        "subscriber.html",
        status_code,
        csrf=who.csrf,
        actor=who.actor,
        s=detail,
        can_edit=who.actor.may(StaffRole.editor),
        paused=paused,
        zone_name=zone_name,
        live=[e["sequence"] for e in detail["enrollments"] if e["status"] in ("active", "paused")],
        error=error,
        notice=request.query_params.get("done"),
    )


@router.get("/subscribers/{subscriber_id}")
def subscriber_page(request: Request, subscriber_id: str, who: Viewer) -> HTMLResponse:
    return _subscriber_detail(request, who, parse_subscriber_id(subscriber_id))


_DONE = {
    "pause": "Paused until {paused_until}; {moved} emails moved.",
    "resume": "Pause ended; {moved} emails back on schedule.",
    "unsubscribe": "Unsubscribed; {cancelled} unsent emails cancelled.",
    "resubscribe": "Resubscribed with the consent recorded; {reopened} sequences continue.",
    "remove": "Removed from {sequence}; {cancelled} unsent emails cancelled.",
}


def pause_until(fields: dict[str, Any]) -> datetime:
    """The form's local date and time, read in the zone given (default UTC)."""
    from nurture.subscribers.staff_actions import ActionError

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


def action_params(action: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments :func:`nurture.subscribers.staff_actions.act` takes for ``action``, from a
    form."""
    if action == "pause":
        return {"until": pause_until(fields)}
    if action == "resubscribe":
        return {"consent_source": fields.get("consent_source"), "note": fields.get("note")}
    if action == "remove":
        return {"sequence": fields.get("sequence")}
    return {}


@router.post("/subscribers/{subscriber_id}/{action}")
async def subscriber_action(
    request: Request,
    subscriber_id: str,
    action: Annotated[str, Depends(known_action(staff_actions.ACTIONS))],
    form: EditorForm,
) -> Response:
    actor, fields = form.actor, form.fields
    target = parse_subscriber_id(subscriber_id)

    def work() -> tuple[dict[str, Any] | None, str | None, int]:
        try:
            if action == "erase":
                return erasure.erase(actor, target, fields)
            params = action_params(action, fields)
            with transaction() as session:
                return staff_actions.act(session, actor, target, action, **params), None, 200
        except staff_actions.ActionError as exc:
            message = capitalized(exc.message)
            return None, message, {"not_found": 404, "conflict": 409}.get(exc.code, 400)

    result, error, status = await run_in_threadpool(work)
    if action == "erase":
        if error is not None:
            return await run_in_threadpool(
                lambda: erasure.erase_page(request, form, target, status_code=status, error=error)
            )
        return RedirectResponse("/admin/subscribers?done=" + q(erasure.ERASED), status_code=303)
    if error is not None:
        return await run_in_threadpool(
            lambda: _subscriber_detail(request, form, target, status_code=status, error=error)
        )
    assert result is not None
    return RedirectResponse(
        f"/admin/subscribers/{target}?done={q(_DONE[action].format(**result))}", status_code=303
    )


# --- bulk actions, behind a confirmation ----------------------------------------------------------------

BULK_ACTIONS = {
    "unsubscribe": "Unsubscribe (stops every email to them)",
    "resume": "End their pause",
    "remove": "Remove from the sequence filtered on",
}
BULK_DONE = {"unsubscribe": "unsubscribed", "resume": "resumed", "remove": "removed from {sequence}"}
BulkForm = Annotated[StaffForm, Depends(list_form_for(StaffRole.editor, "ids", listing.MAX_PER_PAGE))]


def _chosen(fields: dict[str, Any]) -> list[int]:
    values = fields.get("ids")
    ids = [row_id(v) for v in (values if isinstance(values, list) else [])]
    return sorted({i for i in ids if i is not None})[: listing.MAX_PER_PAGE]


@router.post("/subscribers/bulk")
async def bulk_action(request: Request, form: BulkForm) -> Response:
    actor, fields = form.actor, form.fields
    action = fields.get("action") if isinstance(fields.get("action"), str) else ""
    sequence = fields.get("sequence") if isinstance(fields.get("sequence"), str) else ""
    back = fields.get("back") if isinstance(fields.get("back"), str) else ""
    back = back if back.startswith("/admin/subscribers") and "//" not in back else "/admin/subscribers"
    ids = _chosen(fields)
    problem = None
    if action not in BULK_ACTIONS:
        problem = "Choose what to do with the people you ticked."
    elif not ids:
        problem = "Tick at least one person first."
    elif action == "remove" and not sequence:
        problem = "To remove people from a sequence, filter the list on that sequence first."
    if problem is not None:
        return RedirectResponse(f"{back}{'&' if '?' in back else '?'}done={q(problem)}", status_code=303)

    def people() -> list[tuple[int, str]]:
        with transaction() as session:
            chosen = select(Subscriber.id, Subscriber.email).where(Subscriber.id.in_(ids))
            rows = session.execute(chosen.order_by(Subscriber.email))
            return [(subscriber_id, email) for subscriber_id, email in rows]

    if fields.get("confirm") != "yes":
        chosen = await run_in_threadpool(people)
        return page(
            request,
            "bulk_confirm.html",
            csrf=form.csrf,
            actor=actor,
            people=chosen,
            action=action,
            label=BULK_ACTIONS[action],
            sequence=sequence,
            back=back,
        )

    def work() -> tuple[int, dict[str, int]]:
        done, refused = 0, Counter[str]()
        params = {"sequence": sequence} if action == "remove" else {}
        for target in ids:
            try:
                # One transaction per person: one refusal (already unsubscribed, ...) leaves the rest done.
                with transaction() as session:
                    staff_actions.act(session, actor, target, action, **params)
                done += 1
            except staff_actions.ActionError as exc:
                refused[exc.code] += 1
        return done, dict(refused)

    done, refused = await run_in_threadpool(work)
    message = f"{done} {BULK_DONE[action].format(sequence=sequence)}."
    if refused:
        message += f" {sum(refused.values())} left as they were (nothing to do for them)."
    return RedirectResponse(f"{back}{'&' if '?' in back else '?'}done={q(message)}", status_code=303)
