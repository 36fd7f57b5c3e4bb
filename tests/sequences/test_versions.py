"""Versions: a live sequence edited while 50 enrollments are in flight, published with each choice, with the
real dispatcher and sender on SQLite and PostgreSQL; the plan's counts and due times are what then happens.
Also drafts, archiving, sync and the file/UI rule, and rows a worker holds during a publish.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.header import decode_header, make_header
from itertools import pairwise
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from nurture.cli import main
from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.mail.templates import EmailTemplates
from nurture.models import (
    AuditLog,
    Delivery,
    DeliveryStatus,
    Enrollment,
    Sequence,
    SequenceStatus,
    SequenceVersion,
    Step,
    Subscriber,
)
from nurture.sequences import version_plans, versions
from nurture.sequences.control import MIN_GAP
from nurture.sequences.loader import find
from nurture.sequences.schedule import resolve_zone
from nurture.subscribers.enrollment import EnrollmentError, add_subscriber
from tests.sequences.test_control import Run
from tests.support.staff import COURSE

START = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)  # a Monday, 08:00 in New York
EDIT_AT = START + timedelta(days=3, hours=7)  # Thursday 15:00 in New York
ZONES = ["America/New_York", "Europe/Berlin", "Asia/Tokyo", None]
RATE = 10
# `later` removed, `middle` slower and with its own subject, `extra` added, a narrower window.
COURSE_V2 = """
slug: course
name: The course
timezone: America/New_York
window: {days: mon-fri, start: "10:00", end: "16:00"}
steps:
  - {key: hello, delay: 0, template: demo/hello}
  - {key: middle, delay: 2d, template: demo/middle, subject: "Halfway there, {{ first_name or 'friend' }}"}
  - {key: extra, delay: 1d, template: demo/hello}
  - {key: goodbye, delay: 1d, template: demo/goodbye}
"""


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def _definition(course: Path):  # type: ignore[no-untyped-def]
    settings = get_settings()
    return find(course.parent, "course", EmailTemplates(settings.templates_dir))


def _state(
    factory: sessionmaker[Session],
) -> dict[int, list[tuple[str, str, datetime, datetime | None, int]]]:
    """Per enrollment: (key, status, due_at, sent_at, delivery id) of each delivery, in due order."""
    result: dict[int, list[tuple[str, str, datetime, datetime | None, int]]] = defaultdict(list)
    with transaction(factory) as session:
        for row in session.execute(
            select(
                Delivery.enrollment_id,
                Step.key,
                Delivery.status,
                Delivery.due_at,
                Delivery.sent_at,
                Delivery.id,
            )
            .join(Step, Step.id == Delivery.step_id)
            .order_by(Delivery.enrollment_id, Delivery.due_at, Delivery.id)
        ):
            result[row[0]].append((row[1], row[2], row[3], row[4], row[5]))
    return result


def _populate(world: sessionmaker[Session], run: Run, count: int = 50) -> None:
    for i in range(count):
        run.until(START + timedelta(minutes=90 * i))  # joining over three days: they stand at every step
        with transaction(world) as session:
            add_subscriber(
                session, f"s{i}@example.com", timezone=ZONES[i % len(ZONES)], sequence_slug="course"
            )


@pytest.mark.parametrize("choice", [version_plans.Migrate.stay, version_plans.Migrate.move])
def test_edit_with_50_in_flight_plan_matches_what_happens(world, course, set_env, choice) -> None:  # type: ignore[no-untyped-def]
    set_env(resume_rate_per_minute=str(RATE))
    with clock.frozen(START) as advance:
        run = Run(world, advance)
        _populate(world, run)
        run.until(EDIT_AT)
        before = _state(world)
        course.write_text(COURSE_V2)

        # The plan staff read (CLI) and the plan the publish applies come from one function, at one instant.
        code, output = cli("sequences", "plan", "course")
        assert code == 0, output
        assert "removed steps: later" in output and "added steps: extra" in output
        assert "changed middle: delay 1d → 2d" in output
        with transaction(world) as session:
            sequence = session.scalar(select(Sequence).where(Sequence.slug == "course"))
            planned = version_plans.compute_plan(
                session,
                sequence,
                version_plans.shape_of_definition(_definition(course)),
                choice,
                per_minute=RATE,
            )
        by_key = {row["key"]: row["waiting"] for row in planned.by_key()}
        for key, waiting in by_key.items():
            assert f"    {key}: {waiting} waiting" in output
        in_flight = {e for e, rows in before.items() if any(r[1] == "pending" for r in rows)}
        assert sum(by_key.values()) == len(in_flight) == len(planned.enrollments)
        assert len([k for k, n in by_key.items() if n]) >= 3, f"they should stand at several steps: {by_key}"
        assert by_key["later"] > 0, "someone must wait for the removed step"

        code, output = cli("sequences", "sync", "--migrate", choice.value)
        assert code == 0, output
        assert "course: new version (version 2)" in output
        after_publish = _state(world)
        applied = {e.enrollment_id: e for e in planned.enrollments}

        # New enrollments join the new version under both choices.
        with transaction(world) as session:
            add_subscriber(session, "new@example.com", timezone="America/New_York", sequence_slug="course")
            newcomer = session.scalar(
                select(Enrollment).join(Subscriber).where(Subscriber.email == "new@example.com")
            )
            assert newcomer.version.number == 2
            newcomer_id = newcomer.id
        run.until(EDIT_AT + timedelta(days=30))

    final = _state(world)
    counts = planned.counts()
    with transaction(world) as session:
        enrollments = {e.id: e for e in session.scalars(select(Enrollment))}
        zones = {e.id: resolve_zone(e.subscriber.timezone, "America/New_York") for e in enrollments.values()}
        summary = {e.id: (e.version.number, e.status, e.end_reason) for e in enrollments.values()}
    new_keys = ["hello", "middle", "extra", "goodbye"]
    for enrollment_id, rows in final.items():
        sent = [r for r in rows if r[1] == "sent"]
        keys = [r[0] for r in sent]
        assert len(keys) == len(set(keys)), f"nothing is sent twice: {rows}"
        times = sorted(r[3] for r in sent)
        assert all(b - a >= MIN_GAP for a, b in pairwise(times)), "never two at once"
        if enrollment_id == newcomer_id:
            assert keys == new_keys
            continue
        sent_before = [r[0] for r in before[enrollment_id] if r[1] == "sent"]
        waiting_before = [r[0] for r in before[enrollment_id] if r[1] == "pending"]
        entry = applied.get(enrollment_id)
        if entry is None:
            assert not waiting_before and keys == sent_before  # finished before the edit: untouched
            continue
        assert entry.next_key == waiting_before[0]
        if entry.outcome is version_plans.Outcome.stay:
            assert summary[enrollment_id] == (1, "active", None)
            assert keys == sent_before + waiting_before, "stay: the old timetable, every step, in order"
            old_due = {r[0]: r[2] for r in before[enrollment_id]}
            assert all(r[2] == old_due[r[0]] for r in rows), "stay: due times unchanged"
        elif entry.outcome is version_plans.Outcome.move:
            assert summary[enrollment_id][0] == 2
            planned_keys = [n.key for n in entry.new]
            start = new_keys.index(entry.next_key)
            expected = [k for k in new_keys[start:] if k not in sent_before]
            assert planned_keys == expected, "move: from the same key on, nobody skips, nothing re-sent"
            assert keys == sent_before + expected
            due_after = {r[0]: r[2] for r in after_publish[enrollment_id] if r[1] == "pending"}
            assert due_after == {n.key: n.due_at for n in entry.new}, "the publish applied the plan's times"
            tz = zones[enrollment_id]
            for new in entry.new:
                local = new.due_at.astimezone(tz)
                assert local.weekday() < 5 and 10 <= local.hour < 16, "fitted to the new window"
                assert new.due_at >= EDIT_AT
        else:
            assert entry.next_key == "later"
            assert summary[enrollment_id] == (1, "cancelled", version_plans.STOP_REASON)
            assert keys == sent_before, "stop: nothing more is sent"
            assert {r[1] for r in rows} <= {"sent", "cancelled"}

    if choice is version_plans.Migrate.stay:
        assert counts == {"stay": len(in_flight), "move": 0, "stop": 0}
    else:
        assert counts["stop"] == by_key["later"] and counts["stay"] == 0
        assert counts["move"] == len(in_flight) - by_key["later"]
        moved = [e for e, s in summary.items() if s[0] == 2 and e != newcomer_id]
        stopped = [e for e, s in summary.items() if s[2] == version_plans.STOP_REASON]
        assert (len(moved), len(stopped)) == (counts["move"], counts["stop"])
        # What was overdue under the new delays goes out spread at the resume rate, not as a flood.
        new_rows = [n.due_at for e in planned.enrollments for n in e.new]
        assert max(Counter(int(d.timestamp() // 60) for d in new_rows).values()) <= RATE
        # The subject override reaches the movers' "middle" emails.
        subjects = [
            str(make_header(decode_header(message_from_bytes(m.data)["Subject"])))
            for m in run.sender.transport.outbox
        ]
        assert any(s.startswith("Halfway there, ") for s in subjects)


def test_rows_a_worker_holds_are_left_alone_and_count_as_sent(world, course) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        with transaction(world) as session:
            add_subscriber(session, "busy@example.com", timezone="America/New_York", sequence_slug="course")
        # A dispatcher claimed `hello` a moment ago; the worker has not finished it.
        with transaction(world) as session:
            hello = session.scalar(select(Delivery).join(Step).where(Step.key == "hello"))
            hello.status, hello.claim_token = DeliveryStatus.queued, "claim-1"
            hello_id, hello_step = hello.id, hello.step_id
        course.write_text(COURSE_V2)
        code, output = cli("sequences", "sync", "--migrate", "move")
        assert code == 0, output
        with transaction(world) as session:
            held = session.get_one(Delivery, hello_id)
            assert (held.status, held.claim_token, held.step_id) == ("queued", "claim-1", hello_step)
            rows = session.execute(
                select(Step.key, Delivery.status, SequenceVersion.number)
                .join(Delivery, Delivery.step_id == Step.id)
                .join(SequenceVersion, SequenceVersion.id == Step.version_id)
                .where(Delivery.id != hello_id, Delivery.status == "pending")
                .order_by(Delivery.due_at)
            ).all()
        # It continues after the email being sent: the new steps from `middle` on, not `hello` again.
        assert [(r[0], r[2]) for r in rows] == [("middle", 2), ("extra", 2), ("goodbye", 2)]


def test_draft_sequence_refuses_enrollment_until_published(sequences_dir, factory) -> None:  # type: ignore[no-untyped-def]
    (sequences_dir / "fresh.yaml").write_text(
        "slug: fresh\nname: Fresh\nstatus: draft\nsteps:\n  - {key: hello, delay: 0, template: demo/hello}\n"
    )
    code, output = cli("sequences", "sync")
    assert code == 0 and "fresh: created as draft (version 1)" in output
    with transaction(factory) as session:
        assert session.scalar(select(Sequence.status).where(Sequence.slug == "fresh")) == "draft"
    with pytest.raises(EnrollmentError, match="draft"), transaction(factory) as session:
        add_subscriber(session, "a@example.com", sequence_slug="fresh")
    with transaction(factory) as session:
        assert session.scalar(select(Subscriber).where(Subscriber.email == "a@example.com")) is None
    assert cli("sequences", "sync")[1] == "fresh: unchanged (version 1): draft\n"
    code, output = cli("sequences", "publish", "fresh")
    assert code == 0 and "version 1 published" in output
    with transaction(factory) as session:
        add_subscriber(session, "a@example.com", sequence_slug="fresh")
        sequence = session.scalar(select(Sequence).where(Sequence.slug == "fresh"))
        assert sequence.status == SequenceStatus.active and sequence.current_version.published_at
        audit = session.scalars(select(AuditLog.action).where(AuditLog.target == "sequence:fresh")).all()
    assert "sequence.publish" in audit
    assert cli("sequences", "publish", "fresh") == (
        1,
        "error: sequence 'fresh' has no draft version to publish\n",
    )


def test_archive_lets_in_flight_finish_or_stops_them(world) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START) as advance:
        run = Run(world, advance)
        with transaction(world) as session:
            add_subscriber(session, "in@example.com", sequence_slug="course")
        run.until(START + timedelta(hours=2))
        code, output = cli("sequences", "archive", "course")
        assert code == 0 and "in-flight enrollments finish" in output
        with pytest.raises(EnrollmentError, match="archived"), transaction(world) as session:
            add_subscriber(session, "late@example.com", sequence_slug="course")
        run.until(START + timedelta(days=14))
        assert Counter(r[1] for r in _state(world)[1]) == {"sent": 4}, "archived: the enrollment finishes"
        assert cli("sequences", "archive", "course")[0] == 1  # already archived: refused
        assert cli("sequences", "publish", "course")[0] == 0  # restore
        with transaction(world) as session:
            add_subscriber(session, "again@example.com", sequence_slug="course")
        code, output = cli("sequences", "archive", "course", "--stop")
        assert code == 0 and "4 emails cancelled" in output
        with transaction(world) as session:
            again = session.scalar(
                select(Enrollment).join(Subscriber).where(Subscriber.email == "again@example.com")
            )
            assert (again.status, again.end_reason) == ("cancelled", "sequence-archived")
            actions = session.scalars(select(AuditLog.action).order_by(AuditLog.id)).all()
        assert actions.count("sequence.archive") == 2 and "sequence.restore" in actions


def test_sync_does_not_overwrite_a_version_published_from_the_ui(world, course) -> None:  # type: ignore[no-untyped-def]
    edited = COURSE.replace("delay: 2d, template: demo/middle", "delay: 3d, template: demo/middle")
    with transaction(world) as session:
        sequence = session.scalar(select(Sequence).where(Sequence.slug == "course"))
        course.write_text(edited)
        definition = _definition(course)
        versions.save_draft(session, sequence, definition, origin="ui", author="ed@staff.example.com")
    course.write_text(COURSE)
    code, output = cli("sequences", "sync")
    assert code == 0 and output == "course: unchanged (version 1)\n"  # the file is what is live
    # A UI draft waits: a sync of a different file is refused, not silently replacing it.
    course.write_text(
        COURSE.replace("delay: 1d, template: demo/goodbye", "delay: 5d, template: demo/goodbye")
    )
    code, output = cli("sequences", "sync")
    assert code == 0 and "warning: course: refused" in output and "saved in the staff UI" in output
    course.write_text(COURSE)
    assert cli("sequences", "publish", "course")[0] == 0
    code, output = cli("sequences", "sync")
    assert code == 0 and "warning: course: refused" in output
    assert "published from the staff UI by ed@staff.example.com" in output
    assert cli("sequences", "sync", "--strict")[0] == 1
    with transaction(world) as session:
        assert session.scalar(select(Sequence).where(Sequence.slug == "course")).current_version.number == 2
    # Export writes the live version as a file; after that sync has nothing to do.
    code, exported = cli("sequences", "export", "course")
    assert code == 0 and "delay: 3d" in exported
    course.write_text(exported)
    assert cli("sequences", "sync") == (0, "course: unchanged (version 2)\n")
    # --force publishes the file over the UI's version.
    course.write_text(COURSE)
    code, output = cli("sequences", "sync", "--force")
    assert code == 0 and "course: new version (version 3)" in output


def test_stale_claims_cannot_take_a_row_the_publish_moved(world, course) -> None:  # type: ignore[no-untyped-def]
    """A move re-uses the waiting row of the same key: a claim keyed on (id, pending) sees the new step."""
    with clock.frozen(START):
        with transaction(world) as session:
            add_subscriber(session, "x@example.com", sequence_slug="course")
        course.write_text(COURSE_V2)
        assert cli("sequences", "sync", "--migrate", "move")[0] == 0
        with transaction(world) as session:
            rows = session.execute(
                select(Step.key, SequenceVersion.number, Delivery.status)
                .join(Delivery, Delivery.step_id == Step.id)
                .join(SequenceVersion, SequenceVersion.id == Step.version_id)
                .order_by(Delivery.due_at)
            ).all()
            moved = session.execute(
                update(Delivery).where(Delivery.status == "pending").values(status="pending")
            ).rowcount
    assert [(r[0], r[1]) for r in rows if r[2] == "pending"] == [
        ("hello", 2),
        ("middle", 2),
        ("extra", 2),
        ("goodbye", 2),
    ]
    assert [r[0] for r in rows if r[2] == "cancelled"] == ["later"]
    assert moved == 4


def test_a_dispatcher_cannot_claim_an_email_while_a_publish_moves_it(pg_factory, course) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL: the publish holds the rows it migrates; a dispatch tick in between claims nothing (it does
    not wait either), and the tick after the commit sends the email once, as the new version wrote it."""
    import threading

    from nurture.delivery.dispatch import dispatch_once
    from nurture.mail.transports import MemoryTransport
    from tests.support.helpers import dispatch_inline, make_sender, sync_sequences

    sync_sequences(pg_factory)
    with clock.frozen(START + timedelta(hours=1, minutes=1)):  # 09:01 in New York: `hello` is due now
        with transaction(pg_factory) as session:
            add_subscriber(session, "due@example.com", sequence_slug="course")
        course.write_text(
            COURSE.replace("template: demo/hello}", 'template: demo/hello, subject: "New hello"}')
        )
        publishing = pg_factory()
        try:
            sequence = versions.lock(publishing, "course")
            version = versions.store_version(
                publishing, sequence, _definition(course), origin="file", author=None, published=False
            )
            plan = versions.publish_version(
                publishing, sequence, version, version_plans.Migrate.move, per_minute=60
            )
            assert plan.counts()["move"] == 1
            claimed: list[int] = []
            tick = threading.Thread(
                target=lambda: dispatch_once(lambda _t, ids: claimed.extend(ids), factory=pg_factory)
            )
            tick.start()
            tick.join(timeout=60)
            assert not tick.is_alive(), "the dispatcher must skip locked rows, not wait for the publish"
            assert claimed == [], "nothing of a half-migrated enrollment may be claimed"
            publishing.commit()
        finally:
            publishing.close()
        transport = MemoryTransport()
        outcomes = dispatch_inline(pg_factory, make_sender(pg_factory, transport))
    assert sum(outcomes.values()) == 1 and len(transport.outbox) == 1
    assert message_from_bytes(transport.outbox[0].data)["Subject"] == "New hello"


def test_moving_while_paused_keeps_the_emails_held_until_resume(world, course) -> None:  # type: ignore[no-untyped-def]
    from nurture.sequences.control import ResumePolicy, lock, pause, resume

    with clock.frozen(START):
        with transaction(world) as session:
            add_subscriber(session, "p@example.com", sequence_slug="course")
            pause(session, lock(session, "course"))
        course.write_text(COURSE_V2)
        code, output = cli("sequences", "sync", "--migrate", "move")
        assert code == 0, output
        assert {r[1] for r in _state(world)[1] if r[0] != "later"} == {"held"}, (
            "nothing may go out while paused"
        )
        with transaction(world) as session:
            resume(session, lock(session, "course"), ResumePolicy.shift, per_minute=60)
        rows = _state(world)[1]
    assert [r[0] for r in rows if r[1] == "pending"] == ["hello", "middle", "extra", "goodbye"]


def test_a_signup_confirmed_after_archiving_is_confirmed_without_enrolling(world) -> None:  # type: ignore[no-untyped-def]
    from nurture.models import ConsentRecord, Event
    from nurture.subscribers.consent import Origin
    from nurture.subscribers.signup import confirm, parse_signup, signup

    form = parse_signup(
        {"email": "late@example.com", "consent": True, "sequence": "course"}, default_source="hosted-form"
    )
    signup(world, form, Origin("198.51.100.7", "test"), get_settings())
    assert cli("sequences", "archive", "course")[0] == 0
    with transaction(world) as session:
        record = session.scalar(select(ConsentRecord))
        assert confirm(session, record.public_id, Origin("198.51.100.7", "test")) is not None
    with transaction(world) as session:
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email == "late@example.com"))
        assert subscriber.status == "active" and session.scalar(select(Enrollment)) is None
        skipped = session.scalars(select(Event.detail).where(Event.kind == "enroll-skipped")).all()
    assert skipped and "archived" in skipped[0]["reason"]
