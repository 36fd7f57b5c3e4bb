"""Click and open tracking: rewritten emails, /l and /o, goal links, erasure, per-step figures."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.mail import links as tracked_links
from nurture.mail.context import Recipient, step_message
from nurture.mail.templates import EmailTemplates
from nurture.mail.transports import MemoryTransport
from nurture.models import Enrollment, Event, ExternalEvent, GoalCompletion, LinkClick, TrackedLink
from nurture.sequences.results import sequence_stats
from nurture.sequences.sync import get_sequence
from nurture.subscribers import clicks, goals
from nurture.subscribers.erasure import erase
from tests.support.helpers import dispatch_inline, make_sender, statuses, subscribe, sync_sequences

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
BASE = "https://nurture.test"
CONTACT = "https://clinic.test/contact"
TRACKED = re.compile(r"https://nurture\.test/l/([A-Za-z0-9_-]{22})")
COURSE = """
slug: course
name: The course
goals: [contacted]
steps:
  - {key: contact, delay: 0, template: ketamine-therapy/contact-us}
  - {key: goodbye, delay: 1d, template: demo/goodbye}
"""


@pytest.fixture
def world(factory: sessionmaker[Session], sequences_dir: Path) -> sessionmaker[Session]:
    (sequences_dir / "course.yaml").write_text(COURSE)
    sync_sequences(factory)
    return factory


@pytest.fixture
def client(world: sessionmaker[Session]) -> Iterator[TestClient]:
    from nurture.web.app import create_app

    with TestClient(create_app(), base_url=BASE, follow_redirects=False) as test_client:
        yield test_client


def send_first(factory: sessionmaker[Session], *emails: str) -> MemoryTransport:
    outbox = MemoryTransport()
    for email in emails:
        subscribe(factory, email, "course")
    dispatch_inline(factory, make_sender(factory, outbox))
    return outbox


def parts(data: bytes) -> tuple[EmailMessage, str, str]:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return message, text.get_content(), html.get_content()


def test_links_are_rewritten_in_both_parts_and_the_message_still_parses(world) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        outbox = send_first(world, "ana@example.com")
    [stored] = outbox.outbox
    message, text, html = parts(stored.data)
    assert message["To"] == "ana@example.com" and message["Subject"]
    assert message["Message-ID"].startswith("<nurture.")
    assert message["List-Unsubscribe"].startswith(f"<{BASE}/unsubscribe/")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_content_type() == "multipart/alternative"
    # The contact link is tracked in both parts, with one token; the list links are not.
    assert CONTACT not in html and CONTACT not in text
    html_tokens, text_tokens = set(TRACKED.findall(html)), set(TRACKED.findall(text))
    assert len(html_tokens) == 1 and html_tokens == text_tokens
    assert f'href="{BASE}/unsubscribe/' in html and f'href="{BASE}/preferences/' in html
    assert f"Unsubscribe: {BASE}/unsubscribe/" in text
    assert "data-goal" not in html
    assert "style=" in html  # the inlined CSS is still there
    with transaction(world) as session:
        [link] = session.scalars(select(TrackedLink)).all()
    assert (link.token, link.url, link.goal, link.kind) == (html_tokens.pop(), CONTACT, "contacted", "click")


def test_tokens_are_stable_when_an_email_is_rendered_again(world) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings()
    templates = EmailTemplates(settings.templates_dir)
    recipient = Recipient("ana@example.com", "Ana", "public-id")

    def render(delivery_id: int) -> tuple[bytes, list[tracked_links.LinkRow]]:
        links = tracked_links.LinkRewriter(settings, delivery_id)
        _, data, _ = step_message(
            settings,
            templates,
            recipient,
            template="ketamine-therapy/contact-us",
            sequence_name="Course",
            step_number=1,
            step_count=1,
            delivery_id=delivery_id,
            date=START,
            links=links,
        )
        return data, list(links.rows.values())

    first, rows = render(7)
    again, rows_again = render(7)
    other, _ = render(8)
    assert rows == rows_again and TRACKED.findall(first.decode()) == TRACKED.findall(again.decode())
    assert TRACKED.findall(first.decode()) != TRACKED.findall(other.decode())
    # Storing the same render twice (a resend) keeps one row per link.
    with clock.frozen(START):
        send_first(world, "ana@example.com")
    with transaction(world) as session:
        delivery_id = session.scalar(select(TrackedLink.delivery_id))
        before = session.scalar(select(func.count()).select_from(TrackedLink))
        links = tracked_links.LinkRewriter(settings, delivery_id)
        links.rewrite(templates.render("ketamine-therapy/contact-us", _context(settings)))
        tracked_links.store_links(session, delivery_id, list(links.rows.values()))
        tracked_links.store_links(session, delivery_id, list(links.rows.values()))
        assert session.scalar(select(func.count()).select_from(TrackedLink)) == before


def _context(settings) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from nurture.mail.context import template_context

    return template_context(
        settings,
        Recipient("ana@example.com", "Ana", "public-id"),
        sequence_name="C",
        step_number=1,
        step_count=1,
    )


def test_a_click_redirects_records_and_meets_the_marked_goal(world, client) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        outbox = send_first(world, "ana@example.com")
        token = TRACKED.search(parts(outbox.outbox[0].data)[2]).group(1)  # type: ignore[union-attr]
        # A scanner's HEAD learns where the link goes but is no click: the course goes on.
        peek = client.head(f"/l/{token}")
        assert peek.status_code == 302 and peek.headers["location"] == CONTACT
        assert statuses(world) == ["sent", "pending"]
        assert client.head("/l/AAAAAAAAAAAAAAAAAAAAAA").status_code == 404
        response = client.get(f"/l/{token}")
    assert response.status_code == 302
    assert response.headers["location"] == CONTACT
    assert response.headers["cache-control"] == "no-store"
    assert statuses(world) == ["sent", "cancelled"]
    with transaction(world) as session:
        enrollment = session.scalars(select(Enrollment)).one()
        assert (enrollment.status, enrollment.end_reason) == ("completed", "goal")
        assert session.scalar(select(func.count()).select_from(LinkClick)) == 1
        clicked = session.scalars(select(Event).where(Event.kind == "clicked")).one()
        assert clicked.detail == {"url": CONTACT, "step_key": "contact"}
        assert clicked.subscriber_id == enrollment.subscriber_id
        met = session.scalars(select(Event).where(Event.kind == "goal_met")).one()
        assert met.detail["step_key"] == "contact" and met.detail["goal"] == "contacted"
    # A second click, later (past tracking.HIT_WINDOW_SECONDS), still redirects and counts, and changes
    # nothing else.
    assert client.get(f"/l/{token}").headers["location"] == CONTACT
    with transaction(world) as session:
        assert session.scalar(select(func.count()).select_from(LinkClick)) == 2
        assert session.scalar(select(func.count()).select_from(GoalCompletion)) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/l/AAAAAAAAAAAAAAAAAAAAAA",  # well formed, unknown
        "/l/AAAAAAAAAAAAAAAAAAAAAA?u=//evil.example",
        "/l/not-a-token",
        "/l/%2F%2Fevil.example",
        "/l/" + "A" * 200,
        "/o/AAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_unknown_or_malformed_ids_are_404_with_no_redirect(client, path: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(path)
    assert response.status_code == 404
    assert "location" not in response.headers


def test_tampered_tokens_and_query_strings_never_redirect_elsewhere(world, client) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        outbox = send_first(world, "ana@example.com")
    token = TRACKED.search(parts(outbox.outbox[0].data)[2]).group(1)  # type: ignore[union-attr]
    tampered = ("B" if token[0] != "B" else "C") + token[1:]
    response = client.get(f"/l/{tampered}")
    assert response.status_code == 404 and "location" not in response.headers
    response = client.get(f"/l/{token}?u=//evil.example&url=https://evil.example")
    assert response.status_code == 302 and response.headers["location"] == CONTACT


def test_tracking_can_be_turned_off_and_opens_turned_on(world, sequences_dir, client) -> None:  # type: ignore[no-untyped-def]
    (sequences_dir / "plain.yaml").write_text(
        "slug: plain\nname: Plain\ntracking: {clicks: false}\n"
        "steps:\n  - {key: contact, delay: 0, template: ketamine-therapy/contact-us}\n"
    )
    (sequences_dir / "opens.yaml").write_text(
        "slug: opens\nname: Opens\ntracking: {clicks: true, opens: true}\n"
        "steps:\n  - {key: contact, delay: 0, template: ketamine-therapy/contact-us}\n"
    )
    sync_sequences(world)
    outbox = MemoryTransport()
    with clock.frozen(START):
        subscribe(world, "plain@example.com", "plain")
        subscribe(world, "opens@example.com", "opens")
        dispatch_inline(world, make_sender(world, outbox))
    by_recipient = {m.recipient: parts(m.data) for m in outbox.outbox}
    _, plain_text, plain_html = by_recipient["plain@example.com"]
    assert CONTACT in plain_html and CONTACT in plain_text and not TRACKED.search(plain_html)
    assert "/o/" not in plain_html
    _, _, opens_html = by_recipient["opens@example.com"]
    pixel = re.search(
        r'<img src="https://nurture\.test/o/([A-Za-z0-9_-]{22})" width="1" height="1"', opens_html
    )
    assert pixel is not None
    response = client.get(f"/o/{pixel.group(1)}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/gif"
    assert response.content == clicks.PIXEL
    with transaction(world) as session:
        opened = session.scalars(select(Event).where(Event.kind == "opened")).one()
        assert opened.detail == {"step_key": "contact"}
        stats = sequence_stats(session, get_sequence(session, "opens"))  # type: ignore[arg-type]
    assert (stats.steps[0].opens, stats.steps[0].openers) == (1, 1)


def test_tracking_data_is_erased_with_the_subscriber(world, client) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        outbox = send_first(world, "ana@example.com", "bob@example.com")
        tokens = {m.recipient: TRACKED.search(parts(m.data)[2]).group(1) for m in outbox.outbox}  # type: ignore[union-attr]
        for token in tokens.values():
            assert client.get(f"/l/{token}").status_code == 302
    with transaction(world) as session:
        assert erase(session, "ana@example.com")
    with transaction(world) as session:
        for model in (LinkClick, TrackedLink, ExternalEvent, GoalCompletion):
            assert session.scalar(select(func.count()).select_from(model)) == 1, model.__name__
        assert session.scalar(select(func.count()).select_from(Event).where(Event.kind == "clicked")) == 1
    # Ana's link is gone: it no longer redirects (nor reveals that it once existed).
    assert client.get(f"/l/{tokens['ana@example.com']}").status_code == 404
    assert client.get(f"/l/{tokens['bob@example.com']}").status_code == 302


def test_stats_count_clicks_goals_and_conversion_per_step(world, client) -> None:  # type: ignore[no-untyped-def]
    """Known fixture: three people get email 1; Ana clicks twice (her click is the goal), Bob once; Bob and
    Cleo get email 2; Bob then reports a goal through the API: one goal after each step."""
    with clock.frozen(START) as advance:
        outbox = send_first(world, "ana@example.com", "bob@example.com", "cleo@example.com")
        tokens = {m.recipient: TRACKED.search(parts(m.data)[2]).group(1) for m in outbox.outbox}  # type: ignore[union-attr]
        client.get(f"/l/{tokens['ana@example.com']}")
        advance(timedelta(seconds=clicks.HIT_WINDOW_SECONDS))  # her second click, later: a new click
        client.get(f"/l/{tokens['ana@example.com']}")
        # Bob's click is not a goal for him: make his link a plain one, as a non-CTA link would be.
        with transaction(world) as session:
            link = session.scalar(select(TrackedLink).where(TrackedLink.token == tokens["bob@example.com"]))
            link.goal = None  # type: ignore[union-attr]
        client.get(f"/l/{tokens['bob@example.com']}")
        advance(timedelta(days=1, seconds=1))
        dispatch_inline(world, make_sender(world, MemoryTransport()))
        goals.report_event(
            goals.parse_report({"email": "bob@example.com", "event": "contacted", "idempotency_key": "b"})
        )
    with transaction(world) as session:
        stats = sequence_stats(session, get_sequence(session, "course"))  # type: ignore[arg-type]
    first, second = stats.steps
    assert (first.sent, first.clicks, first.clickers, first.goals) == (3, 3, 2, 1)
    assert first.conversion_rate == round(1 / 3, 4)
    assert (second.sent, second.clicks, second.clickers, second.goals) == (2, 0, 0, 1)
    assert second.conversion_rate == 0.5
    assert (stats.goals, stats.goals_before_first) == (2, 0)
    assert stats.as_dict()["steps"][0]["clickers"] == 2
