"""A staff member in a real browser (Debian's chromium via Playwright): sign in, open a sequence, preview a
step, pause and resume it, read the funnel. The app is served by uvicorn on loopback, on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright import sync_api
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core import clock
from nurture.core.db import transaction
from nurture.mail.transports import MemoryTransport
from nurture.models import Delivery, Sequence
from nurture.staff.accounts import create_user
from tests.support.browser import CHROMIUM_FLAGS, WebServer, chromium_path
from tests.support.helpers import dispatch_inline, make_sender, subscribe, sync_sequences
from tests.support.processes import free_port
from tests.support.staff import PASSWORD

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # Monday 10:00 in New York: inside the window


@pytest.fixture
def staff_site(pg_factory: sessionmaker[Session], course: Path, set_env) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    # Plain http on loopback: the Secure cookie flag (tests/web/admin/test_login.py) is off in development.
    set_env(base_url=f"http://127.0.0.1:{port}", env="development")
    sync_sequences(pg_factory)
    with transaction(pg_factory) as session:
        create_user(session, "ed@staff.example.com", "editor", PASSWORD)
    with WebServer(port):
        yield f"http://127.0.0.1:{port}"


def test_sign_in_preview_pause_resume_and_read_the_funnel(staff_site, pg_factory) -> None:  # type: ignore[no-untyped-def]
    base = staff_site
    clock.set_now(START)
    for name in ("ana", "bo", "cy"):
        subscribe(pg_factory, f"{name}@example.com", "course")
    assert dispatch_inline(pg_factory, make_sender(pg_factory, MemoryTransport()))["sent"] == 3

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_context(locale="en-GB").new_page()
            page.goto(f"{base}/admin/sequences")
            page.wait_for_url(f"{base}/admin/login?next=/admin/sequences")
            page.fill("#email", "ed@staff.example.com")
            page.fill("#password", "wrong password, sorry")
            page.click("button[type=submit]")
            assert "do not match" in page.inner_text("[role=alert]")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/admin/sequences")
            assert "middle: 3" in page.inner_text("table")  # all three wait at step two

            page.click("text=The course")
            assert page.inner_text("h1") == "The course"
            page.click("text=Preview middle")
            assert page.inner_text("#preview-subject") == "Demo 2 of 3: the schedule lives in the database"
            assert "Hello Sam," in page.inner_text("#preview-text")
            assert "Hello Sam" in page.frame_locator("iframe").locator("body").inner_text()

            page.click("text=Back to the sequence")
            page.click("text=Pause sequence")
            assert page.inner_text("#sequence-status").lower() == "paused"
            assert "9 emails held" in page.inner_text("[role=status]")
            with transaction(pg_factory) as session:
                assert set(session.scalars(select(Delivery.status).where(Delivery.status != "sent"))) == {
                    "held"
                }

            page.check("#policy-send-due")
            page.click("text=Resume sequence")
            assert page.inner_text("#sequence-status").lower() == "active"
            with transaction(pg_factory) as session:
                assert session.scalar(select(Sequence.status)) == "active"
                assert "held" not in set(session.scalars(select(Delivery.status)))

            page.click("text=Results")
            funnel = page.locator("#funnel-numbers")
            assert funnel.locator("tr[data-step=enrolled]").get_attribute("data-count") == "3"
            assert funnel.locator("tr[data-step=hello]").get_attribute("data-count") == "3"
            assert funnel.locator("tr[data-step=middle]").get_attribute("data-count") == "0"

            page.click("text=Sign out")
            page.wait_for_url(f"{base}/admin/login")
            page.goto(f"{base}/admin/sequences/course")
            assert "/admin/login" in page.url
        finally:
            browser.close()
