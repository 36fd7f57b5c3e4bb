"""The signup form, its embed snippet and ``POST /subscribe`` (form: 303, JSON: 202).

Every successful-looking answer is the same whatever the address (new, pending, active, unsubscribed,
suppressed) and for a filled honeypot, so the form cannot be used to learn who is on the list.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from nurture.core.addresses import known_zones
from nurture.core.config import Settings
from nurture.core.db import transaction
from nurture.models import SequenceStatus
from nurture.models.abuse_limits import RateLimited
from nurture.sequences.sync import get_sequence
from nurture.subscribers import consent
from nurture.subscribers.signup import SLUG, FieldErrors, honeypot_filled, parse_signup, signup
from nurture.web.public.forms import FORM, JSON, BadBody, origin_of, read_body, wants_json
from nurture.web.public.pages import render

router = APIRouter()

CHECK_INBOX_PATH = "/subscribe/check-your-inbox"
ACCEPTED = {
    "status": "accepted",
    "message": "Thank you. If this address can receive our emails, a confirmation link is on its way.",
}


class SignupIn(BaseModel):
    """The signup fields, for the OpenAPI description; the handler validates the raw body itself."""

    email: str = Field(max_length=254)
    consent: bool | str = Field(description="must be true (or 'yes'): the person ticked the consent box")
    first_name: str | None = Field(default=None, max_length=100)
    timezone: str | None = Field(default=None, max_length=64, description="IANA zone, e.g. Europe/Paris")
    sequence: str | None = Field(default=None, max_length=64, description="course slug; default setting")
    consent_version: str | None = Field(default=None, max_length=32)
    source: str | None = Field(default=None, max_length=100)
    website: str | None = Field(default=None, description="honeypot: leave empty")


_SIGNUP_SCHEMA = SignupIn.model_json_schema()


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _course(slug: str | None, settings: Settings) -> tuple[str | None, bool]:
    """(course name, offered) for a slug from a form or link; None means the default course."""
    with transaction() as session:
        sequence = get_sequence(session, slug or settings.default_sequence)
        if sequence is None or sequence.status in (SequenceStatus.archived, SequenceStatus.draft):
            return None, slug is None
        return sequence.name, True


def form_page(
    request: Request,
    *,
    status_code: int = 200,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
) -> HTMLResponse:
    settings = _settings(request)
    values = {k: v for k, v in (values or {}).items() if isinstance(v, str)}
    slug = values.get("sequence") or None
    if slug is not None and not SLUG.match(slug):
        slug = None
    course_name, _ = _course(slug, settings)
    return render(
        request,
        "subscribe.html",
        status_code=status_code,
        values=values,
        errors=errors or {},
        sequence=slug,
        course_name=course_name,
        consent_version=consent.CURRENT,
        consent_text=consent.text_of(consent.CURRENT, settings.org_name),
        zones=sorted(known_zones()),
    )


@router.get("/subscribe", response_class=HTMLResponse, include_in_schema=False)
def subscribe_page(request: Request, sequence: str | None = None) -> HTMLResponse:
    """The hosted form; ``?sequence=slug`` signs people up for that course instead of the default."""
    if sequence is not None and (not SLUG.match(sequence) or not _course(sequence, _settings(request))[1]):
        return render(request, "no_course.html", status_code=404)
    return form_page(request, values={"sequence": sequence} if sequence else None)


@router.get(CHECK_INBOX_PATH, response_class=HTMLResponse, include_in_schema=False)
def check_inbox_page(request: Request) -> HTMLResponse:
    return render(request, "check_inbox.html")


@router.get("/subscribe/embed", response_class=HTMLResponse, include_in_schema=False)
def embed_page(request: Request, sequence: str | None = None) -> HTMLResponse:
    """The HTML another site pastes to show our form; it posts here and lands on our pages."""
    settings = _settings(request)
    if sequence is not None and (not SLUG.match(sequence) or not _course(sequence, settings)[1]):
        return render(request, "no_course.html", status_code=404)
    return render(
        request,
        "embed.html",
        sequence=sequence,
        action=f"{settings.web.base_url}/subscribe",
        consent_version=consent.CURRENT,
        consent_text=consent.text_of(consent.CURRENT, settings.org_name),
    )


def _accepted(is_json: bool) -> Response:
    if is_json:
        return JSONResponse(ACCEPTED, status_code=202, headers={"Cache-Control": "no-store"})
    return RedirectResponse(CHECK_INBOX_PATH, status_code=303)


def _limited(request: Request, exc: RateLimited, is_json: bool) -> Response:
    headers = {"Retry-After": str(exc.retry_after), "Cache-Control": "no-store"}
    if is_json:
        return JSONResponse(
            {"error": "rate-limited", "retry_after": exc.retry_after}, status_code=429, headers=headers
        )
    minutes = max(1, round(exc.retry_after / 60))
    response = render(request, "rate_limited.html", status_code=429, minutes=minutes)
    response.headers.update(headers)
    return response


def bad_body(request: Request, exc: BadBody) -> Response:
    if wants_json(request):
        return JSONResponse({"error": exc.message}, status_code=exc.status_code)
    return render(request, "error.html", status_code=exc.status_code, message=exc.message)


@router.post(
    "/subscribe",
    status_code=202,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": _SIGNUP_SCHEMA}, FORM: {"schema": _SIGNUP_SCHEMA}},
        },
        "responses": {
            "303": {"description": "form posts: see the check-your-inbox page"},
            "422": {"description": "field errors: {errors: {field: message}}"},
            "429": {"description": "too many signups; see Retry-After"},
        },
    },
)
async def subscribe_submit(request: Request) -> Response:
    """Sign up (double opt-in): stores a pending signup and queues the confirmation email."""
    try:
        body = await read_body(request)
    except BadBody as exc:
        return bad_body(request, exc)
    if honeypot_filled(body.fields):
        return _accepted(body.is_json)  # a bot: the same answer, nothing stored, nothing sent
    try:
        form = parse_signup(body.fields, default_source="api" if body.is_json else "hosted-form")
        await run_in_threadpool(signup, None, form, origin_of(request), _settings(request))
    except FieldErrors as exc:
        if body.is_json:
            return JSONResponse({"errors": exc.errors}, status_code=422)
        return await run_in_threadpool(
            form_page, request, status_code=422, values=body.fields, errors=exc.errors
        )
    except RateLimited as exc:
        return _limited(request, exc, body.is_json)
    return _accepted(body.is_json)
