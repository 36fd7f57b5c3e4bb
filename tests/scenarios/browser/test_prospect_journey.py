"""A prospect's whole journey in a real browser (Debian's chromium, driven by Playwright):

form -> confirmation email over SMTP -> confirm page -> first course email -> its unsubscribe link -> button
-> the next step falls due and nothing more arrives (while a control subscriber does get it).

The web app is the real ASGI app served by uvicorn on a loopback port; mail goes through the real outbox and
the real dispatch + sender into an SMTP server on loopback. Only the clock is moved, to make step two due.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from playwright import sync_api
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.delivery.confirmations import Outbox
from nurture.mail.factory import transport_from_url
from nurture.mail.templates import EmailTemplates
from nurture.models import Delivery, Subscriber
from tests.support.browser import CHROMIUM_FLAGS, WebServer, chromium_path
from tests.support.helpers import dispatch_inline, make_sender, subscribe, sync_sequences
from tests.support.processes import SmtpServer, free_port, wait_until
from tests.support.web import confirm_url, text_part

UNSUBSCRIBE_LINK = re.compile(r"Unsubscribe: (\S+/unsubscribe/\S+)")


@pytest.fixture
def site(pg_factory: sessionmaker[Session], courses: Path, set_env) -> Iterator[tuple[str, SmtpServer]]:  # type: ignore[no-untyped-def]
    port = free_port()
    with SmtpServer() as smtp:
        set_env(smtp_url=smtp.url, base_url=f"http://127.0.0.1:{port}")
        sync_sequences(pg_factory)
        with WebServer(port):
            yield f"http://127.0.0.1:{port}", smtp


def _to(smtp: SmtpServer, address: str) -> list:
    return [r.message for r in smtp.received if r.rcpt_tos == [address]]


def test_signup_confirm_receive_unsubscribe_then_nothing_more(site, pg_factory) -> None:  # type: ignore[no-untyped-def]
    base, smtp = site
    settings = get_settings()
    transport = transport_from_url(settings.resolved_smtp_url)
    outbox = Outbox(settings, pg_factory, transport, EmailTemplates(settings.templates_dir))
    sender = make_sender(pg_factory, transport)
    # A control subscriber on the same course: proves step two really falls due and is sent.
    subscribe(pg_factory, "bob@example.com", "two-step")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_context(timezone_id="Europe/Berlin", locale="en-GB").new_page()

            # The form: a missing consent tick is reported next to the box, nothing is stored.
            page.goto(f"{base}/subscribe")
            assert page.input_value("#timezone") == "Europe/Berlin"  # filled in by the browser
            page.fill("#email", "ana@example.com")
            page.fill("#first_name", "Ana")
            page.click("button[type=submit]")
            assert page.is_visible("#consent-error")
            assert page.get_attribute("#consent", "aria-invalid") == "true"
            with transaction(pg_factory) as session:
                assert session.scalar(select(Subscriber).where(Subscriber.email == "ana@example.com")) is None

            page.check("#consent")
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/subscribe/check-your-inbox")
            assert page.inner_text("h1") == "Check your inbox"

            # The confirmation email, sent by the outbox through SMTP.
            assert outbox.drain() == {"sent": 1}
            confirmation = wait_until(lambda: _to(smtp, "ana@example.com"), 10, "the confirmation email")[0]
            page.goto(confirm_url(confirmation))
            assert page.inner_text("h1") == "Confirm your email address"
            page.click("button[type=submit]")
            assert page.inner_text("h1") == "You are signed up"

            # The first course email, through the real dispatcher and sender.
            assert dispatch_inline(pg_factory, sender)["sent"] == 2  # Ana's and Bob's first steps
            first = wait_until(lambda: _to(smtp, "ana@example.com")[1:], 10, "the first course email")[0]
            assert first["Subject"] == "Demo 1 of 3: your first nurture email"
            assert "Hello Ana," in text_part(first)

            # Its unsubscribe link: a page with one button; pressing it unsubscribes.
            match = UNSUBSCRIBE_LINK.search(text_part(first))
            assert match is not None
            page.goto(match.group(1))
            assert page.locator("button").count() == 1
            page.click("button")
            assert page.inner_text("h1") == "You are unsubscribed"
            assert page.is_visible("text=Resubscribe")
        finally:
            browser.close()

    # Step two falls due a day later: Bob gets it, Ana gets nothing more.
    received_by_ana = len(_to(smtp, "ana@example.com"))
    clock.set_now(clock.now() + timedelta(days=1, minutes=1))
    assert dispatch_inline(pg_factory, sender) == {"sent": 1}
    wait_until(lambda: len(_to(smtp, "bob@example.com")) == 2, 10, "Bob's second email")
    assert len(_to(smtp, "ana@example.com")) == received_by_ana == 2
    with transaction(pg_factory) as session:
        ana = session.scalar(select(Subscriber).where(Subscriber.email == "ana@example.com"))
        assert ana.status == "unsubscribed" and ana.timezone == "Europe/Berlin"
        assert [
            d.status
            for d in session.scalars(
                select(Delivery).where(Delivery.subscriber_id == ana.id).order_by(Delivery.id)
            )
        ] == [
            "sent",
            "cancelled",
        ]
