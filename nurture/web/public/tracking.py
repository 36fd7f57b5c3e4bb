"""``/l/{token}`` (a tracked link: record the click, then 302 to the stored URL) and ``/o/{token}`` (the open
pixel). The destination is only ever the URL stored for the token: query strings are ignored, and an unknown,
malformed or tampered token is a 404 with no ``Location``, so these routes can never be an open redirect."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from nurture.core.db import transaction
from nurture.subscribers import clicks

router = APIRouter(include_in_schema=False)
# Neither the answer nor the click may be cached: each visit may count, and no referrer leaks the token.
NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
NOT_FOUND = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Link not found</title></head>'
    "<body><h1>This link is not valid</h1><p>It may have been mistyped or cut short.</p></body></html>"
)


def _not_found() -> HTMLResponse:
    return HTMLResponse(NOT_FOUND, status_code=404, headers=NO_STORE)


def _hit(request: Request, token: str, kind: str) -> str | None:
    """What the token names; the hit is recorded only when it counts
    (nurture.subscribers.clicks.record_hit)."""
    client_ip = request.client.host if request.client else None
    with transaction() as session:
        return clicks.record_hit(session, token, kind, request.app.state.settings, client_ip)


@router.get("/l/{token}")
def follow_link(request: Request, token: str) -> Response:
    """Always the redirect for a known link, counted or not: a flood is recorded once, never refused."""
    if not clicks.TOKEN.match(token):  # malformed: no database round trip
        return _not_found()
    url = _hit(request, token, clicks.CLICK)
    if not url:
        return _not_found()
    return RedirectResponse(url, status_code=302, headers=NO_STORE)


@router.head("/l/{token}")
def peek_link(token: str) -> Response:
    """Link checkers, previewers and mail security scanners often send ``HEAD`` first: answer where the link
    goes, but count nothing (a person's click is a ``GET``)."""
    if not clicks.TOKEN.match(token):
        return _not_found()
    with transaction() as session:
        url = clicks.stored_url(session, token)
    if not url:
        return _not_found()
    return RedirectResponse(url, status_code=302, headers=NO_STORE)


@router.get("/o/{token}")
def open_pixel(request: Request, token: str) -> Response:
    if not clicks.TOKEN.match(token):
        return _not_found()
    found = _hit(request, token, clicks.OPEN)
    if found is None:
        return _not_found()
    return Response(clicks.PIXEL, media_type="image/gif", headers=NO_STORE)
