"""The timetable where it is stored and used, on SQLite and PostgreSQL: enrolling and importing write due
times that skip the window for an opted-out step and wait out holidays (the subscriber's country first), the
sender retries an opted-out step without waiting for the window, and sent emails carry the review line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from nurture.core import clock
from nurture.core.db import transaction
from nurture.models import Delivery, Step, Subscriber, SubscriberStatus
from nurture.sequences.sync import get_sequence
from nurture.subscribers import importer
from nurture.subscribers.enrollment import enroll
from tests.support.helpers import deliveries, dispatch_inline, make_sender, subscribe, sync_sequences
from tests.support.processes import SmtpScript, SmtpServer

NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
# Friday 18 December 2026, 16:00 in New York: the window (Mon-Fri 09:00-11:30) closed hours ago, and the
# third email would be due on Christmas Day, a Friday.
CONFIRMED = datetime(2026, 12, 18, 16, 0, tzinfo=NEW_YORK).astimezone(UTC)
WINDOWED = """
slug: windowed
name: Windowed course
timezone: America/New_York
window: {days: mon-fri, start: "09:00", end: "11:30"}
holidays: US
reviewed_by: "Dr Jane Doe, MD"
reviewed_on: 2026-11-20
steps:
  - {key: hello, delay: 0, template: demo/hello, window: false}
  - {key: middle, delay: 2d, template: demo/middle}
  - {key: goodbye, delay: 4d, template: demo/goodbye}
"""


def local(day: int, hour: int, tz: ZoneInfo = NEW_YORK) -> datetime:
    return datetime(2026, 12, day, hour, 0, tzinfo=tz).astimezone(UTC)


@pytest.fixture
def world(factory, sequences_dir: Path):  # type: ignore[no-untyped-def]
    (sequences_dir / "windowed.yaml").write_text(WINDOWED)
    sync_sequences(factory)
    return factory


def test_enrolling_stores_the_opt_out_and_the_holiday_move(world) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(CONFIRMED):
        subscribe(world, "ana@example.com", "windowed", timezone="America/New_York")
    assert [d.due_at for d in deliveries(world)] == [
        CONFIRMED,  # the welcome: right away, outside the window
        local(21, 9),  # Sunday 16:00 -> Monday 09:00
        local(28, 9),  # Friday 25 December -> Monday 28
    ]
    with transaction(world) as session:
        assert list(session.scalars(select(Step.use_window).order_by(Step.position))) == [False, True, True]


def test_a_known_country_uses_its_own_holidays(world) -> None:  # type: ignore[no-untyped-def]
    with transaction(world) as session, clock.frozen(CONFIRMED):
        sequence = get_sequence(session, "windowed")
        assert sequence is not None
        for email, country in (("uk@example.com", "GB"), ("nowhere@example.com", "Atlantis")):
            person = Subscriber(
                email=email,
                timezone="Europe/London",
                status=SubscriberStatus.active,
                attributes={"country": country},
            )
            session.add(person)
            session.flush()
            enroll(session, person, sequence, at=local(18, 16, LONDON))
    due = [d.due_at for d in deliveries(world)]
    # Great Britain makes up Boxing Day (a Saturday) on Monday 28: the last email waits for Tuesday.
    assert due[:3] == [local(18, 16, LONDON), local(21, 9, LONDON), local(29, 9, LONDON)]
    # A country the calendar library does not know falls back to the sequence's (US: Monday 28).
    assert due[3:] == [local(18, 16, LONDON), local(21, 9, LONDON), local(28, 9, LONDON)]


def test_an_import_with_a_country_column_times_each_person_by_their_calendar(world) -> None:  # type: ignore[no-untyped-def]
    rows, errors = importer.read_csv(
        b"email,timezone,country\n"
        b"us@example.com,Europe/London,US\n"
        b"gb@example.com,Europe/London,GB\n"
        b"plain@example.com,Europe/London,\n"
    )
    assert not errors
    with clock.frozen(local(18, 16, LONDON)):
        importer.import_rows(world, rows, "windowed", "webinar signup sheet", importer.ImportReport())
    with transaction(world) as session:
        last = dict(
            session.execute(
                select(Subscriber.email, Delivery.due_at)
                .join(Delivery, Delivery.subscriber_id == Subscriber.id)
                .join(Step, Step.id == Delivery.step_id)
                .where(Step.key == "goodbye")
            ).all()
        )
    assert last == {
        "us@example.com": local(28, 9, LONDON),
        "gb@example.com": local(29, 9, LONDON),
        "plain@example.com": local(28, 9, LONDON),  # no country: the sequence's US calendar
    }


def test_a_retry_of_an_opted_out_step_does_not_wait_for_the_window(world, set_env) -> None:  # type: ignore[no-untyped-def]
    script = SmtpScript(data_replies=["451 4.3.0 try later"])
    with SmtpServer(script) as smtp, clock.frozen(CONFIRMED) as advance:
        set_env(smtp_url=smtp.url, retry_base_seconds="10")
        subscribe(world, "bo@example.com", "windowed", timezone="America/New_York")
        sender = make_sender(world)
        assert dispatch_inline(world, sender)["retry"] == 1
        welcome = deliveries(world)[0]
        # Friday 16:00 is outside the window; a step that skips it retries after its backoff, not on Monday.
        assert welcome.status == "pending" and welcome.due_at == CONFIRMED + timedelta(seconds=10)
        advance(timedelta(seconds=10))
        assert dispatch_inline(world, sender)["sent"] == 1
    message = smtp.received[0].message
    text, html = (part.get_payload(decode=True).decode() for part in message.get_payload())
    assert "Content reviewed by Dr Jane Doe, MD on November 20, 2026." in text
    assert "Content reviewed by Dr Jane Doe, MD on November 20, 2026.</p>" in html


def test_a_retry_of_a_windowed_step_still_waits_for_the_window(world, set_env) -> None:  # type: ignore[no-untyped-def]
    script = SmtpScript(data_replies=["451 4.3.0 try later"])
    monday_late = local(21, 11) + timedelta(minutes=29, seconds=55)  # five seconds before the window shuts
    with SmtpServer(script) as smtp, clock.frozen(CONFIRMED) as advance:
        set_env(smtp_url=smtp.url, retry_base_seconds="10")
        subscribe(world, "cy@example.com", "windowed", timezone="America/New_York")
        with transaction(world) as session:  # the welcome went out on Friday
            welcome = session.scalar(select(Delivery).order_by(Delivery.id).limit(1))
            assert welcome is not None
            welcome.status = "sent"
        advance(monday_late - CONFIRMED)
        assert dispatch_inline(world, make_sender(world))["retry"] == 1
    # A 4xx at 11:29:55 retries after its 10 s backoff, which is outside the window: Tuesday 09:00.
    assert deliveries(world)[1].due_at == local(22, 9)
