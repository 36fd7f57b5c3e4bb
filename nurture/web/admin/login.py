"""Signing in and out of the staff UI (``/admin/login``, ``/admin/logout``).

Attempts are throttled per account and per client address before the password is checked
(:func:`nurture.staff.accounts.claim_attempt`); a sign-in writes a new session with a fresh CSRF token.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from nurture.core.db import transaction
from nurture.staff import accounts, first_admin
from nurture.web.admin.auth import (
    StaffSession,
    check_csrf,
    clear_session,
    read_session,
    safe_next,
    session_or_new,
    write_session,
)
from nurture.web.admin.common import page, read_form, settings_of
from nurture.web.admin.deps import ViewerForm
from nurture.web.public.forms import origin_of

router = APIRouter(prefix="/admin", include_in_schema=False)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def first_run() -> bool:
    """True while nobody could sign in as an admin: the page then points to the setup link."""
    with transaction() as session:
        return not first_admin.admin_exists(session)


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    current, fresh = session_or_new(request)
    response = page(
        request, "login.html", csrf=current.csrf, next=safe_next(next), email="", first_run=first_run()
    )
    if fresh:
        write_session(response, request, current)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    current, _ = session_or_new(request)
    fields = await read_form(request)
    next_path = safe_next(fields.get("next") if isinstance(fields.get("next"), str) else None)
    email = _text(fields.get("email"))
    password = _text(fields.get("password"))
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
    settings = settings_of(request)
    ip = accounts.ip_key(origin_of(request).ip, settings)

    def attempt() -> tuple[accounts.Actor | None, str | None, int | None]:
        try:
            # Committed before the password is checked, so parallel attempts see each other's counts.
            with transaction() as session:
                claim = accounts.claim_attempt(session, email, ip, settings)
        except accounts.LoginThrottled as exc:
            return None, None, exc.retry_after
        try:
            with transaction() as session:
                user = accounts.authenticate(session, email, password)
                accounts.release_attempt(session, claim)
                return accounts.Actor.of(user), accounts.session_fingerprint(user), None
        except accounts.BadCredentials:
            # Recorded in its own transaction: the sign-in's was rolled back with the error.
            with transaction() as session:
                accounts.record_failure(session, email, ip)
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
async def logout(request: Request, _form: ViewerForm) -> Response:
    response = RedirectResponse("/admin/login", status_code=303)
    clear_session(response, request)
    return response
