"""What every staff page module shares: rendering a page with the staff headers, the 404 of a missing row,
reading a staff form, and the lookups and form values several areas use."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from nurture.core.config import Settings
from nurture.core.db import transaction
from nurture.core.ids import row_id
from nurture.models import Sequence, Subscriber
from nurture.sequences import control
from nurture.sequences.schedule import ScheduleError, localize, resolve_zone, zone
from nurture.web.admin.auth import BadRequest
from nurture.web.public.forms import BadBody, read_body

# Staff forms may carry a pasted list of addresses; the public forms' 32 KB limit would refuse ~1,500.
MAX_STAFF_FORM_BYTES = 2 * 1024 * 1024


class NotFound(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


def known_action(actions: Collection[str]) -> Callable[[str], str]:
    """A dependency for an ``{action}`` path part: checked before the session, so an unknown action is 404 for
    everyone, signed in or not."""

    def checked(action: str) -> str:
        if action not in actions:
            raise NotFound("There is no such action.")
        return action

    return checked


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def q(text: str) -> str:
    """``text`` for a query-string value (the ``?done=`` notices after a redirect)."""
    return quote(text, safe="")


def capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


async def read_form(
    request: Request, *, max_fields: int | None = None, lists: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """A staff form, flat; fields named in ``lists`` keep every value (checkboxes), up to ``max_fields``."""
    limits: dict[str, Any] = {"lists": lists} | ({"max_fields": max_fields} if max_fields else {})
    try:
        return (await read_body(request, allow_json=False, max_bytes=MAX_STAFF_FORM_BYTES, **limits)).fields
    except BadBody as exc:
        raise BadRequest(exc.status_code, exc.message) from None


def seconds(value: int) -> timedelta:
    return timedelta(seconds=value)


def sequence_or_404(session: Any, slug: str) -> Sequence:
    sequence = session.scalar(select(Sequence).where(Sequence.slug == slug))
    if sequence is None:
        raise NotFound(f"There is no sequence {slug!r}.")
    return sequence


def subscriber_or_404(session: Any, subscriber_id: int) -> Subscriber:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise NotFound("There is no such subscriber.")
    return subscriber


def parse_subscriber_id(value: str) -> int:
    parsed = row_id(value)
    if parsed is None:
        raise NotFound("There is no such subscriber.")
    return parsed


def local_instant(value: Any, tz_name: Any, sequence: Sequence) -> datetime:
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


def live_slugs() -> list[str]:
    """Slugs of the sequences staff may still enroll people in (not archived)."""
    with transaction() as session:
        return list(
            session.scalars(
                select(Sequence.slug).where(Sequence.status != "archived").order_by(Sequence.slug)
            )
        )
