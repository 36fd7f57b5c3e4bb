"""Double opt-in: the confirmation email, GET /confirm (changes nothing), POST /confirm (activates, enrolls,
records the confirmation), twice harmless, bad tokens friendly."""

from __future__ import annotations

from datetime import timedelta

import itsdangerous.timed
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from nurture.core import clock, tokens
from nurture.core.db import transaction
from nurture.models import ConsentRecord, Delivery, Enrollment, OutboxMessage, Subscriber, abuse_limits
from tests.support.helpers import statuses
from tests.support.public import CLIENT_IP
from tests.support.web import (
    confirm_url,
    drain,
    html_part,
    list_unsubscribe_url,
    path_of,
    row_counts,
    snapshot,
    text_part,
)

SIGNUP = {"email": "ana@example.com", "first_name": "Ana", "timezone": "America/Chicago", "consent": True}


def signup_and_read_email(client: TestClient, factory, **fields):  # type: ignore[no-untyped-def]
    assert client.post("/subscribe", json={**SIGNUP, **fields}).status_code == 202
    outcomes, sent = drain(factory)
    assert outcomes == {"sent": 1} and len(sent) == 1
    return sent[0]


def test_confirmation_email_is_a_branded_transactional_message_with_its_own_unsubscribe(
    client: TestClient, app_factory
) -> None:  # type: ignore[no-untyped-def]
    message = signup_and_read_email(client, app_factory)
    # Nothing the form's typist wrote reaches the inbox before the owner confirms: no name, no greeting.
    assert message["To"] == "ana@example.com" and "Ana" not in text_part(message)
    assert message["Subject"] == "Please confirm your email address for Example Counseling Centre"
    assert message["Message-ID"].startswith("<nurture.tx.")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/unsubscribe/" in list_unsubscribe_url(message)
    link = confirm_url(message)
    assert link.startswith("https://nurture.test/confirm/")
    assert link in html_part(message) and "Two steps" in text_part(message)
    assert "ana@example.com" not in path_of(link)  # tokens carry no readable address
    with transaction(app_factory) as session:
        row = session.scalar(select(OutboxMessage))
        assert (row.status, row.attempts, row.message_id) == ("sent", 1, message["Message-ID"])
    assert drain(app_factory)[0] == {}  # sent once, never again


def test_get_confirm_shows_one_button_and_changes_nothing(client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    link = path_of(confirm_url(signup_and_read_email(client, app_factory)))
    before = snapshot(app_factory)
    page = client.get(link)
    assert page.status_code == 200 and page.text.count("<button") == 1 and 'method="post"' in page.text
    assert snapshot(app_factory) == before


def test_post_confirm_activates_enrolls_and_records_the_confirmation(client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    link = path_of(confirm_url(signup_and_read_email(client, app_factory)))
    answer = client.post(link, headers={"User-Agent": "Phone/2.0"})
    assert answer.status_code == 200 and "You are signed up" in answer.text and "/preferences/" in answer.text
    with transaction(app_factory) as session:
        subscriber = session.scalar(select(Subscriber))
        record = session.scalar(select(ConsentRecord))
        enrollment = session.scalar(select(Enrollment))
        assert (subscriber.status, subscriber.first_name, subscriber.timezone) == (
            "active",
            "Ana",
            "America/Chicago",
        )
        assert subscriber.confirmed_at is not None
        assert record.confirmed_at is not None
        assert (record.confirm_ip, record.confirm_user_agent) == (CLIENT_IP, "Phone/2.0")
        assert enrollment.sequence.slug == "two-step" and enrollment.status == "active"
    assert statuses(app_factory) == ["pending", "pending"]


def test_confirming_twice_is_harmless(client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    link = path_of(confirm_url(signup_and_read_email(client, app_factory)))
    assert client.post(link).status_code == 200
    before = snapshot(app_factory)
    again = client.post(link)
    assert again.status_code == 200 and "already confirmed" in again.text
    assert client.get(link).status_code == 200 and "already confirmed" in client.get(link).text
    assert snapshot(app_factory) == before


def test_confirm_chooses_the_signups_course_and_a_second_course_adds_an_enrollment(
    client: TestClient, app_factory
) -> None:  # type: ignore[no-untyped-def]
    first = path_of(confirm_url(signup_and_read_email(client, app_factory)))
    second = path_of(confirm_url(signup_and_read_email(client, app_factory, sequence="other")))
    client.post(first)
    client.post(second)
    with transaction(app_factory) as session:
        slugs = sorted(e.sequence.slug for e in session.scalars(select(Enrollment)))
    assert slugs == ["other", "two-step"]
    assert row_counts(app_factory)["deliveries"] == 4


def test_a_stranger_signing_up_an_active_address_changes_nothing_until_the_owner_confirms(
    client: TestClient, app_factory
) -> None:  # type: ignore[no-untyped-def]
    client.post(path_of(confirm_url(signup_and_read_email(client, app_factory))))
    signup_and_read_email(client, app_factory, first_name="Mallory", timezone="Asia/Tokyo")
    with transaction(app_factory) as session:
        subscriber = session.scalar(select(Subscriber))
        assert (subscriber.first_name, subscriber.timezone) == ("Ana", "America/Chicago")


@pytest.mark.parametrize("method", ["get", "post"])
def test_tampered_foreign_expired_and_unknown_tokens_get_a_friendly_page(
    client: TestClient, app_factory, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    link = path_of(confirm_url(signup_and_read_email(client, app_factory)))
    good = link.rsplit("/", 1)[1]
    with transaction(app_factory) as session:
        subscriber_id = session.scalar(select(Subscriber.public_id))
        signup_id = session.scalar(select(ConsentRecord.public_id))
    # An expired token: signed 8 days ago (confirm links live 7 days).
    real_time = itsdangerous.timed.time.time
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real_time() - 8 * 24 * 3600)
    expired = tokens.make_token(tokens.Purpose.confirm, signup_id)
    monkeypatch.setattr(itsdangerous.timed.time, "time", real_time)
    bad = [
        good[:-2] + ("xx" if not good.endswith("xx") else "yy"),
        tokens.make_token(tokens.Purpose.unsubscribe, signup_id),  # right id, wrong purpose
        tokens.make_token(tokens.Purpose.confirm, subscriber_id),  # a subscriber id is not a signup id
        tokens.make_token(tokens.Purpose.confirm, "no-such-signup"),
        expired,
        "garbage",
        "a" * 600,
        "%C3%A9t%C3%A9",
        "%ED%A0%80",  # a lone surrogate, percent-encoded
        "%FF",
    ]
    before = snapshot(app_factory)
    for token in bad:
        answer = getattr(client, method)(f"/confirm/{token}")
        assert answer.status_code == 404 and "This link is not valid" in answer.text, token
        assert "sign up again" in answer.text
    assert snapshot(app_factory) == before


def test_unsubscribing_from_the_confirmation_email_stops_the_queued_ones(
    client: TestClient, app_factory
) -> None:  # type: ignore[no-untyped-def]
    message = signup_and_read_email(client, app_factory)
    clock.set_now(clock.now() + abuse_limits.CONFIRM_REPEAT_WINDOW)  # later, so no repeat: it is queued
    assert client.post("/subscribe", json=SIGNUP).status_code == 202  # a second one waits in the outbox
    one_click = client.post(
        path_of(list_unsubscribe_url(message)),
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert one_click.status_code == 200
    assert drain(app_factory)[0] == {"skipped:unsubscribed": 1}
    # Signing up again later is a fresh request: it is sent (and confirming it resubscribes).
    clock.set_now(clock.now() + timedelta(seconds=1))
    again = signup_and_read_email(client, app_factory)
    assert client.post(path_of(confirm_url(again))).status_code == 200
    with transaction(app_factory) as session:
        assert session.scalar(select(Subscriber.status)) == "active"


def test_signing_up_again_after_unsubscribing_continues_where_they_left(
    client: TestClient, app_factory
) -> None:  # type: ignore[no-untyped-def]
    client.post(path_of(confirm_url(signup_and_read_email(client, app_factory))))
    with transaction(app_factory) as session:
        public_id = session.scalar(select(Subscriber.public_id))
    client.post(f"/unsubscribe/{tokens.make_token(tokens.Purpose.unsubscribe, public_id)}")
    assert statuses(app_factory) == ["cancelled", "cancelled"]
    clock.set_now(clock.now() + timedelta(days=3))
    client.post(path_of(confirm_url(signup_and_read_email(client, app_factory))))
    with transaction(app_factory) as session:
        enrollment = session.scalar(select(Enrollment))
        rows = list(session.scalars(select(Delivery).order_by(Delivery.id)))
        assert enrollment.status == "active" and enrollment.end_reason is None
        assert [r.status for r in rows] == ["pending", "pending"]
        # Both steps fell due while they were away: the first goes now, the second a day later, not both now.
        assert rows[0].due_at <= clock.now() + timedelta(seconds=1)
        assert rows[1].due_at - rows[0].due_at == timedelta(days=1)


def test_confirming_into_a_course_that_is_gone_still_confirms(client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    message = signup_and_read_email(client, app_factory, sequence="other")
    with transaction(app_factory) as session:
        session.scalar(select(ConsentRecord)).sequence_slug = "deleted-course"
    answer = client.post(path_of(confirm_url(message)))
    assert answer.status_code == 200
    with transaction(app_factory) as session:
        assert session.scalar(select(Subscriber.status)) == "active"
    assert row_counts(app_factory)["enrollments"] == 0
