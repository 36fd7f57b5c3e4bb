"""Pages a prospect reaches: signup (``subscribe``), confirm, unsubscribe (RFC 8058 one-click included) and
preferences (``preferences``).

Every link target answers GET with a page and a button and changes nothing (mail scanners prefetch links);
only POST acts. Tampered, foreign-purpose, expired and unknown tokens all get the same friendly page.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from nurture.core import tokens
from nurture.core.db import transaction
from nurture.models import Subscriber
from nurture.subscribers import consent
from nurture.subscribers.enrollment import unsubscribe
from nurture.subscribers.signup import confirm, find_signup
from nurture.web.public import preferences, subscribe
from nurture.web.public.forms import origin_of
from nurture.web.public.pages import render

router = APIRouter()
router.include_router(subscribe.router)
router.include_router(preferences.router)


def _subscriber_id(purpose: tokens.Purpose, token: str) -> str | None:
    try:
        return tokens.read_token(purpose, token)
    except tokens.InvalidToken:
        return None


def _dead_confirm_link(request: Request) -> HTMLResponse:
    """A confirmation link that is forged, expired or whose signup is gone: offer to sign up again."""
    return render(request, "invalid_link.html", status_code=404, signup_again=True)


def _preferences_path(public_id: str) -> str:
    return f"/preferences/{tokens.make_token(tokens.Purpose.preferences, public_id)}"


# --- confirm --------------------------------------------------------------------------------------------


@router.get("/confirm/{token}", response_class=HTMLResponse, include_in_schema=False)
def confirm_page(request: Request, token: str) -> HTMLResponse:
    """One button; GET changes nothing."""
    signup_id = _subscriber_id(tokens.Purpose.confirm, token)
    if signup_id is None:
        return _dead_confirm_link(request)
    with transaction() as session:
        record = find_signup(session, signup_id)
        if record is None:
            return _dead_confirm_link(request)
        if record.confirmed_at is not None:
            public_id = session.scalar(
                select(Subscriber.public_id).where(Subscriber.id == record.subscriber_id)
            )
            return render(
                request, "confirmed.html", already=True, preferences_url=_preferences_path(str(public_id))
            )
    return render(request, "confirm.html")


@router.post("/confirm/{token}", response_class=HTMLResponse, include_in_schema=False)
def confirm_submit(request: Request, token: str) -> HTMLResponse:
    """Activates and enrolls in the signup's course; a second press gets the same page and changes nothing."""
    signup_id = _subscriber_id(tokens.Purpose.confirm, token)
    if signup_id is None:
        return _dead_confirm_link(request)
    with transaction() as session:
        result = confirm(session, signup_id, origin_of(request))
    if result is None:
        return _dead_confirm_link(request)
    return render(
        request,
        "confirmed.html",
        already=result.already,
        course_name=result.sequence_name,
        preferences_url=_preferences_path(result.subscriber_public_id),
    )


# --- unsubscribe ----------------------------------------------------------------------------------------


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, include_in_schema=False)
def unsubscribe_page(request: Request, token: str) -> HTMLResponse:
    """Shows one button and changes nothing: mail scanners follow GET links."""
    if _subscriber_id(tokens.Purpose.unsubscribe, token) is None:
        return render(request, "invalid_link.html", status_code=404)
    return render(request, "unsubscribe.html", token=token)


@router.post("/unsubscribe/{token}", response_class=HTMLResponse, include_in_schema=False)
def unsubscribe_submit(request: Request, token: str) -> HTMLResponse:
    """Unsubscribes and cancels every pending email in one transaction; answers 200, never a redirect, so
    RFC 8058 one-click POSTs (body ``List-Unsubscribe=One-Click``, no cookies) work as well as the button."""
    public_id = _subscriber_id(tokens.Purpose.unsubscribe, token)
    if public_id is None:
        return render(request, "invalid_link.html", status_code=404)
    with transaction() as session:
        subscriber = session.scalar(
            select(Subscriber).where(Subscriber.public_id == public_id).with_for_update()
        )
        if subscriber is not None:
            unsubscribe(session, subscriber, source="link")
    # An erased subscriber gets the same page, minus the resubscribe button: nothing left to bring back.
    settings = request.app.state.settings
    return render(
        request,
        "unsubscribed.html",
        resubscribe_url=_preferences_path(public_id) if subscriber is not None else None,
        consent_version=consent.CURRENT,
        consent_text=consent.text_of(consent.CURRENT, settings.org_name),
    )
