"""Bulk staff operations on subscribers: enroll existing ones, import and export CSV, erase (GDPR).

Anyone unsubscribed, unconfirmed, suppressed (including the anonymous hash left by an erasure) or already
enrolled is skipped and counted, never enrolled or re-added.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, insert, or_, select
from sqlalchemy.orm import Session, sessionmaker

from nurture import clock
from nurture.addresses import InvalidInput, clean_name, normalise_email
from nurture.catalog import window_of
from nurture.db import transaction
from nurture.enrollment import enroll
from nurture.models import (
    ConsentRecord,
    Delivery,
    DeliveryStatus,
    Enrollment,
    Event,
    Sequence,
    SequenceStatus,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from nurture.schedule import ScheduleError, resolve_zone, schedule_steps, zone

CHUNK = 500


def erased_key(email: str) -> str:
    """The anonymous suppression left when an address is erased: enough to refuse it, not to read it."""
    return "sha256:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()


def suppressed_among(session: Session, emails: Iterable[str]) -> set[str]:
    """Which of these (normalised) addresses are suppressed, by plain address or by erasure hash."""
    wanted = list(emails)
    found: set[str] = set()
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        keys = {address: erased_key(address) for address in chunk}
        rows = set(
            session.scalars(select(Suppression.email).where(Suppression.email.in_([*chunk, *keys.values()])))
        )
        found |= {address for address in chunk if address in rows or keys[address] in rows}
    return found


def enroll_existing(
    session: Session,
    sequence: Sequence,
    *,
    emails: list[str] | None = None,
    start_at: datetime | None = None,
) -> dict[str, object]:
    """Enroll the given addresses (or, with ``emails=None``, every active subscriber) in ``sequence``."""
    if sequence.status in (SequenceStatus.archived, SequenceStatus.draft):
        raise ValueError(f"sequence {sequence.slug!r} is {sequence.status}")
    counts: Counter[str] = Counter()
    invalid: list[str] = []
    if emails is None:
        candidates = list(
            session.scalars(
                select(Subscriber)
                .where(
                    Subscriber.status == SubscriberStatus.active,
                    ~exists().where(
                        Enrollment.subscriber_id == Subscriber.id, Enrollment.sequence_id == sequence.id
                    ),
                )
                .order_by(Subscriber.id)
            )
        )
    else:
        addresses: list[str] = []
        for raw in emails:
            try:
                addresses.append(normalise_email(raw))
            except InvalidInput:
                invalid.append(raw[:254])
        addresses = list(dict.fromkeys(addresses))  # duplicates count once
        candidates = []
        for start in range(0, len(addresses), CHUNK):
            chunk = addresses[start : start + CHUNK]
            found = {
                s.email: s for s in session.scalars(select(Subscriber).where(Subscriber.email.in_(chunk)))
            }
            counts["not_found"] += sum(1 for address in chunk if address not in found)
            candidates.extend(found[address] for address in chunk if address in found)
    suppressed = suppressed_among(session, [s.email for s in candidates])
    enrolled_ids = (
        set(
            session.scalars(
                select(Enrollment.subscriber_id).where(
                    Enrollment.sequence_id == sequence.id,
                    Enrollment.subscriber_id.in_([s.id for s in candidates]),
                )
            )
        )
        if candidates
        else set()
    )
    for subscriber in candidates:
        if subscriber.status == SubscriberStatus.unsubscribed:
            counts["unsubscribed"] += 1
        elif subscriber.status != SubscriberStatus.active:
            counts["not_confirmed"] += 1
        elif subscriber.email in suppressed:
            counts["suppressed"] += 1
        elif subscriber.id in enrolled_ids:
            counts["already_enrolled"] += 1
        else:
            enroll(session, subscriber, sequence, at=start_at)
            counts["enrolled"] += 1
    keys = ("enrolled", "already_enrolled", "unsubscribed", "suppressed", "not_confirmed", "not_found")
    return {**{key: counts[key] for key in keys}, "invalid": invalid}


# --- CSV import -----------------------------------------------------------------------------------------

REQUIRED_COLUMNS = ("email",)
KNOWN_COLUMNS = ("email", "first_name", "timezone")
IMPORT_CHUNK = 5000
MAX_ATTRIBUTE_LENGTH = 500


@dataclass(frozen=True)
class RowError:
    line: int
    email: str
    message: str


@dataclass
class ImportReport:
    imported: int = 0  # new subscribers, enrolled
    enrolled_existing: int = 0  # already subscribed and active: enrolled if they were not
    already_enrolled: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # unsubscribed, suppressed, not-confirmed
    errors: list[RowError] = field(default_factory=list)


@dataclass(frozen=True)
class _Good:
    line: int
    email: str
    first_name: str | None
    timezone: str | None
    attributes: dict[str, str]


class ImportError_(ValueError):
    """The file as a whole cannot be imported (not CSV, no email column); nothing was written."""


def read_csv(data: bytes) -> tuple[list[_Good], list[RowError]]:
    """Parse and validate every row; a bad row is reported and left out whole. BOM and CRLF are fine."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportError_("the file is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ImportError_("the file is empty") from None
    except csv.Error as exc:
        raise ImportError_(f"not a CSV file: {exc}") from None
    if "email" not in header:
        raise ImportError_(f"the header row needs an 'email' column; found {', '.join(header) or 'nothing'}")
    if len(set(header)) != len(header):
        raise ImportError_("the header row names a column twice")
    good: list[_Good] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                errors.append(RowError(line, "", f"has {len(row)} fields, the header has {len(header)}"))
                continue
            values = dict(zip(header, row, strict=True))
            raw_email = values["email"]
            try:
                address = normalise_email(raw_email)
                name = clean_name(values.get("first_name") or None)
                tz = (values.get("timezone") or "").strip() or None
                if tz:
                    try:
                        zone(tz)
                    except ScheduleError as exc:
                        raise InvalidInput("timezone", str(exc)) from None
                attributes = {k: v.strip() for k, v in values.items() if k not in KNOWN_COLUMNS and v.strip()}
                if any(len(v) > MAX_ATTRIBUTE_LENGTH for v in attributes.values()):
                    raise InvalidInput(
                        "attributes", f"values must be at most {MAX_ATTRIBUTE_LENGTH} characters"
                    )
            except InvalidInput as exc:
                errors.append(RowError(line, raw_email[:254], str(exc)))
                continue
            if address in seen:
                errors.append(RowError(line, address, f"duplicate of line {seen[address]}"))
                continue
            seen[address] = line
            good.append(_Good(line, address, name, tz, attributes))
    except csv.Error as exc:
        errors.append(RowError(reader.line_num, "", f"unreadable CSV: {exc}"))
    return good, errors


def import_rows(
    factory: sessionmaker[Session],
    rows: list[_Good],
    sequence_slug: str,
    consent_source: str,
    report: ImportReport,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Write the valid rows in chunks, each chunk one transaction (subscriber, consent, enrollment and
    deliveries together), with bulk INSERTs; never re-adds anyone unsubscribed, suppressed or erased."""
    source = consent_source.strip()
    if not source or len(source) > 100:
        raise ImportError_("--consent-source must be 1 to 100 characters: where these people gave consent")
    with transaction(factory) as session:
        sequence = session.scalar(select(Sequence).where(Sequence.slug == sequence_slug))
        if sequence is None:
            raise ImportError_(
                f"no sequence {sequence_slug!r}: run `nurture sequences sync` or check the slug"
            )
        if sequence.status == SequenceStatus.archived:
            raise ImportError_(f"sequence {sequence_slug!r} is archived")
    for start in range(0, len(rows), IMPORT_CHUNK):
        chunk = rows[start : start + IMPORT_CHUNK]
        with transaction(factory) as session:
            sequence = session.scalar(select(Sequence).where(Sequence.slug == sequence_slug))
            assert sequence is not None
            _import_chunk(session, sequence, chunk, source, report)
        if progress is not None:
            progress(len(chunk))
    return report


def _import_chunk(
    session: Session, sequence: Sequence, chunk: list[_Good], source: str, report: ImportReport
) -> None:
    emails = [row.email for row in chunk]
    existing = {s.email: s for s in session.scalars(select(Subscriber).where(Subscriber.email.in_(emails)))}
    suppressed = suppressed_among(session, emails)
    new_rows: list[_Good] = []
    for row in chunk:
        if row.email in suppressed:
            report.skipped["suppressed"] += 1
            continue
        subscriber = existing.get(row.email)
        if subscriber is None:
            new_rows.append(row)
        elif subscriber.status == SubscriberStatus.unsubscribed:
            report.skipped["unsubscribed"] += 1  # they left: only they can sign up again
        elif subscriber.status != SubscriberStatus.active:
            report.skipped["not-confirmed"] += 1
        else:
            before = session.scalar(
                select(Enrollment.id).where(
                    Enrollment.subscriber_id == subscriber.id, Enrollment.sequence_id == sequence.id
                )
            )
            if before is not None:
                report.already_enrolled += 1
            else:
                enroll(session, subscriber, sequence)
                report.enrolled_existing += 1
    if not new_rows:
        return
    now = clock.now()
    # Core executemany with every value given (no RETURNING): the ORM's bulk path with RETURNING goes row by
    # row on SQLite and splices results quadratically. Ids are read back by the unique address instead.
    session.execute(
        insert(Subscriber.__table__),
        [
            {
                "public_id": secrets.token_urlsafe(16),
                "email": row.email,
                "first_name": row.first_name,
                "timezone": row.timezone,
                "status": SubscriberStatus.active,
                "confirmed_at": now,
                "attributes": {**row.attributes, "source": "import"},
                "created_at": now,
            }
            for row in new_rows
        ],
    )
    by_email = dict(
        session.execute(
            select(Subscriber.email, Subscriber.id).where(Subscriber.email.in_([r.email for r in new_rows]))
        ).all()
    )
    ids = [by_email[row.email] for row in new_rows]
    session.execute(
        insert(ConsentRecord.__table__),
        [
            {
                "public_id": secrets.token_urlsafe(16),
                "subscriber_id": subscriber_id,
                "source": "import",
                "consent_version": "import",
                "consent_text": f"Imported by staff; consent obtained: {source}",
                "confirmed_at": now,
                "created_at": now,
            }
            for subscriber_id in ids
        ],
    )
    _bulk_enroll(session, sequence, [(sid, row.timezone) for sid, row in zip(ids, new_rows, strict=True)])
    session.execute(
        insert(Event.__table__),
        [
            {"kind": "subscribed", "subscriber_id": sid, "detail": {"source": "import"}, "created_at": now}
            for sid in ids
        ],
    )
    report.imported += len(ids)


def _bulk_enroll(session: Session, sequence: Sequence, people: list[tuple[int, str | None]]) -> None:
    """enroll() for many new subscribers at once: the same due times, two INSERTs instead of thousands."""
    version = sequence.current_version
    if version is None:
        raise ImportError_(f"sequence {sequence.slug!r} has no version: run `nurture sequences sync`")
    anchor = clock.now()
    if sequence.status == SequenceStatus.scheduled and sequence.activate_at and anchor < sequence.activate_at:
        anchor = sequence.activate_at
    initial = DeliveryStatus.held if sequence.status == SequenceStatus.paused else DeliveryStatus.pending
    steps = list(version.steps)
    delays = [timedelta(seconds=s.delay_seconds) for s in steps]
    window = window_of(version)
    session.execute(
        insert(Enrollment.__table__),
        [
            {
                "subscriber_id": sid,
                "sequence_id": sequence.id,
                "version_id": version.id,
                "status": "active",
                "enrolled_at": anchor,
            }
            for sid, _ in people
        ],
    )
    # New subscribers have exactly one enrollment: this one.
    enrolled = dict(
        session.execute(
            select(Enrollment.subscriber_id, Enrollment.id).where(
                Enrollment.sequence_id == sequence.id,
                Enrollment.subscriber_id.in_([sid for sid, _ in people]),
            )
        ).all()
    )
    enrollment_ids = [enrolled[sid] for sid, _ in people]
    timetables: dict[str, list[datetime]] = {}  # per zone: everyone in one zone shares one timetable
    deliveries = []
    for enrollment_id, (sid, tz_name) in zip(enrollment_ids, people, strict=True):
        tz = resolve_zone(tz_name, version.timezone)
        if tz.key not in timetables:
            timetables[tz.key] = schedule_steps(anchor, delays, window, tz)
        deliveries.extend(
            {
                "enrollment_id": enrollment_id,
                "step_id": step.id,
                "subscriber_id": sid,
                "due_at": due,
                "status": initial,
                "attempts": 0,
                "created_at": anchor,
            }
            for step, due in zip(steps, timetables[tz.key], strict=True)
        )
    session.execute(insert(Delivery.__table__), deliveries)


# --- export and erasure ---------------------------------------------------------------------------------

EXPORT_COLUMNS = (
    "email",
    "first_name",
    "timezone",
    "status",
    "created_at",
    "confirmed_at",
    "unsubscribed_at",
)


def export_csv(session: Session, handle: Any) -> int:
    """Every subscriber as CSV (attributes as one JSON column), streamed; returns the row count."""
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow([*EXPORT_COLUMNS, "attributes"])
    count = 0
    for subscriber in session.scalars(
        select(Subscriber).order_by(Subscriber.id).execution_options(yield_per=1000)
    ):
        writer.writerow(
            [
                *(
                    (value.isoformat() if isinstance(value, datetime) else (value or ""))
                    for value in (getattr(subscriber, column) for column in EXPORT_COLUMNS)
                ),
                json.dumps(subscriber.attributes or {}, sort_keys=True),
            ]
        )
        count += 1
    return count


def erase(session: Session, email: str) -> bool:
    """GDPR erasure: the subscriber and everything about them (enrollments, deliveries, events, consent,
    outbox) go; an anonymous suppression hash stays so no import or staff action re-adds the address.
    Returns False when there was no such subscriber (the hash is kept either way)."""
    address = email.strip().lower()
    key = erased_key(address)
    if session.scalar(select(Suppression.id).where(Suppression.email == key)) is None:
        session.add(Suppression(email=key, reason="erased", detail=None))
    # A plain-address suppression is personal data too; the hash now does its job.
    session.execute(delete(Suppression).where(Suppression.email == address))
    subscriber_id = session.scalar(select(Subscriber.id).where(Subscriber.email == address))
    if subscriber_id is None:
        session.flush()
        return False
    delivery_ids = select(Delivery.id).where(Delivery.subscriber_id == subscriber_id).scalar_subquery()
    session.execute(
        delete(Event)
        .where(or_(Event.subscriber_id == subscriber_id, Event.delivery_id.in_(delivery_ids)))
        .execution_options(synchronize_session=False)
    )
    # The database cascades the rest (ON DELETE CASCADE on every table that names the subscriber).
    session.execute(
        delete(Subscriber).where(Subscriber.id == subscriber_id).execution_options(synchronize_session=False)
    )
    session.flush()
    return True
