"""Creating the first admin in the browser with the one-time setup link (:mod:`nurture.staff.first_admin`).

``GET /admin/setup/{token}`` shows the form and changes nothing; ``POST /admin/setup`` carries the token in
the form (never again in a URL), checks the CSRF token of the visitor's anonymous session like the login
form does, creates the admin, spends the link and signs them in. The sign-in page offers the same form to
whoever pastes the link there.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from nurture.core.db import transaction
from nurture.staff import accounts, first_admin
from nurture.web.admin.auth import StaffSession, check_csrf, read_session, session_or_new, write_session
from nurture.web.admin.common import capitalized, page, q, read_form

router = APIRouter(prefix="/admin", include_in_schema=False)
MAX_TOKEN_LENGTH = 200  # the token is 43 characters; a pasted link is longer, anything past this is junk


def token_of(text: str) -> str:
    """The token from what was pasted: the whole link or the token alone."""
    text = text.strip()[:MAX_TOKEN_LENGTH]
    if first_admin.SETUP_PATH in text:
        text = text.split(first_admin.SETUP_PATH, 1)[1]
    return text.split("?", 1)[0].split("#", 1)[0].strip("/ ")


def _form_page(
    request: Request,
    current: StaffSession,
    token: str,
    *,
    status_code: int = 200,
    error: str | None = None,
    email: str = "",
) -> HTMLResponse:
    # The staff pages' Referrer-Policy (same-origin) keeps the token in this page's URL from other sites;
    # "no-referrer" would be stricter, but then the browser sends "Origin: null" with the form, which the
    # CSRF check rightly refuses as cross-site.
    return page(request, "setup.html", status_code, csrf=current.csrf, token=token, email=email, error=error)


def _refused(request: Request, error: first_admin.SetupError) -> HTMLResponse:
    done = error.code == "done"
    return page(
        request,
        "setup_done.html" if done else "error.html",
        410 if done else 404,
        title="Setup link not valid",
        message=str(error),
    )


def _check(token: str) -> first_admin.SetupError | None:
    try:
        with transaction() as session:
            first_admin.check(session, token)
    except first_admin.SetupError as exc:
        return exc
    return None


@router.get("/setup/{token}")
def setup_page(request: Request, token: str) -> HTMLResponse:
    refused = _check(token_of(token))
    if refused is not None:
        return _refused(request, refused)
    current, fresh = session_or_new(request)
    response = _form_page(request, current, token_of(token))
    if fresh:
        write_session(response, request, current)
    return response


def _text(fields: dict[str, Any], name: str, limit: int = 1024) -> str:
    value = fields.get(name)
    return value[:limit] if isinstance(value, str) else ""


@router.post("/setup")
async def setup_submit(request: Request) -> Response:
    current, fresh = session_or_new(request)
    fields = await read_form(request)
    token = token_of(_text(fields, "token"))
    email = _text(fields, "email", 320)
    if not check_csrf(request, fields, read_session(request)):
        response = _form_page(
            request,
            current,
            token,
            status_code=403,
            email=email,
            error="This form has expired or came from another site. Please try again.",
        )
        if fresh:
            write_session(response, request, current)
        return response
    refused = await run_in_threadpool(_check, token)
    if refused is not None:
        return _refused(request, refused)
    if "email" not in fields:  # the link pasted on the sign-in page: now the form itself
        return _form_page(request, current, token)
    password, again = _text(fields, "password"), _text(fields, "password_again")
    if password != again:
        return _form_page(
            request, current, token, status_code=400, email=email, error="The two passwords differ."
        )

    def work() -> tuple[accounts.Actor | None, str | None, str | None]:
        try:
            with transaction() as session:
                user = first_admin.create_first_admin(session, token, email, password)
                return accounts.Actor.of(user), accounts.session_fingerprint(user), None
        except accounts.StaffError as exc:
            return None, None, capitalized(str(exc)) + "."
        except first_admin.SetupError as exc:
            return None, None, str(exc)

    actor, fingerprint, error = await run_in_threadpool(work)
    if actor is None:
        return _form_page(request, current, token, status_code=400, email=email, error=error)
    done = f"Welcome, {actor.email}: you are the first admin. Add colleagues under Users."
    response = RedirectResponse(f"/admin/?done={q(done)}", status_code=303)
    # Signed in with a fresh CSRF token, as after a normal sign-in.
    write_session(response, request, StaffSession(actor.id, StaffSession.anonymous().csrf, fingerprint))
    return response
