"""The frequency cap across sequences (NURTURE_FREQUENCY_CAP_HOURS), on SQLite and PostgreSQL: the later
email moves (never skipped) with a reason, in elapsed hours across a DST change; within one sequence the step
delays govern; 0 turns it off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from nurture.core import clock
from nurture.core.db import transaction
from nurture.mail.transports import MemoryTransport
from nurture.models import Delivery, Enrollment, Event, Sequence, Subscriber
from nurture.subscribers.enrollment import enroll
from nurture.subscribers.staff_actions import export_data
from tests.support.helpers import dispatch_inline, make_sender, subscribe, sync_sequences

NEW_YORK = ZoneInfo("America/New_York")
# Saturday 20:00 EST; clocks jump from 02:00 to 03:00 at 07:00 UTC on Sunday 2026-03-08.
SATURDAY_EVENING = datetime(2026, 3, 8, 1, 0, tzinfo=UTC)
NEWS = """
slug: news
name: News
steps:
  - {key: first, delay: 0, template: demo/hello}
"""
COURSE = """
slug: course
name: Course
steps:
  - {key: one, delay: 0, template: demo/middle}
  - {key: two, delay: 1h, template: demo/goodbye}
"""
WEEKDAYS = """
slug: weekdays
name: Weekdays
window: {days: mon-fri, start: "09:00", end: "11:30"}
steps:
  - {key: only, delay: 0, template: demo/goodbye}
"""


@pytest.fixture
def two_sequences(factory, sequences_dir: Path):  # type: ignore[no-untyped-def]
    for slug, text in (("news", NEWS), ("course", COURSE), ("weekdays", WEEKDAYS)):
        (sequences_dir / f"{slug}.yaml").write_text(text)
    sync_sequences(factory)
    return factory


def _enroll(factory, email: str, slug: str) -> None:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email == email))
        enroll(session, subscriber, session.scalar(select(Sequence).where(Sequence.slug == slug)))


def _rows(factory) -> dict[str, Delivery]:  # type: ignore[no-untyped-def]
    """sequence slug/step key -> its delivery (one subscriber)."""
    with transaction(factory) as session:
        rows = session.execute(
            select(Sequence.slug, Delivery)
            .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
            .join(Sequence, Sequence.id == Enrollment.sequence_id)
            .order_by(Delivery.id)
        ).all()
        return {f"{slug}/{d.step.key}": d for slug, d in rows}


def test_the_later_email_moves_by_elapsed_hours_across_a_dst_change(two_sequences, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(frequency_cap_hours="12")
    transport = MemoryTransport()
    with clock.frozen(SATURDAY_EVENING) as advance:
        subscribe(two_sequences, "ny@example.com", "news", timezone="America/New_York")
        sender = make_sender(two_sequences, transport)
        assert dispatch_inline(two_sequences, sender) == {"sent": 1}
        advance(timedelta(hours=6))  # 03:00 EDT: six real hours, seven on the wall clock
        _enroll(two_sequences, "ny@example.com", "course")
        assert dispatch_inline(two_sequences, sender) == {}  # moved, not sent and not skipped
        moved = _rows(two_sequences)["course/one"]
        assert moved.status == "pending"
        assert moved.due_at == SATURDAY_EVENING + timedelta(hours=12)  # 13:00 UTC
        assert (
            moved.due_at.astimezone(NEW_YORK).strftime("%a %H:%M %Z") == "Sun 09:00 EDT"
        )  # 13 h on the wall
        # Within one sequence the delays govern: the course's second step moved with the first, still an hour
        # after it.
        assert _rows(two_sequences)["course/two"].due_at == moved.due_at + timedelta(hours=1)
        advance(timedelta(hours=6) - timedelta(seconds=1))
        assert dispatch_inline(two_sequences, sender) == {}
        advance(timedelta(seconds=1))
        assert dispatch_inline(two_sequences, sender) == {"sent": 1}
        advance(timedelta(hours=1))
        assert dispatch_inline(two_sequences, sender)["sent"] == 1
    rows = _rows(two_sequences)
    news, course = rows["news/first"], rows["course/one"]
    assert course.sent_at - news.sent_at == timedelta(hours=12)
    with transaction(two_sequences) as session:
        capped = session.scalars(select(Event).where(Event.kind == "capped")).all()
        assert capped[0].delivery_id == course.id
        assert capped[0].detail["moved_to"] == (SATURDAY_EVENING + timedelta(hours=12)).isoformat()
        assert "frequency cap: 'news' emailed them" in capped[0].detail["reason"]
        subscriber = session.scalar(select(Subscriber))
        page = export_data(session, subscriber)
    deliveries = {d["step"]: d for e in page["enrollments"] for d in e["deliveries"]}
    assert deliveries["one"]["moved"].startswith("moved by the frequency cap")  # the subscriber page's "Why"


def test_two_sequences_due_in_the_same_tick_send_one_and_move_the_other(two_sequences, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(frequency_cap_hours="12")
    start = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # Monday 10:00 in New York
    with clock.frozen(start):
        subscribe(two_sequences, "both@example.com", "news", timezone="America/New_York")
        _enroll(two_sequences, "both@example.com", "weekdays")
        assert dispatch_inline(two_sequences, make_sender(two_sequences, MemoryTransport())) == {"sent": 1}
    rows = _rows(two_sequences)
    assert rows["news/first"].status == "sent"
    # 12 h later is 22:00 local, outside the weekdays window: the move is fitted into it, Tuesday 09:00.
    assert rows["weekdays/only"].status == "pending"
    assert rows["weekdays/only"].due_at.astimezone(NEW_YORK).strftime("%a %H:%M") == "Tue 09:00"


def test_a_cap_of_zero_is_off(two_sequences, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(frequency_cap_hours="0")
    with clock.frozen(datetime(2026, 3, 2, 15, 0, tzinfo=UTC)):
        subscribe(two_sequences, "off@example.com", "news")
        _enroll(two_sequences, "off@example.com", "course")
        assert dispatch_inline(two_sequences, make_sender(two_sequences, MemoryTransport())) == {"sent": 2}


def test_a_confirmation_is_never_capped_though_the_course_it_starts_is(two_sequences, set_env) -> None:  # type: ignore[no-untyped-def]
    """Someone mailed by one sequence an hour ago signs up for another: the double opt-in email goes out at
    once (transactional), and the new course's first email waits out the cap."""
    from nurture.core.config import get_settings
    from nurture.subscribers import consent
    from nurture.subscribers.signup import SignupForm, confirm, signup
    from tests.support.web import drain

    set_env(frequency_cap_hours="12")
    start = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
    with clock.frozen(start) as advance:
        subscribe(two_sequences, "twice@example.com", "news")
        sender = make_sender(two_sequences, MemoryTransport())
        assert dispatch_inline(two_sequences, sender) == {"sent": 1}
        advance(timedelta(hours=1))
        form = SignupForm("twice@example.com", None, None, "course", consent.CURRENT, "test form")
        signup(two_sequences, form, consent.Origin.of("192.0.2.1", "test"), get_settings())
        outcomes, sent = drain(two_sequences)
        assert outcomes == {"sent": 1}  # an hour after news: not held back by the cap
        assert len(sent) == 1 and sent[0]["To"] == "twice@example.com"
        with transaction(two_sequences) as session:
            record = session.scalar(select(consent.ConsentRecord).order_by(consent.ConsentRecord.id.desc()))
            assert confirm(session, record.public_id, consent.Origin.of("192.0.2.1", "test")) is not None
        assert dispatch_inline(two_sequences, sender) == {}  # the course's welcome is the capped one
    course = _rows(two_sequences)["course/one"]
    assert course.status == "pending"
    assert course.due_at == start + timedelta(hours=12)
