"""The staff CLI: users and tokens, CSV import (with every kind of bad row), export, GDPR erasure."""

from __future__ import annotations

import csv
import time

from click.testing import CliRunner
from sqlalchemy import func, select

from nurture.cli import main
from nurture.core.db import transaction
from nurture.models import (
    ApiToken,
    ConsentRecord,
    Delivery,
    Enrollment,
    Event,
    StaffUser,
    Subscriber,
    Suppression,
)
from nurture.staff.accounts import token_digest, verify_password
from nurture.subscribers.enrollment import add_subscriber, unsubscribe
from tests.support.staff import PASSWORD


def run(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), input=stdin, catch_exceptions=False)


def count(factory, model) -> int:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return session.scalar(select(func.count()).select_from(model))


def test_users_create_reads_the_password_from_stdin_and_token_is_shown_once_stored_hashed(world) -> None:  # type: ignore[no-untyped-def]
    short = run("users", "create", "ed@staff.example.com", "--role", "editor", stdin="short\n")
    assert short.exit_code == 1 and "at least 12" in short.output
    bad_role = run("users", "create", "ed@staff.example.com", "--role", "boss", stdin=PASSWORD + "\n")
    assert bad_role.exit_code == 2
    made = run("users", "create", "Ed@Staff.example.com", "--role", "editor", stdin=PASSWORD + "\r\n")
    assert made.exit_code == 0, made.output
    assert run("users", "create", "ed@staff.example.com", "--role", "admin", stdin=PASSWORD).exit_code == 1
    token = run("users", "token", "ed@staff.example.com").output.strip()
    assert token.startswith("nrt_") and len(token) > 40
    assert run("users", "token", "nobody@staff.example.com").exit_code == 1
    with transaction(world) as session:
        user = session.scalar(select(StaffUser))
        assert user.email == "ed@staff.example.com" and user.role == "editor"
        assert user.password_hash.startswith("$argon2id$") and verify_password(user.password_hash, PASSWORD)
        stored = session.scalar(select(ApiToken.token_hash))
    assert stored == token_digest(token) and token not in stored


def test_import_reports_bad_rows_and_never_readds_suppressed_erased_or_unsubscribed(world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with transaction(world) as session:
        add_subscriber(session, "left@example.com")
        unsubscribe(
            session, session.scalar(select(Subscriber).where(Subscriber.email == "left@example.com")), "t"
        )
        add_subscriber(session, "known@example.com", first_name="Kay")
        session.add(Suppression(email="bounced@example.com", reason="hard-bounce"))
    add_subscriber_then_erase = run("subscribers", "erase", "erased@example.com", "--yes")
    assert add_subscriber_then_erase.exit_code == 0
    rows = [
        "email,first_name,timezone,company",
        "ana@example.com,Ana,Europe/Berlin,Acme",
        "BO@example.com,,,",
        "not-an-email,Zed,,",
        "cy@example.com,Cy,Mars/Olympus,",
        "ana@example.com,Ana again,,",
        "bounced@example.com,B,,",
        "erased@example.com,E,,",
        "left@example.com,L,,",
        "known@example.com,Kay,,",
        "short@example.com,too,few",
        "",
    ]
    path = tmp_path / "people.csv"
    path.write_bytes("\ufeff".encode() + "\r\n".join(rows).encode())
    result = run(
        "subscribers", "import", str(path), "--sequence", "course", "--consent-source", "webinar 2026-02"
    )
    assert result.exit_code == 1, result.output
    assert "line 4: not-an-email" in result.output
    assert "line 5: cy@example.com: timezone" in result.output
    assert "line 6: ana@example.com: duplicate of line 2" in result.output
    assert "line 11: -: has 3 fields" in result.output
    assert (
        "imported 2; existing enrolled 1; already enrolled 0; skipped suppressed 2, unsubscribed 1; errors 4"
        in (result.output)
    )
    with transaction(world) as session:
        people = {s.email: s for s in session.scalars(select(Subscriber))}
        assert set(people) == {"ana@example.com", "bo@example.com", "known@example.com", "left@example.com"}
        ana = people["ana@example.com"]
        assert (ana.first_name, ana.timezone, ana.status) == ("Ana", "Europe/Berlin", "active")
        assert ana.attributes == {"company": "Acme", "source": "import"}
        consent = session.scalar(select(ConsentRecord).where(ConsentRecord.subscriber_id == ana.id))
        assert "webinar 2026-02" in consent.consent_text
        # Every imported or enrolled person has all four emails scheduled; nobody else has any.
        per_person = dict(
            session.execute(
                select(Subscriber.email, func.count(Delivery.id))
                .join(Delivery, Delivery.subscriber_id == Subscriber.id)
                .group_by(Subscriber.email)
            ).all()
        )
    assert per_person == {"ana@example.com": 4, "bo@example.com": 4, "known@example.com": 4}
    again = run("subscribers", "import", str(path), "--sequence", "course", "--consent-source", "webinar")
    assert "imported 0; existing enrolled 0; already enrolled 3" in again.output
    assert count(world, Delivery) == 12


def test_import_refuses_a_file_without_email_column_or_unknown_sequence_writing_nothing(
    world, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x.csv"
    path.write_text("name\nAna\n")
    assert (
        "needs an 'email' column"
        in run("subscribers", "import", str(path), "--sequence", "course", "--consent-source", "x").output
    )
    path.write_text("email\nana@example.com\n")
    assert (
        "no sequence 'nope'"
        in run("subscribers", "import", str(path), "--sequence", "nope", "--consent-source", "x").output
    )
    assert count(world, Subscriber) == 0


def test_erase_removes_personal_data_and_blocks_re_adding(world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with transaction(world) as session:
        add_subscriber(session, "ana@example.com", first_name="Ana", sequence_slug="course")
        add_subscriber(session, "bo@example.com", sequence_slug="course")
    export = tmp_path / "out.csv"
    assert run("subscribers", "export", str(export)).exit_code == 0
    assert [r["email"] for r in csv.DictReader(export.open())] == ["ana@example.com", "bo@example.com"]
    assert run("subscribers", "erase", "ana@example.com", "--yes").output.strip() == "erased"
    with transaction(world) as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 1
        assert session.scalar(select(func.count()).select_from(Enrollment)) == 1
        assert session.scalar(select(func.count()).select_from(Delivery)) == 4
        assert (
            session.scalar(select(func.count()).select_from(Event).where(Event.subscriber_id.is_(None))) == 0
        )
        blocked = session.scalars(select(Suppression.email)).all()
    assert len(blocked) == 1 and blocked[0].startswith("sha256:") and "ana" not in blocked[0]
    path = tmp_path / "back.csv"
    path.write_text("email\nAna@Example.com\n")
    result = run("subscribers", "import", str(path), "--sequence", "course", "--consent-source", "x")
    assert "imported 0" in result.output and "suppressed 1" in result.output


def test_import_of_many_rows_is_bulk(world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """10k rows (the 100k figure is for the benchmark machine): well under the time one-by-one would take."""
    path = tmp_path / "many.csv"
    zones = ["America/New_York", "Europe/Berlin", ""]
    path.write_text(
        "email,first_name,timezone\n"
        + "".join(f"p{i}@example.com,P{i},{zones[i % 3]}\n" for i in range(10_000))
    )
    started = time.perf_counter()
    result = run("subscribers", "import", str(path), "--sequence", "course", "--consent-source", "bulk")
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert "imported 10000" in result.output
    assert count(world, Delivery) == 40_000
    print(f"imported 10k rows in {elapsed:.1f}s")
