"""Bulk staff operations on subscribers: enroll existing ones, import and export CSV, erase (GDPR).

Anyone unsubscribed, unconfirmed, suppressed (including the anonymous hash left by an erasure) or already
enrolled is skipped and counted, never enrolled or re-added.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Table, exists, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from nurture.core import clock
from nurture.core.addresses import InvalidInput, normalise_email
from nurture.core.db import among, on_postgresql, session_factory, transaction
from nurture.models import (
    ConsentRecord,
    Delivery,
    DeliveryStatus,
    Enrollment,
    Event,
    Sequence,
    SequenceStatus,
    SequenceVersion,
    Subscriber,
    SubscriberStatus,
)
from nurture.sequences import timetable
from nurture.staff.accounts import Actor, audit
from nurture.subscribers.import_files import GoodRow, ImportError_, ImportReport, read_csv
from nurture.subscribers.suppression import suppressed_among

CHUNK = 500
# Whose clock and calendar a timetable follows: (IANA zone, holiday country), either unknown.
Clock = tuple[str | None, str | None]


def enroll_existing(
    session: Session,
    sequence: Sequence,
    *,
    emails: list[str] | None = None,
    start_at: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, object]:
    """Enroll the given addresses (or, with ``emails=None``, every active subscriber) in ``sequence``;
    ``progress(n)`` hears of each chunk of candidates handled (a browser's progress bar,
    nurture.staff.jobs)."""
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
    enrolled_ids: set[int] = set()
    if emails is not None:  # (everyone active who is not enrolled was the query above)
        for start in range(0, len(candidates), CHUNK):
            enrolled_ids.update(
                session.scalars(
                    select(Enrollment.subscriber_id).where(
                        Enrollment.sequence_id == sequence.id,
                        Enrollment.subscriber_id.in_([s.id for s in candidates[start : start + CHUNK]]),
                    )
                )
            )
    to_enroll: list[tuple[int, Clock]] = []
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
            to_enroll.append((subscriber.id, _clock_of(subscriber)))
            counts["enrolled"] += 1
    skipped = len(candidates) - len(to_enroll)
    if progress is not None and skipped:
        progress(skipped)  # those are decided already: only the enrolments take time
    for start in range(0, len(to_enroll), IMPORT_CHUNK):  # bounded lookups, whatever the count
        chunk = to_enroll[start : start + IMPORT_CHUNK]
        _bulk_enroll(session, sequence, chunk, at=start_at, record_events=True)
        if progress is not None:
            progress(len(chunk))
    keys = ("enrolled", "already_enrolled", "unsubscribed", "suppressed", "not_confirmed", "not_found")
    return {**{key: counts[key] for key in keys}, "invalid": invalid}


def addresses_in(data: bytes) -> list[str]:
    """The addresses in an uploaded file: a CSV's email column (refused rows too, as typed), or, for a file
    that is not a CSV with a header, one address a line. enroll_existing validates each."""
    try:
        rows, errors = read_csv(data)
    except ImportError_:
        text = data.decode("utf-8-sig", errors="replace")
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [r.email for r in rows] + [e.email for e in errors if e.email]


IMPORT_CHUNK = 5000
IMPORT_WORKERS = 2  # connections writing chunks at once, on PostgreSQL


def enroll_and_audit(
    session: Session,
    actor: Actor | None,
    sequence: Sequence,
    *,
    emails: list[str] | None,
    start_at: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """``enroll_existing`` and its audit row, in the caller's transaction: what the staff UI, the API and the
    CLI (actor None) all run. The audit keeps how many addresses were refused, not the addresses."""
    counts = enroll_existing(session, sequence, emails=emails, start_at=start_at, progress=progress)
    after = {k: v for k, v in counts.items() if k != "invalid"}
    after.update(
        all_active=emails is None,
        start_at=start_at.isoformat() if start_at else None,
        invalid=len(counts["invalid"]),  # type: ignore[arg-type]
    )
    audit(session, actor, "sequence.enroll", f"sequence:{sequence.slug}", None, after)
    return counts


def import_and_audit(
    actor: Actor | None,
    rows: list[GoodRow],
    report: ImportReport,
    slug: str,
    consent_source: str,
    *,
    progress: Callable[[int], None] | None = None,
    file_name: str | None = None,
) -> ImportReport:
    """Import the parsed rows and audit it: what the staff UI, the API and the CLI (actor None) all run."""
    import_rows(session_factory(), rows, slug, consent_source, report, progress=progress)
    after: dict[str, Any] = {
        "imported": report.imported,
        "enrolled_existing": report.enrolled_existing,
        "already_enrolled": report.already_enrolled,
        "skipped": dict(report.skipped),
        "errors": len(report.errors),
        "consent_source": consent_source,
    }
    if file_name is not None:
        after["file"] = file_name
    with transaction() as session:
        audit(session, actor, "subscribers.import", f"sequence:{slug}", None, after)
    return report


def import_rows(
    factory: sessionmaker[Session],
    rows: list[GoodRow],
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
        if sequence.status in (SequenceStatus.archived, SequenceStatus.draft):
            raise ImportError_(f"sequence {sequence_slug!r} is {sequence.status}")
        # PostgreSQL spends most of an import on its own work (foreign-key checks, index updates) in one
        # backend per connection: chunks on two connections use both cores. Chunks never share an address
        # (duplicates were dropped while parsing), so they cannot wait on each other's rows.
        workers = IMPORT_WORKERS if on_postgresql(session) else 1

    def one(chunk: list[GoodRow]) -> ImportReport:
        part = ImportReport()
        with transaction(factory) as session:
            sequence = session.scalar(select(Sequence).where(Sequence.slug == sequence_slug))
            assert sequence is not None
            _import_chunk(session, sequence, chunk, source, part)
        return part

    chunks = iter([rows[start : start + IMPORT_CHUNK] for start in range(0, len(rows), IMPORT_CHUNK)])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # At most ``workers`` chunks in flight, so a failure stops the import at once: nothing after it
        # starts, and what is running finishes whole (each chunk is its own transaction).
        in_flight: deque[tuple[list[GoodRow], Future[ImportReport]]] = deque()

        def submit_next() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                in_flight.append((chunk, pool.submit(one, chunk)))

        for _ in range(workers):
            submit_next()
        while in_flight:
            chunk, future = in_flight.popleft()
            part = future.result()
            report.imported += part.imported
            report.enrolled_existing += part.enrolled_existing
            report.already_enrolled += part.already_enrolled
            report.skipped.update(part.skipped)
            if progress is not None:
                progress(len(chunk))
            submit_next()
    return report


def _import_chunk(
    session: Session, sequence: Sequence, chunk: list[GoodRow], source: str, report: ImportReport
) -> None:
    emails = [row.email for row in chunk]
    existing = {
        s.email: s
        for s in session.scalars(select(Subscriber).where(among(session, Subscriber.email, emails)))
    }
    suppressed = suppressed_among(session, emails)
    enrolled = (
        set(
            session.scalars(
                select(Enrollment.subscriber_id).where(
                    Enrollment.sequence_id == sequence.id,
                    among(session, Enrollment.subscriber_id, [s.id for s in existing.values()]),
                )
            )
        )
        if existing
        else set()
    )
    new_rows: list[GoodRow] = []
    existing_to_enroll: list[tuple[int, str | None]] = []
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
        elif subscriber.id in enrolled:
            report.already_enrolled += 1
        else:
            existing_to_enroll.append((subscriber.id, _clock_of(subscriber)))
            report.enrolled_existing += 1
    _bulk_enroll(session, sequence, existing_to_enroll, record_events=True)
    if not new_rows:
        return
    now = clock.now()
    # Every value given and no RETURNING, so PostgreSQL can take the rows by COPY; ids are read back by the
    # unique address instead.
    _write_rows(
        session,
        Subscriber.__table__,
        (
            "public_id",
            "email",
            "first_name",
            "timezone",
            "status",
            "confirmed_at",
            "attributes",
            "created_at",
        ),
        [
            (
                secrets.token_urlsafe(16),
                row.email,
                row.first_name,
                row.timezone,
                str(SubscriberStatus.active),
                now,
                {**row.attributes, "source": "import"},
                now,
            )
            for row in new_rows
        ],
    )
    by_email = dict(
        session.execute(
            select(Subscriber.email, Subscriber.id).where(
                among(session, Subscriber.email, [r.email for r in new_rows])
            )
        ).all()
    )
    ids = [by_email[row.email] for row in new_rows]
    consent_text = f"Imported by staff; consent obtained: {source}"
    if on_postgresql(session):
        clocks = [(row.timezone, timetable.country_of(row.attributes)) for row in new_rows]
        _dependents_in_database(session, sequence, ids, clocks, consent_text, now)
        report.imported += len(ids)
        return
    _write_rows(
        session,
        ConsentRecord.__table__,
        (
            "public_id",
            "subscriber_id",
            "source",
            "consent_version",
            "consent_text",
            "confirmed_at",
            "created_at",
        ),
        [(secrets.token_urlsafe(16), sid, "import", "import", consent_text, now, now) for sid in ids],
    )
    _bulk_enroll(
        session,
        sequence,
        [
            (sid, (row.timezone, timetable.country_of(row.attributes)))
            for sid, row in zip(ids, new_rows, strict=True)
        ],
    )
    _write_rows(
        session,
        Event.__table__,
        ("kind", "subscriber_id", "detail", "created_at"),
        [("subscribed", sid, {"source": "import"}, now) for sid in ids],
    )
    report.imported += len(ids)


def _version_and_anchor(
    sequence: Sequence, at: datetime | None = None
) -> tuple[SequenceVersion, datetime, str]:
    """The version to pin, when the timetable starts (``at``, default now), the deliveries' first status."""
    version = sequence.current_version
    if version is None:
        raise ImportError_(f"sequence {sequence.slug!r} has no version: run `nurture sequences sync`")
    anchor = at or clock.now()
    if sequence.status == SequenceStatus.scheduled and sequence.activate_at and anchor < sequence.activate_at:
        anchor = sequence.activate_at  # signups before a scheduled start begin at activation
    initial = str(DeliveryStatus.held if sequence.status == SequenceStatus.paused else DeliveryStatus.pending)
    return version, anchor, initial


def _clock_of(subscriber: Subscriber) -> Clock:
    return subscriber.timezone, timetable.country_of(subscriber.attributes)


def _timetables(
    version: SequenceVersion, anchor: datetime, clocks: list[Clock]
) -> tuple[list[int], list[tuple[int, int, datetime]]]:
    """The schedule computed once per (time zone, holiday country) (everyone sharing both shares one
    timetable): each person's group number, and the rows (group number, step id, due time)."""
    steps = list(version.steps)
    rules = timetable.Rules.of_version(version)
    numbers: dict[Clock, int] = {}
    rows: list[tuple[int, int, datetime]] = []
    people: list[int] = []
    for clock_key in clocks:
        number = numbers.get(clock_key)
        if number is None:
            number = numbers[clock_key] = len(numbers)
            due_times = rules.for_subscriber(*clock_key).due_times(anchor, steps)
            rows.extend((number, step.id, due) for step, due in zip(steps, due_times, strict=True))
        people.append(number)
    return people, rows


def _dependents_in_database(
    session: Session,
    sequence: Sequence,
    ids: list[int],
    clocks: list[Clock],
    consent_text: str,
    now: datetime,
) -> None:
    """PostgreSQL: the consent records, events, enrollments and deliveries of new subscribers, generated by
    the database from a few arrays (INSERT ... SELECT unnest), so 800,000 delivery rows never cross the
    wire one by one or pass through Python objects."""
    version, anchor, initial = _version_and_anchor(sequence)
    people, table = _timetables(version, anchor, clocks)
    json_type = Event.__table__.c.detail.type.compile(dialect=session.get_bind().dialect)
    session.execute(
        text(
            "INSERT INTO consent_records (public_id, subscriber_id, source, consent_version, consent_text, "
            "confirmed_at, created_at) SELECT p, s, 'import', 'import', :consent_text, :now, :now "
            "FROM unnest(CAST(:ids AS integer[]), CAST(:public_ids AS text[])) AS t(s, p)"
        ),
        {
            "ids": ids,
            "public_ids": [secrets.token_urlsafe(16) for _ in ids],
            "consent_text": consent_text,
            "now": now,
        },
    )
    session.execute(
        text(
            "INSERT INTO events (kind, subscriber_id, detail, created_at) "
            f"SELECT 'subscribed', s, CAST(:detail AS {json_type}), :now "
            "FROM unnest(CAST(:ids AS integer[])) AS t(s)"
        ),
        {"ids": ids, "detail": json.dumps({"source": "import"}), "now": now},
    )
    session.execute(
        text(
            """
            WITH e AS (
                INSERT INTO enrollments (subscriber_id, sequence_id, version_id, status, enrolled_at)
                SELECT s, :sequence_id, :version_id, 'active', :anchor
                FROM unnest(CAST(:ids AS integer[])) AS t(s)
                RETURNING id, subscriber_id
            )
            INSERT INTO deliveries
                (enrollment_id, step_id, subscriber_id, due_at, status, attempts, created_at)
            SELECT e.id, tt.step_id, e.subscriber_id, tt.due_at, :status, 0, :now
            FROM e
            JOIN unnest(CAST(:ids AS integer[]), CAST(:zones AS integer[])) AS p(s, z)
                ON p.s = e.subscriber_id
            JOIN unnest(
                CAST(:tt_zone AS integer[]), CAST(:tt_step AS integer[]), CAST(:tt_due AS timestamptz[])
            ) AS tt(z, step_id, due_at) ON tt.z = p.z
            """
        ),
        {
            "sequence_id": sequence.id,
            "version_id": version.id,
            "anchor": anchor,
            "now": now,
            "status": initial,
            "ids": ids,
            "zones": people,
            "tt_zone": [row[0] for row in table],
            "tt_step": [row[1] for row in table],
            "tt_due": [row[2] for row in table],
        },
    )


def _write_rows(
    session: Session, table: Table, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """Insert many rows in the session's transaction: COPY on PostgreSQL (an executemany sends one statement
    per row there, ten times slower), a Core executemany elsewhere. Values are given as the database takes
    them: aware UTC datetimes, plain strings; dicts are JSON."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    json_at = [i for i, name in enumerate(columns) if isinstance(table.c[name].type, JSON)]
    driver = connection.connection.driver_connection
    assert driver is not None
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            if json_at:
                row = tuple(json.dumps(v) if i in json_at else v for i, v in enumerate(row))
            copy.write_row(row)


def _bulk_enroll(
    session: Session,
    sequence: Sequence,
    people: list[tuple[int, Clock]],
    *,
    at: datetime | None = None,
    record_events: bool = False,
) -> None:
    """enroll() for many subscribers (none of them in this sequence yet) at once: the same due times and
    events, a few bulk writes instead of thousands of ORM objects."""
    if not people:
        return
    version, anchor, initial = _version_and_anchor(sequence, at)
    now = clock.now()
    _write_rows(
        session,
        Enrollment.__table__,
        ("subscriber_id", "sequence_id", "version_id", "status", "enrolled_at"),
        [(sid, sequence.id, version.id, "active", anchor) for sid, _ in people],
    )
    # Nobody had an enrollment in this sequence before: the one found is the one just written.
    enrolled = dict(
        session.execute(
            select(Enrollment.subscriber_id, Enrollment.id).where(
                Enrollment.sequence_id == sequence.id,
                among(session, Enrollment.subscriber_id, [sid for sid, _ in people]),
            )
        ).all()
    )
    zones, table = _timetables(version, anchor, [clock_key for _, clock_key in people])
    by_zone: dict[int, list[tuple[int, datetime]]] = {}
    for number, step_id, due in table:
        by_zone.setdefault(number, []).append((step_id, due))
    _write_rows(
        session,
        Delivery.__table__,
        ("enrollment_id", "step_id", "subscriber_id", "due_at", "status", "attempts", "created_at"),
        [
            (enrolled[sid], step_id, sid, due, initial, 0, now)
            for (sid, _), number in zip(people, zones, strict=True)
            for step_id, due in by_zone[number]
        ],
    )
    if record_events:
        # The same event enroll() records, so the explain log reads alike however someone was enrolled.
        detail = {"sequence": sequence.slug, "version": version.number}
        _write_rows(
            session,
            Event.__table__,
            ("kind", "subscriber_id", "detail", "created_at"),
            [("enrolled", sid, {**detail, "enrollment_id": enrolled[sid]}, now) for sid, _ in people],
        )


# --- export and erasure ---------------------------------------------------------------------------------
