"""Pages a subscriber reaches from an email: unsubscribe (RFC 8058 one-click included)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from nurture import tokens
from nurture.db import transaction
from nurture.enrollment import unsubscribe
from nurture.models import Subscriber
from nurture.web.pages import render

router = APIRouter()


def _subscriber_id(purpose: tokens.Purpose, token: str) -> str | None:
    try:
        return tokens.read_token(purpose, token)
    except tokens.InvalidToken:
        return None


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(request: Request, token: str) -> HTMLResponse:
    """Shows one button and changes nothing: mail scanners follow GET links."""
    if _subscriber_id(tokens.Purpose.unsubscribe, token) is None:
        return render(request, "invalid_link.html", status_code=404)
    return render(request, "unsubscribe.html", token=token)


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
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
    # An erased subscriber gets the same page: nothing to reveal, nothing left to stop.
    return render(request, "unsubscribed.html")
