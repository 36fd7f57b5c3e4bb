"""The importer's guarantees under the fast paths: a chunk that fails leaves nothing half-written, the cached
address check answers exactly as the full one, and the CLI shows no progress bar when not on a terminal."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from nurture.cli import main
from nurture.core.addresses import InvalidInput, normalise_email
from nurture.core.db import transaction
from nurture.models import AuditLog, ConsentRecord, Delivery, Enrollment, Event, Subscriber
from nurture.subscribers import import_files, importer


def test_a_failed_chunk_writes_nothing_of_itself_and_earlier_chunks_stay_whole(world, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(importer, "IMPORT_CHUNK", 3)
    monkeypatch.setattr(importer, "IMPORT_WORKERS", 1)
    real = importer._timetables
    calls = {"n": 0}

    def fail_on_second_chunk(*args, **kwargs):  # type: ignore[no-untyped-def]
        # Fault injection after the chunk's subscribers are written, before their enrollments.
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("the database went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(importer, "_timetables", fail_on_second_chunk)
    rows, errors = importer.read_csv(b"email\n" + b"".join(b"p%d@example.com\n" % i for i in range(9)))
    assert not errors
    report = importer.ImportReport()
    with pytest.raises(RuntimeError):
        importer.import_rows(world, rows, "course", "webinar", report)
    with transaction(world) as session:
        people = set(session.scalars(select(Subscriber.email)))
        # Every subscriber present is complete: consent, event, enrollment, four deliveries.
        for model, per_person in ((ConsentRecord, 1), (Enrollment, 1), (Delivery, 4), (Event, 1)):
            assert session.scalar(select(func.count()).select_from(model)) == per_person * len(people), model
    assert people == {"p0@example.com", "p1@example.com", "p2@example.com"}  # chunk 2 whole gone, 3 never ran
    assert report.imported == 3


ADDRESSES = [
    "Ana@Example.com", " bo@example.com ", "x@localhost", "x@foo.test", "a..b@example.com", ".a@example.com",
    "a@-ex.com", "a@ex", "NOT-AN-EMAIL", "a@b@c.com", "\nfoo@bar.com", "tab\t@example.com", "ü@example.com",
    "a@bücher.de", "a+tag@sub.example.co.uk", "o'brien@example.ie", '"quoted"@example.com',
    "a" * 65 + "@example.com", "b" * 250 + "@example.com", "user@[192.0.2.1]", "user@example.com.",
    "x@EXAMPLE.COM",
]  # fmt: skip


def test_the_cached_address_check_answers_as_the_full_one() -> None:
    cached = import_files._Addresses()

    def outcome(check, raw: str) -> str:  # type: ignore[no-untyped-def]
        try:
            return check(raw)
        except InvalidInput as exc:
            return f"error: {exc}"

    for _ in range(2):  # the second round answers from the domain cache
        for raw in ADDRESSES:
            assert outcome(cached.normalise, raw) == outcome(normalise_email, raw), raw


def test_cli_import_has_no_progress_bar_when_piped_and_is_audited(world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "people.csv"
    path.write_text("email\nana@example.com\n")
    result = CliRunner().invoke(
        main, ["subscribers", "import", str(path), "--sequence", "course", "--consent-source", "fair 2026"]
    )
    assert result.exit_code == 0 and "importing" not in result.output and "imported 1" in result.output
    with transaction(world) as session:
        entry = session.scalar(select(AuditLog))
    assert (entry.action, entry.actor, entry.after["imported"]) == ("subscribers.import", "cli", 1)


def test_enrolling_existing_in_bulk_matches_enrolling_one_by_one(world) -> None:  # type: ignore[no-untyped-def]
    """The bulk path (import, enroll existing) writes the same due times and event as enroll()."""
    from datetime import UTC, datetime

    from nurture.core import clock
    from nurture.models import Sequence
    from nurture.subscribers.enrollment import add_subscriber, enroll

    start = datetime(2026, 3, 6, 22, 30, tzinfo=UTC)  # a Friday evening: the window pushes to Monday
    with clock.frozen(datetime(2026, 3, 2, 15, 0, tzinfo=UTC)), transaction(world) as session:
        one, _ = add_subscriber(session, "one@example.com", timezone="America/Chicago")
        add_subscriber(session, "bulk@example.com", timezone="America/Chicago")
        course = session.scalar(select(Sequence).where(Sequence.slug == "course"))
        enroll(session, one, course, at=start)
        counts = importer.enroll_existing(session, course, emails=["bulk@example.com"], start_at=start)
    assert counts["enrolled"] == 1
    with transaction(world) as session:
        due = {
            email: session.scalars(
                select(Delivery.due_at)
                .join(Subscriber)
                .where(Subscriber.email == email)
                .order_by(Delivery.due_at)
            ).all()
            for email in ("one@example.com", "bulk@example.com")
        }
        enrolled_events = session.execute(
            select(Subscriber.email, Event.detail).join(Subscriber).where(Event.kind == "enrolled")
        ).all()
    assert due["bulk@example.com"] == due["one@example.com"] and len(due["one@example.com"]) == 4
    assert sorted((email, detail["sequence"], detail["version"]) for email, detail in enrolled_events) == [
        ("bulk@example.com", "course", 1),
        ("one@example.com", "course", 1),
    ]
    assert {tuple(sorted(detail)) for _, detail in enrolled_events} == {
        ("enrollment_id", "sequence", "version")
    }
