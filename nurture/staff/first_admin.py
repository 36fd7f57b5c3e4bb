"""The first admin, created in the browser with a one-time setup link.

A fresh installation has no staff account, and the staff UI needs one to sign in. Rather than make a
newcomer find ``nurture users create`` first, ``nurture run`` (or ``nurture users setup-link``) issues a
setup token and prints the link ``/admin/setup/<token>``. Whoever can read that terminal can create the
first admin; nobody else can:

* only the token's SHA-256 is stored; the token itself is 256 random bits, printed once;
* it works once (``used_at``), until it expires (``NURTURE_SETUP_LINK_HOURS``), and only while no active
  admin exists: the moment one does (made here or with the CLI), every setup link is dead;
* checking compares hashes in constant time against each live token, so response times say nothing about
  how close a guess was;
* issuing a link and creating the admin are audited; a new link replaces any earlier one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.models import AuditLog, SetupToken, StaffRole, StaffUser
from nurture.staff import accounts

SETUP_PATH = "/admin/setup/"
SETUP_ACTOR = "setup-link"  # the audit log's actor for what a setup link did


class SetupError(ValueError):
    """The link cannot be used (code ``invalid``) or an admin exists already (``done``)."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def admin_exists(session: Session) -> bool:
    found = session.scalar(
        select(func.count())
        .select_from(StaffUser)
        .where(StaffUser.role == StaffRole.admin, StaffUser.active.is_(True))
    )
    return bool(found)


def _audit(session: Session, action: str, after: dict[str, object] | None = None) -> None:
    session.add(AuditLog(user_id=None, actor=SETUP_ACTOR, action=action, target="setup", after=after))


def issue(session: Session, valid_for: timedelta) -> str | None:
    """A new setup token (replacing any earlier one), or None when an admin exists already."""
    if admin_exists(session):
        session.execute(delete(SetupToken))  # nothing to set up: no link may linger
        return None
    session.execute(delete(SetupToken))
    token = secrets.token_urlsafe(32)
    expires_at = clock.now() + valid_for
    session.add(SetupToken(token_hash=_hash(token), expires_at=expires_at))
    _audit(session, "setup.link-issued", {"expires_at": expires_at.isoformat()})
    session.flush()
    return token


def link(base_url: str, token: str) -> str:
    return base_url.rstrip("/") + SETUP_PATH + token


def _live(session: Session, token: str) -> SetupToken | None:
    """The live token row matching ``token``; hashes compared in constant time against every live row."""
    if not token or len(token) > 200:
        return None
    wanted = _hash(token)
    found = None
    rows = session.scalars(
        select(SetupToken).where(SetupToken.used_at.is_(None), SetupToken.expires_at > clock.now())
    )
    for row in rows:
        if hmac.compare_digest(row.token_hash, wanted):
            found = row
    return found


def check(session: Session, token: str) -> None:
    """Raise SetupError unless ``token`` may create the first admin now."""
    if admin_exists(session):
        raise SetupError("An admin exists already: sign in, or ask an admin for an account.", "done")
    if _live(session, token) is None:
        raise SetupError(
            "This setup link is not valid: it was used, it expired, or a newer one replaced it. "
            "Restart `make run` (or run `nurture users setup-link`) for a new one."
        )


def create_first_admin(session: Session, token: str, email: str, password: str) -> StaffUser:
    """Create the first admin with a live setup token, spending it; StaffError for a bad email or password."""
    check(session, token)
    row = _live(session, token)
    assert row is not None
    # Spend the token with a conditional update: of two requests racing with the same link, one wins.
    spent = session.execute(
        update(SetupToken)
        .where(SetupToken.id == row.id, SetupToken.used_at.is_(None))
        .values(used_at=clock.now())
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        raise SetupError("This setup link was just used. Sign in instead.", "done")
    user = accounts.create_user(session, email, StaffRole.admin.value, password)
    session.execute(delete(SetupToken).where(SetupToken.id != row.id))
    _audit(session, "user.setup", accounts.user_snapshot(user))
    return user
