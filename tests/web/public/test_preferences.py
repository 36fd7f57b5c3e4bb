"""/preferences/{token}: pause for a while, resume, leave a course or all, resubscribe, name and zone."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from nurture.core import clock, tokens
from nurture.core.db import transaction
from nurture.models import ConsentRecord, Delivery, Enrollment, Event, Subscriber
from tests.support.helpers import dispatch_inline, make_sender
from tests.support.web import confirm_url, drain, path_of, snapshot

START = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


@pytest.fixture
def member(client: TestClient, app_factory):  # type: ignore[no-untyped-def]
    """Ana, confirmed into both courses at START; yields her preferences path."""
    with clock.frozen(START) as advance:
        for sequence in ("two-step", "other"):
            client.post(
                "/subscribe", json={"email": "ana@example.com", "consent": True, "sequence": sequence}
            )
        _, sent = drain(app_factory)
        for message in sent:
            assert client.post(path_of(confirm_url(message))).status_code == 200
        with transaction(app_factory) as session:
            public_id = session.scalar(select(Subscriber.public_id))
        yield f"/preferences/{tokens.make_token(tokens.Purpose.preferences, public_id)}", advance


def _due(factory) -> dict[tuple[str, int], tuple[str, datetime]]:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return {
            (d.enrollment.sequence.slug, d.step.position): (d.status, d.due_at)
            for d in session.scalars(select(Delivery))
        }


def _subscriber(factory) -> Subscriber:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return session.scalar(select(Subscriber))


def test_page_lists_courses_and_changes_nothing(client: TestClient, app_factory, member) -> None:  # type: ignore[no-untyped-def]
    path, _ = member
    before = snapshot(app_factory)
    page = client.get(path)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    for needle in ("Two steps", "Another course", 'value="pause"', 'value="leave-all"', 'name="timezone"'):
        assert needle in page.text, needle
    assert snapshot(app_factory) == before


def test_pause_postpones_every_unsent_email_and_resume_restores_the_timetable(
    client: TestClient, app_factory, member, set_env
) -> None:  # type: ignore[no-untyped-def]
    path, advance = member
    # Two sequences whose first emails go together: this is about pausing, not the cross-sequence frequency
    # cap (tests/delivery/test_frequency_cap.py), which would move the second by 12 hours.
    set_env(frequency_cap_hours="0")
    sender = make_sender(app_factory)
    assert dispatch_inline(app_factory, sender) == {"sent": 2}  # both first steps go at once
    original = _due(app_factory)
    answer = client.post(path, data={"action": "pause", "days": "7"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == f"{path}?done=pause"
    assert "paused until" in client.get(answer.headers["location"]).text
    until = START + timedelta(days=7)
    assert _subscriber(app_factory).paused_until == until
    paused = _due(app_factory)
    assert [paused[(slug, 2)] for slug in ("two-step", "other")] == [("pending", until)] * 2
    assert paused[("two-step", 1)][0] == "sent"  # what was sent stays sent
    # Nothing goes out during the pause, even once the original times have passed.
    advance(timedelta(days=1, hours=12))
    assert dispatch_inline(app_factory, sender) == {}
    # Resuming early: an email whose time passed goes now; one still in the future keeps its time.
    assert client.post(path, data={"action": "resume"}, follow_redirects=False).status_code == 303
    resumed = _due(app_factory)
    assert resumed[("two-step", 2)] == ("pending", clock.now())
    assert resumed[("other", 2)] == original[("other", 2)] == ("pending", START + timedelta(days=2))
    assert _subscriber(app_factory).paused_until is None
    assert dispatch_inline(app_factory, sender) == {"sent": 1}


def test_resuming_after_a_long_pause_spaces_the_missed_emails(
    client: TestClient, app_factory, member
) -> None:  # type: ignore[no-untyped-def]
    path, advance = member
    client.post(path, data={"action": "pause", "days": "30"})
    advance(timedelta(days=5))
    client.post(path, data={"action": "resume"})
    due = _due(app_factory)
    now = clock.now()
    # Every email fell due during the pause: they restart from now with their usual delays, not all at once.
    assert [due[("two-step", n)][1] for n in (1, 2)] == [now, now + timedelta(days=1)]
    assert [due[("other", n)][1] for n in (1, 2)] == [now, now + timedelta(days=2)]


def test_a_course_confirmed_during_a_pause_starts_after_it(client: TestClient, app_factory, member) -> None:  # type: ignore[no-untyped-def]
    path, _ = member
    client.post(path, data={"action": "leave", "sequence": "other"})
    client.post(path, data={"action": "pause", "days": "14"})
    client.post("/subscribe", json={"email": "ana@example.com", "consent": True, "sequence": "other"})
    _, sent = drain(app_factory)
    client.post(path_of(confirm_url(sent[0])))
    assert _due(app_factory)[("other", 1)] == ("pending", START + timedelta(days=14))


def test_leave_one_course_keeps_the_other(client: TestClient, app_factory, member) -> None:  # type: ignore[no-untyped-def]
    path, _ = member
    answer = client.post(path, data={"action": "leave", "sequence": "other"}, follow_redirects=False)
    assert answer.status_code == 303
    due = _due(app_factory)
    assert [due[("other", n)][0] for n in (1, 2)] == ["cancelled", "cancelled"]
    assert [due[("two-step", n)][0] for n in (1, 2)] == ["pending", "pending"]
    assert _subscriber(app_factory).status == "active"
    assert "Another course" not in client.get(path).text
    with transaction(app_factory) as session:
        exits = session.scalars(select(Event).where(Event.kind == "enrollment_exited")).all()
        # Integrations (webhooks) hear of it like any other exit.
        assert [(e.detail["sequence"], e.detail["reason"], e.detail["cancelled"]) for e in exits] == [
            ("other", "left", 2)
        ]


def test_leave_all_unsubscribes_and_resubscribe_brings_everything_back(
    client: TestClient, app_factory, member
) -> None:  # type: ignore[no-untyped-def]
    path, advance = member
    assert client.post(path, data={"action": "leave-all"}, follow_redirects=False).status_code == 303
    assert _subscriber(app_factory).status == "unsubscribed"
    assert {status for status, _ in _due(app_factory).values()} == {"cancelled"}
    page = client.get(path)
    assert "You are unsubscribed" in page.text and 'value="resubscribe"' in page.text
    advance(timedelta(hours=1))
    answer = client.post(path, data={"action": "resubscribe"}, follow_redirects=False)
    assert answer.status_code == 303
    assert _subscriber(app_factory).status == "active"
    assert {status for status, _ in _due(app_factory).values()} == {"pending"}
    with transaction(app_factory) as session:
        record = session.scalar(select(ConsentRecord).where(ConsentRecord.source == "resubscribe"))
        assert record.confirmed_at == START + timedelta(hours=1) and record.consent_text
        assert {e.status for e in session.scalars(select(Enrollment))} == {"active"}


def test_unsubscribed_page_offers_resubscribe(client: TestClient, app_factory, member) -> None:  # type: ignore[no-untyped-def]
    public_id = _subscriber(app_factory).public_id
    page = client.post(f"/unsubscribe/{tokens.make_token(tokens.Purpose.unsubscribe, public_id)}")
    assert page.status_code == 200 and "Resubscribe" in page.text
    match = re.search(r'action="(/preferences/[^"]+)"', page.text)
    assert match is not None
    assert tokens.read_token(tokens.Purpose.preferences, match.group(1).rsplit("/", 1)[1]) == public_id
    answer = client.post(match.group(1), data={"action": "resubscribe"}, follow_redirects=True)
    assert answer.status_code == 200 and "Welcome back" in answer.text
    assert _subscriber(app_factory).status == "active"


def test_update_name_and_time_zone_re_times_unsent_emails(client: TestClient, app_factory, member) -> None:  # type: ignore[no-untyped-def]
    path, _ = member
    before = _due(app_factory)
    answer = client.post(
        path, data={"action": "update", "first_name": "  Ana  María ", "timezone": "Asia/Tokyo"}
    )
    assert answer.status_code == 200 and "Your details are saved" in answer.text  # after the 303
    subscriber = _subscriber(app_factory)
    assert (subscriber.first_name, subscriber.timezone) == ("Ana María", "Asia/Tokyo")
    after = _due(app_factory)
    # "two-step" has no window, so only calendar-day steps move with the zone: a day in Tokyo is a day.
    assert after[("two-step", 2)][1] - after[("two-step", 1)][1] == timedelta(days=1)
    assert set(after) == set(before)


REFUSED: list[tuple[dict[str, str], str]] = [
    ({"action": "update", "first_name": "Ana\r\nBcc: x@y.com"}, "first_name"),
    ({"action": "update", "first_name": "=?utf-8?q?a=0A?="}, "first_name"),
    ({"action": "update", "timezone": "Mars/Base"}, "timezone"),
    ({"action": "update", "first_name": "A" * 10_000}, "first_name"),
    ({"action": "pause", "days": "3"}, "action"),
    ({"action": "pause", "days": "\u0667"}, "action"),  # an Arabic-Indic seven
    ({"action": "leave", "sequence": "not-mine"}, "action"),
    ({"action": "leave", "sequence": "a\x00b"}, "action"),
    ({"action": "resubscribe"}, "action"),  # not unsubscribed: not available
    ({"action": "explode"}, "action"),
    ({}, "action"),
]


def test_refused_actions_change_nothing_and_say_why(client: TestClient, app_factory, member) -> None:  # type: ignore[no-untyped-def]
    path, _ = member
    before = snapshot(app_factory)
    for fields, field in REFUSED:
        answer = client.post(path, data=fields)
        assert answer.status_code == 422 and 'class="error' in answer.text, fields
        json_answer = client.post(path, json=fields)
        assert json_answer.status_code == 422 and field in json_answer.json()["errors"], fields
    assert client.post(path).status_code == 422  # a bare POST is an empty form: no action
    assert snapshot(app_factory) == before


def test_pending_subscribers_see_a_hint_and_bad_tokens_a_friendly_page(
    client: TestClient, app_factory
) -> None:  # type: ignore[no-untyped-def]
    client.post("/subscribe", json={"email": "new@example.com", "consent": True})
    with transaction(app_factory) as session:
        public_id = session.scalar(select(Subscriber.public_id))
    good = tokens.make_token(tokens.Purpose.preferences, public_id)
    assert "not confirmed your address yet" in client.get(f"/preferences/{good}").text
    before = snapshot(app_factory)
    for token in (
        good[:-2] + ("xx" if not good.endswith("xx") else "yy"),
        tokens.make_token(tokens.Purpose.unsubscribe, public_id),
        tokens.make_token(tokens.Purpose.confirm, public_id),
        tokens.make_token(tokens.Purpose.preferences, "erased-subscriber"),
        "garbage",
    ):
        for answer in (
            client.get(f"/preferences/{token}"),
            client.post(f"/preferences/{token}", data={"action": "leave-all"}),
        ):
            assert answer.status_code == 404 and "This link is not valid" in answer.text
    assert snapshot(app_factory) == before
