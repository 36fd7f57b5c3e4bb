"""Goals and exits end enrollments and cancel their unsent mail in one transaction (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core import clock
from nurture.core.db import transaction
from nurture.delivery.dispatch import dispatch_once
from nurture.mail.transports import MemoryTransport
from nurture.models import Enrollment, Event, ExternalEvent, GoalCompletion, Subscriber
from nurture.sequences.loader import SequenceValidationError, load_file
from nurture.subscribers import goals
from nurture.subscribers.enrollment import cancel_open_deliveries, unsubscribe
from nurture.subscribers.staff_actions import remove_from_sequence
from tests.support.helpers import (
    deliveries,
    dispatch_inline,
    make_sender,
    statuses,
    subscribe,
    sync_sequences,
)

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
COURSE = """
slug: course
name: The course
goals: [contacted, booked_consultation]
exit_events: [became-patient]
steps:
  - {key: hello, delay: 0, template: demo/hello}
  - {key: contact, delay: 1d, template: ketamine-therapy/contact-us}
  - {key: goodbye, delay: 1d, template: demo/goodbye}
"""
OTHER = """
slug: other
name: No goals here
steps:
  - {key: hello, delay: 0, template: demo/hello}
  - {key: goodbye, delay: 1d, template: demo/goodbye}
"""


@pytest.fixture
def world(factory: sessionmaker[Session], sequences_dir: Path) -> sessionmaker[Session]:
    (sequences_dir / "course.yaml").write_text(COURSE)
    (sequences_dir / "other.yaml").write_text(OTHER)
    sync_sequences(factory)
    return factory


def report(event: str, key: str, **who: object) -> goals.Reported:
    body = {"event": event, "idempotency_key": key, **who}
    return goals.report_event(goals.parse_report(body))


def events_of(factory: sessionmaker[Session], kind: str) -> list[Event]:
    with transaction(factory) as session:
        return list(session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


def enrollment_of(factory: sessionmaker[Session], slug_id: int = 1) -> Enrollment:
    with transaction(factory) as session:
        return session.scalars(select(Enrollment).order_by(Enrollment.id)).all()[slug_id - 1]


def test_goal_ends_the_enrollment_cancels_pending_mail_and_names_the_step_before(world) -> None:  # type: ignore[no-untyped-def]
    outbox = MemoryTransport()
    with clock.frozen(START):
        subscriber_id = subscribe(world, "ana@example.com", "course")
        dispatch_inline(world, make_sender(world, outbox))  # the first email goes
        reported = report("contacted", "crm-1", email="Ana@Example.com")
    assert not reported.replayed
    assert reported.result["goals_met"] == [
        {
            "sequence": "course",
            "enrollment_id": 1,
            "goal": "contacted",
            "step_key": "hello",
            "cancelled": 2,
        }
    ]
    assert statuses(world) == ["sent", "cancelled", "cancelled"]
    assert {d.skip_reason for d in deliveries(world)[1:]} == {"goal"}
    enrollment = enrollment_of(world)
    assert (enrollment.status, enrollment.end_reason) == ("completed", "goal")
    first_id = deliveries(world)[0].id
    with transaction(world) as session:
        completion = session.scalars(select(GoalCompletion)).one()
    assert (completion.goal, completion.enrollment_id, completion.delivery_id) == ("contacted", 1, first_id)
    [met] = events_of(world, "goal_met")
    assert met.subscriber_id == subscriber_id
    assert met.detail == {
        "goal": "contacted",
        "sequence": "course",
        "step_key": "hello",
        "enrollment_id": 1,
    }
    [done] = events_of(world, "enrollment_completed")
    assert done.detail["reason"] == "goal" and done.subscriber_id == subscriber_id
    # Nothing more goes out, however much time passes.
    with clock.frozen(START + timedelta(days=5)):
        dispatch_inline(world, make_sender(world, outbox))
    assert len(outbox.outbox) == 1


def test_goal_before_any_email_is_attributed_to_no_step(world) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        subscriber_id = subscribe(world, "ana@example.com", "course")
        reported = report("booked_consultation", "k-1", subscriber_id=subscriber_id)
    assert reported.result["goals_met"][0]["step_key"] is None
    assert statuses(world) == ["cancelled", "cancelled", "cancelled"]


def test_same_idempotency_key_returns_the_first_result_and_does_nothing_again(world) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        subscriber_id = subscribe(world, "ana@example.com", "course")
        first = report("contacted", "same-key", subscriber_id=subscriber_id)
        again = report("contacted", "same-key", email="ana@example.com")
    assert again.replayed and again.result == first.result
    assert len(events_of(world, "goal_met")) == 1
    assert len(events_of(world, "event_received")) == 1
    with transaction(world) as session:
        assert session.scalar(select(func.count()).select_from(ExternalEvent)) == 1
        assert session.scalar(select(func.count()).select_from(GoalCompletion)) == 1
    with pytest.raises(goals.EventError) as conflict:
        report("booked_consultation", "same-key", subscriber_id=subscriber_id)
    assert conflict.value.status == 409


def test_a_claimed_delivery_does_not_go_out_after_the_goal(world) -> None:  # type: ignore[no-untyped-def]
    """The goal arrives while the first email is claimed (queued, handed to a worker): it must not be sent."""
    outbox = MemoryTransport()
    handed: list[tuple[str, list[int]]] = []
    with clock.frozen(START):
        subscribe(world, "ana@example.com", "course")
        dispatch_once(lambda token, ids: handed.append((token, ids)), factory=world)
        assert statuses(world) == ["queued", "pending", "pending"]
        report("contacted", "race-1", email="ana@example.com")
        [(token, ids)] = handed
        outcomes = make_sender(world, outbox).send_batch(token, ids)
    assert outbox.outbox == []
    assert outcomes["sent"] == 0
    assert statuses(world) == ["cancelled", "cancelled", "cancelled"]


def test_exit_event_ends_the_enrollment_with_its_reason(world) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        subscriber_id = subscribe(world, "ana@example.com", "course")
        result = report("became-patient", "x-1", subscriber_id=subscriber_id).result
    assert result["goals_met"] == [] and result["exited"][0]["reason"] == "exit-event:became-patient"
    enrollment = enrollment_of(world)
    assert (enrollment.status, enrollment.end_reason) == ("cancelled", "exit-event:became-patient")
    [exited] = events_of(world, "enrollment_exited")
    assert exited.detail["reason"] == "exit-event:became-patient"
    assert statuses(world) == ["cancelled", "cancelled", "cancelled"]


def test_an_event_only_touches_sequences_that_list_it(world) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        subscribe(world, "ana@example.com", "course")
        subscribe(world, "ana@example.com", "other")
        result = report("contacted", "k", email="ana@example.com").result
    assert [g["sequence"] for g in result["goals_met"]] == ["course"]
    with transaction(world) as session:
        by_sequence = {e.sequence.slug: e.status for e in session.scalars(select(Enrollment))}
    assert by_sequence == {"course": "completed", "other": "active"}
    unknown = report("never-configured", "k2", email="ana@example.com").result
    assert unknown["goals_met"] == [] and unknown["exited"] == []


@pytest.mark.parametrize(
    ("ending", "reason"),
    [
        (lambda s, sub: unsubscribe(s, sub, "test"), "unsubscribed"),
        (lambda s, sub: cancel_open_deliveries(s, sub.id, "suppressed"), "suppressed"),
        (
            lambda s, sub: remove_from_sequence(s, sub, by="staff@example.com", sequence="course"),
            "removed-by-staff",
        ),
    ],
)
def test_unsubscribe_and_suppression_end_enrollments_with_a_visible_reason(
    world, ending: Callable[[Session, Subscriber], object], reason: str
) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        subscribe(world, "ana@example.com", "course")
        with transaction(world) as session:
            ending(session, session.scalars(select(Subscriber)).one())
    enrollment = enrollment_of(world)
    assert (enrollment.status, enrollment.end_reason) == ("cancelled", reason)
    [exited] = events_of(world, "enrollment_exited")
    assert {k: exited.detail[k] for k in ("reason", "sequence", "enrollment_id")} == {
        "reason": reason,
        "sequence": "course",
        "enrollment_id": 1,
    }
    assert statuses(world) == ["cancelled", "cancelled", "cancelled"]
    assert exited.subscriber_id == enrollment.subscriber_id


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"event": "contacted", "idempotency_key": "k"}, "email"),
        ({"email": "a@example.com", "subscriber_id": 1, "event": "x", "idempotency_key": "k"}, "one of"),
        ({"email": "a@example.com", "event": "Bad Name", "idempotency_key": "k"}, "event must"),
        ({"email": "a@example.com", "event": "x"}, "idempotency_key"),
        ({"email": "a@example.com", "event": "x", "idempotency_key": "k" * 201}, "idempotency_key"),
        ({"email": "a@example.com", "event": "x", "idempotency_key": "k", "properties": [1]}, "properties"),
        ({"subscriber_id": True, "event": "x", "idempotency_key": "k"}, "subscriber_id"),
        ({"email": "not-an-address", "event": "x", "idempotency_key": "k"}, "email"),
    ],
)
def test_bad_reports_are_refused_with_a_reason(body: dict[str, object], message: str) -> None:
    with pytest.raises(goals.EventError) as error:
        goals.parse_report(body)
    assert error.value.status == 400 and message in error.value.message


def test_sequence_files_validate_goal_and_policy_keys(tmp_path: Path) -> None:
    from nurture.core.config import get_settings
    from nurture.mail.templates import EmailTemplates

    templates = EmailTemplates(get_settings().templates_dir)
    path = tmp_path / "bad.yaml"
    path.write_text(
        "slug: bad\nname: Bad\ngoals: [contacted, Not OK]\nexit_events: contacted\n"
        "reentry: sometimes\non_resignup: explode\ntracking: {clicks: maybe, pixels: true}\n"
        "reentry_cooldown: 30d\nsteps:\n  - {key: a, delay: 0, template: demo/hello}\n"
    )
    with pytest.raises(SequenceValidationError) as error:
        load_file(path, templates)
    text = str(error.value)
    for expected in (
        "goals: 'Not OK'",
        "exit_events must be a list",
        "reentry 'sometimes'",
        "on_resignup 'explode'",
        "tracking: clicks must be true or false",
        "tracking: unknown field 'pixels'",
        "reentry_cooldown applies only with reentry: after",
    ):
        assert expected in text, expected
    path.write_text(
        "slug: bad\nname: Bad\nreentry: after\nsteps:\n  - {key: a, delay: 0, template: demo/hello}\n"
    )
    with pytest.raises(SequenceValidationError, match="needs a reentry_cooldown"):
        load_file(path, templates)


def test_concurrent_reports_with_one_key_apply_once_on_postgres(pg_factory, sequences_dir) -> None:  # type: ignore[no-untyped-def]
    """Two requests with the same key at the same moment: the unique key, not a look-up, decides."""
    import threading

    (sequences_dir / "course.yaml").write_text(COURSE)
    (sequences_dir / "other.yaml").write_text(OTHER)
    sync_sequences(pg_factory)
    subscribe(pg_factory, "ana@example.com", "course")
    subscribe(pg_factory, "bob@example.com", "course")
    barrier = threading.Barrier(4)
    results: list[goals.Reported | Exception] = []

    def send(who: str) -> None:
        barrier.wait()
        try:
            results.append(report("contacted", "one-key", email=who))
        except Exception as exc:  # collected: the assertion below says which
            results.append(exc)

    # Two for the same subscriber (serialised by the row lock) and two for another one (only the unique
    # key stops the second effect).
    threads = [
        threading.Thread(target=send, args=(who,))
        for who in ("ana@example.com",) * 2 + ("bob@example.com",) * 2
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    applied = [r for r in results if isinstance(r, goals.Reported) and not r.replayed]
    assert len(applied) == 1, results
    assert all(isinstance(r, goals.Reported | goals.EventError) for r in results), results
    with transaction(pg_factory) as session:
        assert session.scalar(select(func.count()).select_from(ExternalEvent)) == 1
        assert session.scalar(select(func.count()).select_from(GoalCompletion)) == 1
