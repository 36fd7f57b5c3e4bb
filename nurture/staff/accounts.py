"""Staff accounts: passwords (argon2id), API tokens (stored as SHA-256), login throttling, the audit log.

Sign-in attempts are counted per account and per client IP in the database's fixed-window counters
(nurture.models.abuse_limits), so every web worker on every host sees the same count and a restart forgets
nothing. Each attempt is counted atomically and committed *before* its password is checked, so a burst of
parallel guesses cannot all pass a check that has not seen the others yet; a successful sign-in gives its
count back, so the limits are limits on failed attempts. Failures are also kept as rows (``login_failures``)
for the record. A login for an unknown address still runs one argon2 verification, so the answer time does not
tell an attacker which addresses have accounts.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.core.addresses import InvalidInput, normalise_email
from nurture.core.config import Settings
from nurture.models import ApiToken, AuditLog, LoginFailure, StaffRole, StaffUser
from nurture.models.abuse_limits import RateLimited, Window, client_key, count_hit, hashed_key, refund_hit

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # argon2 would hash a megabyte happily; a login form has no reason to send one
TOKEN_PREFIX = "nrt_"
ROLE_RANK = {StaffRole.viewer: 0, StaffRole.editor: 1, StaffRole.admin: 2}

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile (64 MiB, t=3)
_dummy: dict[PasswordHasher, str] = {}


def _dummy_hash() -> str:
    """Verified against when the address is unknown, so both answers cost the same (made on first use)."""
    if _hasher not in _dummy:
        _dummy[_hasher] = _hasher.hash(secrets.token_urlsafe(16))
    return _dummy[_hasher]


class StaffError(ValueError):
    """Bad input for a staff operation; the message is fit to show to the person who gave it. ``code`` is
    invalid, not_found or conflict (the API maps it to 400, 404 or 409)."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


class BadCredentials(Exception):
    pass


class LoginThrottled(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; retry after {retry_after}s")
        self.retry_after = retry_after


def role_allows(role: str, needed: StaffRole) -> bool:
    try:
        return ROLE_RANK[StaffRole(role)] >= ROLE_RANK[needed]
    except ValueError:
        return False


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise StaffError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise StaffError(f"the password must be at most {MAX_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _staff_email(raw: str) -> str:
    try:
        return normalise_email(raw)
    except InvalidInput as exc:
        raise StaffError(f"email {exc.message}") from None


def find_user(session: Session, email: str) -> StaffUser | None:
    return session.scalar(select(StaffUser).where(StaffUser.email == email.strip().lower()))


def create_user(session: Session, email: str, role: str, password: str) -> StaffUser:
    address = _staff_email(email)
    if role not in {r.value for r in StaffRole}:
        raise StaffError(f"role must be one of {', '.join(r.value for r in StaffRole)}, got {role!r}")
    check_password(password)
    if find_user(session, address) is not None:
        raise StaffError(f"a staff user {address} already exists", "conflict")
    user = StaffUser(email=address, role=role, password_hash=hash_password(password), active=True)
    session.add(user)
    session.flush()
    return user


def issue_token(session: Session, user: StaffUser) -> str:
    """A new API token for ``user``; the caller shows it once, only its digest is kept."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, token_hash=token_digest(token)))
    session.flush()
    return token


def token_digest(token: str) -> str:
    # A plain hash is enough: the token is 256 random bits, so there is nothing to brute-force.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def user_for_token(session: Session, token: str) -> StaffUser | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200 or not token.isascii():
        return None
    row = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == token_digest(token), ApiToken.revoked_at.is_(None))
    )
    if row is None or not row.user.active:
        return None
    row.last_used_at = clock.now()
    return row.user


# --- login ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginLimits:
    account: int
    ip: int
    window_seconds: int

    @classmethod
    def of(cls, settings: Settings) -> LoginLimits:
        return cls(
            settings.limits.login_account_limit,
            settings.limits.login_ip_limit,
            settings.limits.login_window_seconds,
        )


@dataclass(frozen=True)
class Attempt:
    """A sign-in attempt's place in its account's and its client's windows (:func:`claim_attempt`)."""

    windows: tuple[Window, ...]


def ip_key(ip: str | None, settings: Settings) -> str:
    return client_key("login", ip, settings.secret_key)


def _address(email: str) -> str:
    return email.strip().lower()[:320]


def claim_attempt(session: Session, email: str, ip: str, settings: Settings) -> Attempt:
    """Count one sign-in attempt for the account ``email`` and the client ``ip`` (:func:`ip_key`), or raise
    :class:`LoginThrottled` having counted nothing. Each count is one atomic upsert; the caller commits them
    before checking the password, so of any number of parallel attempts at most the limit are checked."""
    limits = LoginLimits.of(settings)
    account = hashed_key("login-account", _address(email), settings.secret_key)
    windows = (
        Window.of(account, limit=limits.account, window_seconds=limits.window_seconds),
        Window.of(ip, limit=limits.ip, window_seconds=limits.window_seconds),
    )
    try:
        for window in windows:
            count_hit(session.connection(), window)
    except RateLimited as exc:  # the transaction rolls back, so the other window's count goes too
        raise LoginThrottled(exc.retry_after) from None
    return Attempt(windows)


def release_attempt(session: Session, attempt: Attempt) -> None:
    """A successful sign-in gives its counts back: only failed attempts use up the limits."""
    for window in attempt.windows:
        refund_hit(session.connection(), window)


def authenticate(session: Session, email: str, password: str) -> StaffUser:
    """The active user with these credentials, else :class:`BadCredentials` (the caller records it with
    :func:`record_failure`, in a transaction that commits). Call it only for an attempt
    :func:`claim_attempt` counted and committed."""
    user = find_user(session, _address(email))
    ok = verify_password(user.password_hash if user else _dummy_hash(), password[:MAX_PASSWORD_LENGTH])
    if user is None or not ok or not user.active:
        raise BadCredentials()
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = clock.now()
    return user


def record_failure(session: Session, email: str, ip: str) -> None:
    session.add(LoginFailure(email=_address(email), ip_key=ip))


def purge_login_failures(session: Session, older_than: timedelta = timedelta(days=1)) -> int:
    result = session.execute(
        delete(LoginFailure)
        .where(LoginFailure.created_at < clock.now() - older_than)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def session_fingerprint(user: StaffUser) -> str:
    """Changes when the password changes, so a new password ends every session signed before it."""
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


# --- audit ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """The staff member behind a request, detached from any session."""

    id: int
    email: str
    role: str

    @classmethod
    def of(cls, user: StaffUser) -> Actor:
        return cls(user.id, user.email, user.role)

    def may(self, needed: StaffRole) -> bool:
        return role_allows(self.role, needed)


def audit(
    session: Session,
    actor: Actor | None,
    action: str,
    target: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Record a staff change in the caller's transaction: it commits or rolls back with the change itself."""
    session.add(
        AuditLog(
            user_id=actor.id if actor else None,
            actor=actor.email if actor else "cli",
            action=action,
            target=target[:200],
            before=before,
            after=after,
        )
    )


# --- user management (admins) ---------------------------------------------------------------------------


def user_snapshot(user: StaffUser) -> dict[str, Any]:
    """What the audit log keeps about an account: never the password hash."""
    return {"email": user.email, "role": user.role, "active": user.active}


def list_users(session: Session) -> list[StaffUser]:
    return list(session.scalars(select(StaffUser).order_by(StaffUser.email)))


def get_user(session: Session, user_id: int, *, lock: bool = False) -> StaffUser:
    query = select(StaffUser).where(StaffUser.id == user_id)
    user = session.scalar(query.with_for_update() if lock else query)
    if user is None:
        raise StaffError("there is no such staff user", "not_found")
    return user


def _keep_an_admin(session: Session, user: StaffUser) -> None:
    """Refuse a change that would leave no active admin (nobody could manage users any more). The other
    admins' rows are locked so two admins demoting each other at once cannot both succeed."""
    others = session.scalars(
        select(StaffUser.id)
        .where(StaffUser.role == StaffRole.admin, StaffUser.active.is_(True), StaffUser.id != user.id)
        .with_for_update()
    ).all()
    if not others:
        raise StaffError(
            f"{user.email} is the last active admin; make someone else an admin first", "conflict"
        )


def set_role(session: Session, user: StaffUser, role: str) -> None:
    if role not in {r.value for r in StaffRole}:
        raise StaffError(f"role must be one of {', '.join(r.value for r in StaffRole)}, got {role!r}")
    if user.role == StaffRole.admin and role != StaffRole.admin and user.active:
        _keep_an_admin(session, user)
    user.role = role


def set_active(session: Session, user: StaffUser, active: bool) -> None:
    """Deactivating ends the account's sessions and API tokens at once (both check ``active``)."""
    if not active and user.active and user.role == StaffRole.admin:
        _keep_an_admin(session, user)
    user.active = active


def reset_password(session: Session, user: StaffUser, password: str) -> None:
    """A new password; the session fingerprint changes with the hash, so every open session ends."""
    check_password(password)
    user.password_hash = hash_password(password)


def tokens_of(session: Session, user: StaffUser) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)))


def revoke_token(session: Session, user: StaffUser, token_id: int) -> ApiToken:
    token = session.scalar(select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user.id))
    if token is None:
        raise StaffError("that user has no such token", "not_found")
    if token.revoked_at is None:
        token.revoked_at = clock.now()
    return token
