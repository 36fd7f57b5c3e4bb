"""A newcomer's first minutes, in Debian's chromium at a phone's width (390 px) and a laptop's (1280 px):

fresh database -> the start page -> the staff area offers the first-admin setup -> the link ``nurture run``
prints -> the first admin, signed in -> the dashboard (empty, then with a few days of sending) -> the
subscriber list (filter by sequence and step, sort, a bulk action behind its confirmation) -> a sequence
and its timeline -> results charts and their CSV -> the other staff pages -> an import big enough to run as
a job with a progress bar -> the prospect's pages (signup, the dev mailbox, confirm, preferences,
unsubscribe).

Every page is checked by axe-core (no serious or critical violation) and for sideways scrolling, and saved
as a screenshot under var/test-artifacts/ (tests/scenarios/browser/conftest.py). The app is the real
ASGI app served by uvicorn on loopback, on PostgreSQL; mail goes to a Maildir, as in ``make run``. Only
the clock is set.
"""

from __future__ import annotations

import csv
import io
import mailbox
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from nurture.cli.run_summary import summary
from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.mail.transports import MaildirTransport
from nurture.models import Delivery, Subscriber, WebhookEndpoint
from nurture.staff import first_admin
from nurture.subscribers.enrollment import unsubscribe
from nurture.webhooks import secrets as endpoint_secrets
from tests.scenarios.browser.conftest import Inspector
from tests.support.browser import WebServer
from tests.support.helpers import dispatch_inline, make_sender, subscribe, sync_sequences
from tests.support.processes import free_port
from tests.support.web import drain, text_part

# Weekday mornings in New York, shut on US public holidays; the last email falls after a weekend, which the
# timeline shows shaded.
COURSE = """
slug: course
name: Getting started with therapy
timezone: America/New_York
holidays: US
window: {days: mon-fri, start: "09:00", end: "17:00"}
steps:
  - {key: welcome, delay: 0, template: demo/hello}
  - {key: how-it-works, delay: 1d, template: demo/middle}
  - {key: stories, delay: 2d, template: demo/middle}
  - {key: next-steps, delay: 5d, template: demo/goodbye}
"""
START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # Monday 10:00 in New York
PASSWORD = "a long and private passphrase"
LINK = re.compile(r"http://\S+/admin/setup/\S+")
UNSUBSCRIBE = re.compile(r"Unsubscribe: (\S+/unsubscribe/\S+)")
PREFERENCES = re.compile(r"(http\S+/preferences/\S+)")


@pytest.fixture
def newcomer_site(
    pg_factory: sessionmaker[Session], sequences_dir: Path, set_env, tmp_path: Path
) -> Iterator[tuple[str, Path]]:  # type: ignore[no-untyped-def]
    (sequences_dir / "course.yaml").write_text(COURSE)
    port = free_port()
    mail = tmp_path / "mail"
    # As `make run` has it: development (plain http on loopback, the dev mailbox), mail to a Maildir. Work
    # on more than 5 rows runs as a job, so the walk meets a progress bar with a small file.
    set_env(
        env="development",
        base_url=f"http://127.0.0.1:{port}",
        smtp_url=f"maildir://{mail}",
        default_sequence="course",
        background_rows="5",
        report_timezone="America/New_York",
    )
    sync_sequences(pg_factory)
    clock.set_now(START)
    with WebServer(port):
        yield f"http://127.0.0.1:{port}", mail


def _send_a_few_days(factory: sessionmaker[Session], mail: Path) -> int:
    """Signups on four weekdays, each day's due mail sent, one person unsubscribed: the dashboard's week."""
    sender = make_sender(factory, MaildirTransport(mail))
    people = 0
    for days_ago, count in ((5, 3), (4, 4), (3, 2), (0, 3)):  # Wed, Thu, Fri, then Monday
        clock.set_now(START - timedelta(days=days_ago))
        for n in range(count):
            subscribe(factory, f"reader{people + n}@example.com", "course", first_name=f"Reader{people + n}")
        people += count
        dispatch_inline(factory, sender)
    with transaction(factory) as session:
        leaving = session.scalar(select(Subscriber).where(Subscriber.email == "reader0@example.com"))
        assert leaving is not None
        unsubscribe(session, leaving, source="link")
    clock.set_now(START)
    return people


def _letters(mail: Path) -> list:
    return [message_from_bytes(m.as_bytes()) for m in mailbox.Maildir(str(mail)).values()]


@pytest.mark.parametrize("width", [390, 1280])
def test_a_newcomer_finds_their_way(newcomer_site, pg_factory, chromium, width) -> None:  # type: ignore[no-untyped-def]
    base, mail = newcomer_site
    context = chromium.new_context(
        viewport={"width": width, "height": 900}, locale="en-US", timezone_id="America/New_York"
    )
    context.set_default_timeout(15_000)
    page = context.new_page()
    look = Inspector("newcomer", width)
    try:
        # The start page says where to go.
        page.goto(f"{base}/")
        look.check(page, "landing")
        assert page.is_visible("a[href='/dev/mail']")
        page.click("text=Staff area")
        page.wait_for_url(f"{base}/admin/login?next=/admin/")
        assert "No admin account yet" in page.inner_text("#first-run")
        look.check(page, "first-run")

        # The keyboard alone: the first Tab shows the skip link.
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"

        # What `nurture run` prints on a fresh install, read off the terminal like a person would.
        with transaction(pg_factory) as session:
            token = first_admin.issue(session, timedelta(hours=24))
        printed = summary(get_settings(), base, token)
        assert "No staff account yet" in printed and f"{base}/admin/" in printed
        link = LINK.search(printed).group(0)  # type: ignore[union-attr]
        page.fill("#setup-token", link)
        page.press("#setup-token", "Enter")
        page.wait_for_selector("#password_again")
        look.check(page, "setup")
        page.fill("#email", "ana@clinic.example")
        page.fill("#password", PASSWORD)
        page.fill("#password_again", PASSWORD)
        page.click("text=Create admin and sign in")
        page.wait_for_url(re.compile(r".*/admin/\?done=.*"))
        assert "you are the first admin" in page.inner_text("[role=status]")
        assert "Nothing needs you right now" in page.inner_text("#alerts")
        look.check(page, "dashboard-empty")
        spent = context.new_page()
        spent.goto(link)
        assert spent.inner_text("h1") == "Setup is done"  # the link worked once
        spent.close()

        # A few days of sending later, the dashboard has a week to show.
        people = _send_a_few_days(pg_factory, mail)
        with transaction(pg_factory) as session:
            sent = session.scalar(select(func.count()).where(Delivery.status == "sent"))
        page.goto(f"{base}/admin/")
        assert page.inner_text("#sent-7d") == str(sent) and sent > people
        assert page.locator("figure.chart svg:visible").count() >= 1
        assert page.inner_text("#unsubscribe-rate").endswith("%")
        look.check(page, "dashboard")

        # Subscribers: a list, filtered on a sequence and its step, sorted, and a bulk action.
        page.click("header nav >> text=Subscribers")
        assert f"{people} match" in page.inner_text("#list-caption")
        look.check(page, "subscribers")
        page.select_option("#sequence", "course")
        page.click("form.filters >> text=Show")
        page.select_option("#step", "how-it-works")
        page.click("form.filters >> text=Show")
        rows = page.locator("#subscriber-list tbody tr")
        assert rows.count() >= 1
        for n in range(rows.count()):
            assert "course: how-it-works" in rows.nth(n).inner_text()
        page.select_option("#sort", "next")
        page.click("form.filters >> text=Show")
        assert "sort=next" in page.url
        times = page.locator("#subscriber-list tbody time").evaluate_all("els => els.map(e => e.dateTime)")
        assert times == sorted(times)  # soonest next email first
        look.check(page, "subscribers-filtered")
        boxes = page.locator("#subscriber-list tbody input[type=checkbox]")
        picked = min(2, boxes.count())
        for n in range(picked):
            boxes.nth(n).check()
        page.select_option("#bulk-action", "unsubscribe")
        page.click("text=Review…")
        assert page.locator("#bulk-people li").count() == picked
        look.check(page, "bulk-confirm")
        page.click("text=Yes, unsubscribe")
        assert f"{picked} unsubscribed" in page.inner_text("[role=status]")
        page.click("#subscriber-list tbody a >> nth=0")
        assert "Explain log" in page.inner_text("main")
        look.check(page, "subscriber")
        erase = page.url + "/erase"
        page.goto(erase)
        look.check(page, "erase-confirm")

        # A sequence: its schedule as a strip of days, then its results over time.
        page.click("header nav >> text=Sequences")
        look.check(page, "sequences")
        page.click("text=Getting started with therapy")
        strip = page.locator("#timeline-strip")
        assert strip.locator("li.signup").count() == 1 and strip.locator(".send").count() == 4
        assert strip.locator("li.closed").count() >= 1  # a weekend, shaded
        look.check(page, "sequence")
        page.click("main >> text=Results")
        assert page.locator("figure.chart svg:visible").count() >= 1
        enrolled = page.locator("#funnel-numbers tr[data-step=enrolled]").get_attribute("data-count")
        assert enrolled == str(people)
        look.check(page, "results")
        with page.expect_download() as download:
            page.click("text=Download CSV")
        table = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
        assert table[0] == ["date", "step", "sent", "clicked", "unsubscribed", "goals"]
        assert sum(int(row[2]) for row in table[1:]) == sent

        # Every other staff page a newcomer can reach.
        with transaction(pg_factory) as session:
            # An endpoint as `nurture webhooks create` leaves it (its URL is checked by DNS, offline here).
            hook = WebhookEndpoint(
                url="https://crm.example/hooks/nurture",
                event_types=["subscribed", "unsubscribed"],
                secret=endpoint_secrets.seal(endpoint_secrets.generate(), get_settings()),
            )
            session.add(hook)
            session.flush()
            hook_id = hook.id
        for path, name in (
            (f"/admin/webhooks/{hook_id}", "webhook"),
            ("/admin/sequences/course/steps/welcome", "preview"),
            ("/admin/sequences/course/edit", "edit"),
            ("/admin/sequences/course/plan", "plan"),
            ("/admin/sequences/course/enroll", "enroll"),
            ("/admin/users", "users"),
            ("/admin/audit", "audit"),
            ("/admin/webhooks", "webhooks"),
            ("/admin/sequences/no-such-thing", "not-found"),
        ):
            page.goto(f"{base}{path}")
            look.check(page, name)

        # An import bigger than NURTURE_BACKGROUND_ROWS runs as a job: the page follows its progress.
        page.goto(f"{base}/admin/import")
        look.check(page, "import")
        rows_csv = "email,first_name\n" + "".join(f"new{n}@example.com,New{n}\n" for n in range(8))
        page.set_input_files(
            "#file", {"name": "people.csv", "mimeType": "text/csv", "buffer": rows_csv.encode()}
        )
        page.fill("#consent_source", "webinar sign-up sheet")
        page.click("main button[type=submit]")
        page.wait_for_url(re.compile(r".*/admin/jobs/\d+$"))
        page.wait_for_selector("#job[data-state=done]")
        assert page.get_attribute("#job-progress", "value") == "8"
        assert "Imported (new, enrolled): 8" in page.inner_text("#import-report")
        look.check(page, "import-job")

        # The prospect's side: signup, the email in the dev mailbox, confirm, preferences, unsubscribe.
        visitor = chromium.new_context(viewport={"width": width, "height": 900}, timezone_id="Europe/Berlin")
        prospect = visitor.new_page()
        prospect.goto(f"{base}/subscribe")
        look.check(prospect, "subscribe")
        prospect.fill("#email", "newcomer@example.com")
        prospect.fill("#first_name", "Nia")
        prospect.check("#consent")
        prospect.click("button[type=submit]")
        look.check(prospect, "check-inbox")
        drain(pg_factory, MaildirTransport(mail))
        prospect.goto(f"{base}/dev/mail")
        look.check(prospect, "dev-mailbox")
        prospect.click("text=Confirm")
        look.check(prospect, "letter")
        confirmation = next(m for m in _letters(mail) if "newcomer@example.com" in str(m["To"]))
        confirm_link = re.search(r"\S+/confirm/\S+", text_part(confirmation)).group(0)  # type: ignore[union-attr]
        prospect.goto(confirm_link)
        look.check(prospect, "confirm")
        prospect.click("button[type=submit]")
        look.check(prospect, "confirmed")
        course_mail = next(m for m in _letters(mail) if m["To"] and "reader1@" in m["To"])
        prospect.goto(PREFERENCES.search(text_part(course_mail)).group(1))  # type: ignore[union-attr]
        look.check(prospect, "preferences")
        prospect.goto(UNSUBSCRIBE.search(text_part(course_mail)).group(1))  # type: ignore[union-attr]
        look.check(prospect, "unsubscribe")
        prospect.click("main button[type=submit]")
        look.check(prospect, "unsubscribed")
        prospect.goto(f"{base}/subscribe/embed")
        look.check(prospect, "embed")
        prospect.goto(f"{base}/confirm/not-a-real-link")
        look.check(prospect, "invalid-link")
        visitor.close()

        # Sign out; the staff area is closed again.
        page.click("text=Sign out")
        page.wait_for_url(f"{base}/admin/login")
        look.check(page, "signed-out")
        assert len(look.seen) >= 35
    finally:
        context.close()
