"""Signing up and confirming: validation at the edge, then one transaction each.

A signup writes, all or nothing: a rate-limit hit for the client, the subscriber row if the address is new
(status ``pending``), a consent record with the exact wording, and a confirmation email in the outbox. The
answer is the same for new, pending, active and unsubscribed addresses; the signup's choices (course, first
name, time zone) are kept on the consent record and applied only when the address owner confirms, so a
stranger who types someone's address can change nothing about them. A repeat signup (a confirmation email
for the same address and course, still unused, was queued less than ``ratelimit.CONFIRM_REPEAT_WINDOW``
ago) stores only the client's hit: one email per burst, and the same answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from nurture.core.addresses import InvalidInput, clean_name, clean_zone, normalise_email, unsafe_character
from nurture.core.config import Settings
from nurture.core.db import engine_of
from nurture.models import ConsentRecord, SequenceStatus, Subscriber, abuse_limits, events
from nurture.sequences.sync import get_sequence
from nurture.subscribers import confirmation, consent
from nurture.subscribers import signup_statements as sql
from nurture.subscribers.enrollment import EnrollmentError
from nurture.subscribers.preferences import reactivate, update_profile
from nurture.subscribers.reentry import enroll_on_signup

# Raw size caps, checked before anything else looks at a value.
CAPS = {
    "email": 254,
    "first_name": 100,
    "timezone": 64,
    "sequence": 64,
    "consent_version": 32,
    "source": 100,
    "website": 500,
}
LABELS = {
    "email": "Email address",
    "first_name": "First name",
    "timezone": "Time zone",
    "sequence": "Course",
    "consent_version": "Consent wording",
    "source": "Source",
    "website": "Website",
}
TRUE_VALUES = {"yes", "on", "true", "1"}
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
NO_SUCH_COURSE = "That course is not one we offer."


class FieldErrors(ValueError):
    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = dict(errors)


@dataclass(frozen=True)
class SignupForm:
    email: str
    first_name: str | None
    timezone: str | None
    sequence: str | None
    consent_version: str
    source: str


def text_field(raw: Mapping[str, Any], name: str, errors: dict[str, str]) -> str:
    """The field as text ("" when absent), recording a problem in ``errors``."""
    value = raw.get(name)
    label = LABELS[name]
    if value is None:
        return ""
    if not isinstance(value, str):
        errors[name] = f"{label} must be text."
        return ""
    if len(value) > CAPS[name]:
        errors[name] = f"{label} must be at most {CAPS[name]} characters."
        return ""
    problem = unsafe_character(value)
    if problem:
        errors[name] = f"{label} {problem}."
        return ""
    return value.strip()


# The checks themselves are nurture.core.addresses', shared with every other way a person enters; these put
# their answers in the form's words.


def validate_name(value: str, errors: dict[str, str]) -> str | None:
    try:
        return clean_name(value)
    except InvalidInput as exc:
        errors["first_name"] = f"First name {exc.message}."
        return None


def validate_zone(value: str, errors: dict[str, str], field: str = "timezone") -> str | None:
    try:
        return clean_zone(value)
    except InvalidInput:
        errors[field] = "Time zone is not one we know: leave it empty or pick one from the list."
        return None


def _sentence(message: str) -> str:
    message = message.strip()
    if message.startswith("must"):
        message = f"Email address {message}"
    return message if message.endswith(".") else message + "."


def validate_email(value: str, errors: dict[str, str]) -> str:
    try:
        return normalise_email(value)
    except InvalidInput as exc:
        errors["email"] = "Please enter your email address." if not value else _sentence(exc.message)
        return ""


def parse_signup(raw: Mapping[str, Any], *, default_source: str) -> SignupForm:
    """Validate every field of a signup, reporting all problems at once as :class:`FieldErrors`."""
    errors: dict[str, str] = {}
    raw_email = text_field(raw, "email", errors)
    email = validate_email(raw_email, errors) if "email" not in errors else ""
    first_name = validate_name(text_field(raw, "first_name", errors), errors)
    timezone = validate_zone(text_field(raw, "timezone", errors), errors)
    sequence = text_field(raw, "sequence", errors) or None
    if sequence is not None and not SLUG.match(sequence):
        errors["sequence"] = NO_SUCH_COURSE
    version = text_field(raw, "consent_version", errors) or consent.CURRENT
    if version not in consent.VERSIONS and "consent_version" not in errors:
        errors["consent_version"] = "This form is out of date: please reload the page and try again."
    source = text_field(raw, "source", errors) or default_source
    agreed = raw.get("consent")
    if not (agreed is True or (isinstance(agreed, str) and agreed.strip().lower() in TRUE_VALUES)):
        errors["consent"] = "Please tick the box to agree to receive the emails."
    if errors:
        raise FieldErrors(errors)
    return SignupForm(email, first_name, timezone, sequence, version, source)


def honeypot_filled(raw: Mapping[str, Any]) -> bool:
    value = raw.get("website")
    return bool(value.strip()) if isinstance(value, str) else value not in (None, False, "")


# --- the signup transaction -----------------------------------------------------------------------------


def signup(
    factory: sessionmaker[Session] | None, form: SignupForm, origin: consent.Origin, settings: Settings
) -> None:
    """Store the signup and queue its confirmation, or raise (``RateLimited``, ``FieldErrors``) having
    stored nothing."""
    # A Core transaction on the factory's engine, not an ORM session: the signup writes rows and reads
    # nothing back, and the session's own bookkeeping cost more CPU per request than the statements.
    engine = engine_of(factory)
    for attempt in (1, 2):
        try:
            with engine.begin() as connection:
                _signup(connection, form, origin, settings)
            return
        except IntegrityError:
            # Kept for what ON CONFLICT does not cover (another unique column colliding): a retry is a fresh
            # transaction that finds whatever the other one committed.
            if attempt == 2:
                raise


def _existing_subscriber(
    connection: Connection, email: str, course: str, confirm_daily_limit: int
) -> tuple[int, bool] | None:
    """Lock the subscriber row for ``email`` (None if there is none) and check its confirmation quota:
    ``(id, whether to queue a confirmation)``, False for a repeat signup for ``course``. The lock makes
    concurrent signups of the address take turns, each seeing the confirmation the one before it queued."""
    subscriber_id = connection.execute(sql.LOCK_SUBSCRIBER, {"s_email": email}).scalar()
    if subscriber_id is None:
        return None
    wanted = abuse_limits.confirmation_wanted(connection, subscriber_id, course, limit=confirm_daily_limit)
    return subscriber_id, wanted


def _subscriber(
    connection: Connection, email: str, course: str, confirm_daily_limit: int
) -> tuple[int, bool]:
    """The (new, or locked and within its quota) subscriber for ``email``, as :func:`_existing_subscriber`."""
    dialect = "postgresql" if connection.dialect.name == "postgresql" else "sqlite"
    for _ in range(3):
        new_id = connection.execute(sql.NEW_SUBSCRIBER[dialect], {"s_email": email}).scalar()
        if new_id is not None:
            # Created just now, in this transaction: no confirmation can have been queued for it yet, so
            # its quota count would be 0 (and the limit is at least 1), and it cannot be a repeat.
            return new_id, True
        existing = _existing_subscriber(connection, email, course, confirm_daily_limit)
        if existing is not None:
            return existing
        # Erased between the two statements (PostgreSQL, read committed): the address is new again.
    raise LookupError("the subscriber row for this signup kept disappearing")


def _course_offered(connection: Connection, slug: str) -> bool:
    status = connection.execute(sql.SEQUENCE_STATUS, {"slug": slug}).scalar()
    return status is not None and status not in (SequenceStatus.archived, SequenceStatus.draft)


def _check_course(connection: Connection, slug: str) -> None:
    if not _course_offered(connection, slug):
        raise FieldErrors({"sequence": NO_SUCH_COURSE})


def _consent_row(form: SignupForm, origin: consent.Origin, settings: Settings) -> dict[str, Any]:
    return consent.signup_row(
        origin=origin,
        source=form.source,
        version=form.consent_version,
        org_name=settings.org_name,
        sequence_slug=form.sequence or settings.default_sequence,
        first_name=form.first_name,
        timezone=form.timezone,
    )


def _signup_postgresql(
    connection: Connection, form: SignupForm, window: abuse_limits.Window, row: dict[str, Any], limit: int
) -> None:
    """One statement for a new address (see nurture.subscribers.signup_statements); four for one already on
    file, three for a repeat."""
    now = window.now
    offered = form.sequence is None or _course_offered(connection, form.sequence)
    params = sql.new_address_params(window, form.email, row, form.source, now, write=offered)
    hits, subscriber_id = connection.execute(sql.NEW_ADDRESS, params).one()
    if hits is None:
        raise window.refused()
    if not offered:  # after the hit, as ever: a full window answers 429 whatever the course
        raise FieldErrors({"sequence": NO_SUCH_COURSE})
    if subscriber_id is not None:
        return  # a new address: subscriber, consent record, confirmation and event are written
    course = row["sequence_slug"]
    subscriber_id, wanted = _existing_subscriber(connection, form.email, course, limit) or _subscriber(
        connection, form.email, course, limit
    )
    if not wanted:
        return  # a repeat: its confirmation is on its way already
    params = {**sql.ledger_params(row, form.source, now), "c_subscriber_id": subscriber_id}
    connection.execute(sql.LEDGER, params)


def _signup_portable(
    connection: Connection, form: SignupForm, window: abuse_limits.Window, row: dict[str, Any], limit: int
) -> None:
    """SQLite (no data-modifying CTEs): one Core statement per row, the tables' defaults filling in."""
    abuse_limits.count_hit(connection, window)
    if form.sequence is not None:
        _check_course(connection, form.sequence)
    subscriber_id, wanted = _subscriber(connection, form.email, row["sequence_slug"], limit)
    if not wanted:
        return  # a repeat: its confirmation is on its way already
    consent_id = consent.insert_signup(connection, subscriber_id, row)
    confirmation.queue_confirmation(connection, subscriber_id, consent_id)
    events.insert_now(connection, "signup", subscriber_id=subscriber_id, source=form.source)


def _signup(connection: Connection, form: SignupForm, origin: consent.Origin, settings: Settings) -> None:
    # Core statements built once at import (nurture.subscribers.signup_statements): no ORM objects, no
    # flushes.
    window = abuse_limits.Window.of(
        abuse_limits.client_key("signup", origin.ip, settings.secret_key),
        limit=settings.limits.signup_ip_limit,
        window_seconds=settings.limits.signup_ip_window_seconds,
    )
    row = _consent_row(form, origin, settings)
    if connection.dialect.name == "postgresql":
        _signup_postgresql(connection, form, window, row, settings.limits.confirm_daily_limit)
    else:
        _signup_portable(connection, form, window, row, settings.limits.confirm_daily_limit)


# --- confirming -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confirmation:
    already: bool  # this signup had been confirmed before: nothing changed
    subscriber_public_id: str
    sequence_name: str | None


def find_signup(session: Session, public_id: str) -> ConsentRecord | None:
    return session.scalar(select(ConsentRecord).where(ConsentRecord.public_id == public_id))


def confirm(session: Session, public_id: str, origin: consent.Origin) -> Confirmation | None:
    """Activate the subscriber and enroll them in the signup's course; None for an unknown signup.

    Idempotent: the subscriber row is locked first and the signup re-read under the lock, so two
    concurrent confirmations of one link enroll once.
    """
    record = find_signup(session, public_id)
    if record is None:
        return None
    subscriber = session.scalar(
        select(Subscriber).where(Subscriber.id == record.subscriber_id).with_for_update()
    )
    session.refresh(record)
    assert subscriber is not None  # consent records cascade with their subscriber
    sequence = get_sequence(session, record.sequence_slug) if record.sequence_slug else None
    name = sequence.name if sequence is not None else None
    if record.confirmed_at is not None:
        return Confirmation(True, subscriber.public_id, name)
    consent.mark_confirmed(record, origin)
    reactivate(session, subscriber)
    update_profile(
        session,
        subscriber,
        record.first_name or subscriber.first_name,
        record.timezone or subscriber.timezone,
    )
    events.record(session, "confirmed", subscriber_id=subscriber.id, consent=record.consent_version)
    if sequence is None:
        events.record(session, "enroll-skipped", subscriber_id=subscriber.id, reason="unknown-sequence")
    else:
        try:
            with session.begin_nested():
                # The sequence's re-entry policy decides (and logs) what a repeat signup does.
                enroll_on_signup(session, subscriber, sequence)
        except EnrollmentError as exc:  # archived or never synced: confirmed all the same
            events.record(session, "enroll-skipped", subscriber_id=subscriber.id, reason=str(exc))
    return Confirmation(False, subscriber.public_id, name)
