"""Staff sessions for the web UI: a signed cookie, a CSRF token bound to it, role checks.

The cookie holds only the user id, a CSRF token and a fingerprint of the password hash, signed with the
app secret (itsdangerous) and expiring after ``NURTURE_STAFF_SESSION_SECONDS``. It is ``HttpOnly``,
``SameSite=Lax`` and ``Secure`` outside development. Every POST must carry the session's CSRF token in the
form; a browser that tells us the request is cross-site (``Origin``, ``Sec-Fetch-Site``) is refused before
that. Changing the password or deactivating the account ends every session at once.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import Request
from fastapi.responses import Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from nurture.core.config import Environment, Settings
from nurture.core.db import transaction
from nurture.models import StaffRole, StaffUser
from nurture.staff.accounts import Actor, session_fingerprint

COOKIE = "nurture_staff"
SALT = "nurture.staff.accounts-session"


class LoginRequired(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class Forbidden(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(Exception):
    """A staff form or upload that cannot be read (too large, not UTF-8, malformed): 400/413/415."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class StaffSession:
    user_id: int | None
    csrf: str
    fingerprint: str | None = None

    @classmethod
    def anonymous(cls) -> StaffSession:
        return cls(None, secrets.token_urlsafe(24))


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret_key, salt=SALT)


def read_session(request: Request) -> StaffSession | None:
    raw = request.cookies.get(COOKIE)
    if not raw or len(raw) > 1024:
        return None
    settings: Settings = request.app.state.settings
    try:
        data = _serializer(settings).loads(raw, max_age=settings.web.staff_session_seconds)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("c"), str):
        return None
    user_id = data.get("u")
    return StaffSession(user_id if isinstance(user_id, int) else None, data["c"], data.get("f"))


def write_session(response: Response, request: Request, session: StaffSession) -> None:
    settings: Settings = request.app.state.settings
    value = _serializer(settings).dumps({"u": session.user_id, "c": session.csrf, "f": session.fingerprint})
    response.set_cookie(
        COOKIE,
        value,
        max_age=settings.web.staff_session_seconds,
        path="/",
        httponly=True,
        samesite="lax",
        secure=settings.env is not Environment.development,
    )


def clear_session(response: Response, request: Request) -> None:
    settings: Settings = request.app.state.settings
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="lax", secure=settings.env is not Environment.development
    )


def session_or_new(request: Request) -> tuple[StaffSession, bool]:
    """The visitor's session, or a fresh anonymous one (True: it must be written to the response)."""
    current = read_session(request)
    return (current, False) if current is not None else (StaffSession.anonymous(), True)


def _local_path(request: Request) -> str:
    path = request.url.path
    return path + (f"?{request.url.query}" if request.url.query else "")


def require(request: Request, needed: StaffRole) -> tuple[Actor, StaffSession]:
    """The signed-in staff member with at least ``needed``; else LoginRequired (no valid session) or
    Forbidden (signed in, role too low)."""
    current = read_session(request)
    if current is None or current.user_id is None:
        raise LoginRequired(_local_path(request))
    with transaction() as session:
        user = session.get(StaffUser, current.user_id)
        if user is None or not user.active or session_fingerprint(user) != current.fingerprint:
            raise LoginRequired(_local_path(request))
        actor = Actor.of(user)
    if not actor.may(needed):
        raise Forbidden(f"This needs the {needed.value} role; you are signed in as {actor.role}.")
    return actor, current


def cross_site(request: Request) -> bool:
    """True when the browser says the request comes from another site."""
    if request.headers.get("sec-fetch-site", "") == "cross-site":
        return True
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin == "null"
    ours = {urlsplit(str(request.base_url)).netloc, urlsplit(request.app.state.settings.web.base_url).netloc}
    return urlsplit(origin).netloc not in ours


def check_csrf(request: Request, fields: dict[str, Any], current: StaffSession | None) -> bool:
    token = fields.get("csrf")
    if current is None or not isinstance(token, str) or cross_site(request):
        return False
    return hmac.compare_digest(token.encode(), current.csrf.encode())


def login_url(next_path: str) -> str:
    return "/admin/login?next=" + quote(next_path, safe="/")


def safe_next(value: str | None) -> str:
    """Only our own admin pages are redirect targets after login (no open redirect)."""
    if not value or not value.startswith("/admin") or value.startswith("//") or "\\" in value:
        return "/admin/"
    return value
